"""``/health``: the API answers and its storage is reachable."""

from __future__ import annotations

import ray
from fastapi import APIRouter
from sqlalchemy import text

from service.deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(engine: EngineDep) -> dict[str, object]:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ok", "storage": engine.url.get_backend_name(), "ray_connected": ray.is_initialized()}
