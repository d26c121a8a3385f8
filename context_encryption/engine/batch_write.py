"""One batch from its rows as read to committed: process, compare-and-swap, checkpoint.

:meth:`BatchWriter.process` runs on a worker thread. It has the batch's rows processed (the
run's :class:`~context_encryption.engine.rows.RowProcessor`), checks the pinned key's material,
and writes in one transaction with a compare-and-swap and the checkpoint advance. Rows that
changed between the read and the write are re-read and handled again (a few rounds, then
reported); a lock timeout, deadlock or serialization failure is retried (the compare-and-swap
keeps a retry safe).

The checkpoint only advances past a batch whose every row ended migrated, already in the target
scheme, NULL, skipped plaintext or deleted. A batch with a failed row (in either on-error mode)
or a row that kept changing holds the checkpoint back, so a resumed run looks at that row again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from app_models.specs import TableSpec
from context_encryption.engine.checkpoint import Checkpointer
from context_encryption.engine.keypin import PinnedKey, key_changed_error
from context_encryption.engine.rows import Row, RowProcessor
from context_encryption.engine.sql import TableSql
from context_encryption.engine.summary import BatchResult, count_outcomes
from context_encryption.engine.workers import Workers
from context_encryption.errors import RowError
from context_encryption.schemes import Scheme
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient

log = logging.getLogger("context_encryption")

CAS_ROUNDS: Final = 3
WRITE_ATTEMPTS: Final = 3
#: Database errors after which a batch's write is tried again (its CAS keeps that safe).
TRANSIENT_DB_ERRORS: Final = frozenset(
    {"LockNotAvailable", "DeadlockDetected", "SerializationFailure"}
)


def kept_changing(table: str, pk: Any) -> RowError:
    return RowError(
        table,
        "*",
        pk,
        f"kept changing during {CAS_ROUNDS + 1} attempts; it was left as the "
        "application wrote it. Re-run to migrate it",
    )


@dataclass
class BatchWriter:
    """What every batch of one table's run shares (the pin is final before the first batch)."""

    spec: TableSpec
    sql: TableSql
    settings: Settings
    source: Scheme
    target: Scheme
    pin: PinnedKey
    processor: RowProcessor
    checkpointer: Checkpointer
    workers: Workers
    #: set when the run stops: a batch of an aborting run writes nothing
    stop: threading.Event

    @property
    def abort(self) -> bool:
        return self.settings.on_error == "abort"

    def process(self, seq: int, rows: list[Row]) -> BatchResult:
        """Migrate one batch: classify and re-encrypt, compare-and-swap, checkpoint."""
        conn, transit = self.workers.connection(), self.workers.transit()
        result = BatchResult(seq, rows[-1].pk, rows_scanned=len(rows))
        pending = rows
        for round_no in range(CAS_ROUNDS + 1):
            lost = self._round(conn, transit, seq, pending, result)
            if not lost:
                return result
            # Rows that changed between our read and our write: nothing of ours was written to
            # them. Take back their counts, then re-read and handle them again.
            count_outcomes(result, lost, -1)
            if round_no == CAS_ROUNDS:
                result.errors.extend(kept_changing(self.spec.name, r.pk) for r in lost)
                return result
            result.changed_concurrently += len(lost)
            with conn.begin():
                self.sql.set_timeouts(conn, self.settings)
                found = conn.execute(self.sql.select_pks([r.pk for r in lost])).all()
            pending = self.sql.to_rows(found)
            result.deleted_concurrently += len(lost) - len(pending)
            if not pending:  # all of them were deleted meanwhile
                self._write(conn, seq, [], clean=not result.errors)
                return result
        return result

    def _round(
        self,
        conn: sa.Connection,
        transit: TransitClient,
        seq: int,
        pending: list[Row],
        result: BatchResult,
    ) -> list[Row]:
        """Process and write ``pending`` once; returns the rows that changed meanwhile."""
        self.processor(
            pending,
            self.spec,
            source=self.source,
            target=self.target,
            target_version=self.pin.version,
            settings=self.settings,
            transit=transit,
        )
        errors = [e for r in pending for e in r.errors]
        result.errors.extend(errors)
        if self.settings.dry_run:
            count_outcomes(result, pending)
            return []
        if self.abort and (errors or self.stop.is_set()):
            # nothing of this batch is written: count only what failed
            count_outcomes(result, [r for r in pending if r.errors])
            return []
        count_outcomes(result, pending)
        writes = [r for r in pending if not r.errors and r.new]
        if writes:
            self._check_key(transit, seq)
        began = time.monotonic()
        written, lost = self._write(conn, seq, writes, clean=not result.errors)
        result.write_seconds += time.monotonic() - began
        result.rows_written += len(written)
        return lost

    def _check_key(self, transit: TransitClient, seq: int) -> None:
        """Before a batch's write: the pinned key version still has the pinned material."""
        problem = self.pin.problem(transit)
        if problem is not None:
            raise key_changed_error(
                self.pin,
                transit.mount,
                f"{self.spec.name}: the run stopped before writing batch {seq}",
                problem,
                "Nothing encrypted with the replaced material was written: every batch is "
                "checked before its write.",
            )

    def _write(
        self, conn: sa.Connection, seq: int, writes: list[Row], *, clean: bool
    ) -> tuple[set[Any], list[Row]]:
        """One transaction: the compare-and-swap, and the checkpoint when the batch is done.

        A lock timeout, deadlock or serialization failure is retried a few times with a pause
        (the compare-and-swap makes a retry safe); anything else stops the run.
        """
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with conn.begin():
                    self.sql.set_timeouts(conn, self.settings)
                    written = self.sql.write(conn, writes)
                    lost = [r for r in writes if r.pk not in written]
                    advance = clean and not lost
                    if advance:
                        self.checkpointer.advance_in(conn, seq)
                if advance:
                    self.checkpointer.committed(seq)
                return written, lost
            except sa.exc.OperationalError as exc:
                name = type(exc.orig).__name__
                if name not in TRANSIENT_DB_ERRORS or attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.info(
                    "%s: batch %d: %s, retrying (%d of %d)",
                    self.spec.name,
                    seq,
                    name,
                    attempt + 1,
                    WRITE_ATTEMPTS - 1,
                )
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover
