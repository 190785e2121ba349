"""Probes run off the request thread: their resources, status and error.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

The columns the hand-written ``ALTER TABLE`` of 2026-12-02 added (this revision replaces it): nullable, or with a
server default, so the probes already stored read as done.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("phasetune_probes") as batch:
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="done"))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("phasetune_probes") as batch:
        batch.drop_column("error")
        batch.drop_column("status")
        batch.drop_column("resources")
