"""What a table's run counts and says: per-value outcomes, per-batch results, the table summary.

Pure bookkeeping, no database and no Vault: :class:`Outcome` of one value, :class:`ColumnCounts`
per column, :class:`BatchResult` of one batch, :class:`TableSummary` of one table (merged from
its batches, logged as text and written to the JSON report), :func:`count_outcomes` (how a
batch counts its rows) and :func:`aborted_error` (the message of an ``on-error=abort`` stop).
Every text names tables, columns and primary keys only, never a value.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from app_models.specs import Direction
from context_encryption.errors import MigrationAborted, RowError

if TYPE_CHECKING:
    from context_encryption.engine.rows import Row

#: Most failures a summary keeps (the counts stay exact).
MAX_FAILURES: Final = 10_000
#: Failures an abort message lists.
SHOWN_FAILURES: Final = 20


class Outcome(enum.Enum):
    """What happened to one value."""

    MIGRATED = "migrated"
    ALREADY = "already_migrated"
    NULL = "null"
    PLAINTEXT_ENCRYPTED = "plaintext_encrypted"
    PLAINTEXT_SKIPPED = "plaintext_skipped"
    FAILED = "failed"
    #: a readable value left untouched because another column of its row failed
    ROW_FAILED = "left_with_failed_row"


@dataclass
class ColumnCounts:
    migrated: int = 0
    already_migrated: int = 0
    null: int = 0
    plaintext_encrypted: int = 0
    plaintext_skipped: int = 0
    failed: int = 0
    left_with_failed_row: int = 0

    def add(self, outcome: Outcome, n: int = 1) -> None:
        name = outcome.value
        setattr(self, name, getattr(self, name) + n)

    def merge(self, other: ColumnCounts) -> None:
        for o in Outcome:
            self.add(o, getattr(other, o.value))

    def as_dict(self) -> dict[str, int]:
        return {o.value: getattr(self, o.value) for o in Outcome}


@dataclass
class BatchResult:
    seq: int
    last_pk: Any
    rows_scanned: int = 0
    rows_written: int = 0
    changed_concurrently: int = 0
    deleted_concurrently: int = 0
    columns: dict[str, ColumnCounts] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    #: from the batch's start on its worker to its end; its write transactions' share
    seconds: float = 0.0
    write_seconds: float = 0.0


def count_outcomes(result: BatchResult, rows: Sequence[Row], sign: int = 1) -> None:
    """Count every value of ``rows`` into ``result`` (``sign`` -1 takes the counts back).

    A failed row's other values count as left with their row (:attr:`Outcome.ROW_FAILED`).
    """
    for r in rows:
        for col, outcome in r.outcomes.items():
            counted = Outcome.ROW_FAILED if r.errors and outcome is not Outcome.FAILED else outcome
            result.columns.setdefault(col, ColumnCounts()).add(counted, sign)


@dataclass
class TableSummary:
    """Counts of one table's run. Contains primary keys and counts only, never values."""

    table: str
    revision: str
    direction: str
    dry_run: bool
    target_key_version: int = 0
    rows_scanned: int = 0
    rows_written: int = 0
    rows_failed: int = 0
    changed_concurrently: int = 0
    deleted_concurrently: int = 0
    batches: int = 0
    vault_requests: int = 0
    seconds: float = 0.0
    resumed_after: str | None = None
    status: str = "running"  # completed, aborted (on-error=abort), stopped (an error), dry-run
    columns: dict[str, ColumnCounts] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    #: the throttle's part (context_encryption.throttle.Throttle.report): holds, batch sizes
    throttle: dict[str, Any] | None = None

    def merge_batch(self, b: BatchResult) -> None:
        self.rows_scanned += b.rows_scanned
        self.rows_written += b.rows_written
        self.rows_failed += len({e.pk for e in b.errors})
        self.changed_concurrently += b.changed_concurrently
        self.deleted_concurrently += b.deleted_concurrently
        self.batches += 1
        for name, counts in b.columns.items():
            self.columns.setdefault(name, ColumnCounts()).merge(counts)
        for e in b.errors:
            if len(self.failures) < MAX_FAILURES:
                self.failures.append({"column": e.column, "id": str(e.pk), "reason": e.reason})

    def total(self, outcome: Outcome) -> int:
        return sum(getattr(c, outcome.value) for c in self.columns.values())

    def finish(self, *, dry_run: bool, on_error: str) -> bool:
        """Set the final status of a run that was not stopped; True when it aborts."""
        aborted = bool(self.rows_failed) and on_error == "abort" and not dry_run
        self.status = "dry-run" if dry_run else "aborted" if aborted else "completed"
        return aborted

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "revision": self.revision,
            "direction": self.direction,
            "dry_run": self.dry_run,
            "target_key_version": self.target_key_version,
            "rows_scanned": self.rows_scanned,
            "rows_written": self.rows_written,
            "rows_failed": self.rows_failed,
            "changed_concurrently": self.changed_concurrently,
            "deleted_concurrently": self.deleted_concurrently,
            "batches": self.batches,
            "vault_requests": self.vault_requests,
            "seconds": round(self.seconds, 3),
            "resumed_after": self.resumed_after,
            "status": self.status,
            "columns": {k: v.as_dict() for k, v in self.columns.items()},
            "failures": self.failures,
            "throttle": self.throttle,
        }

    def column_lines(self) -> list[str]:
        verb = "would migrate" if self.dry_run else "migrated"
        lines = []
        for name, c in self.columns.items():
            plaintext = c.plaintext_encrypted + c.plaintext_skipped
            lines.append(
                f"  {self.table}.{name}: {verb} {c.migrated}, already {c.already_migrated}, "
                f"NULL {c.null}, plaintext {plaintext}"
                + (f" ({c.plaintext_encrypted} encrypted)" if c.plaintext_encrypted else "")
                + f", failed {c.failed}"
                + (
                    f", kept unchanged {c.left_with_failed_row} (readable, but another column of "
                    "the same row failed)"
                    if c.left_with_failed_row
                    else ""
                )
            )
        return lines

    def log_line(self) -> str:
        verb = "would migrate" if self.dry_run else "migrated"
        return (
            f"{self.table} ({self.direction}{', dry run' if self.dry_run else ''}): "
            f"{self.rows_scanned} rows scanned, {verb} {self.total(Outcome.MIGRATED)} values, "
            f"{self.total(Outcome.ALREADY)} already migrated, {self.total(Outcome.NULL)} NULL, "
            f"{self.total(Outcome.PLAINTEXT_ENCRYPTED)} plaintext encrypted, "
            f"{self.total(Outcome.PLAINTEXT_SKIPPED)} plaintext skipped, "
            f"{self.total(Outcome.FAILED)} failed ({self.rows_failed} rows), "
            f"{self.changed_concurrently} rows changed concurrently, "
            f"{self.vault_requests} Vault requests, {self.seconds:.1f}s"
        )


def failure_lines(summary: TableSummary) -> str:
    """The first failures of a summary, one line each (primary key and reason, no value)."""
    return "\n".join(
        f"  {summary.table}.{f['column']} id={f['id']}: {f['reason']}"
        for f in summary.failures[:SHOWN_FAILURES]
    )


def aborted_error(summary: TableSummary) -> MigrationAborted:
    """The error of a migration stopped by ``on-error=abort``: which rows, why, what to do."""
    more = len(summary.failures) - SHOWN_FAILURES
    hmac_failures = sum("HMAC verification failed" in f["reason"] for f in summary.failures)
    hint = ""
    if hmac_failures and hmac_failures * 2 >= max(len(summary.failures), 1):
        hint = (
            "\nMost failures are HMAC mismatches: ENCRYPTION_HMAC_SECRET (or -x hmac-secret) is "
            "most likely not the secret the application used."
        )
    state = (
        f"revision {summary.revision} was not stamped"
        if summary.direction == Direction.UPGRADE.value
        else f"revision {summary.revision} stays the current one (not rolled back)"
    )
    return MigrationAborted(
        f"{summary.table}: {summary.rows_failed} row(s) cannot be migrated; {state} "
        "(on-error=abort). Committed batches stay and a re-run resumes from the checkpoint."
        f"\n{failure_lines(summary)}"
        + (f"\n  ... and {more} more" if more > 0 else "")
        + hint
        + "\nFix the rows, or re-run with -x on-error=skip to migrate the rest and list these "
        "in the report (-x report=PATH)."
    )
