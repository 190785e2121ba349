"""phasetune's tables under Alembic: a database made by the schema code from before Alembic upgrades in place.

Each starting point is built here with that code's own table definitions (captured below, not today's models, so
the test keeps meaning what it says when the models move on): the data written then survives, the database ends
at the head revision, and its schema matches the models (Alembic's own comparison).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import optuna
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import Session

from phasetune.service.db import (
    MIGRATIONS,
    VERSION_TABLE,
    Base,
    ProbeRecord,
    TokenRecord,
    is_ours,
    make_engine,
    migrate,
)
from phasetune.workers.storage import open_storage

CREATED = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _tables_of_2026_12_02(metadata: MetaData) -> None:
    """service/db.py at 5a14871 (tokens came; probes answered at once, so ``result`` was required)."""
    Table("phasetune_probes", metadata,
          Column("id", Integer, primary_key=True), Column("kind", String(32), nullable=False),
          Column("workload", JSON, nullable=False), Column("seed", Integer, nullable=False),
          Column("options", JSON, nullable=False), Column("result", JSON, nullable=False),
          Column("created_at", DateTime(timezone=True), nullable=False))
    Table("phasetune_tokens", metadata,
          Column("id", Integer, primary_key=True), Column("name", String(100), nullable=False),
          Column("scope", String(16), nullable=False), Column("digest", String(64), nullable=False, unique=True),
          Column("created_at", DateTime(timezone=True), nullable=False),
          Column("revoked_at", DateTime(timezone=True), nullable=True))


def _created_before_status(engine: Engine) -> None:
    """A database created at 5a14871 that no later phasetune opened."""
    metadata = MetaData()
    _tables_of_2026_12_02(metadata)
    metadata.create_all(engine)


def _created_before_status_then_altered(engine: Engine) -> None:
    """The same, then opened by the code up to 64fb18e: its ``_add_missing_columns``, verbatim."""
    _created_before_status(engine)
    with engine.begin() as connection:
        for name, kind in {"resources": "JSON", "status": "VARCHAR(16) DEFAULT 'done'", "error": "TEXT"}.items():
            connection.execute(text(f"ALTER TABLE phasetune_probes ADD COLUMN {name} {kind}"))


def _created_today(engine: Engine) -> None:
    """A database created by the code up to 64fb18e (``Base.metadata.create_all`` of these tables)."""
    metadata = MetaData()
    Table("phasetune_probes", metadata,
          Column("id", Integer, primary_key=True), Column("kind", String(32), nullable=False),
          Column("workload", JSON, nullable=False), Column("seed", Integer, nullable=False),
          Column("options", JSON, nullable=False), Column("resources", JSON, nullable=True),
          Column("status", String(16), nullable=False), Column("result", JSON, nullable=True),
          Column("error", Text, nullable=True), Column("created_at", DateTime(timezone=True), nullable=False))
    Table("phasetune_tokens", metadata,
          Column("id", Integer, primary_key=True), Column("name", String(100), nullable=False),
          Column("scope", String(16), nullable=False), Column("digest", String(64), nullable=False, unique=True),
          Column("created_at", DateTime(timezone=True), nullable=False),
          Column("revoked_at", DateTime(timezone=True), nullable=True))
    metadata.create_all(engine)


LEGACY: dict[str, Callable[[Engine], None]] = {
    "created-today": _created_today,
    "created-2026-12-02-then-altered": _created_before_status_then_altered,
    "created-2026-12-02": _created_before_status,
}


def _head() -> str:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _revision_and_drift(engine: Engine) -> tuple[str | None, list[object]]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE,
                                                               "include_object": is_ours})
        return context.get_current_revision(), compare_metadata(context, Base.metadata)


@pytest.mark.parametrize("legacy", list(LEGACY))
def test_a_database_from_before_alembic_upgrades_in_place(storage_url: str, legacy: str) -> None:
    optuna_study = optuna.create_study(study_name="kept", storage=open_storage(storage_url))
    optuna_study.set_user_attr("spec", {"name": "kept"})
    engine = make_engine(storage_url)
    try:
        LEGACY[legacy](engine)
        probe = {"kind": "lr_range", "workload": {"name": "quadratic"}, "seed": 3, "options": {"steps": 5},
                 "result": {"lr_crit": 0.5}, "created_at": CREATED}
        token = {"name": "ci", "scope": "write", "digest": "ab" * 32, "created_at": CREATED}
        legacy_tables = MetaData()
        legacy_tables.reflect(engine, only=["phasetune_probes", "phasetune_tokens"])
        probes = legacy_tables.tables["phasetune_probes"]
        written = {**probe, "status": "done"} if "status" in probes.c else probe  # as the code of the time wrote
        with engine.begin() as connection:
            connection.execute(insert(probes).values(**written))
            connection.execute(insert(legacy_tables.tables["phasetune_tokens"]).values(**token))
        assert not inspect(engine).has_table(VERSION_TABLE)

        migrate(storage_url)
        migrate(storage_url)  # idempotent

        assert _revision_and_drift(engine) == (_head(), [])
        with Session(engine) as session:
            stored = session.scalars(select(ProbeRecord)).one()
            assert (stored.kind, stored.workload, stored.seed, stored.options, stored.result) == (
                probe["kind"], probe["workload"], probe["seed"], probe["options"], probe["result"])
            assert stored.status == "done" and stored.error is None
            kept = session.scalars(select(TokenRecord)).one()
            assert kept.summary() == {"id": kept.id, "name": "ci", "scope": "write", "created_at": CREATED,
                                      "revoked": False}
            assert kept.digest == token["digest"]
            # What today's code writes fits: a running probe has no result yet.
            session.add(ProbeRecord(kind="lr_range", workload={}, seed=0, options={}, status="running"))
            session.commit()
        assert optuna.load_study(study_name="kept", storage=storage_url).user_attrs == {"spec": {"name": "kept"}}
    finally:
        engine.dispose()


def test_a_new_database_is_made_by_the_revisions(storage_url: str) -> None:
    migrate(storage_url)
    engine = make_engine(storage_url)
    try:
        assert _revision_and_drift(engine) == (_head(), [])
        assert "alembic_version" in inspect(engine).get_table_names()  # Optuna's, untouched beside ours
    finally:
        engine.dispose()
