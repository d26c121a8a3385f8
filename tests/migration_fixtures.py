"""Fixtures that drive the migration as operators do: alembic's command API and its CLI."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from tests.seeding import Vault

ROOT = Path(__file__).resolve().parent.parent
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

    def _run(self, fn: Any, rev: str, x: dict[str, object]) -> dict[str, Any]:
        path = self._report_path()
        try:
            fn(self.config(report=path, **x), rev)
        finally:
            if path.exists():
                self.reports.append(json.loads(path.read_text()))
        return self.reports[-1]

    def upgrade(self, rev: str = "head", **x: object) -> dict[str, Any]:
        """``alembic upgrade rev`` in-process; returns the run's JSON report."""
        return self._run(command.upgrade, rev, x)

    def downgrade(self, rev: str, **x: object) -> dict[str, Any]:
        return self._run(command.downgrade, rev, x)

    def stamp(self, rev: str) -> None:
        command.stamp(self.config(), rev, purge=True)

    def current(self) -> str | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version_encryption"):
                return None
            return conn.execute(
                sa.text("SELECT version_num FROM alembic_version_encryption")
            ).scalar()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real ``alembic`` console script, as an operator runs it."""
        exe = Path(sys.executable).with_name("alembic")
        proc = subprocess.run(
            [str(exe), *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
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
def migration(
    app_db: sa.Engine,
    database_url: sa.URL,
    vault_server: Any,
    transit_keys: Vault,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Migration:
    hmac_secret = "hmac-" + secrets.token_hex(16)
    env = {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "VAULT_ADDR": vault_server.addr,
        "VAULT_TOKEN": vault_server.token,
        "VAULT_TRANSIT_MOUNT": transit_keys.mount,
        "VAULT_OLD_KEY": OLD_KEY,
        "VAULT_NEW_KEY": NEW_KEY,
        "ENCRYPTION_HMAC_SECRET": hmac_secret,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Migration(app_db, database_url, transit_keys, hmac_secret, env, tmp_path)


def secrets_of(m: Migration, data: dict[str, dict[Any, Any]]) -> list[str]:
    """The Vault token, the HMAC secret and every seeded plaintext longer than 6 characters."""
    out = [m.env["VAULT_TOKEN"], m.hmac_secret]
    out += [
        v
        for rows in data.values()
        for row in rows.values()
        for v in row.values()
        if isinstance(v, str) and len(v) > 6
    ]
    return out


def assert_no_leak(text: str, secrets: list[str]) -> None:
    for s in secrets:
        assert s not in text, "a secret or plaintext appeared in the output"
