"""The throttle against a real streaming replica (tests/support/replica.py) and real PostgreSQL.

Replay paused on the standby (``pg_wal_replay_pause()``) plus writes on the primary make the
replica lag check red; ``pg_wal_replay_resume()`` makes it green again. A hold is observed
through the throttle's own record (``holds()``), never through a sleep: every wait here polls
with a bound.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from context_encryption.health import (
    REPLICA_LAG,
    REPLICA_LAG_BYTES,
    HealthChecks,
    probe,
    read_slots,
    read_standbys,
    read_vacuum,
)
from context_encryption.pause_control import ALL_TABLES, release_pause, request_pause
from context_encryption.preflight import collect_preflight
from context_encryption.settings import Settings
from context_encryption.throttle import HoldTimeout, Throttle, preflight_messages
from context_encryption.throttle_config import DEFAULT_PAUSE_TABLE, ThrottleConfig
from tests.support.polling import BOUND_S, until
from tests.support.replica import ReplicaDb

MB = 1024**2
#: Checks only the bytes behind, 1 MB.
BYTES = ThrottleConfig(max_replica_lag_s=None, max_replica_lag_bytes=MB, hold_on_autovacuum=False)


@dataclass
class Shown:
    """The progress line, as the throttle sets it."""

    texts: list[str | None] = field(default_factory=list)

    def hold(self, text: str | None) -> None:
        self.texts.append(text)


class Background:
    """``before_batch`` in a thread, as the engine's batch loop calls it."""

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.throttle.before_batch()
        except BaseException as exc:
            self.error = exc

    def holding(self) -> bool:
        holds = self.throttle.holds()
        return bool(holds) and holds[-1]["outcome"] == "holding"

    def join(self) -> None:
        self.thread.join(BOUND_S)
        assert not self.thread.is_alive(), "before_batch did not return"


@pytest.fixture
def primary(replica_db: ReplicaDb) -> Iterator[sa.Engine]:
    engine = sa.create_engine(replica_db.url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def started(engine: sa.Engine, config: ThrottleConfig = BYTES, **kw: object) -> Iterator[Throttle]:
    """A started throttle of ``guest_orders`` (checking every 50 ms), closed at the end."""
    t = Throttle(config, engine, "guest_orders", poll_s=0.05, **kw)  # type: ignore[arg-type]
    t.start()
    try:
        yield t
    finally:
        t.close()


def hold_then_release(
    t: Throttle,
    what: str,
    release: Callable[[], object],
    held: Callable[[Background], bool] = Background.holding,
) -> None:
    """``before_batch`` on a thread is ``held`` (``what``, within the bound) until ``release()``
    lets it go; then it returns, without an error."""
    bg = Background(t)
    until(what, lambda: held(bg))
    assert bg.thread.is_alive(), "before_batch returned before the release"
    release()
    bg.join()
    assert bg.error is None


def pause_then_release(
    t: Throttle,
    engine: sa.Engine,
    what: str,
    scope: str = ALL_TABLES,
    reason: str | None = None,
    held: Callable[[Background], bool] = Background.holding,
) -> None:
    """A row of the pause table holds ``t`` (:func:`hold_then_release`); its DELETE resumes it."""
    request_pause(engine, scope, reason, table=DEFAULT_PAUSE_TABLE)
    hold_then_release(
        t, what, lambda: release_pause(engine, scope, table=DEFAULT_PAUSE_TABLE), held
    )


# -- the checks -----------------------------------------------------------------------------


def test_replay_paused_makes_the_bytes_check_red_and_resume_green(
    replica_db: ReplicaDb, primary: sa.Engine
) -> None:
    with primary.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        caps = probe(conn, BYTES)
        assert (caps.standbys, caps.slots, caps.messages) == (True, True, ())
        checks = HealthChecks(BYTES, "guest_orders", caps)
        assert checks.red(conn) == []
        (standby,) = read_standbys(conn)
        assert standby.replay_lsn is not None
        assert [s.name for s in read_slots(conn)] == [replica_db.pair.slot]

        replica_db.lag()
        red = checks.red(conn)
        assert [r.check for r in red] == [REPLICA_LAG_BYTES]
        assert red[0].value > MB
        assert "behind in replay (limit -x max-replica-lag-bytes=1.0 MB)" in red[0].describe()

        replica_db.pair.resume_replay()
        until("the standby replays and reports it", lambda: checks.red(conn) == [])


def test_a_stuck_replay_makes_the_seconds_check_red(
    replica_db: ReplicaDb, primary: sa.Engine
) -> None:
    """``replay_lag`` keeps its last measurement while replay is stuck; the stall tracker
    counts the standby's replies at the same position (one a second here)."""
    config = ThrottleConfig(
        max_replica_lag_s=1.0, max_replica_lag_bytes=None, hold_on_autovacuum=False
    )
    with primary.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        checks = HealthChecks(config, "guest_orders", probe(conn, config))
        replica_db.lag()
        until("the seconds check turns red", lambda: bool(checks.red(conn)))
        (red,) = checks.red(conn)
        assert red.check == REPLICA_LAG
        assert red.value > 1.0
        replica_db.pair.resume_replay()
        until("the seconds check turns green", lambda: checks.red(conn) == [])


def test_autovacuum_query_runs_on_an_idle_table(primary: sa.Engine) -> None:
    with primary.begin() as conn:
        conn.execute(sa.text("CREATE TABLE guest_orders (id bigint PRIMARY KEY, note text)"))
        assert read_vacuum(conn, "guest_orders") == []
        assert read_vacuum(conn, "no_such_table") == []


# -- holding --------------------------------------------------------------------------------


def test_no_standby_is_a_no_op(db_engine: sa.Engine) -> None:
    """The suite's own primary has no standby: defaults hold on nothing."""
    with started(db_engine, ThrottleConfig()) as t:
        assert t.checks.capabilities.messages == ()
        t.before_batch(drain=lambda: pytest.fail("drained without a hold"))
        assert t.holds() == []


def test_the_run_holds_while_replay_is_paused_and_goes_on_after_resume(
    replica_db: ReplicaDb, primary: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    shown = Shown()
    drained = threading.Event()
    with started(primary, progress=shown) as t:
        replica_db.lag()
        caplog.set_level(logging.INFO, logger="context_encryption")
        worker = threading.Thread(target=t.before_batch, args=(drained.set,), daemon=True)
        worker.start()
        until("the throttle holds", lambda: bool(t.holds()) and worker.is_alive())
        assert drained.is_set()  # the batches in flight were waited for first
        assert t.holds()[0]["outcome"] == "holding"
        replica_db.pair.resume_replay()
        worker.join(BOUND_S)
        assert not worker.is_alive()
    (hold,) = t.holds()
    assert hold["outcome"] == "resumed"
    assert hold["reasons"] == [REPLICA_LAG_BYTES]
    assert hold["table"] == "guest_orders"
    assert isinstance(hold["seconds"], float)
    assert hold["seconds"] > 0
    worsts = hold["worst"]
    assert isinstance(worsts, list)
    (worst,) = worsts
    assert worst["value"] > MB
    assert worst["limit"] == MB
    logged = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("guest_orders: holding: standby ") and "-x max-replica-lag-bytes" in m
        for m in logged
    )
    assert any(m.startswith("guest_orders: resuming after a hold of") for m in logged)
    assert shown.texts[0] is not None
    assert shown.texts[0].startswith("holding: standby ")
    assert shown.texts[-1] is None


def test_a_hold_longer_than_the_limit_stops_the_run_cleanly(
    replica_db: ReplicaDb, primary: sa.Engine
) -> None:
    config = ThrottleConfig(
        max_replica_lag_s=None,
        max_replica_lag_bytes=MB,
        hold_on_autovacuum=False,
        hold_timeout_s=0.3,
    )
    with started(primary, config) as t:
        replica_db.lag()
        with pytest.raises(HoldTimeout) as err:
            t.before_batch()
    message = str(err.value)
    assert message.startswith("guest_orders: held for ")
    assert "longer than -x hold-timeout=0.3s: standby " in message
    assert "running the same command again resumes from the last checkpoint" in message
    (hold,) = t.holds()
    assert hold["outcome"] == "timeout"
    assert err.value.hold["outcome"] == "timeout"


def test_the_run_stop_ends_a_hold(replica_db: ReplicaDb, primary: sa.Engine) -> None:
    stop = threading.Event()
    with started(primary, stop=stop) as t:
        replica_db.lag()
        hold_then_release(t, "the throttle holds", stop.set)
    assert t.holds()[0]["outcome"] == "stopped"


# -- pause and resume from outside ----------------------------------------------------------


def test_a_pause_request_holds_and_a_resume_releases(db_engine: sa.Engine) -> None:
    with started(db_engine, ThrottleConfig()) as t:
        pause_then_release(t, db_engine, "the pause holds the run", "*", "incident 4711")
    (hold,) = t.holds()
    assert (hold["outcome"], hold["reasons"]) == ("resumed", ["pause"])
    report = t.report()
    assert report["holds"] == [hold]
    assert report["checks_off"] == []
    assert report["held_seconds"] == hold["seconds"]
    json.dumps(report)
    assert hold["first"] == [
        "paused from outside (row scope='*' in context_encryption_pause, reason "
        "'incident 4711'); DELETE the row to resume"
    ]


def test_a_pause_of_another_table_does_not_hold(db_engine: sa.Engine) -> None:
    with started(db_engine, ThrottleConfig()) as t:
        request_pause(db_engine, "users", table=DEFAULT_PAUSE_TABLE)
        t.before_batch()
        assert t.holds() == []
        pause_then_release(t, db_engine, "the table's pause holds the run", "guest_orders")


def test_a_pause_is_not_bounded_by_the_hold_timeout(db_engine: sa.Engine) -> None:
    """An operator's pause lasts until released: hours on the throttle's clock do not stop it."""
    ticks = itertools.count(step=600.0)  # every reading of the clock: ten more minutes
    with started(
        db_engine,
        ThrottleConfig(hold_timeout_s=60.0),
        clock=lambda: float(next(ticks)),
    ) as t:
        pause_then_release(
            t,
            db_engine,
            "many polls of the paused run",
            held=lambda _bg: next(ticks) > 100 * 600.0,
        )
    assert t.holds()[0]["outcome"] == "resumed"


def test_a_dry_run_does_not_create_the_pause_table(db_engine: sa.Engine) -> None:
    with started(db_engine, ThrottleConfig(), dry_run=True) as t:
        assert t.start() == [
            "pause control off for this dry run: the table context_encryption_pause does not "
            "exist (a live run creates it)"
        ]
        assert not sa.inspect(db_engine).has_table(DEFAULT_PAUSE_TABLE)


def test_pause_table_off(db_engine: sa.Engine) -> None:
    with started(db_engine, ThrottleConfig(pause_table=None)) as t:
        assert not sa.inspect(db_engine).has_table(DEFAULT_PAUSE_TABLE)
        t.before_batch()
        assert t.holds() == []


# -- the batch's own time -------------------------------------------------------------------


def test_a_batch_over_max_batch_time_makes_the_run_rest_as_long(db_engine: sa.Engine) -> None:
    with started(db_engine, ThrottleConfig(max_batch_time_s=0.05)) as t:
        t.after_batch(100, 0.5, transaction_seconds=0.02)
        t.before_batch()
        assert t.holds() == []
        t.after_batch(100, 0.5, transaction_seconds=0.2)
        began = time.monotonic()
        t.before_batch()
        assert time.monotonic() - began >= 0.2
    (hold,) = t.holds()
    assert (hold["outcome"], hold["reasons"]) == ("resumed", ["batch-time"])


def test_target_mode_sizes_the_batches(db_engine: sa.Engine) -> None:
    with started(db_engine, ThrottleConfig(batch_target_s=1.0, max_batch_size=2000)) as t:
        assert t.batch_size == 1000
        assert t.after_batch(1000, 0.1) == 1100
        assert t.after_batch(1100, 5.0) == 880


# -- rights ---------------------------------------------------------------------------------


def test_a_role_without_monitor_rights_gets_the_checks_off_with_a_message(
    replica_db: ReplicaDb,
) -> None:
    role = f"cem_plain_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(replica_db.url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    plain = sa.create_engine(replica_db.url.set(username=role), poolclass=sa.pool.NullPool)
    try:
        replica_db.lag()
        config = ThrottleConfig(max_replica_lag_bytes=MB, hold_timeout_s=BOUND_S)
        with started(plain, config) as t:
            messages = t.start()
            assert messages[:2] == preflight_messages(plain, config)
            preflight = collect_preflight(
                Settings(throttle=config),
                direction="upgrade",
                tables=["users"],
                transit=None,
                engine=plain,
                scan_data=False,
            )
            assert preflight.warnings[:2] == messages[:2]
            assert messages == [
                f"replica lag check off: the role {role} cannot read the standbys' replay "
                "positions in pg_stat_replication (it needs pg_monitor or pg_read_all_stats: "
                f"GRANT pg_monitor TO {role}); the standbys' lag is not watched during this run",
                f"autovacuum check off: the role {role} cannot see the autovacuum workers' "
                "progress in pg_stat_progress_vacuum (it needs pg_monitor or "
                f"pg_read_all_stats: GRANT pg_monitor TO {role}); the run does not hold for "
                "autovacuum",
                "pause control off: the table context_encryption_pause could not be created "
                "(InsufficientPrivilege, SQLSTATE 42501); create it as its owner (CREATE TABLE "
                "context_encryption_pause ( scope TEXT NOT NULL, reason TEXT, requested_at "
                "TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, PRIMARY KEY "
                "(scope) )) or use -x pause-table=off",
            ]
            t.before_batch()  # replay is paused, but this role cannot see it: no hold
            assert t.holds() == []

        with admin.begin() as conn:
            conn.execute(sa.text(f'GRANT pg_monitor TO "{role}"'))
        with started(plain, config) as t:
            assert not [m for m in t.start() if "check off" in m]
            hold_then_release(
                t, "the role with pg_monitor sees the lag", replica_db.pair.resume_replay
            )
    finally:
        plain.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_usr1_pauses_and_usr2_resumes(db_engine: sa.Engine) -> None:
    def resume() -> None:
        os.kill(os.getpid(), signal.SIGUSR2)

    # started on the main thread
    with started(db_engine, ThrottleConfig(pause_table=None)) as t:
        os.kill(os.getpid(), signal.SIGUSR1)
        hold_then_release(t, "SIGUSR1 holds the run", resume)
    (hold,) = t.holds()
    assert (hold["outcome"], hold["reasons"]) == ("resumed", ["pause"])
    assert hold["first"] == [
        f"paused from outside (kill -USR1); kill -USR2 {os.getpid()} to resume"
    ]
    # kept for the process: a SIGUSR1 between two tables pauses the next one, never kills
    os.kill(os.getpid(), signal.SIGUSR1)
    with started(db_engine, ThrottleConfig(pause_table=None)) as t:
        hold_then_release(t, "the pause carries over to the next table", resume)


def test_sqlite_has_nothing_to_watch_and_pauses_work(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'demo.db'}", poolclass=sa.pool.NullPool)
    try:
        with started(engine, ThrottleConfig()) as t:
            assert t.messages == []
            assert not t.checks.active
            t.before_batch()
            pause_then_release(t, engine, "the pause holds the SQLite run")
    finally:
        engine.dispose()


def test_autovacuum_on_the_table_holds_the_run(replica_db: ReplicaDb, primary: sa.Engine) -> None:
    """A real autovacuum worker, slowed to a crawl on one table, is seen and held for; the
    hold ends when the worker is cancelled (and autovacuum switched off for the table)."""
    if replica_db.pair.origin != "throwaway":
        pytest.skip("needs the throwaway primary's autovacuum_naptime = 1s")
    with primary.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:

        def stop_autovacuum() -> None:
            conn.execute(sa.text("ALTER TABLE guest_orders SET (autovacuum_enabled = false)"))
            conn.execute(
                sa.text(
                    "SELECT pg_cancel_backend(p.pid) FROM pg_stat_progress_vacuum p "
                    "WHERE p.relid = 'guest_orders'::regclass"
                )
            )

        conn.execute(
            sa.text(
                "CREATE TABLE guest_orders WITH (autovacuum_vacuum_threshold = 0, "
                "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, "
                "autovacuum_vacuum_cost_limit = 1) AS "
                "SELECT g AS id, repeat('x', 200) AS note FROM generate_series(1, 20000) g"
            )
        )
        conn.execute(sa.text("DELETE FROM guest_orders"))
        until("an autovacuum worker on the table", lambda: bool(read_vacuum(conn, "guest_orders")))
        config = ThrottleConfig(max_replica_lag_s=None, max_replica_lag_bytes=None)
        with started(primary, config) as t:
            hold_then_release(t, "autovacuum holds the run", stop_autovacuum)
    (hold,) = t.holds()
    assert (hold["outcome"], hold["reasons"]) == ("resumed", ["autovacuum"])
    first = hold["first"]
    assert isinstance(first, list)
    assert first[0].startswith("autovacuum is working on guest_orders (phase ")
    assert first[0].endswith("; -x hold-on-autovacuum=true)")
