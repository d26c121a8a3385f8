"""Alembic environment of the context-encryption data migrations.

Online only: the revisions read and rewrite rows through Vault, which offline ``--sql`` mode
cannot do. Settings come from the environment and ``-x`` (see
:mod:`context_encryption.settings`) and
are validated before any work. A caller (tests, the demo) may hand in a connection (or an
Engine) through ``config.attributes["connection"]``; otherwise an engine is built from
``DATABASE_URL`` / ``-x db``. Each revision runs in its own transaction
(``transaction_per_migration``); a dry run runs them all in one transaction that is rolled
back, so nothing is stamped.

Checkpoints and the stamp: before any work, an ``upgrade``/``downgrade`` (live or dry run, even
one with nothing to do) refuses to start while a table outside the revisions it runs holds a
stopped run's checkpoint (:func:`context_encryption.plan.check_checkpoints`). Every change of the
stamp
by a live command, ``alembic stamp`` included, marks the checkpoints left stale in the stamp's
own transaction (Alembic's ``on_version_apply``), so that no later run resumes one of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.util import CommandError

from context_encryption import logsafety
from context_encryption.alembic_runtime import RUNTIME_KEY, TRANSIT_FACTORY_KEY, single_run
from context_encryption.errors import ContextEncryptionError, database_error_message
from context_encryption.plan import check_checkpoints, check_table_filter, is_stamp, plan
from context_encryption.preflight import (
    require_database,
    run_preflight,
)
from context_encryption.reencrypt import (
    VERSION_TABLE,
    RunContext,
    invalidate_checkpoints,
    read_checkpoints,
)
from context_encryption.report import COMPLETED_WITH_SKIPPED_ROWS, RunReport
from context_encryption.row_security import disable_row_security
from context_encryption.settings import Settings, load_settings
from context_encryption.transit import RequestLimits, TokenKeeper, TransitClient

config = context.config

if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

log = logging.getLogger("context_encryption")
logsafety.install()  # no result row or statement parameter in any log, at any level


def run_migrations_offline() -> None:
    raise CommandError(
        "offline --sql mode is not supported: these revisions decrypt and re-encrypt rows "
        "through Vault, which needs a live database. Run without --sql; preview with "
        "-x dry-run=true instead."
    )


def _settings() -> Settings:
    try:
        return load_settings(context.get_x_argument(as_dictionary=True), os.environ)
    except ContextEncryptionError as exc:
        raise CommandError(str(exc)) from None


def _on_version_apply(
    ctx: MigrationContext,
    step: MigrationInfo,
    heads: Collection[Any],  # noqa: ARG001 (Alembic's callback signature)
    run_args: Mapping[str, Any],  # noqa: ARG001
) -> None:
    """The stamp changed (in its own transaction): no checkpoint left may be resumed."""
    assert ctx.connection is not None
    left = invalidate_checkpoints(ctx.connection)
    if step.is_stamp:
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


def _before_first_row(settings: Settings, connection: sa.Connection) -> None:
    """Checks that need Alembic's plan; they run before any revision touches a row."""
    mc = context.get_context()
    if is_stamp(mc):
        return
    steps = plan(mc)
    check_table_filter(settings, steps)
    # on a connection of its own: Alembic's may be in a caller's transaction, which must not
    # hold a lock on the checkpoint table while the engine adds missing columns to it
    with connection.engine.connect() as own:
        disable_row_security(own)
        stopped = read_checkpoints(own)
    check_checkpoints(steps, stopped, mc.get_current_heads())
    if steps:
        log.info(
            "%s%s: %s",
            "dry run of " if settings.dry_run else "",
            "upgrade" if steps[0].upgrade else "downgrade",
            ", ".join(f"{s.revision} ({s.table})" for s in steps),
        )
        transit = config.attributes[RUNTIME_KEY].transit_factory()
        try:
            run_preflight(
                settings,
                direction="upgrade" if steps[0].upgrade else "downgrade",
                tables=[s.table for s in steps if settings.table_selected(s.table)],
                transit=transit,
                engine=connection,
            )
        finally:
            transit.close()


def _run(connection: sa.Connection, settings: Settings) -> None:
    if settings.dry_run:
        # One outer transaction, rolled back at the end: no version stamp, no checkpoint.
        outer = connection.begin_nested() if connection.in_transaction() else connection.begin()
        try:
            # no on_version_apply: nothing is really stamped, so no checkpoint goes stale
            context.configure(connection=connection, version_table=VERSION_TABLE)
            _before_first_row(settings, connection)
            context.run_migrations()
        finally:
            outer.rollback()
        return
    external = connection.in_transaction()
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
        on_version_apply=_on_version_apply,
    )
    migration_context = context.get_context()
    if migration_context.opts.get("dont_mutate"):  # `alembic current`: read only, no run
        with context.begin_transaction():
            context.run_migrations()
        return
    with single_run(connection):
        _before_first_row(settings, connection)
        # Alembic's connection only stamps versions, but it stays open through each table's
        # run: create the version table now and commit, so that no transaction that wrote
        # anything stays open, and let PostgreSQL keep the idle session.
        migration_context._ensure_version_table()
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SET idle_in_transaction_session_timeout = 0"))
        if not external and connection.in_transaction():
            connection.commit()
        with context.begin_transaction():
            context.run_migrations()


def _connect_and_run(settings: Settings) -> None:
    connectable = config.attributes.get("connection")
    if isinstance(connectable, sa.Engine):  # pytest-alembic hands in an Engine
        with connectable.connect() as conn:
            _run(conn, settings)
    elif connectable is not None:
        _run(connectable, settings)
    else:
        if settings.database_url is None:
            raise CommandError("no database: set DATABASE_URL or pass -x db=postgresql://...")
        engine = sa.create_engine(
            settings.database_url, poolclass=sa.pool.NullPool, hide_parameters=True
        )
        try:
            require_database(engine)
            with engine.connect() as conn:
                _run(conn, settings)
        finally:
            engine.dispose()


def run_migrations_online() -> None:
    settings = _settings()
    report = RunReport(settings)
    # A caller may hand in how Vault clients are made, as it may hand in a connection.
    make_transit = config.attributes.get(TRANSIT_FACTORY_KEY)
    keeper = TokenKeeper()  # one per run: every worker's client renews the same token
    limits = RequestLimits(settings.vault_batch_items)  # one per run: a refusal shrinks all

    def transit_factory() -> TransitClient:
        if make_transit is not None:
            client: TransitClient = make_transit(settings)
            return client
        return TransitClient.from_settings(settings, keeper=keeper, limits=limits)

    config.attributes[RUNTIME_KEY] = RunContext(
        settings=settings, transit_factory=transit_factory, on_summary=report.add
    )
    try:
        _connect_and_run(settings)
        if settings.dry_run:
            report.outcome = "dry-run"
            log.info("dry run: nothing was written and no revision was stamped")
            would_fail = report.would_fail()
            if would_fail:
                report.outcome = "dry-run: a live run would fail"
                raise CommandError(would_fail)
        else:
            report.outcome = "completed"
            if report.left_behind():
                report.outcome = COMPLETED_WITH_SKIPPED_ROWS
    except ContextEncryptionError as exc:
        report.outcome, report.error = "failed", str(exc)
        raise CommandError(str(exc)) from None
    except sa.exc.DBAPIError as exc:
        # A lost connection (failover, restart, pg_terminate_backend) or a database error the
        # engine could not attribute to a batch: no statement, no parameter in the message.
        message = database_error_message(exc)
        report.outcome, report.error = "failed", message
        raise CommandError(message) from None
    except CommandError as exc:
        if report.outcome in ("running", "dry-run"):
            report.outcome = "failed"
        report.error = str(exc)
        raise
    except KeyboardInterrupt:
        report.outcome, report.error = "interrupted", "KeyboardInterrupt"
        raise CommandError(
            "interrupted: the revision in progress was not stamped; committed batches stay, "
            "and running the same command again resumes from the last checkpoint"
        ) from None
    except BaseException as exc:
        report.outcome, report.error = "failed", type(exc).__name__
        raise
    finally:
        if settings.report:
            report.write(settings.report)
        if report.outcome == COMPLETED_WITH_SKIPPED_ROWS:  # the run's last lines say so
            log.warning("%s", report.left_behind_message())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
