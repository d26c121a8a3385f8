"""``context-encryption verify``: which scheme every value is in, against the current revision.

The current revision is read from the chain's version table (``alembic_version_encryption``).
A table whose revision is applied must hold new-scheme ciphertext (the derived + convergent key
with the context ``<table>.<column>``); every other table must hold old-scheme ciphertext (the
old key, no context). Tables and columns come from the revisions' snapshots
(:func:`~context_encryption.catalog.load_catalog`). Each non-NULL value is classified by
:func:`~context_encryption.schemes.classify`, since the ``vault:v<N>:`` prefix cannot tell the
schemes apart: one batch decrypt with the scheme the revision implies, and for the values that
fail, one batch decrypt with the other scheme. A value neither key can decrypt is *unreadable*; a
value without the ``vault:`` prefix is *plaintext*. Where a column has an HMAC companion, the
decrypted value is checked against it (match, mismatch, NULL companion; or not checked when no
HMAC secret is configured).

Problems: a value in the other scheme, plaintext, unreadable, an HMAC mismatch, or (applied
tables) new-scheme values split across key versions. Rows are read in primary-key order with
keyset paging, ``batch_size`` rows per page, each page in its own short read transaction: memory
stays constant whatever the table size. ``sample=N`` checks the first N rows of each table by
primary key (deterministic and repeatable; not a random ``TABLESAMPLE``), which also makes a
quick check of a huge table cheap.

The counting is :func:`tally`, a pure function of the verdicts; the rest of the module is the
I/O around it (pages from the database, verdicts from Vault).

Row-level security: a table whose policies apply to the role (PostgreSQL) is refused with
:class:`~context_encryption.errors.VerifyError` (exit 2, "could not verify") rather than checked
on the rows the policies let through; every read runs with ``row_security = off``, so PostgreSQL
raises rather than filters even if the policies change while verify runs.

Plaintexts exist only in memory, one page at a time, to be compared with their companion; the
report holds counts and primary keys, never a value, a ciphertext or a secret.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from app_models.specs import Direction, TableSpec
from context_encryption.alembic_runtime import applied_tables, current_revision
from context_encryption.catalog import load_catalog
from context_encryption.engine import read_checkpoints
from context_encryption.errors import VerifyError
from context_encryption.row_security import (
    ROW_SECURITY_FIX,
    disable_row_security,
    is_row_security_error,
    row_security_blockers,
)
from context_encryption.schemes import (
    Kind,
    Scheme,
    SchemeName,
    Verdict,
    classify,
    key_version,
    new_scheme,
    old_scheme,
    precheck,
)
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient, hmac_matches
from context_encryption.vault_texts import brief_reason

log = logging.getLogger("context_encryption")

DEFAULT_BATCH: Final = 500
DEFAULT_MAX_IDS: Final = 20


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


# --------------------------------------------------------------------------------------------
# interrupted migrations
# --------------------------------------------------------------------------------------------


def _in_progress(conn: sa.Connection) -> set[str]:
    """Tables with a checkpoint: a migration of theirs was interrupted (values are mixed)."""
    disable_row_security(conn)
    # a stopped rewrap is no migration: its values are all new-scheme (see the versions check)
    return {c.table_name for c in read_checkpoints(conn) if c.direction != Direction.REWRAP.value}


# --------------------------------------------------------------------------------------------
# the tally: verdicts -> counts (pure, no I/O)
# --------------------------------------------------------------------------------------------

TOO_LONG_REASON: Final = "unreadable (longer than Vault's 1 MiB limit)"

#: Within a page, problems are listed in this order (``failing_ids`` keeps the first
#: ``max_ids``): values told apart without Vault, values no key reads, then the values of the
#: expected scheme, then those of the other one.
_ORDER: Final = {
    Kind.NULL: 0,
    Kind.PLAINTEXT: 0,
    Kind.TOO_LONG: 0,
    Kind.UNREADABLE: 1,
    Kind.FIRST: 2,
    Kind.SECOND: 3,
}


@dataclass(frozen=True)
class Checked:
    """One value of one row and its verdict (``Kind.FIRST``: the expected scheme reads it).

    ``ciphertext`` is the stored value (for its key version), ``companion`` the stored HMAC
    companion (None: NULL, or the column has none).
    """

    pk: Any
    column: str
    verdict: Verdict
    ciphertext: str | None = None
    companion: str | None = None


def tally(
    results: Mapping[str, ColumnResult],
    page: Sequence[Checked],
    *,
    expected: SchemeName,
    secret: str | None,
    max_ids: int,
) -> None:
    """Add one page's verdicts to the columns' counts, problems and failing primary keys."""
    other: SchemeName = "old" if expected == "new" else "new"
    for item in sorted(page, key=lambda i: _ORDER[i.verdict.kind]):
        res = results[item.column]
        kind = item.verdict.kind
        if kind is Kind.NULL:
            res.null += 1
        elif kind is Kind.PLAINTEXT:
            res.plaintext += 1
            res.problem(item.pk, "plaintext", max_ids)
        elif kind is Kind.TOO_LONG:
            res.unreadable += 1
            res.problem(item.pk, TOO_LONG_REASON, max_ids)
        elif kind is Kind.UNREADABLE:
            res.unreadable += 1
            reason = brief_reason(item.verdict.first_error or "", item.verdict.second_error or "")
            res.problem(item.pk, reason, max_ids)
        else:
            scheme = expected if kind is Kind.FIRST else other
            _tally_scheme(res, item, scheme, expected, max_ids)
            _tally_hmac(res, item, secret, max_ids)


def _tally_scheme(
    res: ColumnResult, item: Checked, scheme: SchemeName, expected: SchemeName, max_ids: int
) -> None:
    if scheme == "new":
        res.new_scheme += 1
        version = key_version(item.ciphertext or "") or 0
        res.versions[version] = res.versions.get(version, 0) + 1
    else:
        res.old_scheme += 1
    if scheme != expected:
        res.problem(item.pk, f"{scheme} scheme (expected {expected})", max_ids)


def _tally_hmac(res: ColumnResult, item: Checked, secret: str | None, max_ids: int) -> None:
    if res.companion is None:
        return
    if item.companion is None:
        res.hmac_null += 1
    elif secret is None:
        res.hmac_unchecked += 1
    elif _companion_matches(secret, item.verdict.plaintext, item.companion):
        res.hmac_match += 1
    else:
        res.hmac_mismatch += 1
        res.problem(item.pk, "HMAC mismatch", max_ids)


def _companion_matches(secret: str, plaintext_b64: str | None, companion: str) -> bool:
    if plaintext_b64 is None:
        return False
    try:
        raw = base64.b64decode(plaintext_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac_matches(secret, raw, companion)


# --------------------------------------------------------------------------------------------
# the I/O: pages of rows, verdicts from Vault
# --------------------------------------------------------------------------------------------


def _check_page(
    rows: Sequence[sa.Row[Any]],
    spec: TableSpec,
    *,
    expected: Scheme,
    other: Scheme,
    transit: TransitClient,
) -> list[Checked]:
    """Every encrypted value of ``rows`` with its verdict: at most two batch decrypts."""
    cells = [
        (m[spec.pk], col.name, m[col.name], m[col.hmac] if col.hmac else None)
        for m in (row._mapping for row in rows)
        for col in spec.columns
    ]
    kinds = [precheck(value) for _pk, _col, value, _comp in cells]
    asked = [
        (col, value) for (_pk, col, value, _c), k in zip(cells, kinds, strict=True) if k is None
    ]
    verdicts = iter(classify(transit, spec.name, asked, expected, other))
    return [
        Checked(pk, col, Verdict(k) if k is not None else next(verdicts), value, companion)
        for (pk, col, value, companion), k in zip(cells, kinds, strict=True)
    ]


def _pages(
    conn: sa.Connection, spec: TableSpec, *, sample: int | None, batch_size: int
) -> Iterator[Sequence[sa.Row[Any]]]:
    """The rows of ``spec``'s table in primary-key order, a page (one read transaction) at a
    time, the first ``sample`` only if given."""
    t = spec.table
    pk = t.c[spec.pk]
    names = [n for c in spec.columns for n in (c.name, c.hmac) if n]
    select = sa.select(pk, *(t.c[n] for n in names)).order_by(pk)
    last: Any = None
    remaining = sample
    while remaining is None or remaining > 0:
        limit = batch_size if remaining is None else min(batch_size, remaining)
        stmt = select.limit(limit) if last is None else select.limit(limit).where(pk > last)
        try:
            with conn.begin():
                disable_row_security(conn)
                rows = conn.execute(stmt).all()
        except sa.exc.DBAPIError as exc:
            if not is_row_security_error(exc):
                raise
            raise VerifyError(
                f"cannot verify {spec.name}: a row-level security policy applies to this "
                f"role, so PostgreSQL would hide rows from verify. Fix: {ROW_SECURITY_FIX}"
            ) from None
        if not rows:
            return
        yield rows
        last = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


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
    catalog = load_catalog()
    spec = catalog.spec(table)
    old, new = old_scheme(settings), new_scheme(settings)
    expected, other = (new, old) if applied else (old, new)
    result = TableResult(table, catalog.revision_of(table), applied, expected.name)
    result.columns = [ColumnResult(c.name, c.hmac) for c in spec.columns]
    results = {c.column: c for c in result.columns}
    secret = settings.hmac_secret.get() if settings.hmac_secret is not None else None

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
        for rows in _pages(conn, spec, sample=sample, batch_size=batch_size):
            page = _check_page(rows, spec, expected=expected, other=other, transit=transit)
            tally(results, page, expected=expected.name, secret=secret, max_ids=max_ids)
            result.rows_checked += len(rows)
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
    chain = load_catalog().tables
    wanted = set(tables if tables is not None else (settings.tables or chain))
    scope = [t for t in chain if t in wanted]
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
