"""Database faults (issue 5, point 4): dropped connections, lock and statement timeouts.

* The migration's backends are terminated mid-run (``pg_terminate_backend``, as a failover or
  an administrator would): the run stops with a clear message, unstamped, its committed batches
  and checkpoint kept, and a plain re-run resumes there and completes.
* A batch blocked by another long transaction (``SELECT ... FOR UPDATE`` held on a row) fails
  clearly after ``-x lock-timeout`` instead of hanging, and the message names the lock timeout;
  with the lock timeout disabled, ``-x statement-timeout`` stops it the same way. After the
  blocker commits, a re-run resumes and completes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.reliability_helpers import (
    AlembicProcess,
    checkpoints,
    committed_batches,
    popen_alembic,
    run_alembic,
    step_until,
    table_summary,
    watching,
)
from tests.support.seeding import assert_scheme, read_table

invitations = metadata.tables["invitations"]


def seed_invitations(m: Migration, n: int) -> dict[Any, Any]:
    return seed_table(m, "invitations", n)


def terminate(m: Migration, pids: list[int] | None = None) -> int:
    """Terminate the test database's other backends (or only ``pids``)."""
    with m.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() "
                    "AND (CAST(:pids AS int[]) IS NULL OR pid = ANY(CAST(:pids AS int[])))"
                ),
                {"pids": pids},
            ).scalar_one()
        )


def run_connections(m: Migration) -> tuple[list[int], list[int]]:
    """The run's main connection(s) (holding its advisory lock) and the connections that have
    run a query, in the order they were opened. With NullPool and the run frozen mid-table,
    those are the table's reader (opened before the first batch was handed out) and then its
    workers. (The engine also opens a connection on the reader's thread that runs nothing: it
    comes with the Vault client that pins the key version; terminating it changes nothing.)"""
    with m.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.pid, a.query, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
                "AND l.locktype = 'advisory' AND l.granted) AS main "
                "FROM pg_stat_activity a WHERE a.datname = current_database() "
                "AND a.pid <> pg_backend_pid() ORDER BY a.backend_start, a.pid"
            )
        ).all()
    main = [r.pid for r in rows if r.main]
    return main, [r.pid for r in rows if not r.main and r.query]


def drop_mid_run(m: Migration, vault_faults: FaultProxy, which: str) -> AlembicProcess:
    """Start ``upgrade head`` and terminate connections of the migration once it is under way.

    The fault proxy holds the run's Vault requests and lets them through one at a time until
    three batches of invitations are committed; the connections are terminated while the run
    waits there, mid-table (so which connection is which is known, not raced for), then it
    goes on and meets the dead connection(s).
    """
    m.upgrade("0001_users")
    vault_faults.hold(f"{m.vault.mount}/")
    p = popen_alembic(m, "-x", "batch-size=20", "-x", "workers=2", "upgrade", "head")
    with watching(m.engine) as watch:
        step_until(
            vault_faults,
            lambda: committed_batches(watch, "0002_invitations") >= 3,
            lambda: p.proc.poll() is None,
        )
    main, others = run_connections(m)
    assert len(main) == 1 and len(others) >= 2, (main, others)  # reader, worker(s)
    if which == "all":  # a failover: every connection of the migration goes
        assert terminate(m) >= 1 + len(others)
    elif which == "one-worker":  # the connection of the last worker that started
        assert terminate(m, others[-1:]) == 1
    else:  # the reader's (keyset SELECT)
        assert terminate(m, others[:1]) == 1
    vault_faults.release()
    p.wait(120)
    vault_faults.clear()
    print(f"\nexit {p.proc.returncode}; stderr tail:\n{p.stderr[-1500:]}")
    return p


@pytest.mark.parametrize("which", ["all", "one-worker", "reader"])
def test_dropped_connection_loses_nothing_and_rerun_resumes(
    migration: Migration, vault_faults: FaultProxy, which: str
) -> None:
    m = migration
    data = seed_invitations(m, 1200)
    p = drop_mid_run(m, vault_faults, which)
    assert p.proc.returncode != 0
    assert m.current() == "0001_users", "stamped although the run was cut off"
    cps = [c for c in checkpoints(m.engine) if c["revision"] == "0002_invitations"]
    assert len(cps) == 1 and cps[0]["last_pk"] is not None
    resume_at = cps[0]["last_pk"]

    report = m.upgrade("head", batch_size=20)
    summary = table_summary(report, "invitations")
    assert summary["resumed_after"] == resume_at
    assert summary["rows_scanned"] == sum(1 for pk in data if pk > int(resume_at))
    assert m.current() == "0007_consent_records"
    assert_scheme(m.engine, m.vault, "invitations", data, "new", m.hmac_secret)


@pytest.mark.parametrize("which", ["all", "one-worker", "reader"])
def test_dropped_connection_stops_with_a_clear_message(
    migration: Migration, vault_faults: FaultProxy, which: str
) -> None:
    m = migration
    seed_invitations(m, 1200)
    p = drop_mid_run(m, vault_faults, which)
    err = p.stderr
    assert p.proc.returncode != 0
    assert "Traceback" not in err, "a raw traceback instead of a message"
    assert "ERROR" in err
    low = err.lower()
    assert "database" in low or "connection" in low
    assert "re-run" in low or "resume" in low, "the message does not say the run can be resumed"


@pytest.fixture
def row_lock(migration: Migration) -> Iterator[Any]:
    """Another application transaction holding ``SELECT ... FOR UPDATE`` on one row."""
    engine = sa.create_engine(migration.url, poolclass=sa.pool.NullPool)
    conn = engine.connect()
    trans = conn.begin()

    def hold(pk: Any) -> None:
        conn.execute(sa.select(invitations.c.id).where(invitations.c.id == pk).with_for_update())

    try:
        yield hold, trans
    finally:
        if trans.is_active:
            trans.rollback()
        conn.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (["-x", "lock-timeout=300ms"], ["lock timeout", "lock-timeout"]),
        (
            ["-x", "lock-timeout=0", "-x", "statement-timeout=400ms"],
            ["statement timeout", "statement-timeout"],
        ),
    ],
    ids=["lock-timeout", "statement-timeout"],
)
def test_batch_blocked_by_a_long_transaction_fails_clearly(
    migration: Migration, row_lock: Any, x: list[str], expected: list[str]
) -> None:
    m = migration
    data = seed_invitations(m, 200)
    m.upgrade("0001_users")
    hold, trans = row_lock
    blocked = sorted(data)[130]
    hold(blocked)
    before = read_table(m.engine, "invitations")

    started = time.monotonic()
    proc = run_alembic(m, "-x", "batch-size=50", "-x", "workers=1", *x, "upgrade", "head")
    took = time.monotonic() - started
    print(f"\nblocked run stopped after {took:.1f}s:\n{proc.stderr[-800:]}")
    assert proc.proc.returncode != 0
    assert took < 30, "the blocked batch hung instead of failing"
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in the message"
    assert "invitations" in proc.stderr
    assert m.current() == "0001_users"
    stored = read_table(m.engine, "invitations")
    # the two batches before the blocked one committed; the blocked batch wrote nothing
    done = sorted(data)[:100]
    cps = [c for c in checkpoints(m.engine) if c["revision"] == "0002_invitations"]
    assert cps and cps[0]["last_pk"] == str(done[-1])
    for pk in sorted(data)[100:150]:
        assert stored[pk] == before[pk], f"id={pk} of the blocked batch was written"
    for pk in done:
        assert stored[pk]["token"] != before[pk]["token"] or before[pk]["token"] is None

    trans.commit()  # the long transaction ends
    report = m.upgrade("head", batch_size=50, workers=1)
    assert table_summary(report, "invitations")["resumed_after"] == str(done[-1])
    assert_scheme(m.engine, m.vault, "invitations", data, "new", m.hmac_secret)


def test_timeouts_are_accepted_and_bad_values_refused(migration: Migration) -> None:
    m = migration
    data = seed_invitations(m, 60)
    bad = run_alembic(m, "-x", "statement-timeout=soon", "upgrade", "head")
    assert bad.proc.returncode != 0
    assert "statement-timeout" in bad.stderr and "not a duration" in bad.stderr
    bad = run_alembic(m, "-x", "lock-timeout=-1s", "upgrade", "head")
    assert bad.proc.returncode != 0 and "lock-timeout" in bad.stderr
    assert m.current() is None

    ok = run_alembic(m, "-x", "lock-timeout=2s", "-x", "statement-timeout=1min", "upgrade", "head")
    assert ok.proc.returncode == 0, ok.stderr
    assert_scheme(m.engine, m.vault, "invitations", data, "new", m.hmac_secret)
