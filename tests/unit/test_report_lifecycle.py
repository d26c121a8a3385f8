"""The run report's lifecycle (runner.reported_run): each way a run ends, its outcome, its
message and the report file. No database, no Vault: summaries are given values."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.util import CommandError

from context_encryption.engine import ColumnCounts, Outcome, TableSummary
from context_encryption.errors import MigrationAborted
from context_encryption.report import COMPLETED_WITH_SKIPPED_ROWS, RunReport
from context_encryption.runner import INTERRUPTED, reported_run
from context_encryption.settings import Settings


def summary(table: str = "users", *, failed: int = 0, dry_run: bool = False) -> TableSummary:
    s = TableSummary(table, "0001_users", "upgrade", dry_run)
    s.rows_failed = failed
    s.failures = [
        {"column": "email", "id": str(i), "reason": "cannot decrypt"} for i in range(failed)
    ]
    return s


def run(settings: Settings, *, add: list[TableSummary], then: BaseException | None) -> RunReport:
    with reported_run(settings) as report:
        for s in add:
            report.add(s)
        if then is not None:
            raise then
    return report


def test_a_live_run_that_ends_is_completed(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report = run(Settings(report=str(path)), add=[summary()], then=None)
    assert report.outcome == "completed"
    written = json.loads(path.read_text())
    assert written["outcome"] == "completed"
    assert written["error"] is None
    assert [t["table"] for t in written["tables"]] == ["users"]


def test_skipped_rows_complete_with_a_warning_last(caplog: pytest.LogCaptureFixture) -> None:
    skipped = summary(failed=2)
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        report = run(Settings(on_error="skip"), add=[skipped], then=None)
    assert report.outcome == COMPLETED_WITH_SKIPPED_ROWS
    assert caplog.records[-1].getMessage().startswith("LEFT BEHIND: users: 2 failed row(s)")


def test_plaintext_left_as_it_was_is_left_behind_too() -> None:
    s = summary()
    s.columns["email"] = ColumnCounts()
    s.columns["email"].add(Outcome.PLAINTEXT_SKIPPED, 4)
    report = run(Settings(plaintext="skip"), add=[s], then=None)
    assert report.outcome == COMPLETED_WITH_SKIPPED_ROWS
    assert report.left_behind() == {"users": {"failed_rows": 0, "plaintext_values": 4}}


def test_a_dry_run_that_ends_is_a_dry_run() -> None:
    report = run(Settings(dry_run=True), add=[summary(dry_run=True)], then=None)
    assert report.outcome == "dry-run"
    assert report.error is None


def test_a_dry_run_a_live_run_would_fail_raises_with_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    settings = Settings(dry_run=True, report=str(path))
    with pytest.raises(CommandError) as err:
        run(settings, add=[summary(failed=12, dry_run=True)], then=None)
    message = str(err.value)
    assert message.startswith("dry run: a live run would stop (on-error=abort)")
    assert "users.email id=0: cannot decrypt" in message
    assert "... and 2 more (see -x report=PATH)" in message
    written = json.loads(path.read_text())
    assert written["outcome"] == "dry-run: a live run would fail"
    assert written["error"] == message


def test_a_dry_run_with_on_error_skip_would_not_fail() -> None:
    settings = Settings(dry_run=True, on_error="skip")
    report = run(settings, add=[summary(failed=3, dry_run=True)], then=None)
    assert report.outcome == "dry-run"


def test_the_tools_own_error_becomes_a_command_error_with_its_message(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    with pytest.raises(CommandError) as err:
        run(Settings(report=str(path)), add=[], then=MigrationAborted("users: 3 rows failed"))
    assert str(err.value) == "users: 3 rows failed"
    assert err.value.__suppress_context__
    written = json.loads(path.read_text())
    assert (written["outcome"], written["error"]) == ("failed", "users: 3 rows failed")


def test_a_database_error_names_its_class_never_its_statement() -> None:
    class AdminShutdown(Exception):
        sqlstate = "57P01"

    exc = sa.exc.OperationalError(
        "UPDATE users SET email = 'secret'", {"p": "secret"}, AdminShutdown()
    )
    with pytest.raises(CommandError) as err:
        run(Settings(), add=[], then=exc)
    message = str(err.value)
    assert "the database connection was lost or refused (AdminShutdown, SQLSTATE 57P01)" in message
    assert "secret" not in message
    assert "UPDATE" not in message


def test_a_command_error_passes_through_unchanged() -> None:
    original = CommandError("Can't locate revision identified by 'nope'")
    with pytest.raises(CommandError) as err, reported_run(Settings()) as report:
        raise original
    assert err.value is original
    assert (report.outcome, report.error) == ("failed", str(original))


def test_an_interrupt_is_reported_and_says_how_to_resume(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    with pytest.raises(CommandError) as err:
        run(Settings(report=str(path)), add=[summary()], then=KeyboardInterrupt())
    assert str(err.value) == INTERRUPTED
    assert "resumes from the last checkpoint" in INTERRUPTED
    written = json.loads(path.read_text())
    assert (written["outcome"], written["error"]) == ("interrupted", "KeyboardInterrupt")
    assert [t["table"] for t in written["tables"]] == ["users"]


def test_any_other_error_passes_through_and_is_named_by_its_type_only() -> None:
    with pytest.raises(ZeroDivisionError), reported_run(Settings()) as report:
        raise ZeroDivisionError("a value that must not be reported")
    assert (report.outcome, report.error) == ("failed", "ZeroDivisionError")
