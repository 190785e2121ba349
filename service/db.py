"""phasetune's own tables beside Optuna's, in the same database: what Optuna cannot hold (probe records, API
tokens).

A study is all Optuna's: its spec, status and creation time are user attrs of the Optuna study, its id is the Optuna
study id, and its trials are read through Optuna.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, DateTime, Engine, Integer, String, Text, create_engine, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from phasetune.workers.probe_names import ProbeStatus
from phasetune.workers.storage import engine_kwargs, open_storage, tune_sqlite

TOKEN_NAME_MAX = 100
ID_MAX = 2**31 - 1  # ids (Optuna's and ours) are 32-bit integers in every backend: a larger one names nothing


def as_utc(moment: datetime) -> datetime:
    """A stored time, timezone-aware: SQLite hands back what it stored without its zone (always UTC here)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class ProbeRecord(Base):
    """A probe run over REST (``POST /probes``): what was asked and what it found, so ``GET /probes/{id}`` can
    return it again. A study's own probe results live in its Optuna user attrs instead."""

    __tablename__ = "phasetune_probes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    workload: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    options: Mapped[dict] = mapped_column(JSON)
    resources: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=ProbeStatus.DONE.value)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # None until it is done
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it failed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))


class TokenRecord(Base):
    """An API token (``phasetune.service.auth``): its scope and the SHA-256 of the token, never the token itself."""

    __tablename__ = "phasetune_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(TOKEN_NAME_MAX))
    scope: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(timezone.utc))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=None)

    def summary(self) -> dict[str, object]:
        """What may be shown of a token: never its digest."""
        return {"id": self.id, "name": self.name, "scope": self.scope, "created_at": as_utc(self.created_at),
                "revoked": self.revoked_at is not None}


def describe_error(err: Exception) -> str:
    """A database error as one line (a driver's message runs to many, with the SQL and its parameters)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def make_engine(url: str) -> Engine:
    return tune_sqlite(create_engine(url, **engine_kwargs(url)))


VERSION_TABLE = "phasetune_alembic_version"  # Optuna's own Alembic keeps its revision in alembic_version
MIGRATIONS = Path(__file__).with_name("migrations")
_TODAY_AT_ALEMBIC = "0002"  # the revision of a database that today's schema code made before Alembic came


def is_ours(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's ``include_object``: our tables only (Optuna's share the database and migrate on their own)."""
    return type_ != "table" or name in Base.metadata.tables


def migrate(url: str) -> None:
    """Create or upgrade Optuna's schema and ours (idempotent): what `phasetune migrate` and the app's startup run.

    Ours is Alembic's (``phasetune.service.migrations``). A database from before Alembic, with our tables but no
    ``phasetune_alembic_version``, is stamped at the revision its columns show, then upgraded in place."""
    open_storage(url).engine.dispose()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            present = inspect(connection)
            if not present.has_table(VERSION_TABLE) and present.has_table(ProbeRecord.__tablename__):
                probe_columns = {column["name"] for column in present.get_columns(ProbeRecord.__tablename__)}
                if "status" in probe_columns:  # else older still: 0001 creates what is missing, 0002 adds columns
                    command.stamp(config, _TODAY_AT_ALEMBIC)
            command.upgrade(config, "head")
    finally:
        engine.dispose()
