"""Pause control from outside: the control table and the signals that pause and resume a run.

**Runbook.** The control table (``-x pause-table``, default ``context_encryption_pause``) is
created by the first live run; any session can use it::

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

A pause is not bounded by ``-x hold-timeout``: it lasts until released. The hold itself is
the throttle's (:mod:`.throttle`); :class:`PauseControl` only says whether a table is paused.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Final

import sqlalchemy as sa

from context_encryption.health import PAUSE, Reading

log = logging.getLogger("context_encryption")

#: Scope of a pause row that pauses every table.
ALL_TABLES: Final = "*"
#: The longest operator reason shown in a log line.
_REASON_CHARS: Final = 200


# -- the control table ----------------------------------------------------------------------


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


# -- one table's run -------------------------------------------------------------------------


class PauseControl:
    """Whether one table's run is paused from outside: by a signal to this process, or by a
    row of the control table ``name`` (None: no control table) naming the table or ``*``.

    ``dry_run``: the control table is read when it exists but never created.
    """

    def __init__(
        self, engine: sa.Engine, table: str, name: str | None, *, dry_run: bool = False
    ) -> None:
        self.engine = engine
        self.table = table
        self.name = name
        self.dry_run = dry_run
        self._pause: sa.Table | None = None

    def start(self, conn: sa.Connection) -> str | None:
        """Set up the control table (:meth:`_setup_table`) and the signal handlers (the pid
        is logged); why the control table is off, if it is."""
        off = self._setup_table(conn)
        if install_signal_handlers():
            log.info(
                "%s: kill -USR1 %d pauses this run, kill -USR2 %d resumes it",
                self.table,
                os.getpid(),
                os.getpid(),
            )
        return off

    def _setup_table(self, conn: sa.Connection) -> str | None:
        """Create (a live run) and find the pause table; why pause control is off, if it is."""
        name = self.name
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

    def readings(self, conn: sa.Connection) -> list[Reading]:
        """The pauses of this table's run (red :data:`~.health.PAUSE` readings): the signal's,
        then the control table's rows."""
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


def _error_name(exc: sa.exc.DBAPIError) -> str:
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None)
    return type(orig).__name__ + (f", SQLSTATE {code}" if code else "")
