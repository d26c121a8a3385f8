"""The key versions in the data against the source key's decryptable range.

Every ciphertext in scope must be of a version the source key still decrypts
(``min_decryption_version`` .. ``latest_version``; Vault reads ``v0`` as ``v1``). A version
outside that range is trial-decrypted (a small sample, :func:`context_encryption.schemes.trial`)
with the target scheme, so values a previous run already migrated do not count.

Only ciphertext *prefixes* are read to count versions; rows are named by primary key, never by
value. PostgreSQL counts every column of a table in one scan (:func:`scan_table_versions`);
SQLite groups with ``substr``/``instr``; other databases parse a sample in Python.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from app_models.specs import Direction, TableSpec
from context_encryption.catalog import load_catalog
from context_encryption.errors import ContextEncryptionError
from context_encryption.preflight.database import (
    Bind,
    connection,
    missing_tables,
    report_missing_table,
)
from context_encryption.preflight.report import PreflightReport
from context_encryption.row_security import disable_row_security
from context_encryption.schemes import Kind, Scheme, precheck, schemes, trial
from context_encryption.settings import Settings
from context_encryption.transit import ItemResult, KeyInfo, TransitClient

#: Values per (column, version) trial-decrypted when a version is outside the key's range.
TRIAL_SAMPLE: Final = 20
#: Rows parsed in Python on databases that have neither regex nor instr.
GENERIC_SAMPLE: Final = 10_000

_VERSION = re.compile(r"^vault:v([0-9]{1,9}):")
_PG_VERSION: Final = r"^vault:v([0-9]+):"


def decryptable(version: int, lo: int, hi: int) -> bool:
    """Whether a key whose versions ``lo``..``hi`` decrypt reads ``version`` (0 reads as 1)."""
    return lo <= max(version, 1) <= hi


# --------------------------------------------------------------------------------------------
# counting versions
# --------------------------------------------------------------------------------------------


def _spec(table: str) -> TableSpec:
    return load_catalog().spec(table)


def _count(out: dict[int, int], v: object, n: int) -> None:
    if isinstance(v, str) and v.isdigit() and len(v) <= 9:
        out[int(v)] = out.get(int(v), 0) + int(n)


def scan_table_versions(
    conn: sa.Connection, table: str, columns: Sequence[str]
) -> dict[str, dict[int, int]]:
    """{column: {key version: number of values}} for ``columns`` of ``table``.

    PostgreSQL: one scan of the table for all its columns (a lateral ``unnest``), so the
    preflight reads a large table once rather than once per column. Elsewhere: per column.
    """
    if conn.dialect.name != "postgresql" or not columns:
        return {c: scan_versions(conn, table, c) for c in columns}
    t = _spec(table).table
    names = pg.array([sa.literal(c, sa.Text) for c in columns])
    versions = pg.array([sa.func.substring(t.c[c], _PG_VERSION) for c in columns])
    x = (
        sa.func.unnest(names, versions)
        .table_valued(sa.column("col", sa.Text), sa.column("v", sa.Text))
        .render_derived(name="x")
        .lateral()
    )
    stmt = (
        sa.select(x.c.col, x.c.v, sa.func.count())
        .select_from(t)
        .join(x, sa.true())
        .where(x.c.v.is_not(None))
        .group_by(x.c.col, x.c.v)
    )
    out: dict[str, dict[int, int]] = {c: {} for c in columns}
    for col, v, n in conn.execute(stmt):
        _count(out[col], v, n)
    return out


def scan_versions(conn: sa.Connection, table: str, column: str) -> dict[int, int]:
    """{key version: number of values} of ``table.column`` (values with a ``vault:v`` prefix).

    PostgreSQL: one grouped scan with a regular expression. SQLite: ``substr``/``instr``.
    Other databases: the first :data:`GENERIC_SAMPLE` values by primary key, parsed in Python.
    """
    spec = _spec(table)
    col = spec.table.c[column]
    dialect = conn.dialect.name
    out: dict[int, int] = {}
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            ver: sa.ColumnElement[Any] = sa.func.substring(col, _PG_VERSION)
        else:
            rest = sa.func.substr(col, 8)
            ver = sa.func.substr(rest, 1, sa.func.instr(rest, ":") - 1)
        stmt = (
            sa.select(ver.label("v"), sa.func.count().label("n"))
            .where(col.like("vault:v%"))
            .group_by(ver)
        )
        for v, n in conn.execute(stmt):
            _count(out, v, n)
        return out
    stmt2 = (
        sa.select(col)
        .where(col.like("vault:v%"))
        .order_by(spec.table.c[spec.pk])
        .limit(GENERIC_SAMPLE)
    )
    for (value,) in conn.execute(stmt2):
        m = _VERSION.match(value or "")
        if m:
            _count(out, m.group(1), 1)
    return out


def _of_version(
    conn: sa.Connection, table: str, column: str, version: int, limit: int
) -> list[tuple[str, Any]]:
    """(primary key, value) of the first ``limit`` values of ``version``, by primary key."""
    spec = _spec(table)
    t = spec.table
    col = t.c[column]
    stmt = (
        sa.select(t.c[spec.pk], col)
        .where(col.like(f"vault:v{version}:%"))
        .order_by(t.c[spec.pk])
        .limit(limit)
    )
    return [(str(pk), v) for pk, v in conn.execute(stmt)]


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


@dataclass
class _VersionCheck:
    """One check of versions: what it reads with, and the versions the source key cannot
    decrypt (``problems``), values a previous run migrated set aside."""

    conn: sa.Connection
    report: PreflightReport
    source: KeyInfo
    transit: TransitClient | None
    #: the scheme the values are expected in (its key is ``source``), and the trial's
    first: Scheme
    target: Scheme
    problems: list[str] = field(default_factory=list)
    too_old: list[int] = field(default_factory=list)
    too_new: bool = False

    def table(self, table: str) -> None:
        """Count ``table``'s versions (one scan) and note those the source key does not read."""
        lo, hi = self.source.min_decryption_version, self.source.latest_version
        columns = [c.name for c in _spec(table).columns]
        scanned = scan_table_versions(self.conn, table, columns)
        for column in columns:
            versions = scanned[column]
            self.report.versions[f"{table}.{column}"] = versions
            for v, n in sorted(versions.items()):
                # a value a previous (interrupted) run already migrated is fine
                if decryptable(v, lo, hi) or self.migrated_already(table, column, v):
                    continue
                ids = ", ".join(pk for pk, _v in _of_version(self.conn, table, column, v, 5))
                if v < lo:
                    self.too_old.append(v)
                    self.problems.append(
                        f"{table}.{column}: {n} value(s) of version v{v}, below "
                        f"min_decryption_version {lo} (id {ids})"
                    )
                else:
                    self.too_new = True
                    self.problems.append(
                        f"{table}.{column}: {n} value(s) of version v{v}, above the key's "
                        f"latest version {hi} (id {ids})"
                    )

    def migrated_already(self, table: str, column: str, version: int) -> bool:
        """Whether a sample of ``version``'s values is in the target scheme (a previous run's).

        A few values neither key reads among readable ones are row errors of the run, not the
        column's: a warning names them by primary key. Without a Transit client: False.
        """
        if self.transit is None:
            return False
        sample = _of_version(self.conn, table, column, version, TRIAL_SAMPLE)
        lo, hi = self.source.min_decryption_version, self.source.latest_version
        # the source key was not asked: its range excludes the version (no value in the text)
        outside = ItemResult(None, f"key version v{version} is outside {lo}..{hi} of the source")
        sendable = [(pk, v) for pk, v in sample if isinstance(v, str) and precheck(v) is None]
        unreadable = [pk for pk, v in sample if (pk, v) not in sendable]
        try:
            verdicts = trial(
                self.transit, table, [(column, v, outside) for _pk, v in sendable], self.target
            )
        except ContextEncryptionError:
            return False
        unreadable += [
            pk
            for (pk, _v), verdict in zip(sendable, verdicts, strict=True)
            if verdict.kind is not Kind.SECOND
        ]
        if not sample or len(unreadable) == len(sample):
            return False
        if unreadable:
            self.report.warnings.append(
                f"{table}.{column}: of {len(sample)} sampled value(s) of version v{version} "
                f"(already migrated), {len(unreadable)} cannot be decrypted by either key: id "
                f"{', '.join(unreadable)}; the run reports each such row as a failed row "
                "(-x on-error decides)"
            )
        return True


def check_versions(
    report: PreflightReport,
    *,
    settings: Settings,
    engine: Bind,
    transit: TransitClient | None,
    tables: Sequence[str],
    source: KeyInfo,
) -> None:
    """Every ciphertext version in scope is decryptable by the source key (or already migrated).

    ``transit`` None: versions outside the range are not trial-decrypted (they all count).
    """
    first, target = schemes(settings, Direction(report.direction))
    with connection(engine) as conn:
        disable_row_security(conn)
        check = _VersionCheck(conn, report, source, transit, first, target)
        absent = missing_tables(conn, tables)
        for table in tables:
            if table in absent:
                report_missing_table(report, "data versions", table, engine.engine.url)
            else:
                check.table(table)
    if check.problems:
        _report_problems(settings, check)
        return
    if absent:
        return
    which = first.name
    lo, hi = source.min_decryption_version, source.latest_version
    seen = sorted({v for d in report.versions.values() for v in d})
    report.add(
        "data versions",
        True,
        f"ciphertext versions in scope {seen or 'none'}; the {which} key decrypts {lo}..{hi}",
    )


def _report_problems(settings: Settings, findings: _VersionCheck) -> None:
    """The failure (or, with on-error=skip, the warning) for versions the source key lacks."""
    report, source = findings.report, findings.source
    which = findings.first.name
    lo, hi = source.min_decryption_version, source.latest_version
    fixes = []
    if findings.too_old:
        fixes.append(
            f"lower the {which} key's min_decryption_version so Vault decrypts them again: "
            f"vault write {settings.transit_mount}/keys/{source.name}/config "
            f"min_decryption_version={min(findings.too_old)}"
        )
    if findings.too_new:
        fixes.append(
            f"values above the latest version were not made by the {which} key "
            f"{source.name!r} (another key, or the key was restored from an older backup): "
            "check VAULT_OLD_KEY / VAULT_NEW_KEY and VAULT_TRANSIT_MOUNT"
        )
    if settings.on_error == "skip":
        # the operator chose to skip rows that cannot be migrated: they will be reported
        report.warnings.append(
            f"the {which} key {source.name!r} cannot decrypt some values; with "
            "on-error=skip their rows are left untouched and listed in the report: "
            + "; ".join(findings.problems)
        )
        return
    report.add(
        "data versions",
        False,
        f"the {which} key {source.name!r} (versions {lo}..{hi} decryptable) cannot decrypt "
        "every value in scope: " + "; ".join(findings.problems),
        "; ".join(fixes),
    )
