"""A sweep can be simulated (``alorectl bench scale``): its rows never mix with real results.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite takes a NOT NULL column with a constant default): no table copy, and the
    # DDL renders offline (``--sql``) too.
    op.add_column("sweep", sa.Column("simulated", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sweep") as batch:
        batch.drop_column("simulated")
