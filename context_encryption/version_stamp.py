"""Reading Alembic's version stamp: the revisions its version table holds (public SQLAlchemy only).

The one place the version table is read outside an ``alembic`` command: the checkpoints record
the stamp they were made under (:func:`context_encryption.engine.checkpoint.read_stamp`), and
verify, the preflight's scope and the rewrap read the current revision
(:func:`context_encryption.alembic_runtime.current_revision`). It imports nothing of the engine,
so both can use it.
"""

from __future__ import annotations

import sqlalchemy as sa

from context_encryption.catalog import load_catalog


def current_heads(conn: sa.Connection, version_table: str | None = None) -> tuple[str, ...]:
    """Every revision stamped in the version table (empty: base, or no version table yet).

    ``version_table`` defaults to the one alembic.ini names (:func:`load_catalog`). The table is
    read with SQLAlchemy, as Alembic reads it: ``MigrationContext.configure(...)`` would log
    "Context impl ..." at INFO on every call, into the output of ``context-encryption verify
    --verbose`` and the rewrap.
    """
    name = version_table if version_table is not None else load_catalog().version_table
    if not sa.inspect(conn).has_table(name):
        return ()
    version = sa.table(name, sa.column("version_num", sa.String))
    return tuple(str(v) for (v,) in conn.execute(sa.select(version.c.version_num)))
