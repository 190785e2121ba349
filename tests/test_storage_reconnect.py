"""A driver's storage call whose connection PostgreSQL cuts mid-statement (a restart, a failover) is made again on a
new connection, where a plain Optuna storage fails the call (and, before, the whole study: issue 22's container
restart). The cut is real: the server itself terminates the connection's backend just before the statement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import pytest
import sqlalchemy
from sqlalchemy import event

from phasetune.workers.storage import ReconnectingRDBStorage, open_storage


@contextmanager
def cut_next_statement(engine: sqlalchemy.Engine, admin_url: str) -> Iterator[list[int]]:
    """The next statement ``engine`` sends finds its connection terminated by the server; yields the pids cut."""
    killer = sqlalchemy.create_engine(admin_url)
    cut: list[int] = []

    def terminate(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if cut:
            return
        pid = conn.connection.dbapi_connection.get_backend_pid()
        with killer.begin() as admin:
            admin.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        cut.append(pid)

    event.listen(engine, "before_cursor_execute", terminate)
    try:
        yield cut
    finally:
        event.remove(engine, "before_cursor_execute", terminate)
        killer.dispose()


def _write(storage: optuna.storages.RDBStorage) -> Callable[[], None]:
    study = optuna.create_study(storage=storage, study_name="cut")
    trial = study.ask()
    return lambda: storage.set_trial_intermediate_value(trial._trial_id, 3, 0.25)


def test_a_write_cut_by_a_lost_connection_is_made_again(postgres_url):
    storage = open_storage(postgres_url, connect_wait_s=10)
    assert isinstance(storage, ReconnectingRDBStorage)
    write = _write(storage)
    with cut_next_statement(storage.engine, postgres_url) as cut:
        write()
    assert cut  # the connection really was cut under the call
    (trial,) = optuna.load_study(study_name="cut", storage=postgres_url).trials
    assert trial.intermediate_values == {3: 0.25}
    storage.engine.dispose()


def test_without_the_driver_wait_a_cut_write_fails(postgres_url):
    """The control: the API's storage (no wait) reports the cut at once, as a 503 does; so the test above can fail."""
    storage = open_storage(postgres_url)
    assert not isinstance(storage, ReconnectingRDBStorage)
    write = _write(storage)
    with cut_next_statement(storage.engine, postgres_url), pytest.raises(optuna.exceptions.StorageInternalError):
        write()
    storage.engine.dispose()

