"""The throttle in a real ``alembic upgrade``, on the primary of a real streaming replica.

The run's database lives on the primary of ``tests/support/replica.py``'s pair. The fault
proxy in front of Vault freezes the run mid-table (``step_until``) while the test pauses the
standby's replay: after the proxy lets go, the run must hold before its next batch, go on after
``pg_wal_replay_resume()``, and end with every value right and the hold in its report.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.util import CommandError

from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.polling import until
from tests.support.reliability_helpers import (
    committed_batches,
    step_until,
    table_summary,
    watching,
)
from tests.support.replica import ReplicaDb
from tests.support.seeding import Plain, assert_scheme

BOUND_S = 120.0
#: Hold only while the standby is more than 1 MB behind (autovacuum: the throwaway primary's
#: wakes every second).
LAG_BYTES_X: dict[str, object] = {
    "batch_size": 50,
    "workers": 1,
    "max_replica_lag_bytes": "1MB",
    "max_replica_lag": "0",
    "hold_on_autovacuum": "false",
}


@pytest.fixture
def database_url(replica_db: ReplicaDb) -> sa.URL:
    """The test's database is on the replica pair's primary (overrides db_fixtures')."""
    return replica_db.url


@pytest.fixture
def hold_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog`` with the tool's INFO lines (a hold is seen in the log)."""
    caplog.set_level(logging.INFO, logger="context_encryption")
    return caplog


class Run:
    """``alembic upgrade`` in-process on a thread (its log lines reach ``caplog``)."""

    def __init__(self, m: Migration, rev: str, **x: object) -> None:
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(m, rev, x), daemon=True)
        self.thread.start()

    def _run(self, m: Migration, rev: str, x: dict[str, object]) -> None:
        try:
            self.report = m.upgrade(rev, **x)
        except BaseException as exc:
            self.error = exc

    def alive(self) -> bool:
        alive = self.thread.is_alive()
        if not alive and self.error is not None:
            raise AssertionError(f"the run failed: {self.error!r}")
        return alive

    def join(self) -> dict[str, Any]:
        self.thread.join(BOUND_S)
        assert not self.thread.is_alive(), "the run did not finish"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def logged(caplog: pytest.LogCaptureFixture, start: str) -> bool:
    """A line that starts with ``start`` was logged."""
    return any(r.getMessage().startswith(start) for r in list(caplog.records))


@contextlib.contextmanager
def frozen_mid_table(
    m: Migration, vault_faults: FaultProxy, rows: int, batches: int, **x: object
) -> Iterator[tuple[dict[Any, Plain], Run, sa.Connection]]:
    """``rows`` users seeded in the old scheme, then ``alembic upgrade 0001_users`` (``-x``
    options ``x``) on a thread, frozen at the proxy once ``batches`` batches are committed
    (``vault_faults.release()`` lets it go on). Yields the seeded values, the run, and a
    connection watching the database."""
    data = seed_table(m, "users", rows)
    vault_faults.hold(f"{m.vault.mount}/")
    run = Run(m, "0001_users", **x)
    with watching(m.engine) as watch:
        step_until(
            vault_faults, lambda: committed_batches(watch, "0001_users") >= batches, run.alive
        )
        yield data, run, watch


def holds_nothing(watch: sa.Connection, table: str) -> bool:
    """No other session holds a lock on ``table`` or a transaction id (every row lock needs
    one): the batches are committed, the reader and the workers idle. Alembic's connection
    stays in its revision's transaction (it will hold the stamp), which has written nothing."""
    locks = watch.execute(
        sa.text(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.datname = current_database() AND l.pid <> pg_backend_pid() "
            "AND (l.relation = to_regclass(:t) OR l.locktype = 'transactionid')"
        ),
        {"t": table},
    ).scalar_one()
    return int(locks) == 0


def test_replay_paused_mid_run_holds_within_one_batch_and_resume_finishes_it(
    migration: Migration,
    vault_faults: FaultProxy,
    replica_db: ReplicaDb,
    hold_log: pytest.LogCaptureFixture,
) -> None:
    m = migration
    with frozen_mid_table(m, vault_faults, 1000, 2, **LAG_BYTES_X) as (data, run, watch):
        # the run is frozen at the proxy, mid-table: the standby stops replaying, WAL piles up
        replica_db.lag()
        before = committed_batches(watch, "0001_users")
        vault_faults.release()
        until("the run holds", lambda: logged(hold_log, "users: holding: standby "), BOUND_S)
        at_hold = committed_batches(watch, "0001_users")
        # the batch in flight and the one read ahead (workers=1) finish; no other starts
        assert before <= at_hold <= before + 2, (before, at_hold)
        assert run.alive()
        assert holds_nothing(watch, "users")
        replica_db.pair.resume_replay()
        report = run.join()

    summary = table_summary(report, "users")
    assert summary["rows_scanned"] == summary["rows_written"] == len(data)
    hold, *later = summary["throttle"]["holds"]
    assert (hold["outcome"], hold["reasons"]) == ("resumed", ["replica-lag-bytes"])
    assert hold["worst"][0]["limit"] == 1024**2
    # After the resume the run's own WAL can put the standby over 1 MB again until it next
    # reports its replay position (wal_receiver_status_interval, 1 s): a short hold of the same
    # check, which resumes too (seen in about 1 run in 10, so not counted on either way).
    assert all((h["outcome"], h["reasons"]) == ("resumed", ["replica-lag-bytes"]) for h in later)
    assert summary["throttle"]["checks_off"] == []
    assert m.current() == "0001_users"
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)


def test_a_pause_row_holds_a_live_run_and_its_delete_resumes_it(
    migration: Migration,
    vault_faults: FaultProxy,
    hold_log: pytest.LogCaptureFixture,
) -> None:
    m = migration
    x = {"batch_size": 50, "workers": 2, "hold_on_autovacuum": "false"}
    with frozen_mid_table(m, vault_faults, 400, 1, **x) as (data, run, watch):
        watch.execute(
            sa.text(
                "INSERT INTO context_encryption_pause (scope, reason) VALUES ('*', 'test pause')"
            )
        )
        vault_faults.release()
        until(
            "the run holds",
            lambda: logged(hold_log, "users: holding: paused from outside"),
            BOUND_S,
        )
        assert run.alive()
        watch.execute(sa.text("DELETE FROM context_encryption_pause WHERE scope = '*'"))
        report = run.join()
    (hold,) = table_summary(report, "users")["throttle"]["holds"]
    assert (hold["outcome"], hold["reasons"]) == ("resumed", ["pause"])
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)


def test_unknown_throttle_value_stops_before_any_work(migration: Migration) -> None:
    with pytest.raises(Exception, match=r"-x hold-timeout='soon' is not a duration"):
        migration.upgrade("0001_users", hold_timeout="soon")
    assert migration.current() is None


def test_target_mode_moves_the_batch_size_within_bounds(migration: Migration) -> None:
    m = migration
    data = seed_table(m, "users", 1500)
    report = m.upgrade(
        "0001_users",
        batch_size=20,
        batch_target="2s",
        min_batch_size=10,
        max_batch_size=200,
        workers=1,
    )
    sizing = table_summary(report, "users")["throttle"]["batch_size"]
    assert sizing["mode"] == "target"
    assert sizing["first"] == 20
    assert sizing["largest"] > 20  # every batch took far less than 2 s: it grew
    assert sizing["largest"] <= 200
    assert sizing["smallest"] >= 10
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)


def test_a_hold_over_the_timeout_stops_the_run_and_the_same_command_resumes_it(
    migration: Migration,
    vault_faults: FaultProxy,
    replica_db: ReplicaDb,
) -> None:
    m = migration
    x = {**LAG_BYTES_X, "hold_timeout": "500ms"}
    with frozen_mid_table(m, vault_faults, 600, 2, **x) as (data, run, watch):
        replica_db.lag()
        vault_faults.release()
        # the runner turns the HoldTimeout into alembic's CommandError, message unchanged
        with pytest.raises(CommandError, match=r"^users: held for .* longer than -x hold-timeout"):
            run.join()
        stopped_at = committed_batches(watch, "0001_users")
    assert 2 <= stopped_at < 12
    assert m.current() is None  # not stamped: a stop like any other
    report = m.reports[-1]
    (hold,) = table_summary(report, "users")["throttle"]["holds"]
    assert (hold["outcome"], hold["reasons"]) == ("timeout", ["replica-lag-bytes"])

    replica_db.pair.resume_replay()
    replica_db.pair.wait_caught_up()
    report = m.upgrade("0001_users", **x)
    summary = table_summary(report, "users")
    assert summary["resumed_after"] is not None
    # the primary may not have heard of the catch-up yet: a short hold at most, then it goes on
    assert all(h["outcome"] == "resumed" for h in summary["throttle"]["holds"])
    assert m.current() == "0001_users"
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)
