"""Looking for secrets in what the tool says: the values to look for, the places to look in.

* :func:`secret_values`: the Vault token, the HMAC secret, the database password and every
  seeded plaintext, by name (the name, never the value, goes into a failure message);
  :func:`assert_clean`: none of them in a text.
* :func:`secrets_of` and :func:`assert_no_leak`: the same without names or password (the token,
  the HMAC secret, every plaintext longer than 6 characters), for the migration tests.
* :func:`debug_ini`: a copy of alembic.ini with every logger and handler at DEBUG.
* :class:`CliRuns`: the operator's commands (``alembic -c <debug ini>`` and
  ``context-encryption``) run as subprocesses, each output and report kept for the check.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.migration_fixtures import ROOT, Migration
from tests.support.reliability_helpers import run_alembic
from tests.support.tools import subprocess_tool

__all__ = [
    "CliRuns",
    "assert_clean",
    "assert_no_leak",
    "debug_ini",
    "secret_values",
    "secrets_of",
]


def debug_ini(tmp_path: Path) -> Path:
    """alembic.ini with every logger and handler at DEBUG (script_location made absolute)."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT / "alembic.ini")
    cp["alembic"]["script_location"] = str(ROOT / "migrations")
    for section in cp.sections():
        if section.startswith(("logger_", "handler_")):
            cp[section]["level"] = "DEBUG"
    # the library loggers without a section of their own get one, at DEBUG
    extra = {"urllib3": "urllib3", "hvac": "hvac", "sqlalchemy_pool": "sqlalchemy.pool"}
    cp["loggers"]["keys"] = cp["loggers"]["keys"] + "," + ",".join(extra)
    for key, qualname in extra.items():
        cp[f"logger_{key}"] = {"level": "DEBUG", "handlers": "", "qualname": qualname}
    path = tmp_path / "alembic-debug.ini"
    with path.open("w") as fh:
        cp.write(fh)
    return path


def secret_values(m: Migration, data: dict[str, dict[Any, Any]], password: str) -> dict[str, str]:
    """What must never be shown, by name: the secrets and every plaintext of 8+ characters."""
    found = {
        "Vault token": m.env["VAULT_TOKEN"],
        "HMAC secret": m.hmac_secret,
        "database password": password,
    }
    for t, rows in data.items():
        for pk, row in rows.items():
            for col, v in row.items():
                if isinstance(v, str) and len(v.strip()) >= 8:
                    found[f"plaintext of {t}.{col} id={pk}"] = v
    return found


def assert_clean(where: str, text: str, secrets: dict[str, str]) -> None:
    leaked = [name for name, v in secrets.items() if v in text]
    assert not leaked, f"{where} shows: {leaked[:5]}"


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


@dataclass
class CliRuns:
    """The operator's commands at DEBUG on ``m``; every output and report kept."""

    m: Migration
    tmp_path: Path
    outputs: list[tuple[str, str]] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ini = str(debug_ini(self.tmp_path))

    def alembic(
        self, name: str, *args: str, ok: bool = True, env: dict[str, str] | None = None
    ) -> str:
        """``alembic -c <debug ini> -x report=... *args``; its stderr."""
        report = self.tmp_path / f"leak-{len(self.reports)}.json"
        self.reports.append(report)
        p = run_alembic(self.m, "-c", self.ini, "-x", f"report={report}", *args, env=env)
        self.outputs.append((f"alembic {name} stdout", p.stdout))
        self.outputs.append((f"alembic {name} stderr", p.stderr))
        assert (p.proc.returncode == 0) == ok, f"{name}: exit {p.proc.returncode}\n{p.stderr}"
        return p.stderr

    def tool(self, name: str, *args: str, ok: bool = True) -> None:
        """``context-encryption *args``."""
        p = subprocess_tool(self.m.env, *args)
        self.outputs.append((f"{name} stdout", p.stdout))
        self.outputs.append((f"{name} stderr", p.stderr))
        assert (p.returncode == 0) == ok, f"{name}: exit {p.returncode}\n{p.stderr}"

    def assert_clean(self, secrets: dict[str, str]) -> None:
        """No output and no report of these runs shows any of ``secrets``."""
        for where, text in self.outputs:
            assert_clean(where, text, secrets)
        for report in self.reports:
            if report.exists():
                assert_clean(f"report {report.name}", report.read_text(), secrets)
