"""The engine's bookkeeping without servers: counting outcomes, the summary's text, the abort
message, the checkpoint's stamp text and contiguous advance, and the key-change messages."""

from __future__ import annotations

from app_models.specs import Direction
from context_encryption.engine.checkpoint import BASE_STAMP, Checkpoint, Checkpointer, stamp_text
from context_encryption.engine.keypin import PinnedKey, key_changed_error
from context_encryption.engine.rows import Row
from context_encryption.engine.summary import (
    BatchResult,
    Outcome,
    TableSummary,
    aborted_error,
    count_outcomes,
)
from context_encryption.errors import RowError


def row(pk: int, error: str | None = None, **outcomes: Outcome) -> Row:
    r = Row(pk=pk, values={}, outcomes=dict(outcomes))
    if error is not None:
        r.errors.append(RowError("users", "email", pk, error))
    return r


def batch_of(rows: list[Row], seq: int = 0) -> BatchResult:
    result = BatchResult(seq, rows[-1].pk, rows_scanned=len(rows))
    count_outcomes(result, rows)
    result.errors.extend(e for r in rows for e in r.errors)
    return result


def test_a_failed_rows_readable_values_count_as_left_with_their_row() -> None:
    rows = [
        row(1, email=Outcome.MIGRATED, first_name=Outcome.NULL),
        row(
            2,
            "HMAC verification failed (companion email_hmac)",
            email=Outcome.FAILED,
            first_name=Outcome.MIGRATED,
        ),
    ]
    result = batch_of(rows)
    assert result.columns["email"].as_dict()["migrated"] == 1
    assert result.columns["email"].failed == 1
    assert result.columns["first_name"].null == 1
    assert result.columns["first_name"].left_with_failed_row == 1
    assert result.columns["first_name"].migrated == 0


def test_counts_taken_back_for_rows_that_changed_concurrently() -> None:
    rows = [row(1, email=Outcome.MIGRATED), row(2, email=Outcome.MIGRATED)]
    result = batch_of(rows)
    count_outcomes(result, rows[1:], -1)
    assert result.columns["email"].migrated == 1


def test_a_summary_merges_batches_and_counts_failed_rows_once() -> None:
    summary = TableSummary("users", "0001_users", "upgrade", dry_run=False)
    bad = row(3, "reason one", email=Outcome.FAILED)
    bad.errors.append(RowError("users", "first_name", 3, "reason two"))
    summary.merge_batch(batch_of([row(1, email=Outcome.MIGRATED), row(2, email=Outcome.ALREADY)]))
    summary.merge_batch(batch_of([bad], seq=1))
    assert (summary.rows_scanned, summary.batches, summary.rows_failed) == (3, 2, 1)
    assert summary.total(Outcome.MIGRATED) == 1
    assert summary.total(Outcome.ALREADY) == 1
    assert [f["id"] for f in summary.failures] == ["3", "3"]
    doc = summary.as_dict()
    assert doc["columns"]["email"]["failed"] == 1
    assert doc["status"] == "running"


def test_the_summary_text_of_a_live_run_and_of_a_dry_run() -> None:
    summary = TableSummary("users", "0001_users", "upgrade", dry_run=False)
    summary.merge_batch(
        batch_of(
            [
                row(1, email=Outcome.MIGRATED, first_name=Outcome.PLAINTEXT_ENCRYPTED),
                row(2, email=Outcome.NULL, first_name=Outcome.PLAINTEXT_SKIPPED),
            ]
        )
    )
    summary.vault_requests, summary.seconds = 4, 1.25
    assert summary.log_line() == (
        "users (upgrade): 2 rows scanned, migrated 1 values, 0 already migrated, 1 NULL, "
        "1 plaintext encrypted, 1 plaintext skipped, 0 failed (0 rows), "
        "0 rows changed concurrently, 4 Vault requests, 1.2s"
    )
    assert summary.column_lines() == [
        "  users.email: migrated 1, already 0, NULL 1, plaintext 0, failed 0",
        "  users.first_name: migrated 0, already 0, NULL 0, plaintext 2 (1 encrypted), failed 0",
    ]
    dry = TableSummary("users", "0001_users", "downgrade", dry_run=True)
    dry.merge_batch(batch_of([row(1, email=Outcome.MIGRATED)]))
    assert dry.log_line().startswith("users (downgrade, dry run): 1 rows scanned, would migrate 1")
    assert dry.column_lines()[0].startswith("  users.email: would migrate 1,")


def test_the_column_line_says_why_readable_values_were_kept() -> None:
    summary = TableSummary("users", "0001_users", "upgrade", dry_run=False)
    summary.merge_batch(batch_of([row(1, "x", email=Outcome.FAILED, first_name=Outcome.MIGRATED)]))
    assert summary.column_lines()[1] == (
        "  users.first_name: migrated 0, already 0, NULL 0, plaintext 0, failed 0, kept "
        "unchanged 1 (readable, but another column of the same row failed)"
    )


def test_finish_sets_the_status_and_says_when_the_run_aborts() -> None:
    def summary(failed: bool, dry_run: bool = False) -> TableSummary:
        s = TableSummary("users", "0001_users", "upgrade", dry_run=dry_run)
        s.rows_failed = int(failed)
        return s

    s = summary(True)
    assert s.finish(dry_run=False, on_error="abort") is True
    assert s.status == "aborted"
    s = summary(True)
    assert s.finish(dry_run=False, on_error="skip") is False
    assert s.status == "completed"
    s = summary(True, dry_run=True)
    assert s.finish(dry_run=True, on_error="abort") is False
    assert s.status == "dry-run"


def test_the_abort_message_lists_twenty_rows_and_what_to_do() -> None:
    summary = TableSummary("users", "0001_users", "upgrade", dry_run=False)
    summary.failures = [
        {"column": "email", "id": str(i), "reason": "cannot be decrypted"} for i in range(25)
    ]
    summary.rows_failed = 25
    text = str(aborted_error(summary))
    assert text.startswith(
        "users: 25 row(s) cannot be migrated; revision 0001_users was not stamped "
        "(on-error=abort). Committed batches stay and a re-run resumes from the checkpoint.\n"
        "  users.email id=0: cannot be decrypted\n"
    )
    assert "  users.email id=19: cannot be decrypted\n  ... and 5 more\n" in text
    assert "id=20" not in text
    assert "HMAC" not in text
    assert text.endswith("list these in the report (-x report=PATH).")


def test_the_abort_message_of_a_downgrade_and_the_hmac_hint() -> None:
    summary = TableSummary("users", "0001_users", "downgrade", dry_run=False)
    summary.failures = [
        {"column": "email", "id": "1", "reason": "HMAC verification failed (companion x)"},
        {"column": "email", "id": "2", "reason": "cannot be decrypted"},
    ]
    summary.rows_failed = 2
    text = str(aborted_error(summary))
    assert "revision 0001_users stays the current one (not rolled back)" in text
    assert "most likely not the secret the application used" in text
    assert "... and" not in text


def test_the_stamp_text_of_a_checkpoint() -> None:
    assert stamp_text(None) == BASE_STAMP == "base"
    assert stamp_text([]) == "base"
    assert stamp_text(["0003_guest_orders"]) == "0003_guest_orders"
    assert stamp_text(["b", "a"]) == "a,b"


def test_a_checkpoint_says_where_and_which_run_stopped() -> None:
    cp = Checkpoint("0001_users", "upgrade", "users", last_pk="42")
    assert (cp.position(), cp.run) == ("after id=42", "an upgrade")
    cp = Checkpoint("0001_users", "downgrade", "users", last_pk=None)
    assert (cp.position(), cp.run) == ("before its first batch", "a downgrade")
    assert Checkpoint("rewrap:users", "rewrap", "users", last_pk=None).run == "a rewrap"


def test_the_checkpoint_only_advances_over_a_contiguous_prefix_of_committed_batches() -> None:
    cp = Checkpointer("0001_users", Direction.UPGRADE, "users")
    for seq, last_pk in enumerate([10, 20, 30, 40]):
        cp.register(seq, last_pk)
    assert cp.completes(1) is None  # batch 0 still in flight
    cp.committed(1)
    assert cp.completes(2) is None
    cp.committed(2)
    assert cp.completes(0) == (2, "30")  # batch 0 completes 0..2
    cp.committed(0)
    assert cp.completes(3) == (3, "40")


def test_a_key_whose_material_changed_names_the_restore() -> None:
    pin = PinnedKey("pos-context-key", 2, contextual=True, probe="vault:v2:probe")
    err = key_changed_error(
        pin,
        "transit",
        "users: the run stopped before writing batch 3",
        "Vault says 'cipher: message authentication failed'",
        "Nothing encrypted with the replaced material was written.",
    )
    text = str(err)
    assert text.startswith(
        "users: the run stopped before writing batch 3: key 'pos-context-key' version 2 on mount "
        "'transit' no longer has the key material it had when it was pinned"
    )
    assert "Nothing encrypted with the replaced material was written." in text
    assert "vault write transit/restore/pos-context-key backup=@<backup file>" in text


def test_a_key_version_below_min_decryption_version_names_the_config_fix() -> None:
    pin = PinnedKey("pos-context-key", 2, contextual=True, probe="vault:v2:probe")
    text = str(
        key_changed_error(
            pin,
            "transit",
            "users: stopped",
            "Vault says 'ciphertext or signature version is disallowed by policy (too old)'",
            "Consequence.",
        )
    )
    assert "is now below the key's min_decryption_version" in text
    assert "vault write transit/keys/pos-context-key/config min_decryption_version=2" in text
    assert "restore" not in text
