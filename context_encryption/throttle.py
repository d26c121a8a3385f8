"""Gentle on a live primary: hold between batches while the database is unwell, pause and resume
from outside, and a batch size that follows a target time.

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
control and the batch-time rest. While one is red it holds: it first calls ``drain`` (the
engine waits for its batches in flight, so they commit and release their row locks), then
waits with nothing open but its own autocommit connection: no transaction, no lock. It says
what it waits for, with the figure and the threshold, on the progress line and in the log
(again every ``log_every_s``), checks again every ``poll_s`` and returns when everything is
green. Every hold is recorded for the report (:meth:`Throttle.holds`): when it began, why, the
worst figure of each reason, how long, and how it ended.

A health hold longer than ``-x hold-timeout`` raises :class:`HoldTimeout`: the run stops like
any stop (committed batches stay, the checkpoint is where the last one left it) and the same
command resumes it. A pause asked for by an operator is not bounded: it lasts until released.

**Pause and resume from outside (runbook).** The control table (``-x pause-table``, default
``context_encryption_pause``) is created by the first live run; any session can use it::

    -- pause every run on this database (or give one table's name instead of '*')
    INSERT INTO context_encryption_pause (scope, reason) VALUES ('*', 'incident 4711');
    -- resume
    DELETE FROM context_encryption_pause WHERE scope = '*';

A run holds before its next batch (the batches in flight finish and commit first), logs
``holding: paused from outside ...`` and goes on within ``poll_s`` (1 s) of the ``DELETE``.
While paused it holds no transaction and no lock, so stopping it then (Ctrl-C, ``kill``) loses
nothing: the same command resumes it. A role other than the migration's needs
``GRANT SELECT, INSERT, DELETE ON context_encryption_pause TO ...``.

On the machine that runs it, signals do the same for that process: ``kill -USR1 <pid>``
pauses it, ``kill -USR2 <pid>`` resumes it (the pid is logged when a table starts; the
handlers are installed when the first table starts on the main thread, as under ``alembic``,
and stay for the rest of the process).

**Batch size.** With ``-x batch-target`` the size follows the target time
(:class:`BatchSizer`: a moving average of recent batches' time per row, +10 % below 90 % of
the target, -20 % above 110 %, within ``min-batch-size`` and ``max-batch-size``), as GitLab's
batched background migrations do. Without it ``-x batch-size`` is fixed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Protocol

import sqlalchemy as sa

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
from context_encryption.throttle_config import ThrottleConfig

log = logging.getLogger("context_encryption")

#: Scope of a pause row that pauses every table.
ALL_TABLES: Final = "*"
#: The longest operator reason shown in a log line.
_REASON_CHARS: Final = 200


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


# -- batch size -----------------------------------------------------------------------------


class BatchSizer:
    """The batch size of the target mode (fixed when ``target_s`` is None).

    After each batch: the moving average of the last ``window`` batches' seconds per row,
    times the current size, predicts the next batch's time. Below ``LOW`` of the target the
    size grows by ``GROW`` (at least one row); above ``HIGH`` it shrinks by ``SHRINK``; it
    always stays within ``[smallest, largest]``.
    """

    GROW: Final = 1.10
    SHRINK: Final = 0.80
    LOW: Final = 0.90
    HIGH: Final = 1.10

    def __init__(
        self,
        start: int,
        target_s: float | None,
        smallest: int,
        largest: int,
        *,
        window: int = 5,
    ) -> None:
        self.target_s = target_s
        self.smallest = smallest
        self.largest = largest
        self.size = start if target_s is None else min(max(start, smallest), largest)
        self._per_row: deque[float] = deque(maxlen=window)
        self._first = self.size
        self._sizes = [self.size, self.size]  # smallest and largest chosen
        self._batches = 0
        self._last: deque[tuple[int, float]] = deque(maxlen=10)

    def observe(self, rows: int, seconds: float) -> int:
        """Record a batch of ``rows`` that took ``seconds``; the size of the next batch."""
        if rows <= 0 or seconds < 0:
            return self.size
        self._batches += 1
        self._last.append((rows, seconds))
        if self.target_s is None:
            return self.size
        self._per_row.append(seconds / rows)
        predicted = sum(self._per_row) / len(self._per_row) * self.size
        if predicted > self.target_s * self.HIGH:
            self.size = max(self.smallest, math.floor(self.size * self.SHRINK))
        elif predicted < self.target_s * self.LOW:
            self.size = min(self.largest, max(self.size + 1, math.ceil(self.size * self.GROW)))
        self._sizes = [min(self._sizes[0], self.size), max(self._sizes[1], self.size)]
        return self.size

    def stats(self) -> dict[str, object]:
        """How the sizes went, for the report: the mode, the first, last, smallest and largest
        size, the batches seen, and the mean rows and seconds of the last ten."""
        n = len(self._last)
        return {
            "mode": "fixed" if self.target_s is None else "target",
            "target_seconds": self.target_s,
            "first": self._first,
            "last": self.size,
            "smallest": self._sizes[0],
            "largest": self._sizes[1],
            "batches": self._batches,
            "last10_mean_rows": round(sum(r for r, _ in self._last) / n, 1) if n else None,
            "last10_mean_seconds": round(sum(t for _, t in self._last) / n, 4) if n else None,
        }


# -- pause control --------------------------------------------------------------------------


def pause_table(name: str) -> sa.Table:
    """The control table: one row per pause; ``scope`` is a table's name or ``*`` (all)."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("scope", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
    )


def pause_table_ddl(engine: sa.Engine, name: str) -> str:
    """The ``CREATE TABLE`` of the control table, for messages and the runbook."""
    ddl = str(sa.schema.CreateTable(pause_table(name)).compile(dialect=engine.dialect))
    return " ".join(ddl.split())


def preflight_messages(engine: sa.Engine, config: ThrottleConfig) -> list[str]:
    """What the throttle will not watch on this database, and why (read only, for the
    preflight): the checks this role cannot run (:func:`~.health.probe`)."""
    with engine.connect() as conn:
        messages = list(probe(conn, config).messages)
        conn.rollback()
    return messages


def ensure_pause_table(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        pause_table(name).create(conn, checkfirst=True)


def request_pause(
    engine: sa.Engine, scope: str = ALL_TABLES, reason: str | None = None, *, table: str
) -> None:
    """Pause the runs of ``scope`` (a table's name, or ``*``) from outside; idempotent."""
    ensure_pause_table(engine, table)
    t = pause_table(table)
    with engine.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.scope == scope))
        conn.execute(sa.insert(t).values(scope=scope, reason=reason))


def release_pause(engine: sa.Engine, scope: str = ALL_TABLES, *, table: str) -> None:
    """Resume the runs paused under ``scope``."""
    t = pause_table(table)
    with engine.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.scope == scope))


# -- pause by signal -------------------------------------------------------------------------

#: ``kill -USR1 <pid>`` pauses every table of the process's run, ``kill -USR2 <pid>`` resumes.
PAUSE_SIGNAL: Final = signal.SIGUSR1
RESUME_SIGNAL: Final = signal.SIGUSR2
_signal_paused = threading.Event()


def _on_signal(signum: int, _frame: object) -> None:
    if signum == PAUSE_SIGNAL:
        _signal_paused.set()
    else:
        _signal_paused.clear()


def install_signal_handlers() -> bool:
    """SIGUSR1 pauses and SIGUSR2 resumes the runs of this process, from the first table on.

    Installed once, on the main thread (signals only reach it there), and kept for the rest of
    the process: between two tables a SIGUSR1 must pause the next one, not kill the process
    (the default action). False off the main thread (no handler, nothing changes).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in (PAUSE_SIGNAL, RESUME_SIGNAL):
        if signal.getsignal(sig) is not _on_signal:
            signal.signal(sig, _on_signal)
    return True


# -- holds ----------------------------------------------------------------------------------


@dataclass
class _Hold:
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

    def as_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "outcome": self.outcome,
            "reasons": sorted({k.split(" ", 1)[0] for k in self.worst}),
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
        self._conn: sa.Connection | None = None
        self._pause: sa.Table | None = None
        self._rest_until: float | None = None
        self._rest: Reading | None = None
        self._holds: list[_Hold] = []
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
        pause = self._setup_pause(conn)
        if pause is not None:
            messages.append(pause)
        if install_signal_handlers():
            log.info(
                "%s: kill -USR1 %d pauses this run, kill -USR2 %d resumes it",
                self.table,
                os.getpid(),
                os.getpid(),
            )
        for m in messages:
            log.warning("%s: %s", self.table, m)
        self.messages = messages
        return messages

    def _setup_pause(self, conn: sa.Connection) -> str | None:
        """Create (a live run) and find the pause table; why pause control is off, if it is."""
        name = self.config.pause_table
        if name is None:
            return None
        if not self.dry_run:
            try:
                ensure_pause_table(self.engine, name)
            except sa.exc.DBAPIError as exc:
                return (
                    f"pause control off: the table {name} could not be created "
                    f"({_error_name(exc)}); create it as its owner "
                    f"({pause_table_ddl(self.engine, name)}) or use -x pause-table=off"
                )
        if sa.inspect(conn).has_table(name):
            self._pause = pause_table(name)
            return None
        return (
            f"pause control off for this dry run: the table {name} does not exist "
            "(a live run creates it)"
        )

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
        red += self._paused(conn)
        if self._rest_until is not None and self._rest is not None:
            if self.clock() < self._rest_until:
                red.append(self._rest)
            else:
                self._rest_until = self._rest = None
        return red

    def _paused(self, conn: sa.Connection) -> list[Reading]:
        red = []
        if _signal_paused.is_set():
            red.append(
                Reading(
                    PAUSE,
                    "signal",
                    1,
                    0,
                    "pause-table",
                    f"paused from outside (kill -USR1); kill -USR2 {os.getpid()} to resume",
                )
            )
        return red + self._pause_rows(conn)

    def _pause_rows(self, conn: sa.Connection) -> list[Reading]:
        t = self._pause
        if t is None:
            return []
        try:
            rows = conn.execute(
                sa.select(t.c.scope, t.c.reason)
                .where(t.c.scope.in_([ALL_TABLES, self.table]))
                .order_by(t.c.scope)
            ).all()
        except sa.exc.ProgrammingError:  # the control table was dropped during the run
            log.warning("%s: the pause table %s is gone; pause control off", self.table, t.name)
            self._pause = None
            return []
        return [
            Reading(
                PAUSE,
                scope,
                1,
                0,
                "pause-table",
                f"paused from outside (row scope={scope!r} in {t.name}"
                + (f", reason {reason[:_REASON_CHARS]!r}" if reason else "")
                + "); DELETE the row to resume",
            )
            for scope, reason in rows
        ]

    def _hold(self, red: list[Reading]) -> None:
        now = self.clock()
        hold = _Hold(
            self.table,
            dt.datetime.now(dt.UTC),
            now,
            [_describe(r) for r in red],
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
                    text = "; ".join(_describe(r) for r in red)
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
            ", ".join(sorted({k.split(" ", 1)[0] for k in hold.worst})),
        )

    def _wait(self, hold: _Hold) -> float:
        wait = self.poll_s
        timeout = self.config.hold_timeout_s
        if timeout is not None:
            wait = min(wait, max(timeout - hold.health_seconds, 0.0) + 0.001)
        if self._rest_until is not None:
            wait = min(wait, max(self._rest_until - self.clock(), 0.0) + 0.001)
        return wait

    def _check_timeout(self, hold: _Hold, red: list[Reading]) -> None:
        timeout = self.config.hold_timeout_s
        if timeout is None or hold.health_seconds < timeout:
            return
        hold.outcome = "timeout"
        reasons = "; ".join(_describe(r) for r in red if r.check != PAUSE)
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


def _error_name(exc: sa.exc.DBAPIError) -> str:
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None)
    return type(orig).__name__ + (f", SQLSTATE {code}" if code else "")


def _describe(r: Reading) -> str:
    return r.detail if r.check == PAUSE else r.describe()
