"""The seam between Alembic and the engine: what a revision's ``upgrade()`` calls.

``migrations/env.py`` puts a :class:`~context_encryption.reencrypt.RunContext` into
``config.attributes`` under :data:`RUNTIME_KEY`; :func:`run_revision` takes it from there
together with the revision's own connection (``op.get_bind()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import sqlalchemy as sa
from alembic import context

from context_encryption.errors import ConfigurationError, PreflightError
from context_encryption.reencrypt import RunContext

RUNTIME_KEY: Final = "context_encryption.runtime"
#: Optional ``config.attributes`` entry: ``Callable[[Settings], TransitClient]`` (a test seam).
TRANSIT_FACTORY_KEY: Final = "context_encryption.transit_factory"


def current_runtime() -> RunContext:
    runtime = context.config.attributes.get(RUNTIME_KEY)
    if not isinstance(runtime, RunContext):
        raise ConfigurationError(
            "these revisions run through migrations/env.py, which sets up Vault and the "
            "settings; run them with the alembic command"
        )
    return runtime


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
