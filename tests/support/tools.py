"""The tool as the tests drive it: its console script in a subprocess, its preflight in-process.

* :func:`subprocess_tool` / :func:`subprocess_verify`: the real ``context-encryption`` console
  script, with the test's environment, as an operator runs it.
* :func:`settings_of`, :func:`preflight` and :func:`failure`: the preflight against the test's
  database and Vault, and the text of a preflight that refuses (checked to say nothing was
  changed and to hold no secret).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from context_encryption.catalog import load_catalog
from context_encryption.errors import PreflightError
from context_encryption.preflight import PreflightReport, run_preflight
from context_encryption.settings import Settings, load_settings
from context_encryption.transit import TransitClient
from tests.support.migration_fixtures import ROOT, Migration

__all__ = ["failure", "preflight", "settings_of", "subprocess_tool", "subprocess_verify"]


def subprocess_tool(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``context-encryption`` console script, with ``env`` over this environment."""
    exe = Path(sys.executable).with_name("context-encryption")
    assert exe.exists(), "run .venv/bin/pip install -e . --group dev once"
    return subprocess.run(
        [str(exe), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def subprocess_verify(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``context-encryption verify *args`` (see :func:`subprocess_tool`)."""
    return subprocess_tool(env, "verify", *args)


def settings_of(m: Migration, **x: str) -> Settings:
    """The settings of a run on ``m`` with ``-x`` options ``x`` (underscores for dashes)."""
    return load_settings({k.replace("_", "-"): v for k, v in x.items()}, m.env)


def preflight(
    m: Migration, direction: str = "upgrade", tables: tuple[str, ...] | None = None, **x: str
) -> PreflightReport:
    """The preflight of ``direction`` on ``tables`` (default: every table of the chain)."""
    settings = settings_of(m, **x)
    transit = TransitClient.from_settings(settings)
    engine = sa.create_engine(settings.database_url or m.url, poolclass=sa.pool.NullPool)
    try:
        return run_preflight(
            settings,
            direction=direction,
            tables=load_catalog().tables if tables is None else tables,
            transit=transit,
            engine=engine,
        )
    finally:
        transit.close()
        engine.dispose()


def failure(m: Migration, direction: str = "upgrade", **kw: Any) -> str:
    """The text of a preflight that refuses; it says nothing changed and holds no secret."""
    with pytest.raises(PreflightError) as info:
        preflight(m, direction, **kw)
    text = str(info.value)
    assert text.startswith("preflight failed")
    assert "nothing was changed" in text
    assert m.env["VAULT_TOKEN"] not in text
    assert m.hmac_secret not in text
    return text
