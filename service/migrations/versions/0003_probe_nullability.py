"""Probe columns as nullable as the model says: ``result`` may be empty (until the probe is done), ``status`` may
not.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

What ``ALTER TABLE ... ADD COLUMN`` of 2026-12-02 left behind in a database created before then: it could not
change an existing column, so ``result`` stayed ``NOT NULL`` and refused every running probe, and it added
``status`` nullable. (A no-op on a database created since, or through 0002.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("phasetune_probes") as batch:
        batch.alter_column("result", existing_type=sa.JSON(), nullable=True)
        batch.alter_column("status", existing_type=sa.String(16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("phasetune_probes") as batch:
        batch.alter_column("result", existing_type=sa.JSON(), nullable=False)
