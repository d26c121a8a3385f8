"""``context-encryption verify``: which scheme every value is in, against the current revision.

The current revision is read from ``alembic_version_encryption``. A table whose revision is
applied must hold new-scheme ciphertext (the derived + convergent key with the context
``<table>.<column>``); every other table must hold old-scheme ciphertext (the old key, no
context). Each non-NULL value is classified by asking Vault, since the ``vault:v<N>:`` prefix
cannot tell the schemes apart: one batch decrypt with the scheme the revision implies, and for
the values that fail, one batch decrypt with the other scheme. A value neither key can decrypt is
*unreadable*; a value without the ``vault:`` prefix is *plaintext*. Where a column has an HMAC
companion, the decrypted value is checked against it (match, mismatch, NULL companion; or not
checked when no HMAC secret is configured).

Problems: a value in the other scheme, plaintext, unreadable, or an HMAC mismatch. Rows are
read in primary-key order with keyset paging, ``batch_size`` rows per page, each page in its own
short read transaction: memory stays constant whatever the table size. ``sample=N`` checks the
first N rows of each table by primary key (deterministic and repeatable; not a random
``TABLESAMPLE``), which also makes a quick check of a huge table cheap.

Row-level security: a table whose policies apply to the role (PostgreSQL) is refused with
:class:`VerifyError` (exit 2, "could not verify") rather than checked on the rows the policies
let through; every read runs with ``row_security = off``, so PostgreSQL raises rather than
filters even if the policies change while verify runs.

Plaintexts exist only in memory, one page at a time, to be compared with their companion; the
report holds counts and primary keys, never a value, a ciphertext or a secret.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import sqlalchemy as sa

from app_models.tables import (
    ENCRYPTED_COLUMNS,
    REVISION_OF_TABLE,
    TABLE_NAMES,
    EncryptedColumn,
    context_string,
    metadata,
)
from context_encryption.alembic_runtime import applied_tables, current_revision
from context_encryption.errors import ContextEncryptionError
from context_encryption.reencrypt import checkpoint_table
from context_encryption.row_security import (
    ROW_SECURITY_FIX,
    disable_row_security,
    is_row_security_error,
    row_security_blockers,
)
from context_encryption.settings import Settings
from context_encryption.transit import MAX_STRING_BYTES, DecryptRequest, TransitClient, hmac_matches

log = logging.getLogger("context_encryption")

DEFAULT_BATCH: Final = 500
DEFAULT_MAX_IDS: Final = 20
VAULT_PREFIX: Final = "vault:"

SchemeName = Literal["old", "new"]
REVISIONS: Final = tuple(REVISION_OF_TABLE[t] for t in TABLE_NAMES)


class VerifyError(ContextEncryptionError):
    """Verification could not run (unknown revision, missing version table rows, ...)."""


@dataclass
class ColumnResult:
    """Counts of one column. ``failing_ids`` holds primary keys only (at most ``max_ids``)."""

    column: str
    companion: str | None
    old_scheme: int = 0
    new_scheme: int = 0
    null: int = 0
    plaintext: int = 0
    unreadable: int = 0
    hmac_match: int = 0
    hmac_mismatch: int = 0
    hmac_null: int = 0
    hmac_unchecked: int = 0
    problems: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    failing_ids: list[str] = field(default_factory=list)
    #: key version -> new-scheme values at it (from the ``vault:v<N>:`` prefix)
    versions: dict[int, int] = field(default_factory=dict)

    def split_problem(self) -> None:
        """New-scheme values on more than one key version: lookups with one version miss the
        others. Every value off the newest version found counts as a problem."""
        if len(self.versions) < 2:
            return
        top = max(self.versions)
        off = sum(n for v, n in self.versions.items() if v != top)
        found = ", ".join(f"v{v}: {n}" for v, n in sorted(self.versions.items()))
        reason = (
            f"split across key versions of the new key ({found}): equality lookups miss "
            "values; run `context-encryption rewrap`"
        )
        self.problems += off
        self.reasons[reason] = self.reasons.get(reason, 0) + off

    def problem(self, pk: Any, reason: str, max_ids: int) -> None:
        self.problems += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        text = str(pk)
        if len(self.failing_ids) < max_ids and (
            not self.failing_ids or self.failing_ids[-1] != text
        ):
            self.failing_ids.append(text)

    def as_dict(self) -> dict[str, Any]:
        hmac: dict[str, Any] | None = None
        if self.companion is not None:
            hmac = {
                "companion": self.companion,
                "match": self.hmac_match,
                "mismatch": self.hmac_mismatch,
                "null": self.hmac_null,
                "unchecked": self.hmac_unchecked,
            }
        return {
            "column": self.column,
            "old_scheme": self.old_scheme,
            "new_scheme": self.new_scheme,
            "null": self.null,
            "plaintext": self.plaintext,
            "unreadable": self.unreadable,
            "hmac": hmac,
            "ok": self.problems == 0,
            "problems": self.problems,
            "reasons": dict(sorted(self.reasons.items())),
            "failing_ids": list(self.failing_ids),
            "versions": {str(v): n for v, n in sorted(self.versions.items())},
        }


@dataclass
class TableResult:
    table: str
    revision: str
    applied: bool
    expected: SchemeName
    exists: bool = True
    rows_checked: int = 0
    in_progress: bool = False
    columns: list[ColumnResult] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return sum(c.problems for c in self.columns) + (0 if self.exists else 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "revision": self.revision,
            "applied": self.applied,
            "expected_scheme": self.expected,
            "exists": self.exists,
            "rows_checked": self.rows_checked,
            "migration_in_progress": self.in_progress,
            "ok": self.problems == 0,
            "problems": self.problems,
            "columns": [c.as_dict() for c in self.columns],
        }


@dataclass
class VerifyReport:
    revision: str | None
    old_key: str
    new_key: str
    transit_mount: str
    sample: int | None
    hmac_checked: bool
    tables: list[TableResult] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return sum(t.problems for t in self.tables)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": "context-encryption verify",
            "revision": self.revision,
            "keys": {"old": self.old_key, "new": self.new_key, "mount": self.transit_mount},
            "sample": self.sample,
            "sampling": "all rows"
            if self.sample is None
            else f"first {self.sample} rows of each table by primary key",
            "hmac_checked": self.hmac_checked,
            "ok": self.ok,
            "problems": self.problems,
            "tables": [t.as_dict() for t in self.tables],
        }


def _in_progress(conn: sa.Connection) -> set[str]:
    """Tables with a checkpoint: a migration of theirs was interrupted (values are mixed)."""
    if not sa.inspect(conn).has_table(checkpoint_table.name):
        return set()
    disable_row_security(conn)
    c = checkpoint_table.c
    # a stopped rewrap is no migration: its values are all new-scheme (see the versions check)
    stmt = sa.select(c.table_name).where(c.direction != "rewrap")
    return {str(r[0]) for r in conn.execute(stmt)}


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scheme:
    name: SchemeName
    key: str
    contextual: bool

    def context(self, table: str, column: str) -> str | None:
        return context_string(table, column) if self.contextual else None


def _reason_of(*errors: str) -> str:
    """A short, value-free reason from Vault's error texts (the most actionable one wins)."""
    error = " | ".join(errors)
    if "disallowed by policy" in error:
        return "unreadable (key version below min_decryption_version)"
    malformed = (
        "no prefix",
        "wrong number of fields",
        "version number could not be decoded",
        "could not decode base64",
        "invalid ciphertext length",
    )
    if any(m in error for m in malformed):
        return "unreadable (malformed ciphertext)"
    if "message authentication failed" in error:
        return "unreadable (neither key decrypts it)"
    if "version is too new" in error:
        return "unreadable (key version newer than either key's latest)"
    return "unreadable"


def _key_version(ciphertext: str) -> int:
    """The version of a ``vault:v<N>:`` prefix (Vault reads 0 as 1)."""
    text = ciphertext[len("vault:v") :].split(":", 1)[0]
    return max(1, int(text)) if text.isdigit() else 0


def _check_page(
    rows: Sequence[sa.Row[Any]],
    table: str,
    cols: Sequence[EncryptedColumn],
    results: dict[str, ColumnResult],
    *,
    expected: _Scheme,
    other: _Scheme,
    transit: TransitClient,
    secret: str | None,
    max_ids: int,
) -> None:
    pending: list[tuple[Any, EncryptedColumn, str, str | None]] = []  # pk, col, ct, companion
    for row in rows:
        m = row._mapping
        pk = m["id"]
        for col in cols:
            res = results[col.name]
            value = m[col.name]
            companion = m[col.hmac_column] if col.hmac_column else None
            if value is None:
                res.null += 1
            elif not value.startswith(VAULT_PREFIX):
                res.plaintext += 1
                res.problem(pk, "plaintext", max_ids)
            elif len(value) > MAX_STRING_BYTES:
                res.unreadable += 1
                res.problem(pk, "unreadable (longer than Vault's 1 MiB limit)", max_ids)
            else:
                pending.append((pk, col, value, companion))
    if not pending:
        return

    first = transit.decrypt_batch(
        expected.key,
        [DecryptRequest(ct, expected.context(table, c.name)) for _pk, c, ct, _h in pending],
    )
    decrypted: list[tuple[Any, EncryptedColumn, str, str | None, _Scheme, str]] = []
    retry: list[tuple[Any, EncryptedColumn, str, str | None, str]] = []
    for (pk, col, ct, comp), r in zip(pending, first, strict=True):
        if r.ok and r.value is not None:
            decrypted.append((pk, col, r.value, comp, expected, ct))
        else:
            retry.append((pk, col, ct, comp, r.error or ""))
    if retry:
        second = transit.decrypt_batch(
            other.key,
            [DecryptRequest(ct, other.context(table, c.name)) for _pk, c, ct, _h, _e in retry],
        )
        for (pk, col, ct, comp, err), r in zip(retry, second, strict=True):
            if r.ok and r.value is not None:
                decrypted.append((pk, col, r.value, comp, other, ct))
            else:
                res = results[col.name]
                res.unreadable += 1
                res.problem(pk, _reason_of(err, r.error or ""), max_ids)

    for pk, col, b64, comp, scheme, ct in decrypted:
        res = results[col.name]
        if scheme.name == "new":
            res.new_scheme += 1
            version = _key_version(ct)
            res.versions[version] = res.versions.get(version, 0) + 1
        else:
            res.old_scheme += 1
        if scheme is not expected:
            res.problem(pk, f"{scheme.name} scheme (expected {expected.name})", max_ids)
        if col.hmac_column is None:
            continue
        if comp is None:
            res.hmac_null += 1
        elif secret is None:
            res.hmac_unchecked += 1
        else:
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raw = None
            if raw is not None and hmac_matches(secret, raw, comp):
                res.hmac_match += 1
            else:
                res.hmac_mismatch += 1
                res.problem(pk, "HMAC mismatch", max_ids)


def verify_table(
    engine: sa.Engine,
    transit: TransitClient,
    settings: Settings,
    table: str,
    *,
    applied: bool,
    sample: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_ids: int = DEFAULT_MAX_IDS,
) -> TableResult:
    """Classify every value of ``table`` (or the first ``sample`` rows by primary key)."""
    old = _Scheme("old", settings.old_key, contextual=False)
    new = _Scheme("new", settings.new_key, contextual=True)
    expected, other = (new, old) if applied else (old, new)
    cols = ENCRYPTED_COLUMNS[table]
    result = TableResult(table, REVISION_OF_TABLE[table], applied, expected.name)
    results = {c.name: ColumnResult(c.name, c.hmac_column) for c in cols}
    result.columns = [results[c.name] for c in cols]
    secret = settings.hmac_secret.get() if settings.hmac_secret is not None else None

    t = metadata.tables[table]
    names = [n for c in cols for n in (c.name, c.hmac_column) if n]
    select = sa.select(t.c.id, *(t.c[n] for n in names)).order_by(t.c.id)
    last: Any = None
    remaining = sample
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(table):
            result.exists = False
            conn.rollback()
            return result
        hidden = row_security_blockers(conn, [table])
        conn.rollback()
        if hidden:
            raise VerifyError(
                f"cannot verify {table}: {hidden[table]}, so PostgreSQL would hide rows from "
                f"verify. Fix: {ROW_SECURITY_FIX}"
            )
        while remaining is None or remaining > 0:
            limit = batch_size if remaining is None else min(batch_size, remaining)
            stmt = select.limit(limit)
            if last is not None:
                stmt = stmt.where(t.c.id > last)
            try:
                with conn.begin():
                    disable_row_security(conn)
                    rows = conn.execute(stmt).all()
            except sa.exc.DBAPIError as exc:
                if not is_row_security_error(exc):
                    raise
                raise VerifyError(
                    f"cannot verify {table}: a row-level security policy applies to this "
                    f"role, so PostgreSQL would hide rows from verify. Fix: {ROW_SECURITY_FIX}"
                ) from None
            if not rows:
                break
            _check_page(
                rows,
                table,
                cols,
                results,
                expected=expected,
                other=other,
                transit=transit,
                secret=secret,
                max_ids=max_ids,
            )
            result.rows_checked += len(rows)
            last = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
    if applied:
        for c in result.columns:
            c.split_problem()
    log.info(
        "verify %s: %d rows checked, %d problem(s)", table, result.rows_checked, result.problems
    )
    return result


def verify(
    settings: Settings,
    *,
    engine: sa.Engine,
    transit: TransitClient,
    tables: Sequence[str] | None = None,
    sample: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    max_ids: int = DEFAULT_MAX_IDS,
) -> VerifyReport:
    """Verify ``tables`` (default: ``settings.tables``, else all) against the current revision."""
    if sample is not None and sample < 1:
        raise VerifyError("--sample must be at least 1")
    wanted = tables if tables is not None else (settings.tables or TABLE_NAMES)
    scope = [t for t in TABLE_NAMES if t in set(wanted)]
    with engine.connect() as conn:
        revision = current_revision(conn)
        busy = _in_progress(conn)
    applied = applied_tables(revision)
    report = VerifyReport(
        revision=revision,
        old_key=settings.old_key,
        new_key=settings.new_key,
        transit_mount=settings.transit_mount,
        sample=sample,
        hmac_checked=settings.hmac_secret is not None,
    )
    for table in scope:
        result = verify_table(
            engine,
            transit,
            settings,
            table,
            applied=table in applied,
            sample=sample,
            batch_size=batch_size,
            max_ids=max_ids,
        )
        result.in_progress = table in busy
        report.tables.append(result)
    return report
