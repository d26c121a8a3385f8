"""The preflight's report: one :class:`Check` per concern, and the operator's text of the failures.

Every check module adds to a :class:`PreflightReport`; :meth:`PreflightReport.message` turns the
failures, each with its fix, into the one text a :class:`~context_encryption.errors.PreflightError`
carries. The report also knows how the operator spells options (``-x db=...`` for ``alembic``,
``--db=...`` for ``context-encryption``), so every fix text names them the way they were typed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from context_encryption.settings import X_SPELLING, Spelling

log = logging.getLogger("context_encryption")

DirectionName = Literal["upgrade", "downgrade", "rewrap"]

#: A token with less time left than this (and not renewable) fails the preflight.
DEFAULT_MIN_TOKEN_TTL: Final = 15 * 60


@dataclass(frozen=True)
class Check:
    """One preflight check: ``ok``, what was found, and how to fix it when not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


@dataclass
class PreflightReport:
    """What the preflight found. ``versions`` maps ``table.column`` to {version: count}.

    ``spelling`` is how the operator gives options; fix texts name them through :meth:`option`.
    """

    direction: DirectionName
    tables: tuple[str, ...]
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, dict[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    spelling: Spelling = X_SPELLING

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> Check:
        check = Check(name, ok, detail, fix)
        self.checks.append(check)
        if ok:
            log.debug("preflight %s: %s", name, detail)
        return check

    def option(self, name: str, value: str = "...") -> str:
        """An option as the operator types it: ``-x db=...`` or ``--db=...``."""
        return f"{self.spelling(name)}={value}"

    def message(self) -> str:
        """All failures, each with its fix, as one operator-facing text."""
        fails = self.failures
        scope = f" ({self.direction} of {', '.join(self.tables)})" if self.tables else ""
        head = f"preflight failed{scope}: {len(fails)} problem(s); nothing was changed"
        parts = [head]
        for i, c in enumerate(fails, 1):
            text = f"{i}. [{c.name}] {c.detail}"
            if c.fix:
                text += "\n   Fix: " + c.fix.replace("\n", "\n   ")
            parts.append(text)
        return "\n".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "tables": list(self.tables),
            "ok": self.ok,
            "checks": [c.as_dict() for c in self.checks],
            "versions": {
                k: {str(v): n for v, n in sorted(d.items())} for k, d in self.versions.items()
            },
            "warnings": list(self.warnings),
        }
