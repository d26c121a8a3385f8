"""The seam with Alembic: the one module that uses Alembic's internals, and the run's hand-over.

What lives here:

* the run context env.py hands to the revisions (:data:`RUNTIME_KEY`, :func:`current_runtime`)
  and the test seam for Vault clients (:data:`TRANSIT_FACTORY_KEY`);
* what the running command is (:func:`command_steps`, :func:`is_stamp`, :func:`is_read_only`)
  and :func:`ensure_version_table`: the only uses of Alembic internals in the project. Each
  names the Alembic version it was checked against; pyproject.toml pins alembic below the next
  minor release, so a new Alembic is adopted on purpose, after these are checked again;
* the version stamp as the other commands read it (:func:`current_revision`,
  :func:`applied_tables`), from the version table alembic.ini names, read by
  :func:`~context_encryption.version_stamp.current_heads` (importable from here too);
* the run lock (:func:`single_run`): one live run per database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import sqlalchemy as sa
from alembic import context
from alembic.runtime.migration import MigrationContext, RevisionStep

from context_encryption.catalog import Catalog, load_catalog
from context_encryption.engine import RunContext
from context_encryption.errors import ConfigurationError, PreflightError, VerifyError
from context_encryption.version_stamp import current_heads

__all__ = [
    "RUNTIME_KEY",
    "RUN_LOCK_KEY",
    "TRANSIT_FACTORY_KEY",
    "applied_tables",
    "command_steps",
    "current_heads",
    "current_revision",
    "current_runtime",
    "ensure_version_table",
    "is_read_only",
    "is_stamp",
    "single_run",
]

RUNTIME_KEY: Final = "context_encryption.runtime"
#: Optional ``config.attributes`` entry: ``Callable[[Settings], TransitClient]`` (a test seam).
TRANSIT_FACTORY_KEY: Final = "context_encryption.transit_factory"


def current_runtime() -> RunContext:
    """The run context env.py put into ``config.attributes`` (what a revision runs with)."""
    runtime = context.config.attributes.get(RUNTIME_KEY)
    if not isinstance(runtime, RunContext):
        raise ConfigurationError(
            "these revisions run through migrations/env.py, which sets up Vault and the "
            "settings; run them with the alembic command"
        )
    return runtime


# --------------------------------------------------------------------------------------------
# the running command (Alembic internals: checked against Alembic 1.20.1)
# --------------------------------------------------------------------------------------------


def command_steps(mc: MigrationContext) -> list[tuple[str, bool]]:
    """The revisions the running command will apply, in order: ``(revision id, is_upgrade)``.

    Alembic 1.20.1: ``alembic.command`` hands env.py the function that computes its steps as
    ``MigrationContext.opts["fn"]``; for upgrade, downgrade and stamp it only computes them
    (``ScriptDirectory._upgrade_revs`` and the like), so replaying it here before
    ``run_migrations`` gives exactly the list Alembic is about to run. The steps that run a
    revision are :class:`alembic.runtime.migration.RevisionStep` (``.revision`` is the Script,
    ``.is_upgrade`` the direction); a stamp's steps are not, and plan nothing. ``alembic
    current`` hands in a function that prints: call this only when :func:`is_read_only` is
    false.
    """
    fn = mc.opts.get("fn")
    if fn is None:
        return []
    return [
        (str(step.revision.revision), bool(step.is_upgrade))
        for step in fn(mc.get_current_heads(), mc)
        if isinstance(step, RevisionStep)
    ]


def is_stamp(mc: MigrationContext) -> bool:
    """Whether the command is ``alembic stamp`` (it changes the stamp and touches no row).

    Alembic 1.20.1: ``alembic.command.stamp`` names its step function ``do_stamp``.
    """
    return getattr(mc.opts.get("fn"), "__name__", "") == "do_stamp"


def is_read_only(mc: MigrationContext) -> bool:
    """Whether the command only reads the stamp (``alembic current``: nothing to run).

    Alembic 1.20.1: ``alembic.command.current`` passes ``dont_mutate=True`` to the context.
    """
    return bool(mc.opts.get("dont_mutate"))


def ensure_version_table(mc: MigrationContext) -> None:
    """Create Alembic's version table now, if it is missing (on the context's connection).

    Alembic 1.20.1: ``MigrationContext._ensure_version_table()`` is what ``run_migrations``
    itself calls before the first step; calling it first lets env.py commit the DDL before any
    revision starts (see :mod:`context_encryption.runner`, "Transactions").
    """
    mc._ensure_version_table()  # private: checked against Alembic 1.20.1


# --------------------------------------------------------------------------------------------
# the version stamp, as commands other than alembic read it (public Alembic API)
# --------------------------------------------------------------------------------------------


def current_revision(conn: sa.Connection, catalog: Catalog | None = None) -> str | None:
    """The revision stamped in the version table (None: base, nothing applied).

    Raises :class:`~context_encryption.errors.VerifyError` when the stamp holds several
    revisions or one this chain does not have.
    """
    chain = catalog if catalog is not None else load_catalog()
    rows = current_heads(conn, chain.version_table)
    if not rows:
        return None
    if len(rows) > 1:
        raise VerifyError(
            f"{chain.version_table} holds {len(rows)} revisions ({', '.join(sorted(rows))}); "
            "this chain is linear: check with 'alembic current' and 'alembic heads'"
        )
    if rows[0] not in chain.revisions:
        raise VerifyError(
            f"{chain.version_table} names revision {rows[0]!r}, which is not part of this chain "
            f"({', '.join(chain.revisions)}): is this the right database, and the right tool "
            "version?"
        )
    return str(rows[0])


def applied_tables(revision: str | None, catalog: Catalog | None = None) -> set[str]:
    """Tables whose revision is applied at ``revision`` (the chain is linear)."""
    chain = catalog if catalog is not None else load_catalog()
    return set(chain.applied_tables(revision))


# --------------------------------------------------------------------------------------------
# the run lock
# --------------------------------------------------------------------------------------------

#: Key of the PostgreSQL advisory lock held by a live run (ASCII "ctxenc" as a number).
RUN_LOCK_KEY: Final = 0x637478656E63


@contextmanager
def single_run(connection: sa.Connection) -> Iterator[None]:
    """Hold a session-level advisory lock for the whole run (PostgreSQL).

    Two live runs on the same database would race for the same rows and checkpoints; the second
    one stops before doing anything. The lock is a session lock: it survives the per-revision
    commits and goes with the connection if the process dies.
    """
    if connection.dialect.name != "postgresql":
        yield
        return
    external = connection.in_transaction()
    got = connection.execute(sa.select(sa.func.pg_try_advisory_lock(RUN_LOCK_KEY))).scalar()
    if not external:
        connection.commit()
    if not got:
        raise PreflightError(
            "another context-encryption migration run holds this database's run lock "
            f"(pg_advisory_lock {RUN_LOCK_KEY}); wait for it to finish (see pg_stat_activity), "
            "then run the command again"
        )
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            try:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(RUN_LOCK_KEY)))
                if not external and connection.in_transaction():
                    connection.commit()
            except sa.exc.DBAPIError:
                pass  # the connection is gone, and the session lock with it
