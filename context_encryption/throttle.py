"""The hold loop and the Throttle facade: gentle on a live primary, between a table's batches.

Wiring (the engine's batch loop)::

    throttle = Throttle(config, engine, table, progress, stop=stop_event, batch_size=n)
    throttle.start()                       # probe what can be checked; log why not
    ...
    throttle.before_batch(drain)           # may hold, or raise HoldTimeout (a clean stop)
    size = throttle.batch_size             # rows of the next batch
    ...                                    # read, process and commit the batch
    throttle.after_batch(rows, seconds, transaction_seconds=t)
    ...
    report["holds"] = throttle.holds()
    throttle.close()

**Holding.** :meth:`Throttle.before_batch` runs the health checks (:mod:`.health`), the pause
control (:mod:`.pause_control`: the control table and the signals, with their runbook) and the
batch-time rest. While one is red it holds: it first calls ``drain`` (the engine waits for its
batches in flight, so they commit and release their row locks), then waits with nothing open
but its own autocommit connection: no transaction, no lock. It says what it waits for, with
the figure and the threshold, on the progress line and in the log (again every
``log_every_s``), checks again every ``poll_s`` and returns when everything is green. Every
hold is recorded for the report (:meth:`Throttle.holds`, :mod:`.holds`): when it began, why,
the worst figure of each reason, how long, and how it ended.

A health hold longer than ``-x hold-timeout`` raises :class:`HoldTimeout`: the run stops like
any stop (committed batches stay, the checkpoint is where the last one left it) and the same
command resumes it. A pause asked for by an operator is not bounded: it lasts until released.

**Batch size.** :attr:`Throttle.batch_size` is :class:`~.batch_sizer.BatchSizer`'s: fixed
(``-x batch-size``), or following the target time of ``-x batch-target``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import sqlalchemy as sa

from context_encryption.batch_sizer import BatchSizer
from context_encryption.errors import ContextEncryptionError
from context_encryption.health import (
    BATCH_TIME,
    PAUSE,
    Capabilities,
    HealthChecks,
    Reading,
    human_seconds,
    probe,
)
from context_encryption.holds import Hold, describe
from context_encryption.pause_control import PauseControl
from context_encryption.throttle_config import ThrottleConfig

log = logging.getLogger("context_encryption")


class HoldTimeout(ContextEncryptionError):
    """A health hold lasted longer than ``-x hold-timeout``; the run stopped cleanly.

    Committed batches stay committed and the checkpoint is where the last one left it: running
    the same command again resumes the run. ``hold`` is the hold as the report records it.
    """

    def __init__(self, message: str, hold: dict[str, object]) -> None:
        super().__init__(message)
        self.hold = hold


class HoldDisplay(Protocol):
    """The progress line: shows what the run is holding for (``None``: not holding)."""

    def hold(self, text: str | None) -> None: ...


def preflight_messages(engine: sa.Engine, config: ThrottleConfig) -> list[str]:
    """What the throttle will not watch on this database, and why (read only, for the
    preflight): the checks this role cannot run (:func:`~.health.probe`)."""
    with engine.connect() as conn:
        messages = list(probe(conn, config).messages)
        conn.rollback()
    return messages


class Throttle:
    """Holds a table's run between batches while the database is unwell, and sizes its batches.

    ``engine`` is the run's engine: the throttle opens one connection of its own, in
    autocommit, so it never keeps a transaction open. ``stop`` is the run's stop event: a hold
    ends at once when it is set. ``poll_s`` is how often a hold checks again; ``log_every_s``
    how often a hold that goes on is logged again. ``dry_run``: the pause table is read when
    it exists but never created.
    """

    def __init__(
        self,
        config: ThrottleConfig,
        engine: sa.Engine,
        table: str,
        progress: HoldDisplay | None = None,
        *,
        stop: threading.Event | None = None,
        batch_size: int = 1000,
        dry_run: bool = False,
        poll_s: float = 1.0,
        log_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine = engine
        self.table = table
        self.progress = progress
        self.stop = stop if stop is not None else threading.Event()
        self.dry_run = dry_run
        self.poll_s = poll_s
        self.log_every_s = log_every_s
        self.clock = clock
        self.sizer = BatchSizer(
            batch_size, config.batch_target_s, config.min_batch_size, config.max_batch_size
        )
        self.checks = HealthChecks(config, table, Capabilities())
        self.pause = PauseControl(engine, table, config.pause_table, dry_run=dry_run)
        self._conn: sa.Connection | None = None
        self._rest_until: float | None = None
        self._rest: Reading | None = None
        self._holds: list[Hold] = []
        self._started = False
        #: why checks are off (set by :meth:`start`)
        self.messages: list[str] = []

    # -- life cycle

    def start(self) -> list[str]:
        """Probe what can be checked, set up the pause control; the messages of checks that
        are off (also logged as warnings)."""
        self._started = True
        conn = self._connection()
        self.checks = HealthChecks(self.config, self.table, probe(conn, self.config))
        messages = list(self.checks.capabilities.messages)
        pause = self.pause.start(conn)
        if pause is not None:
            messages.append(pause)
        for m in messages:
            log.warning("%s: %s", self.table, m)
        self.messages = messages
        return messages

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Throttle:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> sa.Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    # -- the batch loop

    @property
    def batch_size(self) -> int:
        """Rows of the next batch."""
        return self.sizer.size

    def after_batch(
        self, rows: int, seconds: float, *, transaction_seconds: float | None = None
    ) -> int:
        """Record a finished batch (``seconds`` from its read to its commit; its write
        transaction took ``transaction_seconds``); the size of the next batch."""
        spent = seconds if transaction_seconds is None else transaction_seconds
        ceiling = self.config.max_batch_time_s
        if ceiling is not None and spent > ceiling:
            self._rest_until = self.clock() + spent
            self._rest = Reading(BATCH_TIME, self.table, spent, ceiling, "max-batch-time")
        return self.sizer.observe(rows, seconds)

    def before_batch(self, drain: Callable[[], None] | None = None) -> None:
        """Return when the next batch may start: at once when everything is green.

        Otherwise hold (see the module's docstring). Raises :class:`HoldTimeout` when a health
        hold outlasts ``-x hold-timeout``; returns early when the run's ``stop`` event is set.
        """
        if self.stop.is_set():
            return
        red = self._red()
        if not red:
            return
        if drain is not None:
            drain()
        self._hold(red)

    def holds(self) -> list[dict[str, object]]:
        """Every hold of this run so far, for the report (JSON-able)."""
        return [h.as_dict() for h in self._holds]

    def report(self) -> dict[str, object]:
        """The throttle's part of a table's report: holds, batch sizes, checks that were off."""
        return {
            "holds": self.holds(),
            "held_seconds": round(sum(h.seconds for h in self._holds), 3),
            "batch_size": self.sizer.stats(),
            "checks_off": list(self.messages),
        }

    # -- internals

    def _red(self) -> list[Reading]:
        conn = self._connection()
        red = self.checks.red(conn) if self.checks.active else []
        red += self.pause.readings(conn)
        if self._rest_until is not None and self._rest is not None:
            if self.clock() < self._rest_until:
                red.append(self._rest)
            else:
                self._rest_until = self._rest = None
        return red

    def _hold(self, red: list[Reading]) -> None:
        now = self.clock()
        hold = Hold(
            self.table,
            dt.datetime.now(dt.UTC),
            now,
            [describe(r) for r in red],
        )
        self._holds.append(hold)
        text = "; ".join(hold.first)
        log.warning("%s: holding: %s", self.table, text)
        self._show(f"holding: {text}")
        last_tick = last_log = now
        try:
            while red:
                hold.note(red)
                now = self.clock()
                if any(r.check != PAUSE for r in red):
                    hold.health_seconds += now - last_tick
                last_tick = now
                hold.seconds = now - hold.started
                self._check_timeout(hold, red)
                if self.stop.wait(self._wait(hold)):
                    hold.outcome = "stopped"
                    return
                red = self._red()
                now = self.clock()
                if red and now - last_log >= self.log_every_s:
                    last_log = now
                    text = "; ".join(describe(r) for r in red)
                    log.warning(
                        "%s: still holding after %s: %s",
                        self.table,
                        human_seconds(now - hold.started),
                        text,
                    )
                    self._show(f"holding: {text}")
            hold.outcome = "resumed"
        finally:
            hold.seconds = self.clock() - hold.started
            self._show(None)
        log.info(
            "%s: resuming after a hold of %s (%s)",
            self.table,
            human_seconds(hold.seconds),
            ", ".join(hold.reasons()),
        )

    def _wait(self, hold: Hold) -> float:
        wait = self.poll_s
        timeout = self.config.hold_timeout_s
        if timeout is not None:
            wait = min(wait, max(timeout - hold.health_seconds, 0.0) + 0.001)
        if self._rest_until is not None:
            wait = min(wait, max(self._rest_until - self.clock(), 0.0) + 0.001)
        return wait

    def _check_timeout(self, hold: Hold, red: list[Reading]) -> None:
        timeout = self.config.hold_timeout_s
        if timeout is None or hold.health_seconds < timeout:
            return
        hold.outcome = "timeout"
        reasons = "; ".join(describe(r) for r in red if r.check != PAUSE)
        raise HoldTimeout(
            f"{self.table}: held for {human_seconds(hold.health_seconds)}, longer than "
            f"-x hold-timeout={human_seconds(timeout)}: {reasons}. The run stopped; committed "
            "batches stay, and running the same command again resumes from the last "
            "checkpoint (raise -x hold-timeout, or 0 to wait for ever)",
            hold.as_dict(),
        )

    def _show(self, text: str | None) -> None:
        if self.progress is not None:
            self.progress.hold(text)
