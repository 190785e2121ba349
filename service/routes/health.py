"""``/health``: whether the service can do its job: its storage answers, and (when it runs studies) Ray does."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from phasetune.service.db import describe_error
from phasetune.service.deps import EngineDep, LauncherDep

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"description": "the storage or the Ray cluster does not answer (`problems`)"}})
def health(engine: EngineDep, launcher: LauncherDep, response: Response) -> dict[str, object]:
    """200 when the storage answers now and, for an API that runs studies, the Ray agent verified the cluster
    within one reconcile period; 503 naming what is not. ``ray``: what was last verified (address, when, how many
    seconds ago, trusted for how long) and the agent process (``service/ray_agent.py``). ``relaunched_drivers``:
    studies whose driver the API found gone and relaunched (how many times)."""
    problems = []
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        problems.append(f"storage: {describe_error(err)}")
    connected = launcher is not None and launcher.connected.is_set()
    if launcher is not None and not connected:
        problems.append(f"ray: not connected ({launcher.ray_error or 'connecting'})")
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "unavailable" if problems else "ok", "storage": engine.url.get_backend_name(),
            "ray_connected": connected, "problems": problems,
            "ray": launcher.health() if launcher is not None else None,
            "relaunched_drivers": dict(launcher.relaunched) if launcher is not None else {}}
