"""PostgreSQL for the tests: a real server, a fresh database per test.

Where the server comes from, in order:
1. ``DATABASE_URL`` when set (its database is only used to create and drop test databases);
2. ``postgresql://postgres@127.0.0.1:5432/postgres`` when it answers;
3. a throwaway server started by pytest-postgresql from the local PostgreSQL binaries.

With ``CI=true`` and no server to be had the session fails loudly; it never skips silently.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from pytest_postgresql import factories

from app_models.tables import metadata
from context_encryption.settings import parse_database_url

#: The machine's PostgreSQL; TEST_PG_LOCAL_URL overrides it (e.g. a closed port, to exercise
#: the throwaway-server fallback).
LOCAL_URL = os.environ.get("TEST_PG_LOCAL_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _answers(url: sa.URL) -> bool:
    try:
        with psycopg.connect(_libpq(url), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _libpq(url: sa.URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_ctl() -> str | None:
    found = shutil.which("pg_ctl")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest) -> sa.URL:
    """A URL on which the tests may create and drop databases."""
    env = os.environ.get("DATABASE_URL")
    if env:
        url = parse_database_url(env)
        if not _answers(url):
            pytest.fail("DATABASE_URL is set but the server does not answer")
        return url
    local = parse_database_url(LOCAL_URL)
    if _answers(local):
        return local
    pg_ctl = _pg_ctl()
    if pg_ctl is None or os.geteuid() == 0:
        reason = "no PostgreSQL: DATABASE_URL unset, 127.0.0.1:5432 does not answer, and " + (
            "no local binaries" if pg_ctl is None else "initdb refuses to run as root"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    # only now is the throwaway server started (pytest-postgresql, from the local binaries)
    proc = request.getfixturevalue("_pg_fallback_proc")
    return sa.URL.create(
        "postgresql+psycopg",
        username=proc.user,
        host=proc.host,
        port=proc.port,
        database="postgres",
    )


#: The fallback server; a session fixture that starts only when pg_admin_url asks for it.
_pg_fallback_proc = factories.postgresql_proc(executable=_pg_ctl() or "pg_ctl", port=None)


def create_database(admin: sa.URL, prefix: str = "cem_test") -> sa.URL:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin.set(database=name)


def drop_database(admin: sa.URL, url: sa.URL) -> None:
    assert url.database is not None
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.database))
        )


@pytest.fixture
def database_url(pg_admin_url: sa.URL) -> Iterator[sa.URL]:
    """A fresh, empty database for one test, dropped afterwards."""
    url = create_database(pg_admin_url)
    try:
        yield url
    finally:
        drop_database(pg_admin_url, url)


@pytest.fixture
def db_engine(database_url: sa.URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def app_db(db_engine: sa.Engine) -> sa.Engine:
    """The fresh database with the application's seven tables."""
    metadata.create_all(db_engine)
    return db_engine
