"""One way to open the Optuna RDB storage, tuned per backend (see known-pitfalls: SQLite locking, PG exhaustion)."""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: SQLite waits for the writer's lock; PostgreSQL keeps a small, checked pool."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # Small pools (each process holds one storage) and pre-ping for connections dropped while trials run long.
    return {"pool_size": 2, "max_overflow": 4, "pool_pre_ping": True, "pool_recycle": 1800}


def tune_sqlite(engine: Engine) -> Engine:
    """SQLite in write-ahead-log mode with ``synchronous=NORMAL``: readers (the API, the dashboard) never block
    the driver's writes nor it theirs, and a commit appends to the log instead of syncing the database file (the
    driver commits every epoch of every trial). Still safe against a process crash; a power cut may lose the last
    commits. For every connection the engine opens from now on; a no-op on other backends."""
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened before the listener are closed, so that every one has the pragmas
    return engine


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; creates Optuna's schema if it is missing."""
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    tune_sqlite(storage.engine)
    return storage
