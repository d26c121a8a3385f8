"""What a revision says about its table: the frozen snapshot, its encrypted columns, a direction.

The small, stable vocabulary the revisions in ``migrations/versions`` import (with
:func:`app_models.migration.run_revision`). The tool reads every table's columns and companions
from these specs, through the revisions: they are the one source of truth for what a revision
touches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sqlalchemy as sa


class Direction(enum.Enum):
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    #: ``context-encryption rewrap``: new scheme to new scheme, onto one key version
    REWRAP = "rewrap"

    @property
    def opposite(self) -> Direction:
        """The direction that undoes this one (a rewrap has none: itself)."""
        if self is Direction.REWRAP:
            return self
        return Direction.DOWNGRADE if self is Direction.UPGRADE else Direction.UPGRADE


@dataclass(frozen=True)
class ColumnSpec:
    """An encrypted column of a revision's frozen snapshot, with its optional HMAC companion."""

    name: str
    hmac: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """What a revision migrates: its frozen ``sa.table`` snapshot and the encrypted columns."""

    table: sa.TableClause
    columns: tuple[ColumnSpec, ...]
    pk: str = "id"

    @property
    def name(self) -> str:
        return str(self.table.name)

    def __post_init__(self) -> None:
        names = {c.name for c in self.table.columns}
        missing = [self.pk] if self.pk not in names else []
        for col in self.columns:
            missing += [n for n in (col.name, col.hmac) if n is not None and n not in names]
        if missing:
            raise ValueError(f"snapshot of {self.table.name} lacks column(s) {missing}")
