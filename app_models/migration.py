"""What a revision's ``upgrade()`` and ``downgrade()`` call: migrate one table in one direction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

from app_models.specs import Direction, TableSpec

if TYPE_CHECKING:
    from context_encryption.engine import TableSummary


def run_revision(spec: TableSpec, revision: str, direction: Direction) -> TableSummary:
    """Migrate the revision's table in ``direction`` on the revision's own connection."""
    from context_encryption.alembic_runtime import current_runtime  # noqa: PLC0415
    from context_encryption.engine import migrate_table  # noqa: PLC0415

    return migrate_table(op.get_bind(), spec, revision, direction, current_runtime())
