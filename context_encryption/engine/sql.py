"""The statements of one table's run, built once from the revision's frozen snapshot.

Keyset reads in primary-key order (``WHERE id > :last ORDER BY id LIMIT :n``), the re-read of
rows that changed, and the compare-and-swap write: a row is only updated where its ciphertexts
and companions are still the ones read, so no concurrent write is lost. On PostgreSQL the write
is one set-based ``UPDATE ... FROM json_to_recordset(:doc)`` per batch; elsewhere (SQLite, the
embedded demo) one ``UPDATE`` per row. All SQLAlchemy Core with bound parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from app_models.specs import TableSpec
from context_encryption.engine.rows import Row
from context_encryption.settings import Settings


class TableSql:
    """The statements of one table's run, built once from its spec and the database dialect."""

    def __init__(self, spec: TableSpec, dialect: str) -> None:
        self.spec = spec
        t = spec.table
        self.pk = t.c[spec.pk]
        self.read_cols = [c for col in spec.columns for c in (col.name, col.hmac) if c]
        self.select_cols = [self.pk, *(t.c[c] for c in self.read_cols)]
        self.postgres = dialect == "postgresql"
        self.write_stmt = self._pg_write() if self.postgres else self._generic_write()

    def select_after(self, last_pk: Any, limit: int) -> sa.Select[Any]:
        stmt = sa.select(*self.select_cols).order_by(self.pk).limit(limit)
        if last_pk is not None:
            stmt = stmt.where(self.pk > last_pk)
        return stmt

    def select_pks(self, pks: Sequence[Any]) -> sa.Select[Any]:
        return sa.select(*self.select_cols).where(self.pk.in_(pks)).order_by(self.pk)

    def _pg_write(self) -> sa.Update:
        """One set-based compare-and-swap UPDATE per batch.

        The batch travels as one JSON document read by ``json_to_recordset``: one parameter
        whatever the batch size, serialised by the C JSON encoder, and no per-element array
        adaptation on the client.
        """
        t = self.spec.table
        cols: list[Any] = [sa.column("id", self.pk.type)]
        cols += [sa.column(f"o_{c}", sa.Text) for c in self.read_cols]
        cols += [sa.column(f"n_{col.name}", sa.Text) for col in self.spec.columns]
        doc = sa.bindparam("doc", type_=pg.JSON(none_as_null=True))
        v = (
            sa.func.json_to_recordset(doc)
            .table_valued(*cols)
            .render_derived(name="v", with_types=True)
        )
        where = [self.pk == v.c.id]
        where += [t.c[c].is_not_distinct_from(v.c[f"o_{c}"]) for c in self.read_cols]
        return (
            sa.update(t)
            .values({col.name: v.c[f"n_{col.name}"] for col in self.spec.columns})
            .where(*where)
            .returning(self.pk)
        )

    def _generic_write(self) -> sa.Update:
        t = self.spec.table
        where = [self.pk == sa.bindparam("b_id")]
        where += [t.c[c].is_not_distinct_from(sa.bindparam(f"o_{c}")) for c in self.read_cols]
        return (
            sa.update(t)
            .values({col.name: sa.bindparam(f"n_{col.name}") for col in self.spec.columns})
            .where(*where)
        )

    def write(self, conn: sa.Connection, rows: Sequence[Row]) -> set[Any]:
        """Compare-and-swap ``rows``; returns the primary keys actually updated."""
        if not rows:
            return set()
        if self.postgres:
            text_ids = isinstance(self.pk.type, sa.Uuid)  # JSON has no UUID type
            doc = []
            for r in rows:
                item: dict[str, Any] = {"id": str(r.pk) if text_ids else r.pk}
                for c in self.read_cols:
                    item[f"o_{c}"] = r.values[c]
                for col in self.spec.columns:
                    item[f"n_{col.name}"] = r.new.get(col.name, r.values[col.name])
                doc.append(item)
            return {pk for (pk,) in conn.execute(self.write_stmt, {"doc": doc})}
        done: set[Any] = set()
        for r in rows:
            p: dict[str, Any] = {"b_id": r.pk}
            p.update({f"o_{c}": r.values[c] for c in self.read_cols})
            p.update(
                {f"n_{c.name}": r.new.get(c.name, r.values[c.name]) for c in self.spec.columns}
            )
            if conn.execute(self.write_stmt, p).rowcount == 1:
                done.add(r.pk)
        return done

    def set_timeouts(self, conn: sa.Connection, settings: Settings) -> None:
        """The batch's timeouts, and ``row_security = off``, for the current transaction.

        With ``row_security`` off, PostgreSQL raises instead of silently hiding the rows a
        row-level security policy would filter: the run reads and writes every row or stops.
        """
        if self.postgres:
            conn.execute(
                sa.select(
                    sa.func.set_config("lock_timeout", f"{settings.lock_timeout_ms}ms", True),
                    sa.func.set_config(
                        "statement_timeout", f"{settings.statement_timeout_ms}ms", True
                    ),
                    sa.func.set_config("row_security", "off", True),
                )
            )

    def to_rows(self, result: Sequence[sa.Row[Any]]) -> list[Row]:
        return [Row(pk=r[0], values=dict(zip(self.read_cols, r[1:], strict=True))) for r in result]


def pk_from_text(text: str, pk_column: sa.ColumnElement[Any]) -> Any:
    """A primary key as a checkpoint records it (text), back in its column's type."""
    if isinstance(pk_column.type, sa.Uuid):
        return uuid.UUID(text)
    if isinstance(pk_column.type, sa.Integer):
        return int(text)
    return text
