"""The preflight report's text and document, and options named as the operator typed them."""

from __future__ import annotations

import sqlalchemy as sa

from context_encryption.preflight.database import scrub
from context_encryption.preflight.report import PreflightReport
from context_encryption.preflight.versions import decryptable
from context_encryption.settings import FLAG_SPELLING, X_SPELLING


def test_the_message_lists_every_failure_with_its_fix_and_says_nothing_changed() -> None:
    report = PreflightReport("downgrade", ("users", "sessions"))
    report.add("database", True, "connected")
    report.add("vault", False, "nothing answers", "check VAULT_ADDR")
    report.add("keys", False, "no key", "create it:\nvault write -f transit/keys/k")
    report.add("hmac secret", False, "not set")
    assert not report.ok
    assert [c.name for c in report.failures] == ["vault", "keys", "hmac secret"]
    assert report.message() == (
        "preflight failed (downgrade of users, sessions): 3 problem(s); nothing was changed\n"
        "1. [vault] nothing answers\n"
        "   Fix: check VAULT_ADDR\n"
        "2. [keys] no key\n"
        "   Fix: create it:\n"
        "   vault write -f transit/keys/k\n"
        "3. [hmac secret] not set"
    )


def test_a_report_without_tables_names_no_scope() -> None:
    report = PreflightReport("upgrade", ())
    report.add("database", False, "down", "start it")
    assert report.message().startswith("preflight failed: 1 problem(s); nothing was changed\n")


def test_the_document() -> None:
    report = PreflightReport("upgrade", ("users",))
    report.add("database", True, "connected")
    report.versions["users.email"] = {2: 5, 1: 3}
    report.warnings.append("short token")
    assert report.ok
    assert report.as_dict() == {
        "direction": "upgrade",
        "tables": ["users"],
        "ok": True,
        "checks": [{"name": "database", "ok": True, "detail": "connected", "fix": ""}],
        "versions": {"users.email": {"1": 3, "2": 5}},
        "warnings": ["short token"],
    }


def test_options_are_named_the_way_the_operator_gives_them() -> None:
    assert PreflightReport("upgrade", ()).spelling is X_SPELLING
    assert PreflightReport("upgrade", ()).option("db") == "-x db=..."
    flags = PreflightReport("upgrade", (), spelling=FLAG_SPELLING)
    assert flags.option("db") == "--db=..."
    assert flags.option("vault-key", "k") == "--vault-key=k"


def test_an_error_text_loses_the_password_and_secret_query_values() -> None:
    url = sa.make_url("postgresql://app:pw-Secret-9@db:5432/pos?sslpassword=cert-Pass-1&x=1")
    text = 'connection failed: password "pw-Secret-9" and cert-Pass-1 rejected\nDETAIL: second line'
    assert scrub(text, url) == 'connection failed: password "***" and *** rejected'
    assert scrub("", url) == ""
    plain = sa.make_url("sqlite:///x.db")
    assert scrub("no such table: users", plain) == "no such table: users"


def test_vault_reads_version_zero_as_one() -> None:
    assert decryptable(0, 1, 3)
    assert decryptable(1, 1, 3) and decryptable(3, 1, 3)
    assert not decryptable(0, 2, 3)
    assert not decryptable(4, 1, 3)
