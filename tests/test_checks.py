"""The suite's own guarantees: a check that needs a service cannot pass by skipping in CI."""

from __future__ import annotations

import socket

import pytest

from tests import conftest


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("ci", "outcome"), [(None, pytest.skip.Exception), ("true", pytest.fail.Exception)])
def test_no_postgresql_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None,
                                                     outcome: type[BaseException]) -> None:
    """What every PostgreSQL fixture (``storage_url``, ``postgres_url``, ``module_storage_url``) does without a
    server: the fixture's own code, pointed at a port nothing listens on."""
    monkeypatch.setattr(conftest, "PG_ADMIN_URL", f"postgresql+psycopg2://postgres@127.0.0.1:{_closed_port()}/test")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="PostgreSQL not reachable") as raised:
        next(conftest._postgres_database())
    assert type(raised.value) is outcome  # (Failed and Skipped are siblings: neither passes for the other)
