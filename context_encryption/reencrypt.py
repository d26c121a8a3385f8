"""The re-encryption engine every revision calls, for both directions.

One table at a time:

1. Rows are streamed in primary-key order with keyset paging (``WHERE id > :last ORDER BY id
   LIMIT :n``), a batch at a time, so memory does not grow with the table.
2. Every value is classified before anything is written: NULL, plaintext (no ``vault:`` prefix),
   source-scheme ciphertext (decrypts with the source key and context), already in the target
   scheme (the source key fails and a trial decrypt with the target key and context succeeds),
   or unreadable. Already-migrated values are skipped and counted, so a re-run is always safe;
   an unreadable value is an error for its row and is never passed through or re-encrypted.
3. Decrypted values are checked (UTF-8, HMAC companion) and re-encrypted in one ``batch_input``
   request per batch, with the target key's version pinned for the whole run.
4. The batch is written with a compare-and-swap: a row is only updated where its ciphertexts and
   companions are still the ones read. Rows that changed in between are re-read and handled
   again; a row still changing after a few rounds is reported.
5. The write commits together with a durable checkpoint (``context_encryption_checkpoint``), so a
   crash loses at most the batches in flight and a re-run resumes after the last committed one.
   The checkpoint is removed in the revision's own transaction, together with Alembic's stamp.

Which checkpoint a run may trust (see :func:`migrate_table` and :mod:`context_encryption.plan`): a
checkpoint records the version stamp it was made under, and every change of the stamp (a
revision applied or rolled back, ``alembic stamp``) marks the checkpoints left in the table
stale (:func:`invalidate_checkpoints`, called by ``migrations/env.py`` in the stamp's own
transaction). A run resumes after a checkpoint only when it is of the same revision and
direction and not stale; a stale checkpoint, one of the other direction, or one written by an
older version of this tool makes the run process the whole table from its first row (the
classification of step 2 makes that safe: what is already in the target scheme is skipped).
A checkpoint of a revision the command does not run stops the command before any work.

Key identity: the target key's version is pinned once per run (:meth:`RunContext.pin`) together
with a probe ciphertext made with it (:class:`PinnedKey`). Before each batch's write, and before
a run resumes a checkpoint, the probe must still decrypt: a key recreated or restored from
another backup under the same name and version stops the run before anything is written with it.

Several batches are in flight at once (``-x workers``), each worker with its own database
connection and Vault client, so Vault latency overlaps database work. Nothing here logs a value:
rows are named by primary key only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from app_models.specs import ColumnSpec, Direction, TableSpec
from app_models.tables import context_string
from context_encryption.errors import (
    ConfigurationError,
    ContextEncryptionError,
    MigrationAborted,
    PreflightError,
    RowError,
    VaultRequestError,
    database_error_message,
)
from context_encryption.progress import Progress, estimate_rows
from context_encryption.row_security import disable_row_security, is_row_security_error
from context_encryption.settings import Settings
from context_encryption.transit import (
    MAX_STRING_BYTES,
    DecryptRequest,
    EncryptRequest,
    TransitClient,
    hmac_matches,
)
from context_encryption.vault_texts import AUTH_FAILED, MISSING_CONTEXT, NO_PREFIX, TOO_OLD

log = logging.getLogger("context_encryption")

CAS_ROUNDS: Final = 3
WRITE_ATTEMPTS: Final = 3
#: Database errors after which a batch's write is tried again (its CAS keeps that safe).
TRANSIENT_DB_ERRORS: Final = frozenset(
    {"LockNotAvailable", "DeadlockDetected", "SerializationFailure"}
)
VAULT_PREFIX: Final = "vault:"

#: Alembic's version table (``version_table`` in alembic.ini).
VERSION_TABLE: Final = "alembic_version_encryption"
#: How a checkpoint records "no revision applied".
BASE_STAMP: Final = "base"

checkpoint_metadata = sa.MetaData()
checkpoint_table = sa.Table(
    "context_encryption_checkpoint",
    checkpoint_metadata,
    sa.Column("revision", sa.Text, primary_key=True),
    sa.Column("direction", sa.Text, primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("batch_seq", sa.BigInteger, nullable=False),
    sa.Column("last_pk", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    # what the run that wrote it used: a resumed run must encrypt the same way
    sa.Column("source_key", sa.Text, nullable=True),
    sa.Column("target_key", sa.Text, nullable=True),
    sa.Column("target_version", sa.Integer, nullable=True),
    # the version stamp the checkpoint was made under; NULL once the stamp changed since (or
    # made by an older version of this tool): such a checkpoint is never resumed
    sa.Column("stamp", sa.Text, nullable=True),
    # the probe ciphertext of the pinned target key version (see PinnedKey)
    sa.Column("key_fingerprint", sa.Text, nullable=True),
)
#: Columns added after the first release; created (nullable) on a table that lacks them.
ADDED_CHECKPOINT_COLUMNS: Final = ("stamp", "key_fingerprint")


@dataclass(frozen=True)
class Checkpoint:
    """A stopped run's progress: resume after ``last_pk`` (None: before the first row)."""

    revision: str
    direction: str
    table_name: str
    last_pk: str | None
    source_key: str | None = None
    target_key: str | None = None
    target_version: int | None = None
    stamp: str | None = None
    key_fingerprint: str | None = None

    def position(self) -> str:
        return f"after id={self.last_pk}" if self.last_pk is not None else "before its first batch"

    @property
    def run(self) -> str:
        """``an upgrade`` or ``a downgrade``: the stopped run, for messages."""
        return {
            Direction.UPGRADE.value: "an upgrade",
            Direction.DOWNGRADE.value: "a downgrade",
        }.get(self.direction, "a rewrap")


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


@dataclass(frozen=True)
class Scheme:
    """One side of the migration: a Transit key, with or without the per-column context."""

    key: str
    contextual: bool

    def context(self, table: str, column: str) -> str | None:
        return context_string(table, column) if self.contextual else None

    def describe(self, table: str, column: str) -> str:
        """The key and the real context of one column, e.g. ``key 'k' with context users.email``."""
        context = self.context(table, column)
        return f"key {self.key!r} " + (
            f"with context {context}" if context is not None else "without context"
        )


def schemes(settings: Settings, direction: Direction) -> tuple[Scheme, Scheme]:
    """(source, target) for a direction."""
    old = Scheme(settings.old_key, contextual=False)
    new = Scheme(settings.new_key, contextual=True)
    if direction is Direction.REWRAP:
        return new, new
    return (old, new) if direction is Direction.UPGRADE else (new, old)


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
            if len(self.failures) < 10_000:
                self.failures.append({"column": e.column, "id": str(e.pk), "reason": e.reason})

    def total(self, outcome: Outcome) -> int:
        return sum(getattr(c, outcome.value) for c in self.columns.values())

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


@dataclass
class _Row:
    pk: Any
    values: dict[str, str | None]  # encrypted columns and companions, as read
    new: dict[str, str] = field(default_factory=dict)  # column -> new ciphertext
    errors: list[RowError] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


TransitFactory = Callable[[], TransitClient]


class RowProcessor(Protocol):
    """What a batch does to its rows before the compare-and-swap write (:func:`process_rows`
    for the migration). It fills each row's ``new`` (column -> ciphertext to write),
    ``outcomes`` and ``errors`` in place, and never touches the database."""

    def __call__(
        self,
        rows: Sequence[_Row],
        spec: TableSpec,
        *,
        source: Scheme,
        target: Scheme,
        target_version: int,
        settings: Settings,
        transit: TransitClient,
    ) -> None: ...


# --------------------------------------------------------------------------------------------
# key identity: the pinned target key version and its fingerprint
# --------------------------------------------------------------------------------------------

#: A fixed, public plaintext encrypted at pin time; its ciphertext identifies the key material.
PROBE_PLAINTEXT: Final = "context-encryption key identity probe v1"
#: The context of the probe with a derived key: no ``<table>.<column>`` of the chain.
PROBE_CONTEXT: Final = "context-encryption key identity probe"
PROBE_B64: Final = base64.b64encode(PROBE_PLAINTEXT.encode("utf-8")).decode("ascii")


class KeyIdentityError(ContextEncryptionError):
    """The pinned target key version no longer has the material it had when it was pinned."""


@dataclass(frozen=True)
class PinnedKey:
    """The target key version a run encrypts with, and the probe that identifies its material.

    Transit knows a key by name and version only; a key deleted and created again, or restored
    from another backup, has the same name and version and other material. ``probe`` is the
    ciphertext of :data:`PROBE_PLAINTEXT` made with this version when it was pinned; as long as
    it decrypts to the probe, the version has the same material (AES-GCM authenticates it).
    For the convergent key the probe is deterministic; for the old key it is random, which is
    why the check decrypts rather than compares.
    """

    key: str
    version: int
    contextual: bool
    probe: str

    def problem(self, transit: TransitClient) -> str | None:
        """None when the version still has the pinned material; else what Vault said."""
        context = PROBE_CONTEXT if self.contextual else None
        try:
            [res] = transit.decrypt_batch(self.key, [DecryptRequest(self.probe, context)])
        except VaultRequestError as exc:
            return str(exc)
        if res.error is not None:
            return f"Vault says {res.error!r}"
        if res.value != PROBE_B64:
            return "the probe decrypts to another plaintext"
        return None


def make_pin(transit: TransitClient, target: Scheme, version: int) -> PinnedKey:
    """Pin ``version`` of the target key: encrypt the probe with it (one small request)."""
    context = PROBE_CONTEXT if target.contextual else None
    [res] = transit.encrypt_batch(
        target.key, [EncryptRequest(PROBE_B64, context)], key_version=version
    )
    if res.error is not None or not res.value or not res.value.startswith(VAULT_PREFIX):
        raise PreflightError(
            f"cannot encrypt with key {target.key!r} version {version}: Vault says "
            f"{res.error!r}; check the key's min_encryption_version and the token's policy"
        )
    return PinnedKey(target.key, version, target.contextual, res.value)


def _key_changed(
    pin: PinnedKey, mount: str, what: str, problem: str, consequence: str
) -> KeyIdentityError:
    if TOO_OLD in problem:  # the material may be intact; the key's policy changed
        return KeyIdentityError(
            f"{what}: key {pin.key!r} version {pin.version} on mount {mount!r} is now below "
            f"the key's min_decryption_version ({problem}), so values encrypted with it could "
            f"not be read back. {consequence} Lower it again (vault write "
            f"{mount}/keys/{pin.key}/config min_decryption_version={pin.version}), then run "
            "the same command again"
        )
    return KeyIdentityError(
        f"{what}: key {pin.key!r} version {pin.version} on mount {mount!r} no longer has the "
        "key material it had when it was pinned (a probe ciphertext made with it then does not "
        f"decrypt now: {problem}). The key was deleted and created again, or restored from "
        f"another backup, under the same name. {consequence} Restore the key from the backup "
        f"taken before the migration (vault write {mount}/restore/{pin.key} "
        "backup=@<backup file>; a wrong key of that name must be deleted first), then run the "
        "same command again; it resumes from its checkpoint"
    )


@dataclass
class RunContext:
    """What a revision's run needs besides the table: settings, Vault clients, a sink.

    One per ``alembic`` command: the target key's version is pinned once for the whole run
    (:meth:`pin`), so a rotation while it runs, even between tables, does not change it.
    """

    settings: Settings
    transit_factory: TransitFactory
    on_summary: Callable[[TableSummary], None] = lambda _s: None
    progress_interval: float = 5.0
    _pins: dict[str, PinnedKey] = field(default_factory=dict, repr=False)
    _pin_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pin(self, transit: TransitClient, target: Scheme, direction: Direction) -> PinnedKey:
        """The run's pinned version of the target key (read and probed at its first use)."""
        with self._pin_lock:
            pinned = self._pins.get(target.key)
            if pinned is None:
                version = pin_target_version(transit, target, direction)
                pinned = make_pin(transit, target, version)
                self._pins[target.key] = pinned
                log.info(
                    "key %r: version %d pinned for this run (with a fingerprint of its material)",
                    target.key,
                    version,
                )
            return pinned

    def pin_version(self, transit: TransitClient, target: Scheme, version: int) -> PinnedKey:
        """Pin ``version`` of the target key for this run (a rewrap's ``--to-version``)."""
        with self._pin_lock:
            pinned = make_pin(transit, target, version)
            self._pins[target.key] = pinned
            log.info(
                "key %r: version %d pinned for this run (with a fingerprint of its material)",
                target.key,
                version,
            )
            return pinned


# --------------------------------------------------------------------------------------------
# classification and re-encryption of one batch (no database access)
# --------------------------------------------------------------------------------------------


def _explain(
    source_error: str, target_error: str, source: Scheme, target: Scheme, *, table: str, column: str
) -> str:
    """A reason naming keys and what to do, from Vault's error texts (which hold no values).

    ``source_error`` is Vault's answer to the decrypt with the source scheme, ``target_error``
    its answer to the trial decrypt with the target scheme.
    """
    src, tgt = source.describe(table, column), target.describe(table, column)
    if TOO_OLD in target_error and AUTH_FAILED in source_error:
        return (
            f"looks already migrated, but its version is below the minimum decryption version "
            f"of {tgt} (Vault: disallowed by policy (too old)); lower that key's "
            "min_decryption_version"
        )
    if MISSING_CONTEXT in source_error:
        return (
            f"cannot be decrypted with {src}: Vault says \"missing 'context' for "
            'key derivation" — the data may already be context-based, or the key names are '
            "swapped (check VAULT_OLD_KEY / VAULT_NEW_KEY)"
        )
    if AUTH_FAILED in source_error:
        return (
            f"cannot be decrypted with {src} nor with {tgt} "
            "(cipher: message authentication failed): another key, another context, or a "
            "damaged value"
        )
    if NO_PREFIX in source_error:
        return (
            "Vault says 'invalid ciphertext: no prefix': the value starts with 'vault:' but is "
            "not Transit ciphertext (damaged, or another format)"
        )
    if TOO_OLD in source_error:
        return (
            f"its key version is below the minimum decryption version of {src} "
            "(Vault: disallowed by policy (too old)); lower min_decryption_version with "
            f"vault write <mount>/keys/{source.key}/config min_decryption_version=<n>"
        )
    return (
        f"unreadable ciphertext: Vault says {source_error!r} for {src} and "
        f"{target_error!r} for {tgt}"
    )


def process_rows(
    rows: Sequence[_Row],
    spec: TableSpec,
    *,
    source: Scheme,
    target: Scheme,
    target_version: int,
    settings: Settings,
    transit: TransitClient,
) -> None:
    """Classify, decrypt, check and re-encrypt every value of ``rows`` in place."""
    table = spec.name
    secret = settings.hmac_secret.get() if settings.hmac_secret is not None else None

    def fail(row: _Row, col: str, reason: str) -> None:
        row.outcomes[col] = Outcome.FAILED
        row.errors.append(RowError(table, col, row.pk, reason))

    # 1. classify; collect ciphertexts to decrypt with the source scheme
    to_decrypt: list[tuple[_Row, ColumnSpec]] = []
    # (row, column, plaintext bytes, base64 of them when Vault already gave it, outcome)
    to_encrypt: list[tuple[_Row, ColumnSpec, bytes, str | None, Outcome]] = []
    for row in rows:
        for col in spec.columns:
            value = row.values[col.name]
            if value is None:
                row.outcomes[col.name] = Outcome.NULL
            elif not value.startswith(VAULT_PREFIX):
                if settings.plaintext == "skip":
                    row.outcomes[col.name] = Outcome.PLAINTEXT_SKIPPED
                elif settings.plaintext == "encrypt":
                    to_encrypt.append(
                        (row, col, value.encode("utf-8"), None, Outcome.PLAINTEXT_ENCRYPTED)
                    )
                else:
                    fail(
                        row,
                        col.name,
                        "holds plaintext (no 'vault:' prefix); if the column really holds "
                        "unencrypted data use -x plaintext=encrypt, or -x plaintext=skip to "
                        "leave it",
                    )
            elif len(value) > MAX_STRING_BYTES:
                fail(row, col.name, "ciphertext is longer than Vault's 1 MiB string limit")
            else:
                to_decrypt.append((row, col))

    # 2. decrypt with the source scheme; failures get a trial decrypt with the target scheme
    decrypted: list[tuple[_Row, ColumnSpec, str]] = []
    if to_decrypt:
        results = transit.decrypt_batch(
            source.key,
            [
                DecryptRequest(r.values[c.name] or "", source.context(table, c.name))
                for r, c in to_decrypt
            ],
        )
        retry: list[tuple[_Row, ColumnSpec, str]] = []
        for (row, col), res in zip(to_decrypt, results, strict=True):
            if res.error is None and res.value is not None:
                decrypted.append((row, col, res.value))
            else:
                retry.append((row, col, res.error or "no plaintext in Vault's answer"))
        if retry:
            trial = transit.decrypt_batch(
                target.key,
                [
                    DecryptRequest(r.values[c.name] or "", target.context(table, c.name))
                    for r, c, _ in retry
                ],
            )
            for (row, col, src_err), res in zip(retry, trial, strict=True):
                if res.error is None:
                    row.outcomes[col.name] = Outcome.ALREADY
                else:
                    fail(
                        row,
                        col.name,
                        _explain(src_err, res.error, source, target, table=table, column=col.name),
                    )

    # 3. check plaintexts: valid base64 from Vault, UTF-8 text, HMAC companion
    for row, col, b64 in decrypted:
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            fail(row, col.name, "Vault returned a plaintext that is not base64")
            continue
        to_encrypt.append((row, col, raw, b64, Outcome.MIGRATED))

    checked: list[tuple[_Row, ColumnSpec, str, Outcome]] = []
    for row, col, raw, b64_or_none, outcome in to_encrypt:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            fail(row, col.name, "decrypted bytes are not valid UTF-8 text")
            continue
        if col.hmac is not None:
            companion = row.values[col.hmac]
            if companion is not None:
                if secret is None:
                    fail(row, col.name, "has an HMAC companion but no ENCRYPTION_HMAC_SECRET")
                    continue
                if not hmac_matches(secret, raw, companion):
                    fail(row, col.name, f"HMAC verification failed (companion {col.hmac})")
                    continue
        encoded = b64_or_none or base64.b64encode(raw).decode("ascii")
        if len(encoded) > MAX_STRING_BYTES:
            fail(row, col.name, "value is larger than Vault's 1 MiB string limit once encoded")
            continue
        checked.append((row, col, encoded, outcome))

    # 4. re-encrypt with the target scheme, version pinned
    if checked:
        results = transit.encrypt_batch(
            target.key,
            [
                EncryptRequest(encoded, target.context(table, c.name))
                for _r, c, encoded, _o in checked
            ],
            key_version=target_version,
        )
        for (row, col, _encoded, outcome), res in zip(checked, results, strict=True):
            if res.error is not None or not res.value or not res.value.startswith(VAULT_PREFIX):
                fail(row, col.name, f"Vault could not encrypt it: {res.error!r}")
            elif len(res.value) > MAX_STRING_BYTES:
                # Vault refuses JSON strings over 1 MiB: it could never decrypt this again
                fail(
                    row,
                    col.name,
                    f"its new ciphertext would be {len(res.value):,} characters, over Vault's "
                    f"1 MiB ({MAX_STRING_BYTES:,}) string limit: Vault could not decrypt it "
                    "again, so it was left as it is",
                )
            else:
                row.new[col.name] = res.value
                row.outcomes[col.name] = outcome


# --------------------------------------------------------------------------------------------
# database access
# --------------------------------------------------------------------------------------------


class _Db:
    """Statements of one table, built once per run from the revision's frozen snapshot."""

    def __init__(self, spec: TableSpec, dialect: str) -> None:
        self.spec = spec
        t = spec.table
        self.pk = t.c[spec.pk]
        self.read_cols = [c for col in spec.columns for c in (col.name, col.hmac) if c]
        self.select_cols = [self.pk, *(t.c[c] for c in self.read_cols)]
        self.postgres = dialect == "postgresql"
        if self.postgres:
            self.write_stmt = self._pg_write()
        else:
            self.write_stmt = self._generic_write()

    def select_after(self, last_pk: Any, limit: int) -> sa.Select[Any]:
        stmt = sa.select(*self.select_cols).order_by(self.pk).limit(limit)
        if last_pk is not None:
            stmt = stmt.where(self.pk > last_pk)
        return stmt

    def select_pks(self, pks: Sequence[Any]) -> sa.Select[Any]:
        return sa.select(*self.select_cols).where(self.pk.in_(pks)).order_by(self.pk)

    def _pg_write(self) -> sa.Update:
        """One set-based compare-and-swap UPDATE per batch.

        The batch travels as one JSON document read by ``json_to_recordset``: one parameter
        whatever the batch size, serialised by the C JSON encoder, and no per-element array
        adaptation on the client.
        """
        t = self.spec.table
        cols: list[Any] = [sa.column("id", self.pk.type)]
        cols += [sa.column(f"o_{c}", sa.Text) for c in self.read_cols]
        cols += [sa.column(f"n_{col.name}", sa.Text) for col in self.spec.columns]
        doc = sa.bindparam("doc", type_=pg.JSON(none_as_null=True))
        v = (
            sa.func.json_to_recordset(doc)
            .table_valued(*cols)
            .render_derived(name="v", with_types=True)
        )
        where = [self.pk == v.c.id]
        where += [t.c[c].is_not_distinct_from(v.c[f"o_{c}"]) for c in self.read_cols]
        return (
            sa.update(t)
            .values({col.name: v.c[f"n_{col.name}"] for col in self.spec.columns})
            .where(*where)
            .returning(self.pk)
        )

    def _generic_write(self) -> sa.Update:
        t = self.spec.table
        where = [self.pk == sa.bindparam("b_id")]
        where += [t.c[c].is_not_distinct_from(sa.bindparam(f"o_{c}")) for c in self.read_cols]
        return (
            sa.update(t)
            .values({col.name: sa.bindparam(f"n_{col.name}") for col in self.spec.columns})
            .where(*where)
        )

    def write(self, conn: sa.Connection, rows: Sequence[_Row]) -> set[Any]:
        """Compare-and-swap ``rows``; returns the primary keys actually updated."""
        if not rows:
            return set()
        if self.postgres:
            text_ids = isinstance(self.pk.type, sa.Uuid)  # JSON has no UUID type
            doc = []
            for r in rows:
                item: dict[str, Any] = {"id": str(r.pk) if text_ids else r.pk}
                for c in self.read_cols:
                    item[f"o_{c}"] = r.values[c]
                for col in self.spec.columns:
                    item[f"n_{col.name}"] = r.new.get(col.name, r.values[col.name])
                doc.append(item)
            return {pk for (pk,) in conn.execute(self.write_stmt, {"doc": doc})}
        done: set[Any] = set()
        for r in rows:
            p: dict[str, Any] = {"b_id": r.pk}
            p.update({f"o_{c}": r.values[c] for c in self.read_cols})
            p.update(
                {f"n_{c.name}": r.new.get(c.name, r.values[c.name]) for c in self.spec.columns}
            )
            if conn.execute(self.write_stmt, p).rowcount == 1:
                done.add(r.pk)
        return done

    def set_timeouts(self, conn: sa.Connection, settings: Settings) -> None:
        """The batch's timeouts, and ``row_security = off``, for the current transaction.

        With ``row_security`` off, PostgreSQL raises instead of silently hiding the rows a
        row-level security policy would filter: the run reads and writes every row or stops.
        """
        if self.postgres:
            conn.execute(
                sa.select(
                    sa.func.set_config("lock_timeout", f"{settings.lock_timeout_ms}ms", True),
                    sa.func.set_config(
                        "statement_timeout", f"{settings.statement_timeout_ms}ms", True
                    ),
                    sa.func.set_config("row_security", "off", True),
                )
            )

    def to_rows(self, result: Sequence[sa.Row[Any]]) -> list[_Row]:
        out = []
        for r in result:
            out.append(_Row(pk=r[0], values=dict(zip(self.read_cols, r[1:], strict=True))))
        return out


def pk_from_text(text: str, pk_column: sa.ColumnElement[Any]) -> Any:
    if isinstance(pk_column.type, sa.Uuid):
        return uuid.UUID(text)
    if isinstance(pk_column.type, sa.Integer):
        return int(text)
    return text


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def ensure_checkpoint_table(engine: sa.Engine) -> None:
    """Create the checkpoint table, or add the columns an older version of it lacks."""
    with engine.begin() as conn:
        checkpoint_table.create(conn, checkfirst=True)
        have = {c["name"] for c in sa.inspect(conn).get_columns(checkpoint_table.name)}
        for name in ADDED_CHECKPOINT_COLUMNS:
            if name not in have:
                # constant identifiers; nullable, so existing rows read as "not trusted"
                conn.execute(sa.text(f"ALTER TABLE {checkpoint_table.name} ADD COLUMN {name} TEXT"))


def stamp_text(heads: Sequence[str] | None) -> str:
    """The version stamp as a checkpoint records it: the revision, or ``base``."""
    return ",".join(sorted(heads)) if heads else BASE_STAMP


def read_stamp(conn: sa.Connection) -> str:
    """The current version stamp (:func:`stamp_text`), read from Alembic's version table."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return BASE_STAMP
    version = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))
    return stamp_text([str(v) for (v,) in conn.execute(sa.select(version.c.version_num))])


def read_checkpoints(conn: sa.Connection) -> list[Checkpoint]:
    """Every checkpoint row, oldest revision first; columns a table of an older version of this
    tool lacks read as None (such a checkpoint is never resumed)."""
    if not sa.inspect(conn).has_table(checkpoint_table.name):
        return []
    have = {c["name"] for c in sa.inspect(conn).get_columns(checkpoint_table.name)}
    names = [c.name for c in checkpoint_table.c if c.name in have]
    rows = conn.execute(
        sa.select(*(checkpoint_table.c[n] for n in names)).order_by(
            checkpoint_table.c.revision, checkpoint_table.c.direction
        )
    )
    out = []
    for row in rows:
        m = dict(zip(names, row, strict=True))
        out.append(
            Checkpoint(
                revision=str(m["revision"]),
                direction=str(m["direction"]),
                table_name=str(m["table_name"]),
                last_pk=m.get("last_pk"),
                source_key=m.get("source_key"),
                target_key=m.get("target_key"),
                target_version=m.get("target_version"),
                stamp=m.get("stamp"),
                key_fingerprint=m.get("key_fingerprint"),
            )
        )
    return out


def clear_checkpoints(conn: sa.Connection, revision: str) -> None:
    """Forget every checkpoint of ``revision`` (both directions), on the caller's transaction."""
    if sa.inspect(conn).has_table(checkpoint_table.name):
        conn.execute(sa.delete(checkpoint_table).where(checkpoint_table.c.revision == revision))


def invalidate_checkpoints(conn: sa.Connection) -> list[Checkpoint]:
    """The version stamp changed: no checkpoint left may be resumed any more.

    Called in the transaction that changes the stamp (``migrations/env.py``, Alembic's
    ``on_version_apply``), for applied and rolled-back revisions and for ``alembic stamp``. A
    checkpoint keeps its row (so a command that does not run its revision still refuses to
    start: its table is half-migrated) but loses its stamp, so the next run of its revision
    processes the whole table from its first row. Returns the checkpoints left.
    """
    left = read_checkpoints(conn)
    if left and "stamp" in {c["name"] for c in sa.inspect(conn).get_columns(checkpoint_table.name)}:
        conn.execute(
            sa.update(checkpoint_table)
            .where(checkpoint_table.c.stamp.is_not(None))
            .values(stamp=None)
        )
    return left


class _Checkpointer:
    """Tracks which batches committed and advances the durable checkpoint contiguously.

    Batches finish out of order when several workers run. The checkpoint only ever names the
    end of a prefix of batches that are all committed (a batch's own advance is written in the
    batch's transaction), so a resumed run never skips an uncommitted batch.
    """

    def __init__(self, revision: str, direction: Direction, table: str) -> None:
        self.revision = revision
        self.direction = direction
        self.table = table
        #: recorded with the checkpoint, checked when a run resumes
        self.source_key: str | None = None
        self.target_key: str | None = None
        self.target_version: int | None = None
        self.key_fingerprint: str | None = None
        #: the version stamp the run works under (None: the checkpoint is never resumed)
        self.stamp: str | None = None
        self._lock = threading.Lock()
        self._done: set[int] = set()
        self._contiguous = -1  # highest seq s such that 0..s are all committed
        self._last_pk: dict[int, str] = {}

    def start(self, conn: sa.Connection, resumed: Checkpoint | None) -> None:
        """Record this run's checkpoint: continue ``resumed``, or start the table afresh.

        Starting afresh replaces every checkpoint of the revision, of either direction: this
        run processes the whole table, so none of them says anything true any more.
        """
        c = checkpoint_table.c
        if resumed is None:
            conn.execute(sa.delete(checkpoint_table).where(c.revision == self.revision))
            conn.execute(
                sa.insert(checkpoint_table).values(
                    revision=self.revision,
                    direction=self.direction.value,
                    table_name=self.table,
                    batch_seq=-1,
                    last_pk=None,
                    updated_at=sa.func.now(),
                    source_key=self.source_key,
                    target_key=self.target_key,
                    target_version=self.target_version,
                    stamp=self.stamp,
                    key_fingerprint=self.key_fingerprint,
                )
            )
            return
        if self.direction.opposite is not self.direction:
            conn.execute(
                sa.delete(checkpoint_table).where(
                    c.revision == self.revision, c.direction == self.direction.opposite.value
                )
            )
        conn.execute(
            sa.update(checkpoint_table)
            .where(c.revision == self.revision, c.direction == self.direction.value)
            .values(
                batch_seq=-1,
                updated_at=sa.func.now(),
                key_fingerprint=sa.func.coalesce(c.key_fingerprint, self.key_fingerprint),
            )
        )

    def register(self, seq: int, last_pk: Any) -> None:
        with self._lock:
            self._last_pk[seq] = str(last_pk)

    def advance_in(self, conn: sa.Connection, seq: int) -> None:
        """Write, in the batch's own transaction, the furthest prefix this batch completes."""
        with self._lock:
            end = self._contiguous
            while end + 1 == seq or (end + 1) in self._done:
                end += 1
            if end <= self._contiguous:
                return
            last_pk = self._last_pk[end]
        c = checkpoint_table.c
        conn.execute(
            sa.update(checkpoint_table)
            .where(
                c.revision == self.revision,
                c.direction == self.direction.value,
                c.batch_seq < end,
            )
            .values(batch_seq=end, last_pk=last_pk, updated_at=sa.func.now())
        )

    def committed(self, seq: int) -> None:
        with self._lock:
            self._done.add(seq)
            while (self._contiguous + 1) in self._done:
                self._contiguous += 1
                self._done.discard(self._contiguous)
                self._last_pk.pop(self._contiguous - 1, None)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


class _Workers:
    """Per-thread database connection and Vault client, closed together at the end."""

    def __init__(self, engine: sa.Engine, factory: TransitFactory) -> None:
        self._engine = engine
        self._factory = factory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[tuple[sa.Connection, TransitClient]] = []

    def get(self) -> tuple[sa.Connection, TransitClient]:
        pair = getattr(self._local, "pair", None)
        if pair is None:
            pair = (self._engine.connect(), self._factory())
            self._local.pair = pair
            with self._lock:
                self._opened.append(pair)
        return pair

    def vault_requests(self) -> int:
        with self._lock:
            return sum(t.requests for _c, t in self._opened)

    def close(self) -> None:
        with self._lock:
            for conn, transit in self._opened:
                with contextlib.suppress(Exception):
                    conn.close()
                with contextlib.suppress(Exception):
                    transit.close()
            self._opened.clear()


def migrate_table(
    bind: sa.Connection,
    spec: TableSpec,
    revision: str,
    direction: Direction,
    run: RunContext,
) -> TableSummary:
    """Migrate one table in ``direction``; returns its summary.

    ``bind`` is the revision's own connection (Alembic's). Batches are written on separate
    connections, each batch in its own transaction; the checkpoint is cleared on ``bind``, so it
    disappears in the same transaction as Alembic's version stamp.
    """
    settings = run.settings
    summary = TableSummary(spec.name, revision, direction.value, settings.dry_run)
    if not settings.table_selected(spec.name):
        if not settings.dry_run:
            raise ConfigurationError(
                f"revision {revision} migrates table {spec.name}, which -x tables= does not "
                "list; a live run never stamps a revision whose table it did not migrate"
            )
        log.info("%s: not in -x tables, skipped by the dry run", spec.name)
        return summary
    if any(c.hmac for c in spec.columns) and settings.hmac_secret is None:
        raise PreflightError(
            f"table {spec.name} has HMAC companions but ENCRYPTION_HMAC_SECRET is not set "
            "(set the environment variable)"
        )
    try:
        _TableRun(
            bind.engine, spec, revision=revision, direction=direction, run=run, summary=summary
        ).execute()
    except BaseException:
        # the report still gets what was done before the stop (failures included)
        summary.status = "stopped"
        run.on_summary(summary)
        raise
    aborted = bool(summary.rows_failed) and settings.on_error == "abort" and not settings.dry_run
    summary.status = "dry-run" if settings.dry_run else "aborted" if aborted else "completed"
    log.info("%s", summary.log_line())
    for line in summary.column_lines():
        log.info("%s", line)
    run.on_summary(summary)
    if aborted:
        raise _aborted(summary)
    if not settings.dry_run:
        clear_checkpoints(bind, revision)
    return summary


def _aborted(summary: TableSummary) -> MigrationAborted:
    shown = summary.failures[:20]
    lines = "\n".join(f"  {summary.table}.{f['column']} id={f['id']}: {f['reason']}" for f in shown)
    more = len(summary.failures) - len(shown)
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
        f"\n{lines}"
        + (f"\n  ... and {more} more" if more > 0 else "")
        + hint
        + "\nFix the rows, or re-run with -x on-error=skip to migrate the rest and list these "
        "in the report (-x report=PATH)."
    )


def _database_message(exc: BaseException, table: str) -> str:
    if is_row_security_error(exc):
        return (
            f"{table}: PostgreSQL refused to read or write it because a row-level security "
            "policy applies to this role (the run sets row_security = off so that no row is "
            "silently hidden from it). Nothing of the batch in progress was written and the "
            "revision was not stamped. Run as a role that sees every row (BYPASSRLS, or the "
            "table's owner without FORCE ROW LEVEL SECURITY), then run the same command again"
        )
    return database_error_message(exc, table)


def pin_target_version(transit: TransitClient, target: Scheme, direction: Direction) -> int:
    """Read the target key; its latest version is the one :meth:`RunContext.pin` pins."""
    mount = transit.mount
    info = transit.read_key(target.key)
    if info is None:
        if direction is Direction.DOWNGRADE:
            raise PreflightError(
                f"the old key {target.key!r} does not exist in Vault: a rollback needs it. "
                f"Restore it from its backup (vault write {mount}/restore/{target.key} backup=...) "
                "before downgrading"
            )
        raise PreflightError(
            f"the new key {target.key!r} does not exist on mount {mount!r}. If tables were "
            "already migrated, check VAULT_NEW_KEY / VAULT_TRANSIT_MOUNT first: a second new "
            "key would split the data between keys. Otherwise create it with: vault write -f "
            f"{mount}/keys/{target.key} derived=true convergent_encryption=true"
        )
    if target.contextual and not (info.derived and info.convergent):
        raise PreflightError(
            f"the new key {target.key!r} must be created with derived=true and "
            "convergent_encryption=true (it is not); create a new key with: vault write -f "
            f"{mount}/keys/<name> derived=true convergent_encryption=true"
        )
    if not target.contextual and info.derived:
        raise PreflightError(
            f"the old key {target.key!r} is derived: it is not a no-context key. The data may "
            "already use context-based encryption; check VAULT_OLD_KEY"
        )
    if info.latest_version < 1:
        raise PreflightError(f"key {target.key!r} reports no version")
    return info.latest_version


class _TableRun:
    """One table's run: reader on the calling thread, batches on a pool of workers."""

    def __init__(
        self,
        engine: sa.Engine,
        spec: TableSpec,
        *,
        revision: str,
        direction: Direction,
        run: RunContext,
        summary: TableSummary,
        processor: RowProcessor | None = None,
    ) -> None:
        self.engine = engine
        #: what a batch does to its rows before the write (the migration's, or a rewrap's)
        self.processor: RowProcessor = processor if processor is not None else process_rows
        self.spec = spec
        self.revision = revision
        self.direction = direction
        self.settings = run.settings
        self.run = run
        self.summary = summary
        self.source, self.target = schemes(run.settings, direction)
        self.db = _Db(spec, engine.dialect.name)
        self.workers = _Workers(engine, run.transit_factory)
        self.checkpointer = _Checkpointer(revision, direction, spec.name)
        self.stop = threading.Event()
        self.abort = run.settings.on_error == "abort"
        self.pin: PinnedKey | None = None  # the target key version this table encrypts with
        # SQLite (the embedded demo) has one writer at a time.
        self.n_workers = 1 if engine.dialect.name == "sqlite" else run.settings.workers

    @property
    def target_version(self) -> int:
        return self.pin.version if self.pin is not None else 0

    def execute(self) -> None:
        started = time.monotonic()
        try:
            transit = self.workers.get()[1]
            self.pin = self.run.pin(transit, self.target, self.direction)
            self.summary.target_key_version = self.pin.version
            last_pk = self._resume_point(transit)
            self._run_batches(last_pk)
        finally:
            self.summary.vault_requests = self.workers.vault_requests()
            self.workers.close()
            self.summary.seconds = time.monotonic() - started

    def _resume_point(self, transit: TransitClient) -> Any:
        """Where this run starts: after a checkpoint it may trust, else at the first row."""
        resumed: Checkpoint | None
        if self.settings.dry_run:
            with self.engine.connect() as conn:
                disable_row_security(conn)
                resumed = self._decide(conn, transit)
        else:
            ensure_checkpoint_table(self.engine)
            with self.engine.begin() as conn:
                disable_row_security(conn)
                resumed = self._decide(conn, transit)
                assert self.pin is not None
                cp = self.checkpointer
                cp.source_key, cp.target_key = self.source.key, self.target.key
                cp.target_version, cp.key_fingerprint = self.pin.version, self.pin.probe
                cp.stamp = read_stamp(conn)
                cp.start(conn, resumed)
        if resumed is None or resumed.last_pk is None:
            return None
        self.summary.resumed_after = resumed.last_pk
        log.info(
            "%s: resuming %s after id=%s (last committed checkpoint)",
            self.spec.name,
            self.direction.value,
            resumed.last_pk,
        )
        return pk_from_text(resumed.last_pk, self.db.pk)

    def _decide(self, conn: sa.Connection, transit: TransitClient) -> Checkpoint | None:
        """The checkpoint to resume after, or None to process the whole table.

        Only a checkpoint of this revision and direction, made under the current version stamp
        and not invalidated by a stamp change since, is resumed. Its key version is kept, and
        its key material checked, even when it is not resumed: values it wrote are in it.
        """
        name, direction = self.spec.name, self.direction.value
        stamp = read_stamp(conn)
        found = {c.direction: c for c in read_checkpoints(conn) if c.revision == self.revision}
        other = (
            found.get(self.direction.opposite.value)
            if self.direction.opposite is not self.direction
            else None
        )
        same = found.get(direction)
        if other is not None:
            log.warning(
                "%s: %s of %s stopped %s and was not finished; this %s processes the whole "
                "table from its first row (values already in the target scheme are recognised "
                "and skipped)",
                name,
                other.run,
                self.revision,
                other.position(),
                direction,
            )
        if same is None:
            return None
        self._check_keys(same)
        assert self.pin is not None
        if self.direction is Direction.REWRAP and same.target_version != self.pin.version:
            # a rewrap moves values *to* the version asked for: values the stopped run moved
            # to another version must be moved again, so the whole table is processed
            log.warning(
                "%s: not resuming the rewrap that stopped %s: it rewrapped to version %s, this "
                "run to version %d; this run processes the whole table from its first row",
                name,
                same.position(),
                same.target_version,
                self.pin.version,
            )
            return None
        if same.target_key == self.target.key and same.target_version is not None:
            self._adopt_pin(same, transit)
        if same.stamp is not None and same.stamp == stamp:
            return same
        if same.stamp is None:
            why = (
                "the version stamp changed since it was made (a revision applied or rolled "
                "back, or alembic stamp), or an older version of this tool made it"
            )
        else:
            why = f"it was made at stamp {same.stamp}, and the stamp is now {stamp}"
        log.warning(
            "%s: not resuming the %s of %s that stopped %s: %s. Values may have been written "
            "behind it since, so this run processes the whole table from its first row",
            name,
            direction,
            self.revision,
            same.position(),
            why,
        )
        return None

    def _check_keys(self, resumed: Checkpoint) -> None:
        if resumed.target_key is None:
            return
        if (resumed.source_key, resumed.target_key) != (self.source.key, self.target.key):
            raise PreflightError(
                f"{self.spec.name}: a stopped {self.direction.value} of {self.revision} used "
                f"keys {resumed.source_key!r} -> {resumed.target_key!r}; this run would use "
                f"{self.source.key!r} -> {self.target.key!r}. Finish it with the same keys "
                "(VAULT_OLD_KEY / VAULT_NEW_KEY), so the column is not split between keys"
            )

    def _adopt_pin(self, stopped: Checkpoint, transit: TransitClient) -> None:
        """Encrypt with the key version the stopped run used, after checking its material."""
        assert self.pin is not None
        assert stopped.target_version is not None
        version = stopped.target_version
        if stopped.key_fingerprint is not None:
            pin = PinnedKey(
                self.target.key, version, self.target.contextual, stopped.key_fingerprint
            )
            problem = pin.problem(transit)
            if problem is not None:
                raise _key_changed(
                    pin,
                    transit.mount,
                    f"{self.spec.name}: {stopped.run} of {self.revision} stopped "
                    f"{stopped.position()}; nothing was done",
                    problem,
                    "The values that run wrote were encrypted with the earlier material and "
                    "cannot be decrypted with the key as it is now.",
                )
        elif version == self.pin.version:
            pin = self.pin
        else:
            pin = make_pin(transit, self.target, version)
        if version != self.pin.version:
            log.info(
                "%s: encrypting with key %r version %d, as pinned by the stopped run (the run "
                "pinned %d), so the column is not split between versions",
                self.spec.name,
                self.target.key,
                version,
                self.pin.version,
            )
        self.pin = pin
        self.summary.target_key_version = version

    def _check_key(self, transit: TransitClient, seq: int) -> None:
        """Before a batch's write: the pinned key version still has the pinned material."""
        assert self.pin is not None
        problem = self.pin.problem(transit)
        if problem is not None:
            raise _key_changed(
                self.pin,
                transit.mount,
                f"{self.spec.name}: the run stopped before writing batch {seq}",
                problem,
                "Nothing encrypted with the replaced material was written: every batch is "
                "checked before its write.",
            )

    def _read_batches(self, last_pk: Any) -> Generator[list[_Row], None, None]:
        """Keyset paging on one connection, each page in its own short transaction."""
        with self.engine.connect() as conn:
            while True:
                with conn.begin():
                    self.db.set_timeouts(conn, self.settings)
                    result = conn.execute(
                        self.db.select_after(last_pk, self.settings.batch_size)
                    ).all()
                if not result:
                    return
                rows = self.db.to_rows(result)
                last_pk = rows[-1].pk
                yield rows

    def _run_batches(self, last_pk: Any) -> None:
        with self.engine.connect() as conn:
            total = estimate_rows(conn, self.spec.name)
        dry = ", dry run" if self.settings.dry_run else ""
        label = f"{self.spec.name} ({self.direction.value}{dry})"
        with Progress(label, total, interval=self.run.progress_interval) as progress:
            self._run_with_progress(last_pk, progress)

    def _run_with_progress(self, last_pk: Any, progress: Progress) -> None:
        in_flight: set[Future[BatchResult]] = set()
        error: BaseException | None = None

        def collect(done: set[Future[BatchResult]]) -> None:
            nonlocal error
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                    self.stop.set()
                    continue
                b = fut.result()
                self.summary.merge_batch(b)
                progress.update(self.summary.rows_scanned)
                if b.errors and self.abort and not self.settings.dry_run:
                    self.stop.set()  # a dry run previews the whole table

        reader = self._read_batches(last_pk)
        with ThreadPoolExecutor(self.n_workers, thread_name_prefix="reencrypt") as pool:
            try:
                with contextlib.closing(reader):
                    for seq, rows in enumerate(reader):
                        if self.stop.is_set():
                            break
                        self.checkpointer.register(seq, rows[-1].pk)
                        in_flight.add(pool.submit(self._process_batch, seq, rows))
                        if len(in_flight) > self.n_workers:
                            done, pending = wait(in_flight, return_when=FIRST_COMPLETED)
                            in_flight = set(pending)
                            collect(set(done))
            except sa.exc.DBAPIError as exc:  # the reader's connection
                self.stop.set()
                error = error or exc
            except BaseException:
                self.stop.set()
                raise
            finally:
                if in_flight:
                    done, _ = wait(in_flight)
                    collect(set(done))
        if error is None:
            return
        if isinstance(error, ContextEncryptionError):
            raise error
        if isinstance(error, sa.exc.DBAPIError):
            raise ContextEncryptionError(_database_message(error, self.spec.name)) from None
        raise error

    def _count(self, result: BatchResult, rows: Sequence[_Row], sign: int = 1) -> None:
        """Count every value: a failed row's other values count as left with their row."""
        for r in rows:
            for col, outcome in r.outcomes.items():
                counted = (
                    Outcome.ROW_FAILED if r.errors and outcome is not Outcome.FAILED else outcome
                )
                result.columns.setdefault(col, ColumnCounts()).add(counted, sign)

    def _process_batch(self, seq: int, rows: list[_Row]) -> BatchResult:
        """Migrate one batch: classify and re-encrypt, compare-and-swap, checkpoint.

        The checkpoint only advances past a batch whose every row ended migrated, already in
        the target scheme, NULL, skipped plaintext or deleted. A batch with a failed row (in
        either on-error mode) or a row that kept changing holds the checkpoint back, so a
        resumed run always looks at that row again.
        """
        conn, transit = self.workers.get()
        db, spec = self.db, self.spec
        result = BatchResult(seq, rows[-1].pk, rows_scanned=len(rows))
        pending = rows
        for round_no in range(CAS_ROUNDS + 1):
            self.processor(
                pending,
                spec,
                source=self.source,
                target=self.target,
                target_version=self.target_version,
                settings=self.settings,
                transit=transit,
            )
            errors = [e for r in pending for e in r.errors]
            result.errors.extend(errors)
            if self.settings.dry_run:
                self._count(result, pending)
                return result
            if self.abort and (errors or self.stop.is_set()):
                # nothing of this batch is written: count only what failed
                self._count(result, [r for r in pending if r.errors])
                return result
            self._count(result, pending)
            writes = [r for r in pending if not r.errors and r.new]
            if writes:
                self._check_key(transit, seq)
            written, lost = self._write(conn, seq, writes, clean=not result.errors)
            result.rows_written += len(written)
            if not lost:
                return result
            # Rows that changed between our read and our write: nothing of ours was written to
            # them. Take back their counts, then re-read and handle them again.
            self._count(result, lost, -1)
            if round_no == CAS_ROUNDS:
                result.errors.extend(
                    RowError(
                        spec.name,
                        "*",
                        r.pk,
                        f"kept changing during {CAS_ROUNDS + 1} attempts; it was left as the "
                        "application wrote it. Re-run to migrate it",
                    )
                    for r in lost
                )
                return result
            result.changed_concurrently += len(lost)
            with conn.begin():
                db.set_timeouts(conn, self.settings)
                fresh = db.to_rows(conn.execute(db.select_pks([r.pk for r in lost])).all())
            result.deleted_concurrently += len(lost) - len(fresh)
            pending = fresh
            if not pending:  # all of them were deleted meanwhile
                self._write(conn, seq, [], clean=not result.errors)
                return result
        return result

    def _write(
        self, conn: sa.Connection, seq: int, writes: list[_Row], *, clean: bool
    ) -> tuple[set[Any], list[_Row]]:
        """One transaction: the compare-and-swap, and the checkpoint when the batch is done.

        A lock timeout, deadlock or serialization failure is retried a few times with a pause
        (the compare-and-swap makes a retry safe); anything else stops the run.
        """
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with conn.begin():
                    self.db.set_timeouts(conn, self.settings)
                    written = self.db.write(conn, writes)
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
