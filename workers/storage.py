"""One way to open the Optuna RDB storage, tuned per backend (see known-pitfalls: SQLite locking, PG exhaustion)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
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


T = TypeVar("T")
DRIVER_CONNECT_WAIT_S = 120.0  # how long a driver's new connection waits for a database that refuses it


def wait_for_connections(engine: Engine, wait_s: float) -> Engine:
    """Each connection the engine opens is retried, with backoff, for up to ``wait_s`` while the database refuses
    it (restarting, failing over): nothing was sent on a connection not yet made, so any call may wait so. With
    ``pool_pre_ping``, connections a restart cut are replaced at their next use, through the same wait. For a
    study's driver, whose every epoch is a write; the API keeps no wait (it answers 503 at once instead)."""
    if engine.dialect.name == "sqlite" or wait_s <= 0:
        return engine

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return _retried(lambda: dialect.connect(*cargs, **cparams), dialect.loaded_dbapi.OperationalError, wait_s)

    return engine


def _retried(call: Callable[[], T], error: type[Exception], wait_s: float) -> T:
    """``call()``, retried with backoff (0.25 s doubling to 5 s) while it raises ``error``, for up to ``wait_s``."""
    deadline, delay = time.monotonic() + wait_s, 0.25
    while True:
        try:
            return call()
        except error:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


DISCONNECT_RETRIES = 3  # a call cut by a lost connection is made again this often (each new connection waits)


def _cut_by_disconnect(err: BaseException) -> bool:
    """``err`` is a lost connection (the server restarted or failed over mid-call), not a refused statement:
    SQLAlchemy says so on the DBAPI error, which Optuna wraps in ``StorageInternalError``."""
    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) else err
    return isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated


def _made_again_after_disconnect(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> T:
        attempt = 0
        while True:
            try:
                return method(*args, **kwargs)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DBAPIError) as err:
                attempt += 1
                if attempt > DISCONNECT_RETRIES or not _cut_by_disconnect(err):
                    raise
                time.sleep(0.5 * attempt)

    return call


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, for a study's driver: a call whose connection the database cut (a PostgreSQL restart,
    a failover) is made again on a new connection, which ``wait_for_connections`` lets wait for the server.
    ``pool_pre_ping`` only catches a connection that died while pooled, not one cut mid-statement, and without
    this an epoch's write during a restart failed the study. A cut statement was rolled back, so making it again
    is safe for Optuna's writes (upserts of attrs and values; a state change checks the trial is still running)."""


for _name, _method in vars(optuna.storages.RDBStorage).items():
    if callable(_method) and not _name.startswith("_") and _name not in ("upgrade", "remove_session"):
        setattr(ReconnectingRDBStorage, _name, _made_again_after_disconnect(_method))


def open_storage(url: str, connect_wait_s: float = 0.0) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``; creates Optuna's schema if it is missing. ``connect_wait_s``: see
    ``wait_for_connections``; with a wait, calls cut by a lost connection are made again
    (``ReconnectingRDBStorage``), as the driver's must be."""
    kind = ReconnectingRDBStorage if connect_wait_s > 0 else optuna.storages.RDBStorage
    # Optuna connects as it opens the storage (its schema and version): that waits too.
    storage = _retried(lambda: kind(url, engine_kwargs=engine_kwargs(url)),
                       sqlalchemy.exc.OperationalError, connect_wait_s)
    tune_sqlite(storage.engine)
    wait_for_connections(storage.engine, connect_wait_s)
    return storage
