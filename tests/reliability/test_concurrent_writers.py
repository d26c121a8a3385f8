"""Concurrent writers (issue 5, point 2): the application keeps writing while a table migrates.

While ``alembic upgrade 0002_invitations`` (and, mirrored, ``alembic downgrade 0001_users``)
runs as a subprocess, writer threads (each on its own
connection, with a short ``lock_timeout``) insert, update and delete rows of ``invitations``,
writing values in the old scheme, the new scheme and NULL, with matching HMAC companions, as an
application mid-rollout would. One writer keeps a hot set of rows changing so that the
migration's compare-and-swap certainly meets changed rows. The latest value written to each row
is recorded (rows are partitioned between writers, so the recorded order is the commit order).

Afterwards:

* every row holds the latest value written to it (no lost update): its ciphertext decrypts,
  under one of the two schemes, to the latest plaintext; NULL stays NULL; deleted rows are gone;
* values written in the target scheme are still there byte for byte, and rows no writer touched
  were migrated (the migration handled them; nothing reverted them); a source-scheme value
  written after the migration passed its row may legitimately remain in the source scheme;
* the report's ``changed_concurrently`` counts rows that changed under the migration (at least
  one, at most the number of updates and deletes that ran during it);
* none of this depends on the machine's speed: the fault proxy paces the migration's Vault
  requests by the writers' progress (``PACE`` operations for each request), and once, while
  the migration waits at the proxy with batches read but not written, the test itself updates
  one row of every batch past the checkpoint (rows no writer touches), so the compare-and-swap
  certainly meets rows that changed;
* no writer ever waited for a lock longer than its ``lock_timeout``; a sampler of ``pg_locks``
  prints the migration's longest row-lock hold (a wall time, so not asserted).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import Migration
from tests.support.reliability_helpers import checkpoints, popen_alembic, table_summary, watching
from tests.support.seeding import hmac_hex, read_table, sample_rows, seed

invitations = metadata.tables["invitations"]
COLUMNS = ("email", "token")
WRITER_APP = "reliability-writer"
LOCK_TIMEOUT_MS = 1000
#: application operations for each Vault request of the migration
PACE = 1


@dataclass
class Pool:
    """Pre-encrypted values, so writers never wait for Vault."""

    plains: list[str]
    old: dict[str, list[str]]  # column -> ciphertexts (old scheme), same order as plains
    new: dict[str, list[str]]  # column -> ciphertexts (new scheme)


@dataclass
class Written:
    plain: str | None
    scheme: str  # "old", "new" or "null"
    ciphertext: str | None


@dataclass
class Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latest: dict[Any, dict[str, Written]] = field(default_factory=dict)
    deleted: set[Any] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "delete": 0})
    ops_during: dict[str, int] = field(
        default_factory=lambda: {"insert": 0, "update": 0, "delete": 0}
    )
    lock_timeouts: int = 0
    longest_write: float = 0.0
    errors: list[str] = field(default_factory=list)


def make_pool(m: Migration, n: int) -> Pool:
    plains = [f"written by the app #{i} ({'é' if i % 2 else 'e'})" for i in range(n)]
    plains[0] = ""  # the empty string is a value like any other
    old = {c: m.vault.encrypt(m.vault.old_key, plains, [None] * n) for c in COLUMNS}
    new = {c: m.vault.encrypt(m.vault.new_key, plains, [f"invitations.{c}"] * n) for c in COLUMNS}
    return Pool(plains, old, new)


def pick_values(
    m: Migration, pool: Pool, rng: random.Random
) -> tuple[dict[str, str | None], dict[str, Written]]:
    values: dict[str, str | None] = {}
    written: dict[str, Written] = {}
    for c in COLUMNS:
        scheme = rng.choices(("old", "new", "null"), weights=(45, 45, 10))[0]
        if scheme == "null":
            values[c] = values[f"{c}_hmac"] = None
            written[c] = Written(None, "null", None)
            continue
        i = rng.randrange(len(pool.plains))
        ct = (pool.old if scheme == "old" else pool.new)[c][i]
        values[c] = ct
        values[f"{c}_hmac"] = hmac_hex(m.hmac_secret, pool.plains[i])
        written[c] = Written(pool.plains[i], scheme, ct)
    return values, written


def writer(
    m: Migration,
    pool: Pool,
    log: Log,
    mine: list[Any],
    stop: threading.Event,
    migrating: threading.Event,
    seed_: int,
    hot: bool,
) -> None:
    """Insert, update and delete rows of ``mine`` (this writer's partition) until ``stop``."""
    rng = random.Random(seed_)
    engine = sa.create_engine(
        m.url,
        poolclass=sa.pool.NullPool,
        connect_args={
            "application_name": WRITER_APP,
            "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}",
        },
    )
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                op = "update" if hot else rng.choices(("update", "insert", "delete"), (6, 2, 1))[0]
                if op != "insert" and not mine:
                    op = "insert"
                values, written = pick_values(m, pool, rng)
                t0 = time.monotonic()
                try:
                    with conn.begin():
                        if op == "insert":
                            pk = conn.execute(
                                sa.insert(invitations).values(**values).returning(invitations.c.id)
                            ).scalar_one()
                        else:
                            pk = rng.choice(mine)
                            if op == "update":
                                conn.execute(
                                    sa.update(invitations)
                                    .where(invitations.c.id == pk)
                                    .values(**values)
                                )
                            else:
                                conn.execute(sa.delete(invitations).where(invitations.c.id == pk))
                except sa.exc.OperationalError as exc:
                    with log.lock:
                        if "lock timeout" in str(exc).lower():
                            log.lock_timeouts += 1
                        else:
                            log.errors.append(type(exc.orig).__name__)
                    continue
                took = time.monotonic() - t0
                with log.lock:
                    log.longest_write = max(log.longest_write, took)
                    log.ops[op] += 1
                    if migrating.is_set():
                        log.ops_during[op] += 1
                    if op == "delete":
                        mine.remove(pk)
                        log.deleted.add(pk)
                        log.latest.pop(pk, None)
                    else:
                        if op == "insert":
                            mine.append(pk)
                        log.latest[pk] = written
                # a pause between operations leaves the GIL to the fault proxy's threads,
                # which run in this process too
                time.sleep(0.002 if hot else 0.001)
    finally:
        engine.dispose()


def force_changes(m: Migration, pool: Pool, log: Log, reserved: list[Any], after: int) -> list[Any]:
    """Update every reserved row past ``after`` to a pool value (never NULL, so each row
    certainly changes: the seeded values are not in the pool), in one application transaction,
    recorded like a writer's updates; returns their primary keys."""
    pks = [pk for pk in reserved if pk > after]
    assert pks, "no reserved row past the checkpoint"
    updates: list[tuple[Any, dict[str, Written]]] = []
    engine = sa.create_engine(
        m.url, poolclass=sa.pool.NullPool, connect_args={"application_name": WRITER_APP}
    )
    with engine.begin() as conn:
        for n, pk in enumerate(pks):
            scheme = ("old", "new")[n % 2]
            i = 1 + n % (len(pool.plains) - 1)
            values: dict[str, str | None] = {}
            written: dict[str, Written] = {}
            for c in COLUMNS:
                ct = (pool.old if scheme == "old" else pool.new)[c][i]
                values[c] = ct
                values[f"{c}_hmac"] = hmac_hex(m.hmac_secret, pool.plains[i])
                written[c] = Written(pool.plains[i], scheme, ct)
            conn.execute(sa.update(invitations).where(invitations.c.id == pk).values(**values))
            updates.append((pk, written))
    engine.dispose()
    with log.lock:
        for pk, written in updates:
            log.latest[pk] = written
            log.ops["update"] += 1
            log.ops_during["update"] += 1
    return pks


def lock_sampler(m: Migration, stop: threading.Event, longest: list[float]) -> None:
    """Longest time a non-writer transaction holding a row-modifying lock on the table has run."""
    engine = sa.create_engine(m.url, poolclass=sa.pool.NullPool)
    q = sa.text(
        "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - a.xact_start)), 0) "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.relation = 'invitations'::regclass AND l.mode = 'RowExclusiveLock' "
        "AND l.granted AND a.application_name <> :writer AND a.pid <> pg_backend_pid()"
    )
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                with conn.begin():
                    v = float(conn.execute(q, {"writer": WRITER_APP}).scalar_one())
                longest[0] = max(longest[0], v)
                time.sleep(0.005)
    finally:
        engine.dispose()


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
def test_no_lost_update_while_the_application_writes(
    migration: Migration, vault_faults: FaultProxy, direction: str
) -> None:
    m = migration
    seeded = seed(m.engine, m.vault, "invitations", sample_rows("invitations", 2400), m.hmac_secret)
    pool = make_pool(m, 300)
    # users is empty; invitations is the table under test
    m.upgrade("0001_users" if direction == "upgrade" else "0002_invitations")
    target, other = ("new", "old") if direction == "upgrade" else ("old", "new")
    command = (
        ["upgrade", "0002_invitations"] if direction == "upgrade" else ["downgrade", "0001_users"]
    )
    # The fault proxy paces the migration by the application: each Vault request of the run
    # waits until the writers have done PACE more operations, so the application certainly
    # works during the whole migration, however fast or slow the machine is.
    vault_faults.hold(f"{m.vault.mount}/")

    pks = sorted(seeded)
    hot = pks[5::40]  # spread across every part of the table
    # one row in every 25 (a batch) belongs to the test itself: it changes them while the
    # migration has batches in flight (see below); no writer touches them
    reserved = pks[12::25]
    taken = set(hot) | set(reserved)
    rest = [pk for pk in pks if pk not in taken]
    parts: list[list[Any]] = [hot, rest[0::3], rest[1::3], rest[2::3]]
    log = Log()
    stop, migrating, sampler_stop = threading.Event(), threading.Event(), threading.Event()
    longest_lock = [0.0]
    threads = [
        threading.Thread(
            target=writer, args=(m, pool, log, part, stop, migrating, i, i == 0), daemon=True
        )
        for i, part in enumerate(parts)
    ]
    sampler = threading.Thread(target=lock_sampler, args=(m, sampler_stop, longest_lock))
    report_path = m.tmp_path / "concurrent-report.json"

    sampler.start()
    for t in threads:
        t.start()
    time.sleep(0.3)  # the application is busy before the migration starts
    proc = popen_alembic(
        m,
        "-x",
        "batch-size=25",
        "-x",
        "workers=2",
        "-x",
        "on-error=skip",
        "-x",
        f"report={report_path}",
        *command,
    )
    started = time.monotonic()
    paced_at = 0
    forced: list[Any] = []
    with watching(m.engine) as watch:
        while proc.proc.poll() is None:
            held = vault_faults.held
            frozen = held > 0 and vault_faults.allowance == 0
            if not forced:
                cps = [c for c in checkpoints(watch) if c["revision"] == "0002_invitations"]
                if cps:
                    migrating.set()
                if frozen and cps and cps[0]["last_pk"] is not None:
                    # The run waits at the proxy with batches read and not written yet. The
                    # application changes the test's rows past the checkpoint (every batch
                    # has one): the compare-and-swap certainly meets changed rows.
                    forced = force_changes(m, pool, log, reserved, int(cps[0]["last_pk"]))
            with log.lock:
                ops = sum(log.ops.values())
            credit = min((ops - paced_at) // PACE, held)
            if frozen and credit > 0:
                paced_at += credit * PACE
                vault_faults.allow(credit)
            time.sleep(0.002)
    migration_seconds = time.monotonic() - started
    migrating.clear()
    time.sleep(0.2)  # and keeps writing after it finished
    stop.set()
    for t in threads:
        t.join(30)
    sampler_stop.set()
    sampler.join(30)
    vault_faults.release()

    assert proc.proc.returncode == 0, proc.stderr
    assert m.current() == ("0002_invitations" if direction == "upgrade" else "0001_users")
    assert not log.errors, log.errors
    report = json.loads(report_path.read_text())
    summary = table_summary(report, "invitations")

    # what every row must hold: the latest value written, else the seeded one
    expected: dict[Any, dict[str, Written]] = {}
    for pk, plain in seeded.items():
        if pk in log.deleted:
            continue
        expected[pk] = {c: Written(plain[c], "seed", None) for c in COLUMNS}
    expected.update(log.latest)
    stored = read_table(m.engine, "invitations")
    assert set(stored) == set(expected), "rows inserted or deleted by the application differ"

    lost: list[str] = []
    left: list[Any] = []  # values not in the target scheme
    for c in COLUMNS:
        readable: dict[Any, str | None] = {}
        pks_c = [pk for pk in stored if stored[pk][c] is not None]
        cts = [stored[pk][c] for pk in pks_c]
        new_p = m.vault.decrypt(m.vault.new_key, cts, [f"invitations.{c}"] * len(cts))
        idx = [i for i, p in enumerate(new_p) if p is None]
        old_p = m.vault.decrypt(m.vault.old_key, [cts[i] for i in idx], [None] * len(idx))
        old_by = dict(zip(idx, old_p, strict=True))
        for i, pk in enumerate(pks_c):
            readable[pk] = new_p[i] if new_p[i] is not None else old_by[i]
            if (new_p[i] is None) == (target == "new"):
                left.append((pk, c))
        for pk, want in expected.items():
            w = want[c]
            got = stored[pk][c]
            if w.plain is None:
                if got is not None:
                    lost.append(f"{c} id={pk}: NULL was overwritten")
                continue
            if got is None or readable.get(pk) != w.plain:
                lost.append(f"{c} id={pk}: latest {w.scheme} value lost")
                continue
            want_hmac = hmac_hex(m.hmac_secret, w.plain)
            if stored[pk][f"{c}_hmac"] != want_hmac:
                lost.append(f"{c} id={pk}: companion does not match")
            if w.scheme == target and got != w.ciphertext:
                lost.append(f"{c} id={pk}: a {target}-scheme value the app wrote was rewritten")
            if w.scheme in ("seed", target) and (pk, c) in left:
                lost.append(f"{c} id={pk}: left in (or reverted to) the {other} scheme")

    failures = summary["failures"]
    changing = {f["id"] for f in failures if "kept changing" in f["reason"]}
    # a value may remain in the source scheme only where the app wrote it so (after the
    # migration passed the row), or where the row kept changing and was reported
    for pk, c in left:
        w = expected[pk][c]
        if w.scheme != other and str(pk) not in changing:
            lost.append(f"{c} id={pk}: {other}-scheme value the migration should have handled")

    during = sum(log.ops_during.values())
    print(
        f"\n{direction} {migration_seconds:.1f}s; application operations during it: "
        f"{log.ops_during} ({during}); in all: {log.ops}; lost updates: {len(lost)}; "
        f"changed_concurrently={summary['changed_concurrently']}, "
        f"deleted_concurrently={summary['deleted_concurrently']}, "
        f"reported as still changing: {len(changing)}; {other}-scheme values left by the app: "
        f"{len(left)}; longest app write {log.longest_write * 1000:.0f} ms; longest "
        f"migration lock hold seen {longest_lock[0] * 1000:.0f} ms"
    )
    assert forced, "the test's own concurrent change was never made"
    assert not lost, f"{len(lost)} lost updates: {lost[:20]}"
    assert all("kept changing" in f["reason"] for f in failures), failures
    assert during >= 200, "too few concurrent operations to mean anything"
    assert 1 <= summary["changed_concurrently"] <= log.ops["update"] + log.ops["delete"]
    # every writer statement runs with lock_timeout: none waited that long for a lock. The
    # wall times printed above (a write's, the migration's longest lock hold) also hold CPU
    # and disk waits of a loaded machine (918 ms seen once under a CI load of 10 on 2 cores,
    # for batches of 140 ms on average): printed, not asserted; the lock_timeout is the bound.
    assert log.lock_timeouts == 0, "an application write timed out waiting for the migration"
