"""Fixtures that drive the migration as operators do: alembic's command API and its CLI.

* ``transit_keys`` (function): the old and the new key in a fresh Transit mount.
* ``vault_faults`` (function): a :class:`~tests.support.fault_proxy.FaultProxy` in front of the
  session's Vault, stopped after the test. A test that asks for it gets a ``migration`` whose
  ``VAULT_ADDR`` is the proxy, so every request of the migration passes through it (and is
  counted); seeding and checks through ``Migration.vault`` still go straight to the server.
* ``migration`` (function): a fresh database with the seven tables, the keys, an HMAC secret,
  and the environment of a run (``Migration.env``, also set in ``os.environ``).

Helpers: :func:`seed_tables` seeds every table of the chain, :func:`assert_all_in` checks
every table is in one scheme. (Looking for secrets in outputs: :mod:`tests.support.leaks`.)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from context_encryption.alembic_runtime import TRANSIT_FACTORY_KEY, current_heads
from context_encryption.catalog import load_catalog
from context_encryption.settings import Settings
from tests.support.fault_proxy import FaultProxy
from tests.support.seeding import Plain, Vault, assert_scheme, sample_rows, seed
from tests.support.vault_fixtures import VaultServer

ROOT = Path(__file__).resolve().parents[2]
#: The ``alembic`` console script of this environment.
ALEMBIC = Path(sys.executable).with_name("alembic")
#: Makes the run's Transit clients (``config.attributes[TRANSIT_FACTORY_KEY]``).
TransitFactory = Callable[[Settings], Any]
OLD_KEY = "pos-encryption-key"
NEW_KEY = "pos-context-key"


@dataclass
class Migration:
    """A database with the seven tables, a Transit mount with both keys, and the settings."""

    engine: sa.Engine
    url: sa.URL
    vault: Vault
    hmac_secret: str
    env: dict[str, str]
    tmp_path: Path
    reports: list[dict[str, Any]] = field(default_factory=list)

    def config(self, **x: object) -> Config:
        args = [f"{k.replace('_', '-')}={v}" for k, v in x.items()]
        cfg = Config(str(ROOT / "alembic.ini"), cmd_opts=argparse.Namespace(x=args))
        cfg.attributes["skip_logging_config"] = True
        return cfg

    def _report_path(self) -> Path:
        return self.tmp_path / f"report-{len(self.reports)}-{secrets.token_hex(3)}.json"

    def run(
        self,
        direction: str,
        rev: str,
        x: Mapping[str, object],
        factory: TransitFactory | None = None,
    ) -> dict[str, Any]:
        """``alembic upgrade|downgrade rev`` in-process, with ``-x`` options ``x`` and the
        run's Transit clients made by ``factory`` when given; returns the run's JSON report.
        The report of a failing run is in ``reports[-1]``."""
        path = self._report_path()
        cfg = self.config(report=path, **x)
        if factory is not None:
            cfg.attributes[TRANSIT_FACTORY_KEY] = factory
        fn = command.upgrade if direction == "upgrade" else command.downgrade
        try:
            fn(cfg, rev)
        finally:
            if path.exists():
                self.reports.append(json.loads(path.read_text()))
        return self.reports[-1]

    def upgrade(self, rev: str = "head", **x: object) -> dict[str, Any]:
        """``alembic upgrade rev`` in-process; returns the run's JSON report (see :meth:`run`)."""
        return self.run("upgrade", rev, x)

    def downgrade(self, rev: str, **x: object) -> dict[str, Any]:
        return self.run("downgrade", rev, x)

    def stamp(self, rev: str) -> None:
        command.stamp(self.config(), rev, purge=True)

    def current(self) -> str | None:
        with self.engine.connect() as conn:
            heads = current_heads(conn)
        return heads[0] if heads else None

    def cli(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real ``alembic`` console script, as an operator runs it (``env`` over the
        run's environment)."""
        proc = subprocess.run(
            [str(ALEMBIC), *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"alembic {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


@pytest.fixture
def transit_keys(vault_client: Any, transit_mount: str) -> Vault:
    """The old (no-context) and the new (derived + convergent) key in a fresh mount."""
    vault_client.secrets.transit.create_key(name=OLD_KEY, mount_point=transit_mount)
    vault_client.secrets.transit.create_key(
        name=NEW_KEY, derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    return Vault(vault_client, transit_mount, OLD_KEY, NEW_KEY)


@pytest.fixture
def vault_faults(vault_server: VaultServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's Vault for one test (seeded: reproducible)."""
    proxy = FaultProxy(vault_server.addr, seed=20240601)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def migration(
    request: pytest.FixtureRequest,
    app_db: sa.Engine,
    database_url: sa.URL,
    vault_server: VaultServer,
    transit_keys: Vault,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Migration:
    hmac_secret = "hmac-" + secrets.token_hex(16)
    vault_addr = vault_server.addr
    if "vault_faults" in request.fixturenames:
        proxy: FaultProxy = request.getfixturevalue("vault_faults")
        vault_addr = proxy.addr
    env = {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "VAULT_ADDR": vault_addr,
        "VAULT_TOKEN": vault_server.token,
        "VAULT_TRANSIT_MOUNT": transit_keys.mount,
        "VAULT_OLD_KEY": OLD_KEY,
        "VAULT_NEW_KEY": NEW_KEY,
        "ENCRYPTION_HMAC_SECRET": hmac_secret,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Migration(app_db, database_url, transit_keys, hmac_secret, env, tmp_path)


def seed_table(m: Migration, table: str, n: int) -> dict[Any, Plain]:
    """``n`` old-scheme rows of :func:`sample_rows` in ``table``; plaintexts by primary key."""
    return seed(m.engine, m.vault, table, sample_rows(table, n), m.hmac_secret)


def seed_tables(
    m: Migration, sizes: Mapping[str, int], default: int = 0
) -> dict[str, dict[Any, Plain]]:
    """Old-scheme rows in every table of the chain (``sizes[table]``, else ``default`` rows; a
    table with none stays empty); plaintexts by table, then primary key (:func:`seed`)."""
    return {
        t: seed_table(m, t, n) if n else {}
        for t in load_catalog().tables
        for n in [sizes.get(t, default)]
    }


def assert_all_in(m: Migration, data: Mapping[str, Mapping[Any, Plain]], scheme: str) -> None:
    """Every table of the chain is in ``scheme`` with its seeded plaintexts and companions."""
    for table in load_catalog().tables:
        assert_scheme(m.engine, m.vault, table, data[table], scheme, m.hmac_secret)
