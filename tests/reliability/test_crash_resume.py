"""Crash and resume (issue 5, point 1): SIGKILL ``alembic`` at many points, then re-run.

A multi-batch ``upgrade head`` and then a ``downgrade base`` are each killed with SIGKILL at at
least ten moments spread across batches and revisions (during start-up, after 1-4 batches of a
run, right after a revision was stamped). After each kill the test waits for the killed
process's backends to go (PostgreSQL rolls their open transactions back) and reads what is
durable: the version stamp and the checkpoint. The next run must resume exactly there (its log
says so), and a plain final run finishes the job: every value in the target scheme with its
original plaintext (so none is double-encrypted: a twice-encrypted value would decrypt to a
ciphertext), the version stamp right, no checkpoint left, and the completing run's report shows
it did not redo committed batches (``resumed_after`` = the checkpoint, ``rows_scanned`` = the
rows after it).

The run's Vault requests pass the fault proxy one at a time, let through by the test between
two looks at the database, so a run never gets past its kill point unseen, however fast or slow
the machine is.

In this engine a batch's write and its checkpoint are one transaction, so they cannot be apart;
with several workers a later batch can commit before the checkpoint reaches it, and kills there
are covered (the re-run finds those rows already migrated).
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from context_encryption.catalog import load_catalog
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import Migration, assert_all_in, seed_tables
from tests.support.reliability_helpers import (
    AlembicProcess,
    Bind,
    checkpoints,
    current_version,
    popen_alembic,
    run_alembic,
    schemes_of,
    wait_no_backends,
    watching,
)

SIZES = {
    "users": 1200,
    "invitations": 1200,
    "guest_orders": 400,
    "delivery_addresses": 150,
    "notifications": 150,
    "sessions": 300,
    "consent_records": 150,
}
BATCH = 50
CATALOG = load_catalog()
REVISIONS = CATALOG.revisions
TABLE_OF = dict(zip(REVISIONS, CATALOG.tables, strict=True))


@dataclass
class KillPoint:
    plan: str
    version: str | None
    checkpoint: tuple[str, int, str | None] | None  # revision, batch_seq, last_pk
    seconds: float
    ahead: int = 0  # rows past the checkpoint already migrated (a later batch committed first)


def _state(bind: Bind, direction: str) -> tuple[str | None, tuple[str, int, str | None] | None]:
    cps = [c for c in checkpoints(bind) if c["direction"] == direction]
    assert len(cps) <= 1, f"more than one {direction} checkpoint: {cps}"
    cp = (cps[0]["revision"], cps[0]["batch_seq"], cps[0]["last_pk"]) if cps else None
    return current_version(bind), cp


def _kill_when(
    p: AlembicProcess,
    plan: str,
    direction: str,
    rng: random.Random,
    proxy: FaultProxy,
    watch: sa.Connection,
) -> bool:
    """Kill ``p`` at the moment ``plan`` names; False when it finished first.

    ``time:S``: S seconds after launch. ``batches:N``: once this run has committed N batches of
    the revision it is on (its checkpoint's ``batch_seq`` restarts at -1 for every run).
    ``stamp:1``: as soon as this run has stamped a revision.

    The run's Vault requests wait at ``proxy`` (holding them) and are let through one at a time
    between two looks at the database, so the run cannot run past the kill point unseen.
    """
    started = time.monotonic()
    kind, _, arg = plan.partition(":")
    initial = _state(watch, direction)
    fresh = False  # the checkpoint seen belongs to this run
    while True:
        if p.proc.poll() is not None:
            return False
        elapsed = time.monotonic() - started
        if kind == "time" and elapsed >= float(arg):
            break
        if elapsed > 120:
            raise AssertionError(f"no progress within 120 s:\n{p.stderr}")
        time.sleep(0.001 + rng.random() * 0.004)
        if kind != "time":
            version, cp = _state(watch, direction)
            if kind == "stamp" and version != initial[0]:
                break
            if cp is not None:
                old = initial[1]
                if old is None or cp[0] != old[0] or cp[1] < old[1] or version != initial[0]:
                    fresh = True
                if kind == "batches" and fresh and cp[2] is not None and cp[1] >= int(arg) - 1:
                    break
        if proxy.held and proxy.allowance == 0:
            proxy.allow(1)
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait(10)
    return True


def _rows_after(m: Migration, table: str, last_pk: str) -> int:
    t = metadata.tables[table]
    pk: Any = uuid.UUID(last_pk) if isinstance(t.c.id.type, sa.Uuid) else int(last_pk)
    with m.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(t.c.id > pk)).scalar_one())


def _check_after_kill(
    m: Migration, data: dict[str, dict[Any, Any]], direction: str, cp: Any, version: str | None
) -> int:
    """Every value of the table being worked on reads with its original plaintext in one of the
    schemes, and every row up to the checkpoint is in the target scheme."""
    if cp is not None:
        rev = cp[0]
    else:  # between revisions: the next one to run
        if version == (REVISIONS[-1] if direction == "upgrade" else None):
            return 0  # nothing left to do
        i = REVISIONS.index(version) if version else -1
        rev = REVISIONS[i + 1] if direction == "upgrade" else REVISIONS[i]
    table = TABLE_OF[rev]
    schemes = schemes_of(m, table, data[table])
    target = "new" if direction == "upgrade" else "old"
    if cp is not None and cp[2] is not None:
        t = metadata.tables[table]
        last: Any = uuid.UUID(cp[2]) if isinstance(t.c.id.type, sa.Uuid) else int(cp[2])
        behind = [pk for pk, s in schemes.items() if pk <= last and s - {target}]
        assert not behind, f"{table}: rows up to the checkpoint not in the {target} scheme"
        return sum(1 for pk, s in schemes.items() if pk > last and s == {target})
    return 0


def _crash_loop(
    m: Migration,
    data: dict[str, dict[Any, Any]],
    args: list[str],
    direction: str,
    plans: list[str],
    rng: random.Random,
    proxy: FaultProxy,
) -> list[KillPoint]:
    """Run ``alembic args`` again and again, killing it as ``plans`` say; then let it finish."""
    kills: list[KillPoint] = []
    report = m.tmp_path / f"final-{direction}.json"
    # after the planned kills, single-batch kills until one lands mid-table, so the final run
    # shows its resume point
    for plan in [*plans, *["batches:1"] * 6]:
        last = kills[-1].checkpoint if kills else None
        if len(kills) >= KILLS and last is not None and last[2] is not None:
            break
        version, cp = _state(m.engine, direction)
        proxy.hold(f"{m.vault.mount}/")
        p = popen_alembic(m, *args, tag=f"crash-{direction}")
        t0 = time.monotonic()
        with watching(m.engine) as watch:
            killed = _kill_when(p, plan, direction, rng, proxy, watch)
        proxy.release()  # what the killed run left at the proxy goes on, to no one
        if not killed:  # finished before the kill point: counted as a missed kill
            assert p.proc.returncode == 0, p.stderr
            break
        wait_no_backends(m.engine)
        after = _state(m.engine, direction)
        # a killed run that made progress resumed from the checkpoint the previous kill left
        if cp is not None and cp[2] is not None and after != (version, cp):
            resumed = f"{TABLE_OF[cp[0]]}: resuming {direction} after id={cp[2]}"
            assert resumed in p.stderr, f"run after a kill did not resume at {cp}:\n{p.stderr}"
        version, cp = after
        ahead = _check_after_kill(m, data, direction, cp, version)
        kills.append(KillPoint(plan, version, cp, time.monotonic() - t0, ahead))
    # the plain re-run that finishes the job
    version, cp = _state(m.engine, direction)
    final = run_alembic(m, "-x", f"report={report}", *args)
    assert final.proc.returncode == 0, final.stderr
    assert cp is not None and cp[2] is not None, f"the last kill should be mid-table: {kills}"
    if cp is not None and cp[2] is not None:
        rep = json.loads(report.read_text())
        table = TABLE_OF[cp[0]]
        summary = next(t for t in rep["tables"] if t["table"] == table)
        assert summary["resumed_after"] == cp[2]
        assert summary["rows_scanned"] == _rows_after(m, table, cp[2])
        assert summary["rows_scanned"] < SIZES[table]
    return kills


KILLS = 12
PLANS = [
    "time:0.4",  # during start-up / preflight
    "batches:1",
    "batches:3",
    "stamp:1",  # right after a revision was stamped
    "batches:2",
    "stamp:1",
    "time:0.9",
    "batches:2",
    "batches:1",
    "batches:2",
    "batches:1",
    "batches:1",
]


@pytest.mark.slow
def test_sigkill_upgrade_and_downgrade_then_rerun_finishes(
    migration: Migration, vault_faults: FaultProxy
) -> None:
    rng = random.Random(5)
    data = seed_tables(migration, SIZES)
    up_args = ["-x", f"batch-size={BATCH}", "-x", "workers=2", "upgrade", "head"]
    up_kills = _crash_loop(migration, data, up_args, "upgrade", PLANS, rng, vault_faults)
    assert current_version(migration.engine) == "0007_consent_records"
    assert checkpoints(migration.engine) == []
    assert_all_in(migration, data, "new")

    down_args = ["-x", f"batch-size={BATCH}", "-x", "workers=2", "downgrade", "base"]
    down_kills = _crash_loop(migration, data, down_args, "downgrade", PLANS, rng, vault_faults)
    assert current_version(migration.engine) is None
    assert checkpoints(migration.engine) == []
    assert_all_in(migration, data, "old")

    for name, kills in (("upgrade", up_kills), ("downgrade", down_kills)):
        print(f"\n{name}: {len(kills)} kill points survived:")
        for k in kills:
            print(
                f"  {k.plan:10s} {k.seconds:5.2f}s: stamp={k.version} checkpoint={k.checkpoint}"
                + (f", {k.ahead} rows past it already migrated" if k.ahead else "")
            )
        assert len(kills) >= 10, f"{name}: only {len(kills)} kills landed before the run finished"
        mid_batch = [k for k in kills if k.checkpoint is not None and k.checkpoint[2] is not None]
        assert len({k.checkpoint for k in mid_batch}) >= 6, "kills not spread across batches"
        assert len({k.version for k in kills}) >= 3, "kills not spread across revisions"
