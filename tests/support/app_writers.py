"""The application writing ``invitations`` while a migration runs (the concurrent-writers tests).

Writer threads, each on its own connection with a short ``lock_timeout``, insert, update and
delete rows of their own partition, writing values in the old scheme, the new scheme and NULL
with matching HMAC companions, as an application mid-rollout would; the latest value written
to each row is recorded in a :class:`Log`. A sampler of ``pg_locks`` records the migration's
longest row-lock hold. Values come pre-encrypted from a :class:`Pool`, so writers never wait
for Vault.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app_models.tables import metadata
from tests.support.migration_fixtures import Migration
from tests.support.seeding import hmac_hex

__all__ = [
    "COLUMNS",
    "LOCK_TIMEOUT_MS",
    "WRITER_APP",
    "App",
    "Log",
    "Pool",
    "Written",
    "force_changes",
    "make_pool",
]

invitations = metadata.tables["invitations"]
COLUMNS = ("email", "token")
WRITER_APP = "reliability-writer"
LOCK_TIMEOUT_MS = 1000


@dataclass
class Pool:
    """Pre-encrypted values, so writers never wait for Vault."""

    plains: list[str]
    old: dict[str, list[str]]  # column -> ciphertexts (old scheme), same order as plains
    new: dict[str, list[str]]  # column -> ciphertexts (new scheme)

    def value(
        self, m: Migration, scheme: str, i: int
    ) -> tuple[dict[str, str | None], dict[str, Written]]:
        """Every column set to plaintext ``i`` in ``scheme``: the row's values and the record."""
        values: dict[str, str | None] = {}
        written: dict[str, Written] = {}
        for c in COLUMNS:
            self.set_column(m, values, written, c, scheme, i)
        return values, written

    def set_column(
        self,
        m: Migration,
        values: dict[str, str | None],
        written: dict[str, Written],
        c: str,
        scheme: str,
        i: int,
    ) -> None:
        ct = (self.old if scheme == "old" else self.new)[c][i]
        values[c] = ct
        values[f"{c}_hmac"] = hmac_hex(m.hmac_secret, self.plains[i])
        written[c] = Written(self.plains[i], scheme, ct)


@dataclass
class Written:
    plain: str | None
    scheme: str  # "old", "new", "null" (or "seed" for a value seeded before the run)
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

    def record(
        self, op: str, pk: Any, written: dict[str, Written], mine: list[Any], during: bool
    ) -> None:
        """One committed operation of a writer whose partition is ``mine``."""
        self.ops[op] += 1
        if during:
            self.ops_during[op] += 1
        if op == "delete":
            mine.remove(pk)
            self.deleted.add(pk)
            self.latest.pop(pk, None)
            return
        if op == "insert":
            mine.append(pk)
        self.latest[pk] = written


def make_pool(m: Migration, n: int) -> Pool:
    plains = [f"written by the app #{i} ({'é' if i % 2 else 'e'})" for i in range(n)]
    plains[0] = ""  # the empty string is a value like any other
    old = {c: m.vault.encrypt(m.vault.old_key, plains, [None] * n) for c in COLUMNS}
    new = {c: m.vault.encrypt(m.vault.new_key, plains, [f"invitations.{c}"] * n) for c in COLUMNS}
    return Pool(plains, old, new)


def pick_values(
    m: Migration, pool: Pool, rng: random.Random
) -> tuple[dict[str, str | None], dict[str, Written]]:
    """Random values for a row: per column old (45 %), new (45 %) or NULL (10 %)."""
    values: dict[str, str | None] = {}
    written: dict[str, Written] = {}
    for c in COLUMNS:
        scheme = rng.choices(("old", "new", "null"), weights=(45, 45, 10))[0]
        if scheme == "null":
            values[c] = values[f"{c}_hmac"] = None
            written[c] = Written(None, "null", None)
            continue
        pool.set_column(m, values, written, c, scheme, rng.randrange(len(pool.plains)))
    return values, written


def _write(conn: sa.Connection, op: str, pk: Any, values: dict[str, str | None]) -> Any:
    """One application transaction: insert (returns the new key), update or delete ``pk``."""
    with conn.begin():
        if op == "insert":
            return conn.execute(
                sa.insert(invitations).values(**values).returning(invitations.c.id)
            ).scalar_one()
        if op == "update":
            conn.execute(sa.update(invitations).where(invitations.c.id == pk).values(**values))
        else:
            conn.execute(sa.delete(invitations).where(invitations.c.id == pk))
        return pk


def _writer_engine(m: Migration, **connect_args: str) -> sa.Engine:
    return sa.create_engine(
        m.url,
        poolclass=sa.pool.NullPool,
        connect_args={"application_name": WRITER_APP, **connect_args},
    )


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
    engine = _writer_engine(m, options=f"-c lock_timeout={LOCK_TIMEOUT_MS}")
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                op = "update" if hot else rng.choices(("update", "insert", "delete"), (6, 2, 1))[0]
                if op != "insert" and not mine:
                    op = "insert"
                values, written = pick_values(m, pool, rng)
                t0 = time.monotonic()
                try:
                    pk = _write(conn, op, None if op == "insert" else rng.choice(mine), values)
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
                    log.record(op, pk, written, mine, migrating.is_set())
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
    engine = _writer_engine(m)
    with engine.begin() as conn:
        for n, pk in enumerate(pks):
            values, written = pool.value(m, ("old", "new")[n % 2], 1 + n % (len(pool.plains) - 1))
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


class App:
    """The application at work: one writer thread per partition (the first one hot: updates
    only), and the lock sampler. ``migrating`` is set while the migration runs."""

    def __init__(self, m: Migration, pool: Pool, parts: list[list[Any]]) -> None:
        self.log = Log()
        self.stop_writers, self.migrating, self.stop_sampler = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.longest_lock = [0.0]
        self.writers = [
            threading.Thread(
                target=writer,
                args=(m, pool, self.log, part, self.stop_writers, self.migrating, i, i == 0),
                daemon=True,
            )
            for i, part in enumerate(parts)
        ]
        self.sampler = threading.Thread(
            target=lock_sampler, args=(m, self.stop_sampler, self.longest_lock)
        )

    def start(self) -> None:
        self.sampler.start()
        for t in self.writers:
            t.start()

    def operations(self) -> int:
        with self.log.lock:
            return sum(self.log.ops.values())

    def stop(self) -> None:
        self.stop_writers.set()
        for t in self.writers:
            t.join(30)
        self.stop_sampler.set()
        self.sampler.join(30)
