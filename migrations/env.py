"""Alembic environment of the context-encryption data migrations.

Online only: the revisions read and rewrite rows through Vault, which offline ``--sql`` mode
cannot do. Settings come from the environment and ``-x`` and are validated before any work. A
caller (tests, the demo) may hand in a connection (or an Engine) through
``config.attributes["connection"]``. Each revision runs in its own transaction
(``transaction_per_migration``); a dry run runs them all in one transaction that is rolled back.
What this adds to Alembic's template (the report, the checks before the first row, where each
transaction commits) is in :mod:`context_encryption.runner`.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError

from context_encryption import logsafety, runner
from context_encryption.alembic_runtime import RUNTIME_KEY
from context_encryption.catalog import catalog_of

config = context.config

if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

logsafety.install()  # no result row or statement parameter in any log, at any level


def run_migrations_offline() -> None:
    raise CommandError(runner.OFFLINE_REFUSED)


def run_migrations_online() -> None:
    settings = runner.settings_from(context.get_x_argument(as_dictionary=True), os.environ)
    with runner.reported_run(settings) as report:
        config.attributes[RUNTIME_KEY] = runner.run_context(settings, config, report)
        chain = catalog_of(config)  # the revisions' snapshots and alembic.ini's version table
        with runner.connection(config, settings) as connection:
            if settings.dry_run:
                with runner.dry_run(connection):
                    # no on_version_apply: nothing is really stamped, so no checkpoint goes stale
                    context.configure(connection=connection, version_table=chain.version_table)
                    runner.before_first_row(context.get_context(), connection, settings, chain)
                    context.run_migrations()
                return
            context.configure(
                connection=connection,
                version_table=chain.version_table,
                transaction_per_migration=True,
                on_version_apply=runner.on_version_apply,
            )
            with (
                runner.live_run(context.get_context(), connection, settings, chain),
                context.begin_transaction(),
            ):
                context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
