"""One table's run, and :func:`migrate_table`, what every revision calls (through run_revision).

:class:`TableRun` pins the target key version, decides where to resume
(:mod:`~context_encryption.engine.resume`), then reads the table with keyset paging on the
calling thread and hands each batch to a pool of workers
(:class:`~context_encryption.engine.batch_write.BatchWriter`), at most ``-x workers`` batches in
flight, with progress shown as it goes. Any error stops the reader, lets the batches in flight
finish, and is raised as an operator message (a database error names its class and SQLSTATE,
never a statement or a value).

:func:`migrate_table` wraps it for a revision: the ``-x tables`` and HMAC-secret checks, the
summary (logged and handed to the run's sink), the ``on-error=abort`` stop, and clearing the
checkpoint on the revision's own connection, in the transaction of Alembic's stamp.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import sqlalchemy as sa

from app_models.specs import Direction, TableSpec
from context_encryption.engine.batch import process_rows
from context_encryption.engine.batch_write import BatchWriter
from context_encryption.engine.checkpoint import (
    Checkpointer,
    clear_checkpoints,
    ensure_checkpoint_table,
    read_stamp,
)
from context_encryption.engine.keypin import PinnedKey
from context_encryption.engine.resume import Resume, RunOf, choose_checkpoint
from context_encryption.engine.rows import Row, RowProcessor
from context_encryption.engine.runcontext import RunContext
from context_encryption.engine.sql import TableSql, pk_from_text
from context_encryption.engine.summary import BatchResult, TableSummary, aborted_error
from context_encryption.engine.workers import Workers
from context_encryption.errors import (
    ConfigurationError,
    ContextEncryptionError,
    PreflightError,
    database_error_message,
)
from context_encryption.progress import Progress, estimate_rows
from context_encryption.row_security import disable_row_security, is_row_security_error
from context_encryption.schemes import schemes
from context_encryption.throttle import Throttle
from context_encryption.transit import TransitClient

log = logging.getLogger("context_encryption")


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
        TableRun(
            bind.engine, spec, revision=revision, direction=direction, run=run, summary=summary
        ).execute()
    except BaseException:
        # the report still gets what was done before the stop (failures included)
        summary.status = "stopped"
        run.on_summary(summary)
        raise
    aborted = summary.finish(dry_run=settings.dry_run, on_error=settings.on_error)
    log.info("%s", summary.log_line())
    for line in summary.column_lines():
        log.info("%s", line)
    run.on_summary(summary)
    if aborted:
        raise aborted_error(summary)
    if not settings.dry_run:
        clear_checkpoints(bind, revision)
    return summary


def database_message(exc: BaseException, table: str) -> str:
    """A database error that stopped a table's run, as an operator message (no value)."""
    if is_row_security_error(exc):
        return (
            f"{table}: PostgreSQL refused to read or write it because a row-level security "
            "policy applies to this role (the run sets row_security = off so that no row is "
            "silently hidden from it). Nothing of the batch in progress was written and the "
            "revision was not stamped. Run as a role that sees every row (BYPASSRLS, or the "
            "table's owner without FORCE ROW LEVEL SECURITY), then run the same command again"
        )
    return database_error_message(exc, table)


class TableRun:
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
        self.settings = run.settings
        self.run = run
        self.summary = summary
        source, target = schemes(run.settings, direction)
        self.of = RunOf(spec.name, revision, direction, source, target)
        self.sql = TableSql(spec, engine.dialect.name)
        self.workers = Workers(engine, run.transit_factory)
        self.checkpointer = Checkpointer(revision, direction, spec.name)
        self.stop = threading.Event()
        # SQLite (the embedded demo) has one writer at a time.
        self.n_workers = 1 if engine.dialect.name == "sqlite" else run.settings.workers

    def execute(self) -> None:
        started = time.monotonic()
        try:
            transit = self.workers.transit()
            pin = self.run.pin(transit, self.of.target, self.of.direction)
            self.summary.target_key_version = pin.version
            resume = self._resume(transit, pin)
            self.summary.target_key_version = resume.pin.version
            self._run_batches(self._start_after(resume), resume.pin)
        finally:
            self.summary.vault_requests = self.workers.vault_requests()
            self.workers.close()
            self.summary.seconds = time.monotonic() - started

    def _resume(self, transit: TransitClient, pin: PinnedKey) -> Resume:
        """Decide where to start; a live run records its checkpoint in the same transaction."""
        if self.settings.dry_run:
            with self.engine.connect() as conn:
                disable_row_security(conn)
                return choose_checkpoint(conn, transit, self.of, pin)
        ensure_checkpoint_table(self.engine)
        with self.engine.begin() as conn:
            disable_row_security(conn)
            resume = choose_checkpoint(conn, transit, self.of, pin)
            cp = self.checkpointer
            cp.source_key, cp.target_key = self.of.source.key, self.of.target.key
            cp.target_version, cp.key_fingerprint = resume.pin.version, resume.pin.probe
            cp.stamp = read_stamp(conn)
            cp.start(conn, resume.checkpoint)
        return resume

    def _start_after(self, resume: Resume) -> Any:
        """The primary key the run starts after (None: the first row)."""
        resumed = resume.checkpoint
        if resumed is None or resumed.last_pk is None:
            return None
        self.summary.resumed_after = resumed.last_pk
        log.info(
            "%s: resuming %s after id=%s (last committed checkpoint)",
            self.spec.name,
            self.of.direction.value,
            resumed.last_pk,
        )
        return pk_from_text(resumed.last_pk, self.sql.pk)

    def _read_batches(
        self, last_pk: Any, throttle: Throttle, drain: Callable[[], None]
    ) -> Generator[list[Row], None, None]:
        """Keyset paging on one connection, each page in its own short transaction; before
        each page the throttle may hold (after ``drain``: no batch in flight, no transaction)."""
        with self.engine.connect() as conn:
            while True:
                throttle.before_batch(drain)
                if self.stop.is_set():
                    return
                with conn.begin():
                    self.sql.set_timeouts(conn, self.settings)
                    result = conn.execute(self.sql.select_after(last_pk, throttle.batch_size)).all()
                if not result:
                    return
                rows = self.sql.to_rows(result)
                last_pk = rows[-1].pk
                yield rows

    def _run_batches(self, last_pk: Any, pin: PinnedKey) -> None:
        with self.engine.connect() as conn:
            total = estimate_rows(conn, self.spec.name)
        dry = ", dry run" if self.settings.dry_run else ""
        label = f"{self.spec.name} ({self.of.direction.value}{dry})"
        writer = BatchWriter(
            self.spec,
            self.sql,
            self.settings,
            self.of.source,
            self.of.target,
            pin,
            self.processor,
            self.checkpointer,
            self.workers,
            self.stop,
        )
        with Progress(label, total, interval=self.run.progress_interval) as progress:
            throttle = Throttle(
                self.settings.throttle,
                self.engine,
                self.spec.name,
                progress,
                stop=self.stop,
                batch_size=self.settings.batch_size,
                dry_run=self.settings.dry_run,
            )
            try:
                throttle.start()
                error = self._pool(last_pk, writer, progress, throttle)
            finally:
                self.summary.throttle = throttle.report()
                throttle.close()
        if error is None:
            return
        if isinstance(error, ContextEncryptionError):
            raise error
        if isinstance(error, sa.exc.DBAPIError):
            raise ContextEncryptionError(database_message(error, self.spec.name)) from None
        raise error

    def _collect(
        self, done: set[Future[BatchResult]], progress: Progress, throttle: Throttle
    ) -> BaseException | None:
        """Merge finished batches into the summary; the first error of them, if any."""
        error: BaseException | None = None
        for fut in done:
            exc = fut.exception()
            if exc is not None:
                error = error or exc
                self.stop.set()
                continue
            b = fut.result()
            throttle.after_batch(
                b.rows_scanned, b.seconds, transaction_seconds=b.write_seconds or None
            )
            self.summary.merge_batch(b)
            progress.update(self.summary.rows_scanned)
            if b.errors and self.settings.on_error == "abort" and not self.settings.dry_run:
                self.stop.set()  # a dry run previews the whole table
        return error

    def _pool(
        self, last_pk: Any, writer: BatchWriter, progress: Progress, throttle: Throttle
    ) -> BaseException | None:
        """Read and hand out batches, at most ``n_workers`` in flight; the first error, if any."""
        in_flight: set[Future[BatchResult]] = set()
        error: BaseException | None = None

        def drain() -> None:
            """Before a hold: the batches in flight commit (or fail) and release their rows."""
            nonlocal in_flight, error
            if in_flight:
                done, _ = wait(in_flight)
                in_flight = set()
                error = error or self._collect(set(done), progress, throttle)

        reader = self._read_batches(last_pk, throttle, drain)
        with ThreadPoolExecutor(self.n_workers, thread_name_prefix="reencrypt") as pool:
            try:
                with contextlib.closing(reader):
                    for seq, rows in enumerate(reader):
                        if self.stop.is_set():
                            break
                        self.checkpointer.register(seq, rows[-1].pk)
                        in_flight.add(pool.submit(_timed, writer, seq, rows))
                        if len(in_flight) > self.n_workers:
                            done, pending = wait(in_flight, return_when=FIRST_COMPLETED)
                            in_flight = set(pending)
                            failed = self._collect(set(done), progress, throttle)
                            error = error or failed
            except sa.exc.DBAPIError as exc:  # the reader's connection
                self.stop.set()
                error = error or exc
            except BaseException:
                self.stop.set()
                raise
            finally:
                if in_flight:
                    done, _ = wait(in_flight)
                    failed = self._collect(set(done), progress, throttle)
                    error = error or failed
        return error


def _timed(writer: BatchWriter, seq: int, rows: list[Row]) -> BatchResult:
    """A batch on its worker, with its time (the throttle sizes the next batches from it)."""
    started = time.monotonic()
    result = writer.process(seq, rows)
    result.seconds = time.monotonic() - started
    return result
