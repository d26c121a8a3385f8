"""Operating it safely: dry run, table filter."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util import CommandError

from app_models.tables import metadata
from context_encryption.alembic_runtime import RUN_LOCK_KEY, current_heads, current_revision
from context_encryption.catalog import load_catalog
from tests.support.migration_fixtures import Migration, seed_table, seed_tables
from tests.support.seeding import assert_scheme, snapshot

TABLES = load_catalog().tables


def seed_all(m: Migration, n: int = 8) -> dict[str, dict[object, dict[str, str | None]]]:
    return seed_tables(m, {}, default=n)


def test_dry_run_reports_true_counts_and_changes_nothing(migration: Migration) -> None:
    seed_all(migration)
    before = snapshot(migration.engine, TABLES)
    report = migration.upgrade("head", dry_run="true")
    assert report["outcome"] == "dry-run"
    assert [t["table"] for t in report["tables"]] == list(TABLES)
    assert all(t["dry_run"] and t["rows_scanned"] == 8 for t in report["tables"])
    users = report["tables"][0]
    assert users["columns"]["email"]["migrated"] + users["columns"]["email"]["null"] == 8
    assert all(t["rows_written"] == 0 for t in report["tables"])
    assert snapshot(migration.engine, TABLES) == before
    assert migration.current() is None


def test_dry_run_fails_when_a_live_run_would(migration: Migration) -> None:
    seed_all(migration)
    inv = metadata.tables["invitations"]
    with migration.engine.begin() as conn:
        pk = conn.execute(sa.select(sa.func.max(inv.c.id))).scalar_one()
        conn.execute(sa.update(inv).where(inv.c.id == pk).values(token="plain token"))
    before = snapshot(migration.engine, TABLES)
    with pytest.raises(CommandError) as err:
        migration.upgrade("head", dry_run="true")
    message = str(err.value)
    assert "a live run would stop" in message
    assert f"invitations.token id={pk}" in message
    assert "plain token" not in message
    # every table was still previewed, and nothing changed
    assert len(migration.reports[-1]["tables"]) == len(TABLES)
    assert snapshot(migration.engine, TABLES) == before
    # with on-error=skip a live run would complete: the dry run says so with exit 0
    report = migration.upgrade("head", dry_run="true", on_error="skip")
    assert report["outcome"] == "dry-run"


def test_dry_run_previews_exactly_the_listed_tables(migration: Migration) -> None:
    seed_all(migration)
    report = migration.upgrade("head", dry_run="true", tables="invitations,sessions")
    assert [t["table"] for t in report["tables"]] == ["invitations", "sessions"]


def test_live_run_refuses_a_table_filter_it_cannot_honour(migration: Migration) -> None:
    data = seed_all(migration)
    before = snapshot(migration.engine, TABLES)
    with pytest.raises(CommandError) as err:
        migration.upgrade("head", tables="users,invitations")
    message = str(err.value)
    assert "leaves out guest_orders" in message
    assert "alembic upgrade 0002_invitations" in message
    assert snapshot(migration.engine, TABLES) == before
    assert migration.current() is None

    migration.upgrade("0002_invitations", tables="users,invitations")
    assert migration.current() == "0002_invitations"
    assert_scheme(
        migration.engine, migration.vault, "users", data["users"], "new", migration.hmac_secret
    )

    with pytest.raises(CommandError) as err:
        migration.downgrade("base", tables="users")
    assert "leaves out invitations" in str(err.value)
    assert "The next revision to downgrade is 0002_invitations" in str(err.value)
    assert migration.current() == "0002_invitations"


def test_table_filter_not_at_the_front_of_the_plan(migration: Migration) -> None:
    with pytest.raises(CommandError) as err:
        migration.upgrade("head", tables="sessions")
    assert "The next revision to upgrade is 0001_users (users)" in str(err.value)


def test_dry_run_leaves_the_database_byte_identical(migration: Migration) -> None:
    """The issue's own check: the same ``pg_dump`` before and after a dry run."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("pg_dump is not installed")
    seed_all(migration)
    migration.upgrade("0002_invitations")  # a version table and a mid-chain state to keep

    def dump() -> str:
        url = migration.url.set(drivername="postgresql").render_as_string(hide_password=False)
        out = subprocess.run(
            [pg_dump, "--no-owner", "--no-privileges", url],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        # recent pg_dump guards its output with a random \restrict key per run
        return "\n".join(
            line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
        )

    before = dump()
    report = migration.upgrade("head", dry_run="true")
    assert report["outcome"] == "dry-run"
    assert sum(t["rows_scanned"] for t in report["tables"]) == 8 * 5
    migration.downgrade("base", dry_run="true")
    assert dump() == before


def test_a_second_live_run_stops_before_any_work(migration: Migration) -> None:
    """Two live runs on one database would race: the second stops before touching anything."""
    data = seed_all(migration, 4)
    with migration.engine.connect() as other:
        assert other.execute(sa.select(sa.func.pg_try_advisory_lock(RUN_LOCK_KEY))).scalar()
        other.commit()
        with pytest.raises(CommandError) as err:
            migration.upgrade("head")
        assert "another context-encryption migration run holds" in str(err.value)
        assert migration.current() is None
    # the other run is gone (its session ended): the lock is free again
    migration.upgrade("0001_users")
    assert_scheme(
        migration.engine, migration.vault, "users", data["users"], "new", migration.hmac_secret
    )


def test_the_version_table_is_the_one_alembic_ini_names(migration: Migration) -> None:
    """alembic.ini's ``version_table`` is the one source of the name (env.py hard-coded it)."""
    data = seed_table(migration, "users", 3)
    cfg = migration.config()
    cfg.set_main_option("version_table", "alembic_version_elsewhere")
    command.upgrade(cfg, "0001_users")
    with migration.engine.connect() as conn:
        assert current_heads(conn, "alembic_version_elsewhere") == ("0001_users",)
        assert not sa.inspect(conn).has_table(load_catalog().version_table)
    assert_scheme(migration.engine, migration.vault, "users", data, "new", migration.hmac_secret)
    command.downgrade(cfg, "base")
    with migration.engine.connect() as conn:
        assert current_heads(conn, "alembic_version_elsewhere") == ()
    assert_scheme(migration.engine, migration.vault, "users", data, "old", migration.hmac_secret)


def test_reading_the_stamp_logs_nothing(
    migration: Migration, caplog: pytest.LogCaptureFixture
) -> None:
    """verify and rewrap read the stamp: no Alembic log line in their --verbose output."""
    migration.upgrade("0001_users")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alembic"), migration.engine.connect() as conn:
        assert current_revision(conn) == "0001_users"
        assert current_heads(conn) == ("0001_users",)
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
