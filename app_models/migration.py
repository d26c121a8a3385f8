"""The seam between Alembic and the engine: what a revision's ``upgrade()`` calls.

``migrations/env.py`` puts a :class:`~app_models.reencrypt.RunContext` into
``config.attributes`` under :data:`RUNTIME_KEY`; :func:`run_revision` takes it from there
together with the revision's own connection (``op.get_bind()``).
"""

from __future__ import annotations

from typing import Final

from alembic import context, op

from app_models.errors import ConfigurationError
from app_models.reencrypt import Direction, RunContext, TableSpec, TableSummary, migrate_table

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


def run_revision(spec: TableSpec, revision: str, direction: Direction) -> TableSummary:
    """Migrate the revision's table in ``direction`` on the revision's connection."""
    return migrate_table(op.get_bind(), spec, revision, direction, current_runtime())
