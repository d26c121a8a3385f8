"""Tests that kill mutmut's survivors in the engine's pure parts (batch checks, summary) and in
verify's tally and report: the JSON reports whole, counts over more than one item, boundaries.
README "Mutation testing" lists the survivors left and why. No server: values only."""

from __future__ import annotations

import base64

from context_encryption.engine.batch import check_new_ciphertext, decode_plaintext
from context_encryption.engine.rows import Row
from context_encryption.engine.summary import (
    MAX_FAILURES,
    BatchResult,
    ColumnCounts,
    Outcome,
    TableSummary,
    aborted_error,
    count_outcomes,
)
from context_encryption.errors import RowError
from context_encryption.schemes import MAX_STRING_BYTES, Kind, Verdict
from context_encryption.transit import hmac_hex
from context_encryption.verify import (
    Checked,
    ColumnResult,
    TableResult,
    VerifyReport,
    tally,
)

SECRET = "hmac-secret-for-tests"
AUTH = "cipher: message authentication failed"
TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"

# -- engine/batch ---------------------------------------------------------------------------------


def test_an_encrypt_answer_with_an_error_is_refused_even_with_a_value() -> None:
    assert check_new_ciphertext("vault:v1:abc", "some error") == (
        "Vault could not encrypt it: 'some error'"
    )


def test_a_new_ciphertext_of_exactly_the_limit_is_written() -> None:
    at_limit = "vault:v1:" + "A" * (MAX_STRING_BYTES - len("vault:v1:"))
    assert check_new_ciphertext(at_limit, None) is None
    assert check_new_ciphertext(at_limit + "A", None) is not None


def test_a_plaintext_with_characters_outside_base64_is_not_base64() -> None:
    assert decode_plaintext("eA==") == b"x"
    assert decode_plaintext("eA==!") is None
    assert decode_plaintext("e A==") is None


# -- engine/summary ---------------------------------------------------------------------------


def batch(seq: int, *, written: int, changed: int, deleted: int, errors: int = 0) -> BatchResult:
    b = BatchResult(seq, seq, rows_scanned=10, rows_written=written)
    b.changed_concurrently, b.deleted_concurrently = changed, deleted
    b.errors = [RowError("users", "email", f"{seq}-{i}", "r") for i in range(errors)]
    return b


def test_a_summary_adds_every_batchs_counts() -> None:
    s = TableSummary("users", "0001_users", "upgrade", dry_run=False)
    s.merge_batch(batch(0, written=3, changed=1, deleted=2, errors=1))
    s.merge_batch(batch(1, written=4, changed=2, deleted=3, errors=2))
    assert (s.rows_written, s.rows_failed) == (7, 3)
    assert (s.changed_concurrently, s.deleted_concurrently) == (3, 5)


def test_a_summary_keeps_at_most_max_failures_and_their_fields() -> None:
    s = TableSummary("users", "0001_users", "upgrade", dry_run=False)
    s.failures = [{"column": "c", "id": "0", "reason": "r"}] * (MAX_FAILURES - 1)
    s.merge_batch(batch(0, written=0, changed=0, deleted=0, errors=2))
    assert len(s.failures) == MAX_FAILURES
    assert s.failures[-1] == {"column": "email", "id": "0-0", "reason": "r"}
    assert s.rows_failed == 2


def test_the_table_summary_json_whole() -> None:
    s = TableSummary("users", "0001_users", "upgrade", dry_run=True, target_key_version=3)
    s.seconds = 1.23456
    s.vault_requests = 4
    s.resumed_after = "41"
    s.throttle = {"holds": 0}
    s.merge_batch(batch(0, written=2, changed=1, deleted=1, errors=1))
    assert s.as_dict() == {
        "table": "users",
        "revision": "0001_users",
        "direction": "upgrade",
        "dry_run": True,
        "target_key_version": 3,
        "rows_scanned": 10,
        "rows_written": 2,
        "rows_failed": 1,
        "changed_concurrently": 1,
        "deleted_concurrently": 1,
        "batches": 1,
        "vault_requests": 4,
        "seconds": 1.235,
        "resumed_after": "41",
        "status": "running",
        "columns": {},
        "failures": [{"column": "email", "id": "0-0", "reason": "r"}],
        "throttle": {"holds": 0},
    }


def test_an_outcome_counts_one_by_default() -> None:
    c = ColumnCounts()
    c.add(Outcome.MIGRATED)
    c.add(Outcome.MIGRATED)
    assert c.migrated == 2
    result = BatchResult(0, 1)
    count_outcomes(result, [Row(pk=1, values={}, outcomes={"email": Outcome.NULL})])
    assert result.columns["email"].null == 1


def aborted(reasons: list[str], direction: str = "upgrade") -> str:
    s = TableSummary("users", "0001_users", direction, dry_run=False)
    s.failures = [{"column": "email", "id": str(i), "reason": r} for i, r in enumerate(reasons)]
    s.rows_failed = len(reasons)
    return str(aborted_error(s))


HMAC_FAILED = "HMAC verification failed (companion email_hmac)"
HINT = (
    "\nMost failures are HMAC mismatches: ENCRYPTION_HMAC_SECRET (or -x hmac-secret) is most "
    "likely not the secret the application used."
)


def test_the_hmac_hint_needs_half_of_the_failures_to_be_hmac_mismatches() -> None:
    assert HINT in aborted([HMAC_FAILED])
    assert HINT in aborted([HMAC_FAILED, "other"])
    assert "HMAC mismatches" not in aborted([HMAC_FAILED, "other", "other"])
    assert "HMAC mismatches" not in aborted(["other"])


def test_and_more_only_past_the_shown_failures() -> None:
    assert "... and" not in aborted(["r"] * 20)
    assert "\n  ... and 1 more\n" in aborted(["r"] * 21)
    twenty = aborted(["r"] * 20)
    assert "  users.email id=19: r\nFix the rows, or re-run with -x on-error=skip" in twenty


# -- verify: the tally and the report ---------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def item(pk: int, kind: Kind, **kw: str | None) -> Checked:
    plaintext = kw.pop("plaintext", None)
    first, second = kw.pop("first_error", None), kw.pop("second_error", None)
    verdict = Verdict(kind, plaintext, first_error=first, second_error=second)
    return Checked(pk, "email", verdict, **kw)


def tallied(page: list[Checked], secret: str | None = SECRET) -> ColumnResult:
    res = ColumnResult("email", "email_hmac")
    tally({"email": res}, page, expected="new", secret=secret, max_ids=10)
    return res


def test_every_count_of_the_tally_adds_up_over_several_values() -> None:
    good = hmac_hex(SECRET, b"a")
    res = tallied(
        [
            item(1, Kind.PLAINTEXT),
            item(2, Kind.PLAINTEXT),
            item(3, Kind.UNREADABLE, first_error=AUTH, second_error=AUTH),
            item(4, Kind.UNREADABLE, first_error=AUTH, second_error=TOO_OLD),
            item(5, Kind.FIRST, plaintext=b64("a"), ciphertext="vault:v1:x"),
            item(6, Kind.FIRST, plaintext=b64("a"), ciphertext="vault:v1:y"),
            item(7, Kind.FIRST, plaintext=b64("a"), ciphertext="vault:v1:z", companion="0" * 64),
            item(8, Kind.FIRST, plaintext=b64("a"), ciphertext="vault:v1:w", companion="1" * 64),
            item(9, Kind.FIRST, plaintext=b64("a"), ciphertext="vault:v1:v", companion=good),
        ]
    )
    assert (res.plaintext, res.unreadable, res.new_scheme) == (2, 2, 5)
    assert (res.hmac_null, res.hmac_mismatch, res.hmac_match) == (2, 2, 1)
    assert res.reasons == {
        "plaintext": 2,
        "unreadable (neither key decrypts it)": 1,
        "unreadable (key version below min_decryption_version)": 1,
        "HMAC mismatch": 2,
    }
    unchecked = tallied([item(1, Kind.FIRST, plaintext="eA==", companion="c")] * 2, secret=None)
    assert unchecked.hmac_unchecked == 2


def test_a_new_scheme_value_without_a_version_prefix_counts_at_version_0() -> None:
    res = tallied([item(1, Kind.FIRST, plaintext=b64("a"), ciphertext=None)])
    assert res.versions == {0: 1}


def test_a_companion_is_never_matched_by_a_plaintext_that_is_not_base64() -> None:
    """Lenient base64 would read "eA==!" as "x", whose companion this is: strict refuses it."""
    companion = hmac_hex(SECRET, b"x")
    res = tallied([item(1, Kind.FIRST, plaintext="eA==!", companion=companion)])
    assert (res.hmac_match, res.hmac_mismatch) == (0, 1)
    res = tallied([item(1, Kind.FIRST, plaintext=None, companion=companion)])
    assert (res.hmac_match, res.hmac_mismatch) == (0, 1)


def test_a_split_across_versions_adds_to_a_reason_already_counted() -> None:
    res = ColumnResult("email", None, versions={1: 2, 2: 1})
    res.split_problem()
    res.split_problem()
    assert list(res.reasons.values()) == [4]


def test_the_verify_report_json_whole() -> None:
    column = ColumnResult("email", None, old_scheme=1, new_scheme=2, null=3)
    column.plaintext, column.unreadable = 4, 5
    column.problem(7, "plaintext", 10)
    table = TableResult("users", "0001_users", applied=True, expected="new", rows_checked=6)
    table.columns.append(column)
    report = VerifyReport("0001_users", "o", "n", "transit", 100, False, [table])
    assert report.as_dict() == {
        "tool": "context-encryption verify",
        "revision": "0001_users",
        "keys": {"old": "o", "new": "n", "mount": "transit"},
        "sample": 100,
        "sampling": "first 100 rows of each table by primary key",
        "hmac_checked": False,
        "ok": False,
        "problems": 1,
        "tables": [
            {
                "table": "users",
                "revision": "0001_users",
                "applied": True,
                "expected_scheme": "new",
                "exists": True,
                "rows_checked": 6,
                "migration_in_progress": False,
                "ok": False,
                "problems": 1,
                "columns": [
                    {
                        "column": "email",
                        "old_scheme": 1,
                        "new_scheme": 2,
                        "null": 3,
                        "plaintext": 4,
                        "unreadable": 5,
                        "hmac": None,
                        "ok": False,
                        "problems": 1,
                        "reasons": {"plaintext": 1},
                        "failing_ids": ["7"],
                        "versions": {},
                    }
                ],
            }
        ],
    }
    assert ColumnResult("x", None).as_dict()["ok"] is True
    assert VerifyReport(None, "o", "n", "t", None, True).as_dict()["sampling"] == "all rows"


def test_values_too_long_for_vault_count_as_unreadable_each() -> None:
    res = tallied([item(1, Kind.TOO_LONG), item(2, Kind.TOO_LONG)])
    assert (res.unreadable, res.problems, res.failing_ids) == (2, 2, ["1", "2"])
