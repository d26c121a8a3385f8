"""The report of holds: what one hold of a table's run records, while it lasts and for the report.

A hold (:class:`Hold`) records when it began, why (the first red readings, as described on
the progress line and in the log), the worst figure of each reason with its limit, how long it
lasted and how it ended (``holding``, ``resumed``, ``stopped`` or ``timeout``).
:meth:`Hold.as_dict` is its JSON-able entry of the table's report (``throttle.holds``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from context_encryption.health import PAUSE, Reading


def describe(r: Reading) -> str:
    """A red reading as the log and the progress line say it: a pause's own text, or the
    figure against its threshold."""
    return r.detail if r.check == PAUSE else r.describe()


@dataclass
class Hold:
    """One hold while it lasts, and as the report records it."""

    table: str
    started_at: dt.datetime
    started: float
    first: list[str]
    worst: dict[str, float] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    health_seconds: float = 0.0
    outcome: str = "holding"

    def note(self, red: list[Reading]) -> None:
        for r in red:
            key = f"{r.check} {r.subject}"
            self.worst[key] = max(self.worst.get(key, r.value), r.value)
            self.limits[key] = r.limit

    def reasons(self) -> list[str]:
        """The checks that held, sorted (``pause``, ``replica-lag-bytes``...)."""
        return sorted({k.split(" ", 1)[0] for k in self.worst})

    def as_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "outcome": self.outcome,
            "reasons": self.reasons(),
            "first": self.first,
            "worst": [
                {
                    "check": k.split(" ", 1)[0],
                    "subject": k.split(" ", 1)[1],
                    "value": v,
                    "limit": self.limits[k],
                }
                for k, v in self.worst.items()
            ],
        }
