"""What ``context-encryption`` prints for a given report: verify's text and JSON, the
preflight's and the rewrap's text. No servers: the reports are built here."""

from __future__ import annotations

import json

import pytest

from context_encryption.cli_output import (
    MAX_LISTED,
    preflight_lines,
    print_preflight,
    print_verify,
    rewrap_lines,
    verify_lines,
)
from context_encryption.engine import TableSummary
from context_encryption.preflight import PreflightReport
from context_encryption.preflight_scope import PreflightScope
from context_encryption.rewrap import RewrapReport, RewrapTable
from context_encryption.settings import load_settings
from context_encryption.verify import ColumnResult, TableResult, VerifyReport


def a_report() -> VerifyReport:
    """users applied (one value still old, a version split), invitations missing, consent
    records fine but with an interrupted migration."""
    report = VerifyReport(
        "0001_users", "pos-encryption-key", "pos-context-key", "transit", None, True
    )
    users = TableResult("users", "0001_users", True, "new", rows_checked=40)
    email = ColumnResult("email", "email_hmac", new_scheme=36, null=4, hmac_match=36)
    email.versions = {1: 36}
    first = ColumnResult("first_name", None, old_scheme=1, new_scheme=38, null=1)
    first.problem(7, "old scheme (expected new)", 20)
    first.versions = {1: 30, 2: 8}
    first.split_problem()
    users.columns = [email, first]
    invitations = TableResult("invitations", "0002_invitations", False, "old", exists=False)
    consent = TableResult(
        "consent_records", "0007_consent_records", False, "old", rows_checked=3, in_progress=True
    )
    consent.columns = [ColumnResult("ip_address", None, old_scheme=3)]
    report.tables = [users, invitations, consent]
    return report


SPLIT = (
    "split across key versions of the new key (v1: 30, v2: 8): equality lookups miss values; "
    "run `context-encryption rewrap`"
)


def test_verify_text() -> None:
    assert verify_lines(a_report()) == [
        "revision 0001_users: new scheme expected for users; old scheme for the others",
        "keys: old 'pos-encryption-key', new 'pos-context-key' on mount 'transit'; all rows",
        "table.column                         expect    rows     old     new   null  plain "
        "unread  hmac ok/bad/null   result",
        "-" * 115,
        "users.email                          new         40       0      36      4      0      "
        "0  36/0/0             ok",
        "users.first_name                     new         40       1      38      1      0      "
        "0  -                  PROBLEM",
        "    new key versions: email v1: 36; first_name v1: 30, v2: 8 "
        "(SPLIT: run `context-encryption rewrap`)",
        "invitations                          old    table does not exist",
        "consent_records.ip_address           old          3       3       0      0      0      "
        "0  -                  ok",
        "",
        "problems:",
        f"  users.first_name: 1 old scheme (expected new), 30 {SPLIT}; ids: 7 ...",
        "  invitations: the table does not exist",
        "  consent_records: a migration of this table was interrupted (checkpoint present); "
        "re-run the alembic command to finish it",
        "",
        "NOT OK: 32 problem value(s) for revision 0001_users",
    ]


def test_verify_text_when_ok_at_base_sampled_without_hmac() -> None:
    report = VerifyReport(None, "o", "n", "transit", 5, False)
    users = TableResult("users", "0001_users", False, "old", rows_checked=5)
    users.columns = [ColumnResult("email", "email_hmac", old_scheme=5, hmac_unchecked=5)]
    report.tables = [users]
    lines = verify_lines(report)
    assert lines[0] == (
        "revision base (nothing applied): new scheme expected for no table; old scheme for the "
        "others"
    )
    assert lines[1] == (
        "keys: old 'o', new 'n' on mount 'transit'; first 5 rows per table; HMAC not checked "
        "(no ENCRYPTION_HMAC_SECRET)"
    )
    assert lines[4].split() == [
        "users.email",
        "old",
        "5",
        "5",
        "0",
        "0",
        "0",
        "0",
        "not",
        "checked",
        "ok",
    ]
    assert "problems:" not in lines
    assert lines[-2:] == [
        "",
        "OK: every value checked is in the scheme revision base (nothing applied) implies",
    ]


def test_verify_json(capsys: pytest.CaptureFixture[str]) -> None:
    print_verify(a_report(), as_json=True)
    doc = json.loads(capsys.readouterr().out)
    assert doc["tool"] == "context-encryption verify"
    assert doc["revision"] == "0001_users"
    assert doc["keys"] == {
        "old": "pos-encryption-key",
        "new": "pos-context-key",
        "mount": "transit",
    }
    assert (doc["sample"], doc["sampling"]) == (None, "all rows")
    assert (doc["ok"], doc["problems"]) == (False, 32)
    users, invitations, consent = doc["tables"]
    assert users["expected_scheme"] == "new" and users["applied"] is True
    assert users["problems"] == 31
    email, first = users["columns"]
    assert email["hmac"] == {
        "companion": "email_hmac",
        "match": 36,
        "mismatch": 0,
        "null": 0,
        "unchecked": 0,
    }
    assert email["versions"] == {"1": 36}
    assert first["hmac"] is None
    assert first["reasons"] == {"old scheme (expected new)": 1, SPLIT: 30}
    assert first["failing_ids"] == ["7"]
    assert first["ok"] is False
    assert (invitations["exists"], invitations["problems"], invitations["columns"]) == (
        False,
        1,
        [],
    )
    assert consent["migration_in_progress"] is True
    assert consent["ok"] is True


def test_verify_text_is_what_print_verify_prints(capsys: pytest.CaptureFixture[str]) -> None:
    print_verify(a_report(), as_json=False)
    assert capsys.readouterr().out == "\n".join(verify_lines(a_report())) + "\n"


def test_preflight_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    report = PreflightReport("upgrade", ("users",))
    report.add("database", True, "PostgreSQL reachable")
    report.add("vault", False, "cannot reach Vault at http://127.0.0.1:1", "start Vault")
    report.warnings.append("a warning")
    scope = PreflightScope("upgrade", True, None, ("users", "invitations"), ("users",))
    assert preflight_lines(report, scope) == [
        "revision base: `alembic upgrade head` would migrate users, invitations; checking users "
        "(--tables)",
        "ok   database       PostgreSQL reachable",
        "FAIL vault          cannot reach Vault at http://127.0.0.1:1",
        "warn                a warning",
        "",
        "preflight failed (upgrade of users): 1 problem(s); nothing was changed\n"
        "1. [vault] cannot reach Vault at http://127.0.0.1:1\n"
        "   Fix: start Vault",
    ]
    assert preflight_lines(report)[0] == "ok   database       PostgreSQL reachable"
    print_preflight(report, as_json=True, scope=scope)
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert (doc["revision"], doc["revision_known"], doc["would_touch"]) == (
        None,
        True,
        ["users", "invitations"],
    )
    assert doc["nothing_to_do"] is None


def test_preflight_scope_says_when_there_is_nothing_to_do() -> None:
    up = PreflightScope("upgrade", True, "0007_consent_records", (), ())
    assert up.describe() == (
        "nothing to migrate: revision 0007_consent_records is the head, every table is in the "
        "new scheme; `alembic upgrade head` would touch no table"
    )
    down = PreflightScope("downgrade", True, None, (), ())
    assert down.nothing_to_do == (
        "nothing to roll back: no revision is applied (base); `alembic downgrade base` would "
        "touch no table"
    )
    narrowed = PreflightScope("downgrade", True, "0001_users", ("users",), ())
    assert narrowed.nothing_to_do == (
        "nothing to check: from revision 0001_users, `alembic downgrade base` would touch users, "
        "and --tables names none of them"
    )
    unknown = PreflightScope("upgrade", False, None, ("users",), ("users",))
    assert unknown.nothing_to_do is None
    assert unknown.as_dict() == {
        "revision": None,
        "revision_known": False,
        "would_touch": None,
        "nothing_to_do": None,
    }


def rewrap_report(*, notes: int = 0, failures: int = 0) -> RewrapReport:
    settings = load_settings({"dry-run": "false"}, {})
    report = RewrapReport(settings, "0001_users", key_version=3, latest_version=4)
    summary = TableSummary("users", "0001_users", "rewrap", False, target_key_version=3)
    summary.failures = [
        {"column": "email", "id": str(i), "reason": "HMAC verification failed"}
        for i in range(failures)
    ]
    table = RewrapTable(summary)
    for i in range(notes):
        table.notes[("email", f"{i:03d}")] = ("old_scheme", "not in the new scheme")
    report.tables = [table]
    return report


def test_rewrap_text() -> None:
    report = rewrap_report(notes=1, failures=1)
    lines = rewrap_lines(report)
    assert lines[0] == (
        "rewrap of key 'pos-context-key' to version 3 (latest 4, min_decryption_version 0)"
    )
    assert lines[1 : 1 + len(report.tables[0].lines())] == report.tables[0].lines()
    assert lines[-6:] == [
        "",
        "left as they are (1 value(s), not in the new scheme):",
        "  users.email id=000: old scheme: not in the new scheme",
        "",
        "failed (1; re-run to handle them again):",
        "  users.email id=0: HMAC verification failed",
    ]


def test_rewrap_text_lists_at_most_fifty() -> None:
    lines = rewrap_lines(rewrap_report(notes=MAX_LISTED + 3, failures=MAX_LISTED + 1))
    left = [x for x in lines if x.startswith("  users.email id=") and "old scheme" in x]
    failed = [x for x in lines if "HMAC verification failed" in x]
    assert (len(left), len(failed)) == (MAX_LISTED, MAX_LISTED)
    assert "  ... and 3 more (--report PATH lists them all)" in lines
    assert "failed (51; re-run to handle them again):" in lines


def test_rewrap_text_with_no_table() -> None:
    report = RewrapReport(load_settings({"dry-run": "true"}, {}), None, key_version=2)
    assert rewrap_lines(report) == [
        "rewrap of key 'pos-context-key' to version 2 (latest 0, min_decryption_version 0) "
        "(dry run: nothing written)",
        "no table to rewrap: revision base applies none",
    ]
