"""Progress of a table's run: a progress bar on a terminal, periodic log lines otherwise.

The bar (rich) shows rows, rows per second and the time left; it only appears when stderr is a
terminal, so logs of a deployment pipeline stay clean: there a line with the same figures is
logged every few seconds. Neither ever shows a value.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

log = logging.getLogger("context_encryption")


def estimate_rows(conn: sa.Connection, table: str) -> int | None:
    """A cheap row count: PostgreSQL's planner estimate, else an exact count (small tables)."""
    if conn.dialect.name == "postgresql":
        est = conn.execute(
            sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"),
            {"t": table},
        ).scalar()
        if est is not None and est > 0:
            return int(est)
    count = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()
    return None if count is None else int(count)


class Progress:
    """Call :meth:`update` with the rows done so far; use as a context manager."""

    def __init__(
        self, label: str, total: int | None, *, interval: float = 5.0, terminal: bool | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.interval = interval
        self.started = time.monotonic()
        self.last_log = self.started
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.terminal:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, rate="-")
        return self

    def hold(self, text: str | None) -> None:
        """Show on the bar what the run holds for (the throttle); ``None``: it goes on.

        Without a terminal the throttle's own log lines say it (with the figure and threshold).
        """
        if self._bar is not None:
            label = self.label if text is None else f"{self.label} [{text}]"
            self._bar.update(self._task, description=label)

    def update(self, rows: int) -> None:
        now = time.monotonic()
        rate = rows / max(now - self.started, 1e-9)
        if self._bar is not None:
            total = self.total if self.total is None or rows <= self.total else rows
            self._bar.update(self._task, completed=rows, total=total, rate=f"{rate:,.0f}")
            return
        if now - self.last_log >= self.interval:
            self.last_log = now
            if self.total and rows < self.total and rate > 0:
                eta = (self.total - rows) / rate
                log.info(
                    "%s: %d of ~%d rows (%.0f rows/s, about %.0fs left)",
                    self.label,
                    rows,
                    self.total,
                    rate,
                    eta,
                )
            else:
                log.info("%s: %d rows (%.0f rows/s)", self.label, rows, rate)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
