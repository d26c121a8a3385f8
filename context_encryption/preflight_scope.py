"""What ``context-encryption preflight`` checks: the tables the alembic command would touch.

From the revision stamped in the chain's version table, ``alembic upgrade head`` touches the
tables whose revision is not applied, and ``alembic downgrade base`` the applied ones (in the
order Alembic rolls them back); ``--tables`` narrows them further. When the command would touch
nothing, :attr:`PreflightScope.nothing_to_do` says why. When the revision cannot be read (no
database, or it does not answer) every selected table is checked and the database check says
what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from context_encryption.alembic_runtime import applied_tables, current_revision
from context_encryption.catalog import load_catalog
from context_encryption.settings import Settings


@dataclass(frozen=True)
class PreflightScope:
    """The tables a preflight checks: those the alembic command would touch from the current
    revision, narrowed by ``--tables``."""

    direction: str
    #: False when the revision could not be read (no database, or it does not answer): then
    #: every selected table is checked and the database check says what is wrong.
    known: bool
    revision: str | None  # None: base
    touched: tuple[str, ...]  # what `alembic upgrade head` / `downgrade base` would touch
    tables: tuple[str, ...]  # what is checked

    @property
    def command(self) -> str:
        return "alembic upgrade head" if self.direction == "upgrade" else "alembic downgrade base"

    @property
    def nothing_to_do(self) -> str | None:
        """Why there is nothing to check, or None."""
        if not self.known:
            return None
        rev = self.revision or "base"
        if not self.touched and self.direction == "downgrade":
            return (
                f"nothing to roll back: no revision is applied ({rev}); "
                f"`{self.command}` would touch no table"
            )
        if not self.touched:
            return (
                f"nothing to migrate: revision {rev} is the head, every table is in the new "
                f"scheme; `{self.command}` would touch no table"
            )
        if not self.tables:
            return (
                f"nothing to check: from revision {rev}, `{self.command}` would touch "
                f"{', '.join(self.touched)}, and --tables names none of them"
            )
        return None

    def describe(self) -> str:
        if not self.known:
            return (
                "current revision unknown (the database could not be read); checking "
                f"{', '.join(self.tables)}"
            )
        note = self.nothing_to_do
        if note is not None:
            return note
        verb = "migrate" if self.direction == "upgrade" else "roll back"
        text = (
            f"revision {self.revision or 'base'}: `{self.command}` would {verb} "
            f"{', '.join(self.touched)}"
        )
        if self.tables != self.touched:
            text += f"; checking {', '.join(self.tables)} (--tables)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision if self.known else None,
            "revision_known": self.known,
            "would_touch": list(self.touched) if self.known else None,
            "nothing_to_do": self.nothing_to_do,
        }


def preflight_scope(settings: Settings, direction: str, engine: sa.Engine | None) -> PreflightScope:
    """What ``alembic upgrade head`` (or ``downgrade base``) would touch from the current
    revision, read from the chain's version table, narrowed by ``--tables``."""
    chain = load_catalog().tables
    selected = settings.tables or chain
    try:
        if engine is None:
            raise LookupError
        with engine.connect() as conn:
            revision = current_revision(conn)
    except (LookupError, sa.exc.SQLAlchemyError):
        return PreflightScope(direction, False, None, chain, tuple(selected))
    applied = applied_tables(revision)
    touched = tuple(t for t in chain if (t in applied) == (direction == "downgrade"))
    if direction == "downgrade":
        touched = touched[::-1]  # the order alembic rolls them back in
    return PreflightScope(
        direction, True, revision, touched, tuple(t for t in touched if t in selected)
    )
