"""The database checks: it answers, the tables in scope exist, and the role sees all their rows.

The URL is always shown with its password hidden (:func:`~context_encryption.settings.safe_url`),
and a driver's error text is scrubbed of the password and secret-like query values before it is
shown (:func:`scrub`). Row-level security: see :mod:`context_encryption.row_security`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import sqlalchemy as sa

from context_encryption.preflight.report import PreflightReport
from context_encryption.row_security import ROW_SECURITY_FIX, row_security_blockers
from context_encryption.settings import safe_url

#: What the preflight reads from: an Engine (a connection of its own) or the migration's own
#: Connection (used as is, inside whatever transaction it is in: the preflight only reads).
Bind = sa.Engine | sa.Connection

_SECRET_QUERY_KEYS = ("password", "secret", "token", "key")


@contextlib.contextmanager
def connection(bind: Bind) -> Iterator[sa.Connection]:
    """A connection of ``bind``: a new one for an Engine, the caller's own for a Connection."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


def scrub(text: str, url: sa.URL) -> str:
    """The first line of an error text, without the database password, should a driver ever
    echo it, nor the values of secret-like query parameters."""
    if url.password:
        text = text.replace(str(url.password), "***")
    for key, value in url.query.items():
        if any(s in key.lower() for s in _SECRET_QUERY_KEYS):
            for v in (value,) if isinstance(value, str) else value:
                text = text.replace(v, "***")
    return text.splitlines()[0] if text else text


def check_database(report: PreflightReport, engine: Bind) -> bool:
    """The database answers ``SELECT 1``."""
    url = engine.engine.url
    try:
        with connection(engine) as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        orig = getattr(exc, "orig", None) or exc
        report.add(
            "database",
            False,
            f"cannot connect to the database {safe_url(url)} "
            f"({type(orig).__name__}: {scrub(str(orig), url)})",
            f"check DATABASE_URL (or {report.option('db')}): host, port, database name, user and "
            "password, and that the server is running and accepts connections from this host",
        )
        return False
    report.add("database", True, f"connected to {safe_url(url)}")
    return True


def no_database_url(report: PreflightReport) -> None:
    """The failure when no database URL is set at all."""
    report.add(
        "database",
        False,
        "no database URL",
        f"set DATABASE_URL (or {report.option('db', 'postgresql://user@host:5432/dbname')})",
    )


def missing_tables(conn: sa.Connection, tables: Sequence[str]) -> list[str]:
    """The tables of ``tables`` the database does not have (the chain never creates them)."""
    inspector = sa.inspect(conn)
    return [t for t in tables if not inspector.has_table(t)]


def report_missing_table(report: PreflightReport, name: str, table: str, url: sa.URL) -> None:
    """One failure ``name`` for a table in scope the database does not have."""
    report.add(
        name,
        False,
        f"table {table!r} does not exist in {safe_url(url)}",
        "the chain does not create the application's tables, it migrates the ones the "
        f"application already has: check DATABASE_URL (or {report.option('db')})",
    )


def check_row_security(report: PreflightReport, engine: Bind, tables: Sequence[str]) -> set[str]:
    """Refuse the tables whose rows the role may not all see (PostgreSQL); returns them."""
    with connection(engine) as conn:
        if conn.dialect.name != "postgresql":
            return set()
        blockers = row_security_blockers(conn, tables)
    if not blockers:
        report.add("row security", True, "the role sees every row of the tables in scope")
        return set()
    report.add(
        "row security",
        False,
        "; ".join(blockers.values())
        + ": PostgreSQL would hide rows from the migration and from verify, which would leave "
        "them in the old scheme and still stamp the revision",
        ROW_SECURITY_FIX,
    )
    return set(blockers)
