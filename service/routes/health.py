"""``/health``: the API answers and its storage is reachable."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from service.deps import EngineDep, LauncherDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(engine: EngineDep, launcher: LauncherDep) -> dict[str, object]:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    connected = launcher is not None and launcher.connected.is_set()
    return {"status": "ok", "storage": engine.url.get_backend_name(), "ray_connected": connected}
