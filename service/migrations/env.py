"""Alembic's entry for phasetune's tables: on the connection ``migrate`` passes in, or (the ``alembic`` command,
for writing revisions) on ``-x url=...``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from phasetune.service.db import VERSION_TABLE, Base, is_ours, make_engine


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                      include_object=is_ours, render_as_batch=True)  # batch: SQLite alters a table by copying it
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("name the database: alembic -x url=<SQLAlchemy URL> ...")
    engine = make_engine(url)
    with engine.begin() as opened:
        _run(opened)
    engine.dispose()
