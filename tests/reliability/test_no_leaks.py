"""Secrets stay secret (issue 5, point 6).

Upgrade, downgrade, dry runs, ``context-encryption verify`` and failing runs are made with every
logger at DEBUG, as the operator's CLI (a copy of ``alembic.ini`` with every level at DEBUG,
passed with ``alembic -c``) and in-process (the root logger and every library logger at DEBUG,
captured by caplog). No seeded plaintext, the Vault token, the HMAC secret or the database
password may appear in stdout, stderr, any log record or any JSON report.

The database password belongs to a PostgreSQL role made for the test (trust authentication does
not check it, but it is in the URL every run uses).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from psycopg import sql

from context_encryption import cli
from tests.support.leaks import CliRuns, assert_clean, debug_ini, secret_values
from tests.support.migration_fixtures import Migration, seed_table, seed_tables
from tests.support.reliability_helpers import run_alembic, set_values
from tests.support.seeding import pks_with, read_table

LOGGERS = (
    "",
    "sqlalchemy",
    "sqlalchemy.engine",
    "alembic",
    "context_encryption",
    "urllib3",
    "hvac",
)


@pytest.fixture
def db_password(migration: Migration, pg_admin_url: sa.URL) -> Iterator[str]:
    """A role with a password owning nothing yet; DATABASE_URL switched to it."""
    role = f"leak_{secrets.token_hex(4)}"
    password = f"pw-{secrets.token_hex(12)}"
    admin = pg_admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    test_db = migration.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    with psycopg.connect(test_db, autocommit=True) as conn:
        for stmt in (
            "GRANT ALL ON SCHEMA public TO {}",
            "GRANT ALL ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}",
        ):
            conn.execute(sql.SQL(stmt).format(sql.Identifier(role)))
    url = migration.url.set(username=role, password=password)
    migration.env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    assert password in migration.env["DATABASE_URL"]
    try:
        yield password
    finally:
        with psycopg.connect(test_db, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}"
                ).format(sql.Literal(role))
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def seed_all(m: Migration) -> dict[str, dict[Any, Any]]:
    return seed_tables(m, {}, default=25)


def _tamper(m: Migration, table: str, pk: Any, column: str) -> None:
    """Change the last characters of a stored ciphertext: Vault can no longer decrypt it."""
    ct = read_table(m.engine, table)[pk][column]
    set_values(m, table, pk, **{column: ct[:-6] + ("AAAAAA" if ct[-6:] != "AAAAAA" else "BBBBBB")})


def _failing_cli_runs(runs: CliRuns, hidden: dict[str, str]) -> None:
    """Runs that fail (each adds what it was given to ``hidden``)."""
    runs.alembic("failing (tampered row)", "upgrade", "head", ok=False)
    runs.alembic(
        "failing (wrong HMAC secret)",
        "-x", "hmac-secret=wrong-secret-123456", "-x", "tables=all", "upgrade", "head",
        ok=False,
    )  # fmt: skip
    hidden["wrong HMAC secret given"] = "wrong-secret-123456"
    fake_token = f"hvs.{secrets.token_hex(12)}"
    hidden["invalid token given"] = fake_token
    runs.alembic(
        "failing (bad token)", "upgrade", "head", ok=False, env={"VAULT_TOKEN": fake_token}
    )
    runs.alembic(
        "failing (typo beside secrets)",
        "-x", f"vault-token={fake_token}", "-x", "dry-rum=true", "upgrade", "head",
        ok=False,
    )  # fmt: skip
    unreachable = runs.m.env["DATABASE_URL"].replace("127.0.0.1:5432", "127.0.0.1:1")
    runs.alembic(
        "failing (database down)", "upgrade", "head", ok=False, env={"DATABASE_URL": unreachable}
    )
    runs.tool("verify (problems)", "verify", "-v", ok=False)


def test_cli_runs_at_debug_show_no_secret(
    migration: Migration, db_password: str, tmp_path: Path
) -> None:
    m = migration
    data = seed_all(m)
    bad_pk = pks_with(data["invitations"], "token", 4)[3]
    hidden = secret_values(m, data, db_password)
    runs = CliRuns(m, tmp_path)

    err = runs.alembic("dry run", "-x", "dry-run=true", "upgrade", "head")
    assert "DEBUG" in err, "the debug configuration did not take effect"
    runs.alembic("upgrade", "upgrade", "head")
    runs.tool("verify", "verify", "-v")
    runs.tool("verify --json", "verify", "-v", "--json")
    runs.tool("preflight", "preflight", "-v", "--direction", "downgrade")
    runs.alembic("downgrade", "downgrade", "base")
    _tamper(m, "invitations", bad_pk, "token")
    _failing_cli_runs(runs, hidden)

    runs.assert_clean(hidden)
    print(
        f"\n{len(runs.outputs) // 2} CLI runs at DEBUG, "
        f"{sum(r.exists() for r in runs.reports)} reports, "
        f"{len(hidden)} secrets and plaintexts searched: none found"
    )


@pytest.fixture
def debug_logging(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _record_texts(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, str]]:
    for r in caplog.records:
        yield f"log record {r.name}", r.getMessage()
        yield f"log record {r.name} args", repr(r.args)
        if r.exc_info and r.exc_info[1] is not None:
            yield f"log record {r.name} exception", repr(r.exc_info[1])
        if r.exc_text:
            yield f"log record {r.name} exc_text", r.exc_text


def _failing_inprocess_runs(
    m: Migration, hidden: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Runs that fail (each adds what it was given to ``hidden``); their error messages."""
    errors: list[str] = []
    with pytest.raises(CommandError) as err:
        m.upgrade("head")
    errors.append(str(err.value))
    with pytest.raises(CommandError) as err:
        m.upgrade("head", hmac_secret="wrong-secret-abcdef")
    errors.append(str(err.value))
    hidden["wrong HMAC secret given"] = "wrong-secret-abcdef"
    monkeypatch.setenv("VAULT_TOKEN", "hvs.not-a-real-token-0123456789")
    hidden["invalid token given"] = "hvs.not-a-real-token-0123456789"
    with pytest.raises(CommandError) as err:
        m.upgrade("head")
    errors.append(str(err.value))
    monkeypatch.setenv("VAULT_TOKEN", m.env["VAULT_TOKEN"])
    return errors


def test_in_process_runs_at_debug_show_no_secret(
    migration: Migration,
    db_password: str,
    debug_logging: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = migration
    data = seed_all(m)
    hidden = secret_values(m, data, db_password)
    monkeypatch.setenv("DATABASE_URL", m.env["DATABASE_URL"])
    debug_logging.clear()

    m.upgrade("head", dry_run="true")
    m.upgrade("head")
    assert cli.main(["verify", "-v"]) == 0
    assert cli.main(["verify", "--json"]) == 0
    m.downgrade("base")

    pk = pks_with(data["users"], "email", 3)[2]  # a row with an email, whatever the uuids
    ct = read_table(m.engine, "users")[pk]["email"]
    assert isinstance(ct, str) and ct.startswith("vault:v1:")
    _tamper(m, "users", pk, "email")
    errors = _failing_inprocess_runs(m, hidden, monkeypatch)
    assert cli.main(["verify"]) != 0

    records = list(_record_texts(debug_logging))
    assert any(r.levelno == logging.DEBUG for r in debug_logging.records), "no DEBUG record"
    captured = capsys.readouterr()
    texts = [
        *records,
        ("stdout", captured.out),
        ("stderr", captured.err),
        *(("error message", e) for e in errors),
        *(("report", json.dumps(r)) for r in m.reports),
    ]
    for where, text in texts:
        assert_clean(where, text, hidden)
    print(
        f"\n{len(debug_logging.records)} log records, {len(m.reports)} reports, "
        f"{len(errors)} failing runs: no secret or plaintext"
    )


def test_plaintext_stored_in_the_database_is_not_logged_at_debug(
    migration: Migration, db_password: str, tmp_path: Path
) -> None:
    m = migration
    data = {"invitations": seed_table(m, "invitations", 8)}
    planted = "plaintext sitting in the database"
    set_values(m, "invitations", pks_with(data["invitations"], "token", 4)[3], token=planted)
    hidden = secret_values(m, data, db_password)
    hidden["plaintext stored in the database"] = planted
    report = tmp_path / "planted.json"
    p = run_alembic(
        m, "-c", str(debug_ini(tmp_path)), "-x", f"report={report}", "upgrade", "0002_invitations"
    )
    assert p.proc.returncode != 0
    assert "DEBUG" in p.stderr
    for where, text in (("stdout", p.stdout), ("stderr", p.stderr), ("report", report.read_text())):
        assert_clean(where, text, hidden)
