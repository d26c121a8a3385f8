"""The ``alembic`` console script, run as an operator runs it, in a subprocess."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from context_encryption.alembic_runtime import RUN_LOCK_KEY
from context_encryption.catalog import load_catalog
from tests.support.leaks import assert_no_leak, secrets_of
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.seeding import assert_scheme, sample_rows, seed, snapshot

TABLES = load_catalog().tables


def test_operator_session_from_the_shell(migration: Migration) -> None:
    sizes = {"users": 1500, "invitations": 800, "consent_records": 700}
    data = {
        t: seed(
            migration.engine,
            migration.vault,
            t,
            sample_rows(t, sizes.get(t, 60)),
            migration.hmac_secret,
        )
        for t in TABLES
    }
    secrets = secrets_of(migration, data)

    up = migration.cli("upgrade", "head")
    assert_no_leak(up.stdout + up.stderr, secrets)
    assert "users (upgrade): 1500 rows scanned" in up.stderr
    assert "Running upgrade 0006_sessions -> 0007_consent_records" in up.stderr
    for t in TABLES:
        assert_scheme(migration.engine, migration.vault, t, data[t], "new", migration.hmac_secret)

    down = migration.cli("downgrade", "-1")
    assert_no_leak(down.stdout + down.stderr, secrets)
    assert migration.current() == "0006_sessions"
    assert_scheme(
        migration.engine, migration.vault, "consent_records", data["consent_records"], "old"
    )
    assert_scheme(
        migration.engine,
        migration.vault,
        "sessions",
        data["sessions"],
        "new",
        migration.hmac_secret,
    )

    migration.cli("downgrade", "base")
    assert migration.current() is None
    for t in TABLES:
        assert_scheme(migration.engine, migration.vault, t, data[t], "old", migration.hmac_secret)

    migration.cli("upgrade", "0002_invitations")
    assert migration.current() == "0002_invitations"
    for t in TABLES:
        scheme = "new" if t in ("users", "invitations") else "old"
        assert_scheme(migration.engine, migration.vault, t, data[t], scheme, migration.hmac_secret)


def test_offline_sql_mode_is_refused(migration: Migration) -> None:
    proc = migration.cli("upgrade", "head", "--sql", check=False)
    assert proc.returncode != 0
    assert "offline --sql mode is not supported" in proc.stderr


def test_unknown_x_option_stops_before_any_work(migration: Migration) -> None:
    data = {"users": seed_table(migration, "users", 5)}
    before = snapshot(migration.engine, ["users"])
    proc = migration.cli("-x", "dry-rum=true", "upgrade", "head", check=False)
    assert proc.returncode != 0
    assert "unknown -x option(s): dry-rum" in proc.stderr
    assert snapshot(migration.engine, ["users"]) == before
    assert migration.current() is None
    assert_scheme(migration.engine, migration.vault, "users", data["users"], "old")


def test_dry_run_writes_nothing_and_stamps_nothing(migration: Migration) -> None:
    for t in TABLES:
        seed_table(migration, t, 12)
    before = snapshot(migration.engine, TABLES)
    proc = migration.cli("-x", "dry-run=true", "upgrade", "head")
    assert "dry run" in proc.stderr
    assert snapshot(migration.engine, TABLES) == before
    assert migration.current() is None
    with migration.engine.connect() as conn:
        assert not sa.inspect(conn).has_table("context_encryption_checkpoint")


def test_alembic_current_is_read_only_and_prints_once(migration: Migration) -> None:
    migration.upgrade("0001_users")
    with migration.engine.connect() as other:  # a live run in progress elsewhere
        other.execute(sa.select(sa.func.pg_try_advisory_lock(RUN_LOCK_KEY)))
        other.commit()
        proc = migration.cli("current")
    assert proc.stdout.count("0001_users") == 1


def test_a_bad_report_path_stops_before_any_work(migration: Migration, tmp_path: Path) -> None:
    data = seed(migration.engine, migration.vault, "users", sample_rows("users", 5), "s")
    before = snapshot(migration.engine, ["users"])
    missing = tmp_path / "no-such-dir"
    for path, problem in (
        (tmp_path, "is a directory"),
        (missing / "run.json", f"the directory {str(missing)!r} does not exist"),
    ):
        proc = migration.cli("-x", f"report={path}", "upgrade", "head", check=False)
        assert proc.returncode != 0
        assert f"-x report={str(path)!r}" in proc.stderr and problem in proc.stderr
        assert "Traceback" not in proc.stderr
        assert "Running upgrade" not in proc.stderr
        assert migration.current() is None
        assert snapshot(migration.engine, ["users"]) == before
    assert not missing.exists()
    assert_scheme(migration.engine, migration.vault, "users", data, "old")
