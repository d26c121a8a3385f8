"""The run report itself (report.py): what it says and how it is written. No servers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from context_encryption.engine import TableSummary
from context_encryption.report import RunReport, write_json_atomically
from context_encryption.settings import REPORT_TEMP_PREFIX, Secret, Settings


def failed(table: str, n: int) -> TableSummary:
    s = TableSummary(table, "0002_invitations", "upgrade", False)
    s.rows_failed = n
    s.failures = [{"column": "token", "id": str(i), "reason": "HMAC mismatch"} for i in range(n)]
    return s


def test_left_behind_message_points_at_the_report_when_there_is_one() -> None:
    report = RunReport(Settings(report="/srv/run.json", on_error="skip"))
    report.add(failed("invitations", 3))
    message = report.left_behind_message()
    assert message is not None
    assert message.startswith("LEFT BEHIND: invitations: 3 failed row(s) skipped.")
    assert "listed by primary key in the report /srv/run.json" in message
    assert "`context-encryption verify` exits 1" in message

    without = RunReport(Settings(on_error="skip"))
    without.add(failed("invitations", 1))
    assert "in the log above (-x report=PATH keeps them in a file)" in (
        without.left_behind_message() or ""
    )


def test_as_dict_counts_rows_left_behind_and_holds_no_secret() -> None:
    secret = "hmac-" + "9" * 24
    report = RunReport(Settings(hmac_secret=Secret(secret), on_error="skip"))
    report.add(failed("invitations", 2))
    report.add(failed("users", 0))
    doc = report.as_dict()
    assert doc["rows_left_behind"] == 2
    assert doc["left_behind"] == {"invitations": {"failed_rows": 2, "plaintext_values": 0}}
    assert [t["table"] for t in doc["tables"]] == ["invitations", "users"]
    assert secret not in json.dumps(doc)


def test_write_replaces_the_report_atomically(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("an earlier report\n")
    assert write_json_atomically(str(path), {"outcome": "completed"}) is None
    assert json.loads(path.read_text()) == {"outcome": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_report_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone" / "report.json"
    report = RunReport(Settings())
    report.outcome = "completed"
    with caplog.at_level(logging.ERROR, logger="context_encryption"):
        assert report.write(str(path)) is False
    assert "the report could not be written to" in caplog.text
    assert "the run itself completed" in caplog.text
    assert not path.exists()


def test_a_value_json_cannot_hold_leaves_the_earlier_report_and_no_temporary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "report.json"
    path.write_text("{}\n")
    assert write_json_atomically(str(path), {"x": object()}) == "TypeError"
    assert path.read_text() == "{}\n"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(REPORT_TEMP_PREFIX)]
