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
import time
from typing import Any

import pytest

from tests.support.app_writers import COLUMNS, App, Log, Pool, Written, force_changes, make_pool
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.reliability_helpers import (
    AlembicProcess,
    checkpoints,
    popen_alembic,
    table_summary,
    watching,
)
from tests.support.seeding import hmac_hex, read_table

#: application operations for each Vault request of the migration
PACE = 1


def partition(pks: list[Any]) -> tuple[list[Any], list[list[Any]]]:
    """The test's reserved rows, and the writers' partitions (the hot one first)."""
    hot = pks[5::40]  # spread across every part of the table
    # one row in every 25 (a batch) belongs to the test itself: it changes them while the
    # migration has batches in flight (see run_paced); no writer touches them
    reserved = pks[12::25]
    taken = set(hot) | set(reserved)
    rest = [pk for pk in pks if pk not in taken]
    return reserved, [hot, rest[0::3], rest[1::3], rest[2::3]]


def run_paced(
    m: Migration, proxy: FaultProxy, proc: AlembicProcess, app: App, pool: Pool, reserved: list[Any]
) -> list[Any]:
    """Let the migration's Vault requests through as the application works (PACE operations
    each) until the run ends; returns the rows the test itself changed under it."""
    paced_at = 0
    forced: list[Any] = []
    with watching(m.engine) as watch:
        while proc.proc.poll() is None:
            held = proxy.held
            frozen = held > 0 and proxy.allowance == 0
            if not forced:
                cps = [c for c in checkpoints(watch) if c["revision"] == "0002_invitations"]
                if cps:
                    app.migrating.set()
                if frozen and cps and cps[0]["last_pk"] is not None:
                    # The run waits at the proxy with batches read and not written yet. The
                    # application changes the test's rows past the checkpoint (every batch
                    # has one): the compare-and-swap certainly meets changed rows.
                    forced = force_changes(m, pool, app.log, reserved, int(cps[0]["last_pk"]))
            credit = min((app.operations() - paced_at) // PACE, held)
            if frozen and credit > 0:
                paced_at += credit * PACE
                proxy.allow(credit)
            time.sleep(0.002)
    return forced


def expected_rows(seeded: dict[Any, Any], log: Log) -> dict[Any, dict[str, Written]]:
    """What every row must hold: the latest value written, else the seeded one."""
    expected: dict[Any, dict[str, Written]] = {}
    for pk, plain in seeded.items():
        if pk in log.deleted:
            continue
        expected[pk] = {c: Written(plain[c], "seed", None) for c in COLUMNS}
    expected.update(log.latest)
    return expected


def readable_values(
    m: Migration, stored: dict[Any, dict[str, Any]], c: str, target: str
) -> tuple[dict[Any, str | None], list[tuple[Any, str]]]:
    """Column ``c``'s plaintexts under either scheme, and the values not in ``target``."""
    readable: dict[Any, str | None] = {}
    left: list[tuple[Any, str]] = []
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
    return readable, left


def lost_values(
    m: Migration,
    stored: dict[Any, dict[str, Any]],
    expected: dict[Any, dict[str, Written]],
    target: str,
) -> tuple[list[str], list[tuple[Any, str]]]:
    """Every latest value that is not where it should be, and every value not in ``target``."""
    other = "old" if target == "new" else "new"
    lost: list[str] = []
    left: list[tuple[Any, str]] = []
    for c in COLUMNS:
        readable, left_c = readable_values(m, stored, c, target)
        left += left_c
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
            if stored[pk][f"{c}_hmac"] != hmac_hex(m.hmac_secret, w.plain):
                lost.append(f"{c} id={pk}: companion does not match")
            if w.scheme == target and got != w.ciphertext:
                lost.append(f"{c} id={pk}: a {target}-scheme value the app wrote was rewritten")
            if w.scheme in ("seed", target) and (pk, c) in left:
                lost.append(f"{c} id={pk}: left in (or reverted to) the {other} scheme")
    return lost, left


def unhandled(
    left: list[tuple[Any, str]],
    expected: dict[Any, dict[str, Written]],
    changing: set[str],
    other: str,
) -> list[str]:
    """A value may remain in the source scheme only where the app wrote it so (after the
    migration passed the row), or where the row kept changing and was reported."""
    return [
        f"{c} id={pk}: {other}-scheme value the migration should have handled"
        for pk, c in left
        if expected[pk][c].scheme != other and str(pk) not in changing
    ]


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
def test_no_lost_update_while_the_application_writes(
    migration: Migration, vault_faults: FaultProxy, direction: str
) -> None:
    m = migration
    seeded = seed_table(m, "invitations", 2400)
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
    reserved, parts = partition(sorted(seeded))
    app = App(m, pool, parts)
    log = app.log
    report_path = m.tmp_path / "concurrent-report.json"

    app.start()
    time.sleep(0.3)  # the application is busy before the migration starts
    proc = popen_alembic(
        m, "-x", "batch-size=25", "-x", "workers=2", "-x", "on-error=skip",
        "-x", f"report={report_path}", *command,
    )  # fmt: skip
    started = time.monotonic()
    forced = run_paced(m, vault_faults, proc, app, pool, reserved)
    migration_seconds = time.monotonic() - started
    app.migrating.clear()
    time.sleep(0.2)  # and keeps writing after it finished
    app.stop()
    vault_faults.release()

    assert proc.proc.returncode == 0, proc.stderr
    assert m.current() == ("0002_invitations" if direction == "upgrade" else "0001_users")
    assert not log.errors, log.errors
    summary = table_summary(json.loads(report_path.read_text()), "invitations")
    expected = expected_rows(seeded, log)
    stored = read_table(m.engine, "invitations")
    assert set(stored) == set(expected), "rows inserted or deleted by the application differ"
    lost, left = lost_values(m, stored, expected, target)
    failures = summary["failures"]
    changing = {f["id"] for f in failures if "kept changing" in f["reason"]}
    lost += unhandled(left, expected, changing, other)

    during = sum(log.ops_during.values())
    print(
        f"\n{direction} {migration_seconds:.1f}s; application operations during it: "
        f"{log.ops_during} ({during}); in all: {log.ops}; lost updates: {len(lost)}; "
        f"changed_concurrently={summary['changed_concurrently']}, "
        f"deleted_concurrently={summary['deleted_concurrently']}, "
        f"reported as still changing: {len(changing)}; {other}-scheme values left by the app: "
        f"{len(left)}; longest app write {log.longest_write * 1000:.0f} ms; longest "
        f"migration lock hold seen {app.longest_lock[0] * 1000:.0f} ms"
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
