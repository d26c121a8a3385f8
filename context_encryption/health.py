"""Database health checks between batches: replica lag, replication slots, autovacuum.

Each check reads PostgreSQL's own statistics views on the primary, with the throttle's own
autocommit connection (no transaction stays open, no lock is taken):

* **replica lag**, per connected physical standby (``pg_stat_replication``, states
  ``streaming`` and ``catchup``; logical walsenders and base backups are not standbys):

  - bytes: ``pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)``, the WAL the standby has not
    replayed yet (``-x max-replica-lag-bytes``);
  - seconds (``-x max-replica-lag``): PostgreSQL's ``replay_lag``, or how long the standby has
    kept reporting the same replay position while behind, whichever is larger. ``replay_lag``
    alone stays at its last measurement while replay is stuck (it is only measured when replay
    moves); the second figure is taken from the standby's own reply times (``reply_time``), so
    the time a reply spends waiting for ``wal_receiver_status_interval`` never counts as lag.

* **physical replication slots** (``pg_replication_slots``, not temporary): the WAL a slot
  retains, ``pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)``, against the same
  ``-x max-replica-lag-bytes``: an inactive slot (a standby that is down) keeps every WAL byte
  this run writes on the primary's disk.

* **autovacuum on the table in scope** (``pg_stat_progress_vacuum`` of an autovacuum worker on
  the table or its TOAST table; ``-x hold-on-autovacuum``), as GitLab's batched background
  migrations do: our updates leave dead rows, and an autovacuum that is cleaning them (or
  freezing the table to prevent wraparound) should not be crowded.

A primary without standbys or slots has nothing to read: every check is green. A role that
cannot read the figures (they need superuser, ``pg_monitor`` or ``pg_read_all_stats``: without
them PostgreSQL shows the rows with the positions blanked) gets the check off and a message
saying so and how to grant it (:func:`probe`); nothing crashes. A database that is not
PostgreSQL (the SQLite demo) has no standbys, slots or autovacuum: every check is off, silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import sqlalchemy as sa

from context_encryption.throttle_config import ThrottleConfig

log = logging.getLogger("context_encryption")

#: The checks, as named in logs and reports.
REPLICA_LAG_BYTES: Final = "replica-lag-bytes"
REPLICA_LAG: Final = "replica-lag"
SLOT_LAG_BYTES: Final = "slot-lag-bytes"
AUTOVACUUM: Final = "autovacuum"
PAUSE: Final = "pause"
BATCH_TIME: Final = "batch-time"


def human_bytes(n: float) -> str:
    """``12.3 MB``: 1024-based, as PostgreSQL's ``pg_size_pretty`` and the ``-x`` units."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    minutes, sec = divmod(int(s), 60)
    return f"{minutes}min {sec}s"


@dataclass(frozen=True)
class Reading:
    """A red check: what it measured, on what, against which limit (``-x`` option)."""

    check: str
    subject: str
    value: float
    limit: float
    option: str
    detail: str = ""

    def describe(self) -> str:
        """One line for logs and the progress line: the figure and the threshold."""
        limit = f"-x {self.option}"
        if self.check == REPLICA_LAG_BYTES:
            return (
                f"standby {self.subject} is {human_bytes(self.value)} behind in replay "
                f"(limit {limit}={human_bytes(self.limit)})"
            )
        if self.check == REPLICA_LAG:
            return (
                f"standby {self.subject} is {human_seconds(self.value)} behind in replay "
                f"(limit {limit}={human_seconds(self.limit)})"
            )
        if self.check == SLOT_LAG_BYTES:
            return (
                f"replication slot {self.subject}{self.detail} retains "
                f"{human_bytes(self.value)} of WAL (limit {limit}={human_bytes(self.limit)})"
            )
        if self.check == AUTOVACUUM:
            return f"autovacuum is working on {self.subject} ({self.detail}; {limit}=true)"
        if self.check == BATCH_TIME:
            return (
                f"the last batch's transaction took {human_seconds(self.value)} (limit "
                f"{limit}={human_seconds(self.limit)}); resting as long"
            )
        return f"{self.check} {self.subject}: {self.detail}"

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "subject": self.subject,
            "value": self.value,
            "limit": self.limit,
            "option": self.option,
        }


class StandbyRow(NamedTuple):
    """One connected standby as ``pg_stat_replication`` shows it (None: blanked or unknown)."""

    pid: int
    name: str
    behind_bytes: int | None
    replay_lsn: str | None
    replay_lag_s: float | None
    reply_epoch: float | None

    @property
    def label(self) -> str:
        return f"{self.name!r} (pid {self.pid})" if self.name else f"pid {self.pid}"


class SlotRow(NamedTuple):
    """One physical replication slot and the WAL it retains."""

    name: str
    active: bool
    retained_bytes: int | None


class VacuumRow(NamedTuple):
    phase: str
    wraparound: bool


class StallTracker:
    """How long each standby has kept reporting the same replay position while behind.

    Measured between the standby's own reply times: a reply at ``t1`` and a later one at
    ``t2`` with the same ``replay_lsn`` while WAL is waiting mean replay did not move for at
    least ``t2 - t1``. A standby that is behind only because its next reply is not due yet
    (``wal_receiver_status_interval``) sends no new reply meanwhile, so it is never counted.
    """

    def __init__(self) -> None:
        self._since: dict[int, tuple[str, float]] = {}

    def observe(self, rows: Sequence[StandbyRow]) -> dict[int, float]:
        """Seconds each standby (by pid) has been stuck; forgets standbys that caught up."""
        since: dict[int, tuple[str, float]] = {}
        stalled: dict[int, float] = {}
        for r in rows:
            if r.replay_lsn is None or r.reply_epoch is None or not r.behind_bytes:
                continue
            seen = self._since.get(r.pid)
            first = seen[1] if seen is not None and seen[0] == r.replay_lsn else r.reply_epoch
            since[r.pid] = (r.replay_lsn, first)
            stalled[r.pid] = max(0.0, r.reply_epoch - first)
        self._since = since
        return stalled


def standby_readings(
    rows: Sequence[StandbyRow], stalled: dict[int, float], config: ThrottleConfig
) -> list[Reading]:
    """The standbys over a limit (bytes, then seconds)."""
    red: list[Reading] = []
    for r in rows:
        limit_b = config.max_replica_lag_bytes
        if limit_b is not None and r.behind_bytes is not None and r.behind_bytes > limit_b:
            red.append(
                Reading(
                    REPLICA_LAG_BYTES, r.label, r.behind_bytes, limit_b, "max-replica-lag-bytes"
                )
            )
        limit_s = config.max_replica_lag_s
        seconds = max(r.replay_lag_s or 0.0, stalled.get(r.pid, 0.0))
        if limit_s is not None and seconds > limit_s:
            red.append(Reading(REPLICA_LAG, r.label, seconds, limit_s, "max-replica-lag"))
    return red


def slot_readings(
    slots: Sequence[SlotRow], config: ThrottleConfig, *, inactive_only: bool = False
) -> list[Reading]:
    """The slots retaining more WAL than the limit. ``inactive_only``: the standby check is on,
    and it already covers the slots of connected standbys (their replay is behind their
    slot's flush position, never ahead)."""
    limit = config.max_replica_lag_bytes
    if limit is None:
        return []
    return [
        Reading(
            SLOT_LAG_BYTES,
            repr(s.name),
            s.retained_bytes,
            limit,
            "max-replica-lag-bytes",
            "" if s.active else " (inactive: its standby is not connected)",
        )
        for s in slots
        if s.retained_bytes is not None
        and s.retained_bytes > limit
        and not (inactive_only and s.active)
    ]


def vacuum_readings(rows: Sequence[VacuumRow], table: str) -> list[Reading]:
    return [
        Reading(
            AUTOVACUUM,
            table,
            1,
            0,
            "hold-on-autovacuum",
            f"phase {r.phase}" + (", to prevent wraparound" if r.wraparound else ""),
        )
        for r in rows[:1]
    ]


# -- reading the views ---------------------------------------------------------------------

_PROBE = sa.text(
    "SELECT pg_is_in_recovery(), current_user::text, "
    "coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false), "
    "pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), "
    "has_table_privilege('pg_catalog.pg_stat_replication', 'SELECT'), "
    "has_table_privilege('pg_catalog.pg_replication_slots', 'SELECT'), "
    "has_table_privilege('pg_catalog.pg_stat_progress_vacuum', 'SELECT') "
    "AND has_table_privilege('pg_catalog.pg_stat_activity', 'SELECT'), "
    "has_function_privilege('pg_catalog.pg_current_wal_lsn()', 'EXECUTE')"
)

_STANDBYS = sa.text(
    "SELECT r.pid, coalesce(r.application_name, ''), "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint, r.replay_lsn::text, "
    "extract(epoch FROM r.replay_lag)::float8, extract(epoch FROM r.reply_time)::float8 "
    "FROM pg_stat_replication r "
    "WHERE r.state IN ('streaming', 'catchup') AND NOT EXISTS ("
    "SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid "
    "AND s.slot_type = 'logical')"
)

_SLOTS = sa.text(
    "SELECT slot_name::text, active, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
    "FROM pg_replication_slots "
    "WHERE slot_type = 'physical' AND NOT temporary AND restart_lsn IS NOT NULL"
)

_VACUUM = sa.text(
    "SELECT p.phase, coalesce(a.query, '') ILIKE '%to prevent wraparound%' "
    "FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a ON a.pid = p.pid "
    "WHERE a.backend_type = 'autovacuum worker' AND p.relid IN ("
    "to_regclass(:t), (SELECT c.reltoastrelid FROM pg_class c WHERE c.oid = to_regclass(:t)))"
)


def read_standbys(conn: sa.Connection) -> list[StandbyRow]:
    return [
        StandbyRow(int(pid), str(name), lag, lsn, replay_lag, reply)
        for pid, name, lag, lsn, replay_lag, reply in conn.execute(_STANDBYS)
    ]


def read_slots(conn: sa.Connection) -> list[SlotRow]:
    return [SlotRow(str(n), bool(a), r) for n, a, r in conn.execute(_SLOTS)]


def read_vacuum(conn: sa.Connection, table: str) -> list[VacuumRow]:
    return [VacuumRow(str(p), bool(w)) for p, w in conn.execute(_VACUUM, {"t": table})]


@dataclass(frozen=True)
class Capabilities:
    """Which checks run, and why the others do not (messages for the preflight and the log)."""

    standbys: bool = False
    slots: bool = False
    autovacuum: bool = False
    messages: tuple[str, ...] = ()


_GRANT = "GRANT pg_monitor TO {user}"


def probe(conn: sa.Connection, config: ThrottleConfig) -> Capabilities:
    """Which of the configured checks this role can run on this database.

    Never raises for a missing right: such a check is off, with a message naming the right
    and the statement that grants it. A database error while probing turns every check off.
    """
    want_lag = config.max_replica_lag_s is not None or config.max_replica_lag_bytes is not None
    want_slots = config.max_replica_lag_bytes is not None
    want_vacuum = config.hold_on_autovacuum
    if not (want_lag or want_vacuum):
        return Capabilities()
    if conn.dialect.name != "postgresql":
        return Capabilities()  # no standby, slot or autovacuum to watch (the SQLite demo)
    try:
        row = conn.execute(_PROBE).one()
    except sa.exc.DBAPIError as exc:
        name = type(getattr(exc, "orig", None) or exc).__name__
        return Capabilities(
            messages=(
                f"health checks off: the database refused the check of its statistics views "
                f"({name}); replica lag and autovacuum are not watched during this run",
            )
        )
    in_recovery, user, superuser, read_all_stats, rep_ok, slots_ok, vac_ok, lsn_ok = row
    if in_recovery:
        return Capabilities(
            messages=(
                "health checks off: the database is a standby (in recovery); the run needs "
                "the primary",
            )
        )
    stats = bool(superuser or read_all_stats)
    grant = _GRANT.format(user=user)
    messages: list[str] = []
    standbys = want_lag and stats and bool(rep_ok and lsn_ok)
    if want_lag and not standbys:
        messages.append(
            f"replica lag check off: the role {user} cannot read the standbys' replay "
            "positions in pg_stat_replication (it needs pg_monitor or pg_read_all_stats: "
            f"{grant}); the standbys' lag is not watched during this run"
        )
    slots = want_slots and bool(slots_ok and lsn_ok)
    if want_slots and not slots:
        messages.append(
            f"replication slot check off: the role {user} cannot read pg_replication_slots "
            f"or call pg_current_wal_lsn() ({grant}); WAL kept by slots is not watched"
        )
    autovacuum = want_vacuum and stats and bool(vac_ok)
    if want_vacuum and not autovacuum:
        messages.append(
            f"autovacuum check off: the role {user} cannot see the autovacuum workers' "
            f"progress in pg_stat_progress_vacuum (it needs pg_monitor or pg_read_all_stats: "
            f"{grant}); the run does not hold for autovacuum"
        )
    return Capabilities(standbys, slots, autovacuum, tuple(messages))


@dataclass
class HealthChecks:
    """The health checks of one table's run, with what they remember between batches."""

    config: ThrottleConfig
    table: str
    capabilities: Capabilities
    stall: StallTracker = field(default_factory=StallTracker)

    @property
    def active(self) -> bool:
        c = self.capabilities
        return c.standbys or c.slots or c.autovacuum

    def red(self, conn: sa.Connection) -> list[Reading]:
        """The checks over their limits now (an empty list: all green)."""
        red: list[Reading] = []
        if self.capabilities.standbys:
            rows = read_standbys(conn)
            red += standby_readings(rows, self.stall.observe(rows), self.config)
        if self.capabilities.slots:
            red += slot_readings(
                read_slots(conn), self.config, inactive_only=self.capabilities.standbys
            )
        if self.capabilities.autovacuum:
            red += vacuum_readings(read_vacuum(conn, self.table), self.table)
        return red
