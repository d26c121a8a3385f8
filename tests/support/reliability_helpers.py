"""Helpers shared by the reliability tests (issue 5): subprocess runs, checkpoints, values.

Everything talks to the real PostgreSQL and to a real Vault (OpenBao) over HTTP, through the
fault proxy of :mod:`tests.support.fault_proxy` when a test injects faults; nothing is mocked.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac.exceptions
import sqlalchemy as sa

from app_models.tables import context_string, metadata
from context_encryption.alembic_runtime import current_heads
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient, build_retry
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import ALEMBIC, ROOT, Migration
from tests.support.seeding import b64, encrypted_columns, read_table, values_to_check

__all__ = [
    "ALEMBIC",
    "AlembicProcess",
    "Bind",
    "b64",
    "checkpoints",
    "committed_batches",
    "current_version",
    "decrypt_one",
    "encrypt_raw",
    "new_ct",
    "old_ct",
    "old_cts",
    "other_backends",
    "popen_alembic",
    "readable_as",
    "run_alembic",
    "run_inprocess",
    "schemes_of",
    "set_values",
    "small_retry_factory",
    "step_until",
    "table_summary",
    "wait_no_backends",
    "watching",
]


# --------------------------------------------------------------------------------------------
# running the migration
# --------------------------------------------------------------------------------------------


@dataclass
class AlembicProcess:
    """An ``alembic`` subprocess whose stdout and stderr go to files (never a full pipe)."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


_counter = [0]


def popen_alembic(
    m: Migration, *args: str, env: dict[str, str] | None = None, tag: str = "run"
) -> AlembicProcess:
    """Start ``alembic *args`` as an operator would, with the test's environment."""
    _counter[0] += 1
    out = m.tmp_path / f"{tag}-{_counter[0]}.out"
    err = m.tmp_path / f"{tag}-{_counter[0]}.err"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [str(ALEMBIC), *args],
            cwd=ROOT,
            env={**os.environ, **m.env, **(env or {})},
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
        )
    return AlembicProcess(proc, out, err)


def run_alembic(
    m: Migration, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> AlembicProcess:
    p = popen_alembic(m, *args, env=env)
    p.wait(timeout)
    return p


def small_retry_factory(total: int = 3, backoff: float = 0.02) -> Callable[[Settings], Any]:
    """Vault clients with urllib3's Retry as the engine builds it, with a shorter budget."""

    def make(settings: Settings) -> TransitClient:
        return TransitClient.from_settings(
            settings, retry=build_retry(total=total, backoff_factor=backoff, backoff_max=0.2)
        )

    return make


def run_inprocess(
    m: Migration,
    direction: str,
    rev: str,
    *,
    factory: Callable[[Settings], Any] | None = None,
    **x: object,
) -> dict[str, Any]:
    """``alembic upgrade|downgrade rev`` in-process, optionally with a Transit factory
    (:meth:`Migration.run`).

    Returns the JSON report; the report of a failing run is in ``m.reports[-1]``.
    """
    return m.run(direction, rev, x, factory)


def table_summary(report: dict[str, Any], table: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [t for t in report["tables"] if t["table"] == table]
    assert found, f"no summary of {table} in the report"
    return found[-1]


# --------------------------------------------------------------------------------------------
# database state
# --------------------------------------------------------------------------------------------


Bind = sa.Engine | sa.Connection


@contextmanager
def watching(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One autocommit connection for a polling loop (a new backend per poll would cost the
    machine more than the run under test)."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def _connected(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def checkpoints(bind: Bind) -> list[dict[str, Any]]:
    with _connected(bind) as conn:
        if not sa.inspect(conn).has_table("context_encryption_checkpoint"):
            return []
        rows = conn.execute(
            sa.text(
                "SELECT revision, direction, table_name, batch_seq, last_pk "
                "FROM context_encryption_checkpoint ORDER BY revision, direction"
            )
        )
        return [dict(r._mapping) for r in rows]


def committed_batches(bind: Bind, revision: str) -> int:
    """Batches of ``revision`` the current run has committed (0 before its first checkpoint)."""
    cps = [c for c in checkpoints(bind) if c["revision"] == revision]
    if not cps or cps[0]["last_pk"] is None:
        return 0
    return int(cps[0]["batch_seq"]) + 1


def step_until(
    proxy: FaultProxy,
    done: Callable[[], bool],
    alive: Callable[[], bool],
    what: str = "the run",
    timeout: float = 120,
) -> None:
    """With ``proxy`` holding the run's Vault requests (:meth:`FaultProxy.hold`), let them
    through one at a time until ``done()``. The run then waits at the proxy, frozen, until the
    test lets it go on (:meth:`FaultProxy.release`): a fault lands where the test wants it,
    however fast or slow the machine is."""
    deadline = time.monotonic() + timeout
    while not done():
        assert alive(), f"{what} ended before the fault could be injected"
        assert time.monotonic() < deadline, f"{what} made no progress"
        if proxy.held and proxy.allowance == 0:
            proxy.allow(1)
        time.sleep(0.002)


def current_version(bind: Bind) -> str | None:
    with _connected(bind) as conn:
        heads = current_heads(conn)
    return heads[0] if heads else None


def other_backends(engine: sa.Engine) -> list[dict[str, Any]]:
    """Backends connected to the test database other than the one asking."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT pid, application_name, state, query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        return [dict(r._mapping) for r in rows]


def wait_no_backends(engine: sa.Engine, timeout: float = 15) -> None:
    """Wait until every backend of a killed client has gone (its transactions rolled back)."""
    deadline = time.monotonic() + timeout
    while other_backends(engine):
        if time.monotonic() > deadline:
            raise AssertionError(f"backends still connected: {other_backends(engine)}")
        time.sleep(0.02)


def set_values(m: Migration, table: str, pk: Any, **values: str | None) -> None:
    t = metadata.tables[table]
    with m.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.id == pk).values(**values))


# --------------------------------------------------------------------------------------------
# Vault values
# --------------------------------------------------------------------------------------------


def old_ct(m: Migration, text: str) -> str:
    return m.vault.encrypt(m.vault.old_key, [text], [None])[0]


def new_ct(m: Migration, table: str, column: str, text: str) -> str:
    return m.vault.encrypt(m.vault.new_key, [text], [context_string(table, column)])[0]


def old_cts(m: Migration, texts: Sequence[str]) -> list[str]:
    return m.vault.encrypt(m.vault.old_key, list(texts), [None] * len(texts))


def encrypt_raw(client: Any, mount: str, key: str, raw: bytes, **kw: Any) -> str:
    """Encrypt arbitrary bytes (not necessarily UTF-8) through hvac."""
    resp = client.secrets.transit.encrypt_data(
        name=key, plaintext=base64.b64encode(raw).decode(), mount_point=mount, **kw
    )
    return str(resp["data"]["ciphertext"])


def decrypt_one(m: Migration, key: str, ct: str, context: str | None) -> str | None:
    """Plaintext of ``ct`` under ``key`` (and context), or None when Vault cannot decrypt it."""
    try:
        return m.vault.decrypt(key, [ct], [context])[0]
    except (hvac.exceptions.VaultError, UnicodeDecodeError):
        return None


def readable_as(m: Migration, table: str, column: str, ct: str) -> tuple[str, str] | None:
    """("new"|"old", plaintext) for a stored ciphertext, or None when neither scheme reads it."""
    p = decrypt_one(m, m.vault.new_key, ct, context_string(table, column))
    if p is not None:
        return "new", p
    p = decrypt_one(m, m.vault.old_key, ct, None)
    if p is not None:
        return "old", p
    return None


def schemes_of(
    m: Migration, table: str, expected: dict[Any, dict[str, str | None]]
) -> dict[Any, set[str]]:
    """For every row, the schemes its values are in; fails on any value that is unreadable,
    carries another plaintext (a double-encrypted value decrypts to a ciphertext), or a NULL
    that changed. NULL values add nothing to the set."""
    stored = read_table(m.engine, table)
    assert set(stored) == set(expected), f"{table}: rows differ"
    out: dict[Any, set[str]] = {pk: set() for pk in stored}
    for col in encrypted_columns(table):
        pks, cts = values_to_check(table, col.name, stored, expected)
        ctx = context_string(table, col.name)
        new = m.vault.decrypt(m.vault.new_key, cts, [ctx] * len(cts))
        rest = [i for i, p in enumerate(new) if p is None]
        old = m.vault.decrypt(m.vault.old_key, [cts[i] for i in rest], [None] * len(rest))
        old_by_i = dict(zip(rest, old, strict=True))
        for i, pk in enumerate(pks):
            want = expected[pk][col.name]
            if new[i] is not None:
                assert new[i] == want, f"{table}.{col.name} id={pk}: wrong plaintext (new)"
                out[pk].add("new")
            else:
                assert old_by_i[i] is not None, f"{table}.{col.name} id={pk}: unreadable"
                assert old_by_i[i] == want, f"{table}.{col.name} id={pk}: wrong plaintext (old)"
                out[pk].add("old")
    return out
