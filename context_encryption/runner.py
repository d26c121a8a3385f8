"""How ``migrations/env.py`` runs the chain: settings, report, connection, checks, transactions.

env.py keeps Alembic's own skeleton (configure, begin a transaction, run the migrations); what
this tool adds around it lives here:

* :func:`settings_from` reads and validates ``-x`` and the environment, once;
* :func:`reported_run` is the run report's lifecycle: the outcome of a run that ends, what each
  way of stopping means (an operator message instead of a traceback), the report written
  whatever happens, and the closing "left behind" warning;
* :func:`run_context` is what the revisions run with (settings, Vault clients, the report);
* :func:`connection` is Alembic's connection: the caller's (``config.attributes["connection"]``,
  a Connection or an Engine), or one of an engine built here from ``DATABASE_URL``;
* :func:`dry_run` and :func:`live_run` wrap ``context.run_migrations()`` with the checks that
  need Alembic's plan (:func:`before_first_row`) and the transaction boundaries below;
* :func:`on_version_apply` marks the checkpoints stale whenever the stamp changes.

Transactions (every commit of a run, in one place)
--------------------------------------------------

Alembic's connection only ever holds the version stamp; the rows are written on connections
Alembic does not own.

1. Live run, on Alembic's connection: the run lock is taken and committed
   (:func:`~context_encryption.alembic_runtime.single_run`; a session lock, it survives every
   commit below). Then the version table is created if missing and committed, and PostgreSQL's
   ``idle_in_transaction_session_timeout`` is switched off for the session: the connection
   stays open, idle, through each table's run, with no transaction holding anything. Each
   revision then runs in a transaction of its own (``transaction_per_migration``), which holds
   only the stamp's change, :func:`on_version_apply`'s update of the checkpoints and the
   engine's removal of the revision's checkpoint: they commit together, or not at all.
2. Live run, on the engine's own connections (``bind.engine``, see
   :mod:`context_encryption.engine`): the checkpoint table is created in a transaction of
   its own; every batch writes its rows and advances the checkpoint in one transaction, which
   commits when the batch is done. A run that stops keeps its committed batches and its
   checkpoint, and leaves the revision unstamped; the same command resumes it.
3. Before any of that, the checkpoints are read on a connection of their own (Alembic's may be
   in a caller's transaction, which must not hold a lock on the checkpoint table while the
   engine adds missing columns to it); the preflight only reads.
4. When the caller's connection is already in a transaction, nothing here commits it (the lock,
   the version table): the caller owns it.
5. Dry run: everything on Alembic's connection runs in one outer transaction (a savepoint in a
   caller's transaction) that is rolled back at the end; the engine writes nothing, so no
   stamp, no checkpoint and no row changes.
6. ``alembic current`` (read only): Alembic's usual transaction, no lock, no check.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.util import CommandError

from context_encryption.alembic_runtime import (
    TRANSIT_FACTORY_KEY,
    command_steps,
    current_runtime,
    ensure_version_table,
    is_read_only,
    is_stamp,
    single_run,
)
from context_encryption.catalog import Catalog
from context_encryption.engine import RunContext, invalidate_checkpoints, read_checkpoints
from context_encryption.errors import ContextEncryptionError, database_error_message
from context_encryption.plan import (
    check_checkpoints,
    check_table_filter,
    describe,
    plan,
    stamped_tables,
    verb,
)
from context_encryption.preflight import require_database, run_preflight
from context_encryption.report import COMPLETED_WITH_SKIPPED_ROWS, RunReport
from context_encryption.row_security import disable_row_security
from context_encryption.settings import Settings, load_settings
from context_encryption.transit import RequestLimits, TokenKeeper, TransitClient

log = logging.getLogger("context_encryption")

OFFLINE_REFUSED: Final = (
    "offline --sql mode is not supported: these revisions decrypt and re-encrypt rows "
    "through Vault, which needs a live database. Run without --sql; preview with "
    "-x dry-run=true instead."
)
INTERRUPTED: Final = (
    "interrupted: the revision in progress was not stamped; committed batches stay, "
    "and running the same command again resumes from the last checkpoint"
)


def settings_from(x_arguments: Mapping[str, str], environ: Mapping[str, str]) -> Settings:
    """The run's settings (``-x`` over the environment); a bad one is a :class:`CommandError`."""
    try:
        return load_settings(x_arguments, environ)
    except ContextEncryptionError as exc:
        raise CommandError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# the report's lifecycle
# --------------------------------------------------------------------------------------------


@contextmanager
def reported_run(settings: Settings) -> Iterator[RunReport]:
    """The run's report: its outcome set however the run ends, written at the end (``-x
    report=PATH``); the tool's own errors, a database error and an interrupt become a
    :class:`CommandError` with an operator message (no statement, no parameter, no value)."""
    report = RunReport(settings)
    try:
        yield report
        _conclude(report)
    except BaseException as exc:
        replacement = _record_failure(report, exc)
        if replacement is None:
            raise
        raise replacement from None
    finally:
        if settings.report:
            report.write(settings.report)
        if report.outcome == COMPLETED_WITH_SKIPPED_ROWS:  # the run's last lines say so
            log.warning("%s", report.left_behind_message())


def _conclude(report: RunReport) -> None:
    """The outcome of a run that got to its end; a dry run a live run would fail raises."""
    if not report.settings.dry_run:
        report.outcome = COMPLETED_WITH_SKIPPED_ROWS if report.left_behind() else "completed"
        return
    report.outcome = "dry-run"
    log.info("dry run: nothing was written and no revision was stamped")
    would_fail = report.would_fail()
    if would_fail:
        report.outcome = "dry-run: a live run would fail"
        raise CommandError(would_fail)


def _record_failure(report: RunReport, exc: BaseException) -> CommandError | None:
    """Record how the run stopped; the :class:`CommandError` to raise instead of ``exc``, or
    None to let ``exc`` through unchanged."""
    if isinstance(exc, ContextEncryptionError):
        report.outcome, report.error = "failed", str(exc)
        return CommandError(str(exc))
    if isinstance(exc, sa.exc.DBAPIError):
        # A lost connection (failover, restart, pg_terminate_backend) or a database error the
        # engine could not attribute to a batch: no statement, no parameter in the message.
        message = database_error_message(exc)
        report.outcome, report.error = "failed", message
        return CommandError(message)
    if isinstance(exc, CommandError):
        if report.outcome in ("running", "dry-run"):
            report.outcome = "failed"
        report.error = str(exc)
        return None
    if isinstance(exc, KeyboardInterrupt):
        report.outcome, report.error = "interrupted", "KeyboardInterrupt"
        return CommandError(INTERRUPTED)
    report.outcome, report.error = "failed", type(exc).__name__
    return None


# --------------------------------------------------------------------------------------------
# what the revisions run with, and on
# --------------------------------------------------------------------------------------------


def run_context(settings: Settings, config: Config, report: RunReport) -> RunContext:
    """The revisions' run context. Vault clients come from ``TRANSIT_FACTORY_KEY`` in
    ``config.attributes`` when a caller hands one in (as it may hand in a connection)."""
    make_transit = config.attributes.get(TRANSIT_FACTORY_KEY)
    keeper = TokenKeeper()  # one per run: every worker's client renews the same token
    limits = RequestLimits(settings.vault_batch_items)  # one per run: a refusal shrinks all

    def transit_factory() -> TransitClient:
        if make_transit is not None:
            client: TransitClient = make_transit(settings)
            return client
        return TransitClient.from_settings(settings, keeper=keeper, limits=limits)

    return RunContext(settings=settings, transit_factory=transit_factory, on_summary=report.add)


@contextmanager
def connection(config: Config, settings: Settings) -> Iterator[sa.Connection]:
    """Alembic's connection: the caller's, a new one of the caller's Engine (pytest-alembic
    hands in an Engine), or one of an engine built from the settings' database URL."""
    given = config.attributes.get("connection")
    if isinstance(given, sa.Engine):
        with given.connect() as conn:
            yield conn
        return
    if given is not None:
        yield given
        return
    if settings.database_url is None:
        raise CommandError("no database: set DATABASE_URL or pass -x db=postgresql://...")
    engine = sa.create_engine(
        settings.database_url, poolclass=sa.pool.NullPool, hide_parameters=True
    )
    try:
        require_database(engine)
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# around context.run_migrations()
# --------------------------------------------------------------------------------------------


@contextmanager
def dry_run(conn: sa.Connection) -> Iterator[None]:
    """One outer transaction, rolled back at the end: no version stamp, no checkpoint."""
    outer = conn.begin_nested() if conn.in_transaction() else conn.begin()
    try:
        yield
    finally:
        outer.rollback()


@contextmanager
def live_run(
    mc: MigrationContext, conn: sa.Connection, settings: Settings, catalog: Catalog
) -> Iterator[None]:
    """The run lock, the checks before the first row, and the version table committed first
    (see "Transactions" above); ``alembic current`` gets none of them."""
    if is_read_only(mc):
        yield
        return
    external = conn.in_transaction()
    with single_run(conn):
        before_first_row(mc, conn, settings, catalog)
        ensure_version_table(mc)
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SET idle_in_transaction_session_timeout = 0"))
        if not external and conn.in_transaction():
            conn.commit()
        yield


def before_first_row(
    mc: MigrationContext, conn: sa.Connection, settings: Settings, catalog: Catalog
) -> None:
    """Checks that need Alembic's plan; they run before any revision touches a row: the table
    filter, the stopped runs' checkpoints, and the preflight of the tables in the plan."""
    if is_stamp(mc):
        return
    steps = plan(catalog, command_steps(mc))
    check_table_filter(settings, steps)
    with conn.engine.connect() as own:  # see "Transactions", 3
        disable_row_security(own)
        stopped = read_checkpoints(own)
    check_checkpoints(catalog, steps, stopped, mc.get_current_heads())
    if not steps:
        return
    log.info("%s", describe(steps, dry_run=settings.dry_run))
    transit = current_runtime().transit_factory()
    try:
        run_preflight(
            settings,
            direction=verb(steps),
            tables=stamped_tables(steps, settings),
            transit=transit,
            engine=conn,
        )
    finally:
        transit.close()


def on_version_apply(
    ctx: MigrationContext,
    step: MigrationInfo,
    heads: Collection[Any],  # noqa: ARG001 (Alembic's callback signature)
    run_args: Mapping[str, Any],  # noqa: ARG001
) -> None:
    """The stamp changed (in its own transaction): no checkpoint left may be resumed."""
    assert ctx.connection is not None
    left = invalidate_checkpoints(ctx.connection)
    if not step.is_stamp:
        return
    for cp in left:
        log.warning(
            "stamp: %s (%s) keeps the checkpoint of %s that stopped %s; it will not be "
            "resumed: a run of %s processes the whole table from its first row, and other "
            "commands refuse to start until one has",
            cp.table_name,
            cp.revision,
            cp.run,
            cp.position(),
            cp.revision,
        )
