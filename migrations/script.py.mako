"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

What it does, why a re-run is safe, and what downgrade restores: say it here.
Keep a frozen snapshot of the columns it touches (sa.table / sa.column); never import
app_models.tables.
"""

from __future__ import annotations

import sqlalchemy as sa

from app_models.migration import run_revision
from app_models.specs import ColumnSpec, Direction, TableSpec

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

SNAPSHOT = TableSpec(
    table=sa.table("name", sa.column("id", sa.BigInteger)),
    columns=(),
)


def upgrade() -> None:
    run_revision(SNAPSHOT, revision, Direction.UPGRADE)


def downgrade() -> None:
    run_revision(SNAPSHOT, revision, Direction.DOWNGRADE)
