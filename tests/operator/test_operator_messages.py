"""What an operator meets (issue 10): settings checked before any work, messages that name what
was typed, OpenBao's variable names, warnings for secrets on a command line, a preflight of
exactly what the alembic command would touch, help for every settings flag, a report that never
turns a run into a traceback.

Against real PostgreSQL and a real OpenBao (the suite's fixtures); nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from context_encryption import cli
from context_encryption.catalog import load_catalog
from context_encryption.report import RunReport
from context_encryption.settings import OPTIONS, X_NAMES, load_settings
from tests.support.leaks import assert_no_leak
from tests.support.migration_fixtures import ROOT, Migration
from tests.support.seeding import sample_rows, seed, snapshot

# --------------------------------------------------------------------------------------------
# context-encryption: flags are named as typed
# --------------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The stderr of ``context-encryption args``, which must exit with EXIT_ERROR."""
    code, _out, err = run(capsys, *args)
    assert code == cli.EXIT_ERROR
    return err


def output_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The stdout of ``context-encryption args``, which must exit with EXIT_OK."""
    code, out, _err = run(capsys, *args)
    assert code == cli.EXIT_OK
    return out


def test_verify_names_the_flags_typed(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    err = error_of(capsys, "verify", "--tables", "invitation")
    assert "--tables names unknown table(s) invitation" in err
    assert "-x " not in err
    err = error_of(capsys, "verify", "--batch-size", "abc")
    assert "--batch-size='abc' is not a whole number" in err
    assert "-x " not in err


def test_a_vault_address_without_scheme_says_so(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    err = error_of(capsys, "verify", "--vault-addr", "127.0.0.1:8311")
    assert "--vault-addr='127.0.0.1:8311': the address needs http:// or https://" in err
    assert "InvalidSchema" not in err and "nothing answers" not in err


def test_alembic_refuses_a_vault_address_without_scheme_before_any_work(
    migration: Migration,
) -> None:
    seed(migration.engine, migration.vault, "users", sample_rows("users", 3), "s")
    before = snapshot(migration.engine, ["users"])
    proc = migration.cli("-x", "vault-addr=127.0.0.1:8311", "upgrade", "head", check=False)
    assert proc.returncode != 0
    assert "-x vault-addr='127.0.0.1:8311': the address needs http:// or https://" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert migration.current() is None
    assert snapshot(migration.engine, ["users"]) == before


def test_preflight_fixes_name_the_flags_typed(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fix texts of `context-encryption preflight` (and of verify's quick checks) name
    --db, --vault-key, ...: the flags of the command run, not alembic's -x options."""
    nowhere = "postgresql://postgres@127.0.0.1:1/nowhere"
    code, out, err = run(capsys, "preflight", "--db", nowhere, "--vault-key", "no-such-old-key")
    assert code == cli.EXIT_PROBLEMS
    assert "check DATABASE_URL (or --db=...)" in out
    assert "check VAULT_OLD_KEY (or --vault-key=...)" in out
    assert "(or --transit-mount=...)" in out
    assert "-x " not in out + err
    code, out, err = run(capsys, "preflight", "--vault-addr", "http://127.0.0.1:1")
    assert code == cli.EXIT_PROBLEMS
    assert "check VAULT_ADDR (or --vault-addr=...)" in out
    assert "-x " not in out + err
    code, out, err = run(capsys, "verify", "--db", nowhere)
    assert code == cli.EXIT_ERROR
    assert "check DATABASE_URL (or --db=...)" in err
    assert "-x " not in out + err
    code, out, err = run(capsys, "preflight", "--direction", "rewrap", "--db", nowhere)
    assert code == cli.EXIT_PROBLEMS
    assert "check DATABASE_URL (or --db=...)" in out
    assert "-x " not in out + err


def test_the_migrations_preflight_names_alembic_x_options(migration: Migration) -> None:
    proc = migration.cli("-x", "vault-key=no-such-old-key", "upgrade", "head", check=False)
    assert proc.returncode != 0
    assert "check VAULT_OLD_KEY (or -x vault-key=...)" in proc.stderr
    assert "--vault-key" not in proc.stderr


# --------------------------------------------------------------------------------------------
# OpenBao's variable names
# --------------------------------------------------------------------------------------------


def test_openbao_variables_are_used_when_vault_ones_are_unset(
    migration: Migration, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ADDR")
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("BAO_ADDR", migration.env["VAULT_ADDR"])
    monkeypatch.setenv("BAO_TOKEN", migration.env["VAULT_TOKEN"])
    code, out, err = run(capsys, "preflight", "--json")
    assert code == cli.EXIT_OK, out + err
    doc = json.loads(out)
    assert {c["name"]: c["ok"] for c in doc["checks"]}["vault"] is True
    assert migration.env["VAULT_TOKEN"] not in out + err


def test_vault_variables_win_over_openbao_ones(
    migration: Migration, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("BAO_ADDR", migration.env["VAULT_ADDR"])
    monkeypatch.setenv("BAO_TOKEN", "bao-token-that-must-not-be-used")
    code, out, _err = run(capsys, "preflight")
    assert code == cli.EXIT_PROBLEMS
    assert "cannot reach Vault at http://127.0.0.1:1" in out


# --------------------------------------------------------------------------------------------
# secrets on a command line
# --------------------------------------------------------------------------------------------


def test_a_token_on_the_context_encryption_command_line_is_warned_about(
    migration: Migration,
) -> None:
    token = migration.env["VAULT_TOKEN"]
    hmac = migration.env["ENCRYPTION_HMAC_SECRET"]
    env = {k: v for k, v in migration.env.items() if k not in ("VAULT_TOKEN",)}
    exe = Path(sys.executable).with_name("context-encryption")
    proc = subprocess.run(
        [str(exe), "verify", "--tables", "users", "--vault-token", token, "--hmac-secret", hmac],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "VAULT_TOKEN"}, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == cli.EXIT_OK, proc.stdout + proc.stderr
    assert_no_leak(proc.stdout + proc.stderr, [token, hmac])
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, proc.stderr
    assert "--vault-token was given on the command line" in warnings[0]
    assert "process list" in warnings[0] and "VAULT_TOKEN in the environment" in warnings[0]
    assert "--hmac-secret was given on the command line" in warnings[1]
    assert "ENCRYPTION_HMAC_SECRET in the environment" in warnings[1]


def test_a_token_in_alembic_x_is_warned_about(migration: Migration) -> None:
    token = migration.env["VAULT_TOKEN"]
    proc = migration.cli("-x", f"vault-token={token}", "-x", "dry-run=true", "upgrade", "head")
    assert_no_leak(proc.stdout + proc.stderr, [token, migration.hmac_secret])
    assert "-x vault-token was given on the command line" in proc.stderr
    assert "set VAULT_TOKEN in the environment instead" in proc.stderr


# --------------------------------------------------------------------------------------------
# preflight: exactly what the alembic command would touch
# --------------------------------------------------------------------------------------------


def preflight_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = run(capsys, "preflight", "--json", *args)
    return code, json.loads(out)


def test_preflight_at_base_has_nothing_to_roll_back(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    out = output_of(capsys, "preflight", "--direction", "downgrade")
    assert "nothing to roll back: no revision is applied (base)" in out
    assert "old key" not in out and "capabilities" not in out
    code, doc = preflight_json(capsys, "--direction", "downgrade")
    assert code == cli.EXIT_OK
    assert doc["tables"] == [] and doc["would_touch"] == [] and doc["revision"] is None
    assert "nothing to roll back" in doc["nothing_to_do"]


def test_preflight_checks_exactly_the_tables_alembic_would_touch(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    migration.upgrade("0002_invitations")
    out = output_of(capsys, "preflight")
    rest = list(load_catalog().tables[2:])
    assert f"revision 0002_invitations: `alembic upgrade head` would migrate {', '.join(rest)}" in (
        out
    )
    code, doc = preflight_json(capsys)
    assert code == cli.EXIT_OK
    assert doc["revision"] == "0002_invitations"
    assert doc["tables"] == rest and doc["would_touch"] == rest

    code, doc = preflight_json(capsys, "--direction", "downgrade")
    assert code == cli.EXIT_OK
    assert doc["tables"] == ["users", "invitations"]
    assert doc["would_touch"] == ["invitations", "users"]  # the order alembic rolls back in

    out = output_of(capsys, "preflight", "--tables", "users")
    assert "nothing to check" in out and "--tables names none of them" in out

    code, doc = preflight_json(capsys, "--tables", "users,sessions")
    assert doc["tables"] == ["sessions"]


def test_preflight_at_head_has_nothing_to_migrate(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    migration.upgrade("head")
    out = output_of(capsys, "preflight")
    assert "nothing to migrate: revision 0007_consent_records is the head" in out


# --------------------------------------------------------------------------------------------
# --help
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "preflight"])
def test_help_describes_every_settings_flag(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "500")  # argparse wraps at the terminal width, even at "-"
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    flags = re.findall(r"--([a-z-]+) VALUE", text)
    assert flags, text
    by_name = {o.name: o for o in OPTIONS}
    for flag in flags:
        help_text = text.split(f"--{flag} VALUE ", 1)[1].split(" --", 1)[0]
        assert help_text.endswith(f"default: {by_name[flag].default})"), flag
        env = X_NAMES[flag]
        if env is not None:
            assert f"(env {env}" in help_text, flag
    assert "--vault-addr VALUE Vault address" in text
    assert "env VAULT_ADDR or BAO_ADDR; default: none" in text
    assert (
        "--batch-size VALUE rows per batch, one database transaction each" in text
        and "default: 1000" in text
    )


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_its_place", [None, "a file where the directory was"])
def test_a_report_that_cannot_be_written_is_logged_not_raised_nor_its_directory_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, in_its_place: str | None
) -> None:
    where = tmp_path / "reports"
    where.mkdir()
    path = where / "run.json"
    report = RunReport(load_settings({"report": str(path)}, {}), outcome="completed")
    where.rmdir()  # after the settings were checked
    if in_its_place is not None:
        where.write_text(in_its_place)
    with caplog.at_level(logging.ERROR, logger="context_encryption"):
        assert report.write(str(path)) is False
    assert "the report could not be written to" in caplog.text
    assert "the run itself completed" in caplog.text
    if in_its_place is None:
        assert not where.exists()
    else:
        assert where.read_text() == in_its_place


def test_a_report_replaces_the_old_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("an older report")
    report = RunReport(load_settings({"report": str(path)}, {}), outcome="completed")
    assert report.write(str(path)) is True
    assert json.loads(path.read_text())["outcome"] == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left
