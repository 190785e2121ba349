"""One way to open the Optuna RDB storage, tuned per backend (see known-pitfalls: SQLite locking, PG exhaustion)."""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy.engine import make_url


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: SQLite waits for the writer's lock; PostgreSQL keeps a small, checked pool."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # Small pools (each process holds one storage) and pre-ping for connections dropped while trials run long.
    return {"pool_size": 2, "max_overflow": 4, "pool_pre_ping": True, "pool_recycle": 1800}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; creates Optuna's schema if it is missing."""
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
