"""``context-encryption rewrap``: every new-scheme value of a table onto one key version.

With convergent encryption the same plaintext gives a different ciphertext under each version
of the new key, so once ``pos-context-key`` is rotated, an equality lookup with one version
misses the values stored with another. A rewrap moves every new-scheme value of the chosen
tables to one version (the latest, pinned at the start, or ``--to-version N``) through
``transit/rewrap/<new key>`` batches, each value with its column's context. Vault decrypts and
re-encrypts inside itself: no new-scheme plaintext reaches this process.

This module is the command: its scope (:func:`rewrap_scope`), the target version
(:func:`target_version`), the run (:func:`rewrap_tables`) and its report (:class:`RewrapReport`).
It runs on the migration's engine (:mod:`context_encryption.engine`) with the rewrap's row
strategy (:class:`~context_encryption.engine.rewrap_rows.RewrapRows`): keyset streaming, the
compare-and-swap write (no concurrent update lost), the durable checkpoint (revision
``rewrap:<table>``, direction ``rewrap``: never a migration's), the pinned key version with its
fingerprint probe, workers, progress, dry run, the JSON report, request limits and the
database's run lock (one live run, migration or rewrap, at a time). HMAC companions are never
written (they are compared, so a concurrent change of one is not overwritten either).

Only tables whose revision is applied (expected in the new scheme) are rewrapped; a table with
a stopped migration's checkpoint is refused until that migration is finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from app_models.specs import Direction, TableSpec
from context_encryption.alembic_runtime import current_revision, single_run
from context_encryption.catalog import load_catalog
from context_encryption.engine import (
    NOTE_KINDS,
    RewrapRows,
    RunContext,
    TableRun,
    TableSummary,
    clear_checkpoints,
    ensure_checkpoint_table,
    read_checkpoints,
)
from context_encryption.engine.rewrap_rows import Notes
from context_encryption.engine.summary import failure_lines
from context_encryption.errors import ConfigurationError, MigrationAborted, PreflightError
from context_encryption.preflight.keys import new_key_problem
from context_encryption.preflight.report import PreflightReport
from context_encryption.preflight.versions import scan_table_versions
from context_encryption.report import write_json_atomically
from context_encryption.row_security import disable_row_security
from context_encryption.schemes import new_scheme, old_scheme
from context_encryption.settings import FLAG_SPELLING, Settings
from context_encryption.transit import KeyInfo, TransitClient

log = logging.getLogger("context_encryption")

#: Checkpoint revision of a table's rewrap (direction ``rewrap``).
REVISION_PREFIX: Final = "rewrap:"


def rewrap_revision(table: str) -> str:
    """The checkpoint revision of ``table``'s rewrap (never one of the chain's)."""
    return f"{REVISION_PREFIX}{table}"


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


@dataclass
class RewrapTable:
    """One table's rewrap: the engine's summary and the values left as they are."""

    summary: TableSummary
    notes: Notes = field(default_factory=dict)
    versions_before: dict[str, dict[int, int]] = field(default_factory=dict)

    def left(self, column: str, kind: str) -> int:
        return sum(1 for (c, _pk), (k, _r) in self.notes.items() if c == column and k == kind)

    def as_dict(self) -> dict[str, Any]:
        s = self.summary
        columns: dict[str, Any] = {}
        for col in load_catalog().spec(s.table).columns:
            c = s.columns.get(col.name)
            columns[col.name] = {
                "rewrapped": c.migrated if c else 0,
                "already_at_target": c.already_migrated if c else 0,
                "null": c.null if c else 0,
                "failed": c.failed if c else 0,
                **{kind: self.left(col.name, kind) for kind in NOTE_KINDS},
                "versions_before": {
                    str(v): n for v, n in sorted(self.versions_before.get(col.name, {}).items())
                },
            }
        left = [
            {"column": c, "id": pk, "kind": k, "reason": r}
            for (c, pk), (k, r) in sorted(self.notes.items())
        ]
        return {
            "table": s.table,
            "checkpoint_revision": s.revision,
            "status": s.status,
            "dry_run": s.dry_run,
            "target_key_version": s.target_key_version,
            "rows_scanned": s.rows_scanned,
            "rows_written": s.rows_written,
            "rows_failed": s.rows_failed,
            "changed_concurrently": s.changed_concurrently,
            "deleted_concurrently": s.deleted_concurrently,
            "batches": s.batches,
            "vault_requests": s.vault_requests,
            "seconds": round(s.seconds, 3),
            "resumed_after": s.resumed_after,
            "columns": columns,
            "left_unchanged": left[:10_000],
            "failures": s.failures,
        }

    def lines(self) -> list[str]:
        s = self.summary
        verb = "would rewrap" if s.dry_run else "rewrapped"
        out = [
            f"{s.table}: {s.rows_scanned} rows scanned, {s.rows_written} rows written, "
            f"to version {s.target_key_version}"
            + (f" (resumed after id={s.resumed_after})" if s.resumed_after else "")
            + f", {s.vault_requests} Vault requests, {s.seconds:.1f}s"
        ]
        for name, c in self.as_dict()["columns"].items():
            left = ", ".join(f"{kind.replace('_', ' ')} {c[kind]}" for kind in NOTE_KINDS)
            out.append(
                f"  {s.table}.{name}: {verb} {c['rewrapped']}, already at v"
                f"{s.target_key_version} {c['already_at_target']}, NULL {c['null']}, "
                f"left as they are: {left}" + (f", failed {c['failed']}" if c["failed"] else "")
            )
        return out


@dataclass
class RewrapReport:
    """What ``context-encryption rewrap`` did: per table, counts and primary keys only."""

    settings: Settings
    revision: str | None = None
    key_version: int = 0
    latest_version: int = 0
    min_decryption_version: int = 0
    tables: list[RewrapTable] = field(default_factory=list)
    outcome: str = "running"
    error: str | None = None

    @property
    def left_unchanged(self) -> int:
        return sum(len(t.notes) for t in self.tables)

    @property
    def ok(self) -> bool:
        """Every value in scope is at the target version (or NULL): nothing left, none failed."""
        return self.left_unchanged == 0 and not any(t.summary.rows_failed for t in self.tables)

    def write(self, path: str) -> bool:
        """Write the JSON report atomically (:func:`write_json_atomically`); never raise."""
        reason = write_json_atomically(path, self.as_dict())
        if reason is not None:
            log.error("the rewrap report could not be written to %s (%s)", path, reason)
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": "context-encryption rewrap",
            "outcome": self.outcome,
            "error": self.error,
            "dry_run": self.settings.dry_run,
            "revision": self.revision,
            "key": self.settings.new_key,
            "mount": self.settings.transit_mount,
            "target_key_version": self.key_version,
            "key_latest_version": self.latest_version,
            "key_min_decryption_version": self.min_decryption_version,
            "values_left_unchanged": self.left_unchanged,
            "settings": self.settings.public_dict(),
            "tables": [t.as_dict() for t in self.tables],
        }


# --------------------------------------------------------------------------------------------
# scope and target version
# --------------------------------------------------------------------------------------------


def target_version(info: KeyInfo, requested: int | None, mount: str) -> int:
    """The version a rewrap pins: ``requested`` (None: the latest), within the key's range."""
    if requested is None:
        return info.latest_version
    if requested > info.latest_version:
        raise ConfigurationError(
            f"--to-version {requested} is above key {info.name!r}'s latest version "
            f"{info.latest_version}; rotate it first (vault write -f "
            f"{mount}/keys/{info.name}/rotate) or choose a version it has"
        )
    if requested < max(1, info.min_decryption_version):
        raise ConfigurationError(
            f"--to-version {requested} is below key {info.name!r}'s min_decryption_version "
            f"{info.min_decryption_version}: Vault could not decrypt values at that version. "
            f"Choose {info.min_decryption_version}..{info.latest_version}"
        )
    return requested


def read_new_key(transit: TransitClient, settings: Settings) -> KeyInfo:
    """The new key, as the rewrap pins it; :class:`PreflightError` when it is not usable.

    The check is the rewrap preflight's (:func:`~context_encryption.preflight.keys.new_key_problem`,
    direction ``rewrap``), and so is the message: the same text whether the preflight or this
    read finds the problem. Options are named as ``context-encryption rewrap`` takes them.
    """
    info = transit.read_key(settings.new_key)
    problem = new_key_problem(info, settings, "rewrap", FLAG_SPELLING)
    if problem is not None:
        report = PreflightReport("rewrap", (), spelling=FLAG_SPELLING)
        report.add("new key", False, *problem)
        raise PreflightError(report.message())
    assert info is not None  # a missing key is a problem: not reached
    return info


def rewrap_scope(settings: Settings, conn: sa.Connection) -> tuple[str | None, list[str]]:
    """(current revision, the tables to rewrap): those whose revision is applied.

    A table named with ``--tables`` whose revision is not applied, or any table in scope with
    a stopped migration's checkpoint, stops the command before any work.
    """
    catalog = load_catalog()
    revision = current_revision(conn)
    applied = catalog.applied_tables(revision)
    if settings.tables is not None:
        outside = [t for t in settings.tables if t not in applied]
        if outside:
            raise ConfigurationError(
                f"--tables names {', '.join(outside)}, whose revision is not applied (current "
                f"revision {revision or 'base'}): those values are in the old scheme, which a "
                "rewrap does not touch. Migrate them first (alembic upgrade), or leave them out"
            )
    scope = [t for t in catalog.tables if t in applied and settings.table_selected(t)]
    stopped = [
        c
        for c in read_checkpoints(conn)
        if c.direction != Direction.REWRAP.value and c.table_name in scope
    ]
    if stopped:
        raise PreflightError(
            "a migration of "
            + ", ".join(f"{c.table_name} ({c.revision}, {c.run})" for c in stopped)
            + " stopped and was not finished: the table holds values of both schemes. Finish "
            "it first (run the same alembic command again), then rewrap"
        )
    return revision, scope


def table_spec(table: str) -> TableSpec:
    """The table's encrypted columns and companions, from its revision's snapshot."""
    return load_catalog().spec(table)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def rewrap_tables(
    settings: Settings,
    *,
    engine: sa.Engine,
    transit_factory: Callable[[], TransitClient],
    to_version: int | None = None,
    report: RewrapReport | None = None,
    progress_interval: float = 5.0,
) -> RewrapReport:
    """Rewrap every applied table in scope to one version of the new key.

    Holds the database's run lock for the whole command. Raises
    :class:`~context_encryption.errors.ContextEncryptionError` subclasses for what stops it; the
    report (given or new) holds what was done until then.
    """
    report = report if report is not None else RewrapReport(settings)
    with engine.connect() as lock_conn, single_run(lock_conn):
        with engine.connect() as conn:
            disable_row_security(conn)
            report.revision, scope = rewrap_scope(settings, conn)
            conn.rollback()
        transit = transit_factory()
        try:
            info = read_new_key(transit, settings)
            report.latest_version = info.latest_version
            report.min_decryption_version = info.min_decryption_version
            version = target_version(info, to_version, settings.transit_mount)
            run = RunContext(
                settings=settings,
                transit_factory=transit_factory,
                progress_interval=progress_interval,
            )
            report.key_version = run.pin_version(transit, new_scheme(settings), version).version
            if not scope:
                log.warning(
                    "rewrap: no table to rewrap (revision %s applies none of those selected)",
                    report.revision or "base",
                )
            if not settings.dry_run:
                ensure_checkpoint_table(engine)
            for table in scope:
                _rewrap_one(engine, settings, run, table, report.tables)
        finally:
            transit.close()
    report.outcome = "dry-run" if settings.dry_run else "completed"
    return report


def _rewrap_one(
    engine: sa.Engine,
    settings: Settings,
    run: RunContext,
    table: str,
    results: list[RewrapTable],
) -> RewrapTable:
    spec = table_spec(table)
    revision = rewrap_revision(table)
    summary = TableSummary(table, revision, Direction.REWRAP.value, settings.dry_run)
    processor = RewrapRows(old_scheme(settings))
    result = RewrapTable(summary)
    results.append(result)  # in the report even when the run stops on this table
    with engine.connect() as conn:
        disable_row_security(conn)
        result.versions_before = scan_table_versions(conn, table, [c.name for c in spec.columns])
        conn.rollback()
    table_run = TableRun(
        engine,
        spec,
        revision=revision,
        direction=Direction.REWRAP,
        run=run,
        summary=summary,
        processor=processor,
    )
    try:
        table_run.execute()
    except BaseException:
        summary.status = "stopped"
        result.notes = processor.notes()
        raise
    result.notes = processor.notes()
    aborted = summary.finish(dry_run=settings.dry_run, on_error=settings.on_error)
    for line in result.lines():
        log.info("%s", line)
    if aborted:
        raise MigrationAborted(
            f"{table}: {summary.rows_failed} row(s) could not be rewrapped (on-error=abort); "
            "committed batches stay, and running the same command again resumes from the "
            f"checkpoint\n{failure_lines(summary)}"
        )
    if not settings.dry_run:
        with engine.begin() as conn:
            disable_row_security(conn)
            clear_checkpoints(conn, revision)
    return result
