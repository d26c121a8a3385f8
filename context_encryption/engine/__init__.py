"""The re-encryption engine every revision calls, for both directions, and the rewrap's too.

One table at a time (:func:`migrate_table`, :class:`TableRun`):

1. Rows are streamed in primary-key order with keyset paging, a batch at a time, so memory does
   not grow with the table (:mod:`.sql`).
2. Every value is classified before anything is written (:mod:`.batch`, through
   :mod:`context_encryption.schemes`): NULL, plaintext, source-scheme ciphertext, already in the
   target scheme, or unreadable. Already-migrated values are skipped and counted, so a re-run is
   always safe; an unreadable value is an error for its row, never passed through.
3. Decrypted values are checked (UTF-8, HMAC companion) and re-encrypted in ``batch_input``
   requests, with the target key's version pinned for the whole run (:mod:`.keypin`).
4. The batch is written with a compare-and-swap: rows that changed in between are re-read and
   handled again (:mod:`.batch_write`), on a pool of workers (:mod:`.workers`).
5. The write commits together with a durable checkpoint (:mod:`.checkpoint`), so a crash loses
   at most the batches in flight and a re-run resumes after the last committed one, when it may
   (:mod:`.resume`).

Modules, one job each: :mod:`.summary` (counts and their text), :mod:`.rows` (a batch's rows and
the row strategy), :mod:`.batch` (the migration's strategy), :mod:`.rewrap_rows` (the rewrap's),
:mod:`.keypin`, :mod:`.runcontext` (what a command's run shares), :mod:`.sql`,
:mod:`.checkpoint`, :mod:`.resume`, :mod:`.workers`, :mod:`.batch_write`, :mod:`.table_run`.
Nothing here logs a value: rows are named by primary key only.
"""

from __future__ import annotations

from context_encryption.engine.batch import check_plaintext, process_rows
from context_encryption.engine.checkpoint import (
    BASE_STAMP,
    Checkpoint,
    Checkpointer,
    checkpoint_table,
    clear_checkpoints,
    ensure_checkpoint_table,
    invalidate_checkpoints,
    read_checkpoints,
    read_stamp,
    stamp_text,
)
from context_encryption.engine.keypin import (
    PROBE_B64,
    KeyIdentityError,
    PinnedKey,
    make_pin,
    pin_target_version,
)
from context_encryption.engine.rewrap_rows import NOTE_KINDS, RewrapRows
from context_encryption.engine.rows import Row, RowProcessor, TransitFactory
from context_encryption.engine.runcontext import RunContext
from context_encryption.engine.sql import TableSql
from context_encryption.engine.summary import (
    BatchResult,
    ColumnCounts,
    Outcome,
    TableSummary,
    aborted_error,
)
from context_encryption.engine.table_run import TableRun, migrate_table

__all__ = [
    "BASE_STAMP",
    "NOTE_KINDS",
    "PROBE_B64",
    "BatchResult",
    "Checkpoint",
    "Checkpointer",
    "ColumnCounts",
    "KeyIdentityError",
    "Outcome",
    "PinnedKey",
    "RewrapRows",
    "Row",
    "RowProcessor",
    "RunContext",
    "TableRun",
    "TableSql",
    "TableSummary",
    "TransitFactory",
    "aborted_error",
    "check_plaintext",
    "checkpoint_table",
    "clear_checkpoints",
    "ensure_checkpoint_table",
    "invalidate_checkpoints",
    "make_pin",
    "migrate_table",
    "pin_target_version",
    "process_rows",
    "read_checkpoints",
    "read_stamp",
    "stamp_text",
]
