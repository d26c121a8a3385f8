"""Row-level security: every read and write of the tool sees every row, or fails loudly.

PostgreSQL hides the rows a role's policies do not let through. A migration that did not see a row
would leave it in the old scheme and still stamp the revision, so the tool runs with
``row_security = off`` (a query that policies would affect then fails) and the preflight and verify
refuse the tables whose rows the role may not all see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa


def disable_row_security(conn: sa.Connection) -> None:
    """``row_security = off`` for the connection's current transaction (PostgreSQL).

    A query on a table whose row-level security policies apply to the role then fails
    ("query would be affected by row-level security policy") instead of silently returning
    only the rows the policies let through. No effect for roles that bypass row security.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.set_config("row_security", "off", True)))


def is_row_security_error(exc: BaseException) -> bool:
    """Whether a database error is PostgreSQL refusing a query under ``row_security = off``."""
    orig = getattr(exc, "orig", None) or exc
    return type(orig).__name__ == "InsufficientPrivilege" and "row-level security" in str(orig)


ROW_SECURITY_FIX: Final = (
    "run as a role that sees every row: a superuser, a role with BYPASSRLS (as a superuser: "
    "ALTER ROLE <role> BYPASSRLS), or the table's owner when the table does not FORCE ROW "
    "LEVEL SECURITY; or disable row-level security on the table for the duration of the "
    "migration (ALTER TABLE <table> DISABLE ROW LEVEL SECURITY)"
)


def row_security_blockers(conn: sa.Connection, tables: Sequence[str]) -> dict[str, str]:
    """{table: why}: the tables whose rows the current role may not all see (PostgreSQL).

    Row-level security applies to a role unless it is a superuser or has ``BYPASSRLS``, or owns
    the table (directly or through a role it inherits) and the table does not force row
    security on its owner. Policies are not evaluated: a table whose policies apply to the role
    is refused even if they happen to show every row today.
    """
    if conn.dialect.name != "postgresql" or not tables:
        return {}
    stmt = sa.text(
        "SELECT c.relrowsecurity, c.relforcerowsecurity, "
        "pg_has_role(current_user, c.relowner, 'USAGE') AS owner, r.rolsuper, r.rolbypassrls, "
        "current_user AS role "
        "FROM pg_class c JOIN pg_roles r ON r.rolname = current_user "
        "WHERE c.oid = to_regclass(:name)"
    )
    out: dict[str, str] = {}
    for table in tables:
        row = conn.execute(stmt, {"name": table}).first()
        if row is None:
            continue  # no such table: the data checks say so
        enabled, forced, owner, superuser, bypass, role = row
        if not enabled or superuser or bypass or (owner and not forced):
            continue
        if owner:
            out[table] = (
                f"row-level security is enabled and forced on {table} (FORCE ROW LEVEL "
                f"SECURITY), so its policies apply to its owner {role!r} too"
            )
        else:
            out[table] = (
                f"row-level security is enabled on {table}, and role {role!r} is neither its "
                "owner, a superuser, nor BYPASSRLS"
            )
    return out
