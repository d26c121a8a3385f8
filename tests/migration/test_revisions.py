"""The seven table revisions, driven through Alembic as operators do.

Real PostgreSQL, real HTTP to OpenBao (or the Vault named by VAULT_ADDR), no mocks.
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic.script import ScriptDirectory

from context_encryption.catalog import load_catalog
from tests.support.migration_fixtures import Migration, seed_table, seed_tables
from tests.support.seeding import Plain, assert_scheme, snapshot

ROWS = 23  # not a multiple of the batch sizes used below
CATALOG = load_catalog()
TABLES = CATALOG.tables


def seed_all(m: Migration, n: int = ROWS) -> dict[str, dict[Any, Plain]]:
    return seed_tables(m, {}, default=n)


def assert_all(m: Migration, data: dict[str, dict[Any, Plain]], new_tables: set[str]) -> None:
    for table, expected in data.items():
        scheme = "new" if table in new_tables else "old"
        assert_scheme(m.engine, m.vault, table, expected, scheme, m.hmac_secret)


def table_report(report: dict[str, Any], table: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [t for t in report["tables"] if t["table"] == table]
    assert len(matches) == 1, f"{table} not exactly once in report"
    return matches[0]


def test_upgrade_head_migrates_every_table(migration: Migration) -> None:
    data = seed_all(migration)

    report = migration.upgrade("head", batch_size=7)

    assert migration.current() == "0007_consent_records"
    assert_all(migration, data, set(TABLES))
    assert report["outcome"] == "completed"
    for table in TABLES:
        t = table_report(report, table)
        assert t["rows_scanned"] == ROWS
        assert t["rows_failed"] == 0
        for col in CATALOG.spec(table).columns:
            counts = t["columns"][col.name]
            nulls = sum(1 for r in data[table].values() if r[col.name] is None)
            assert counts["null"] == nulls
            assert counts["migrated"] == ROWS - nulls
            assert counts["already_migrated"] == 0


def test_downgrade_one_then_base(migration: Migration) -> None:
    data = seed_all(migration)
    migration.upgrade("head")

    report = migration.downgrade("-1")
    assert migration.current() == "0006_sessions"
    assert [t["table"] for t in report["tables"]] == ["consent_records"]
    assert_all(migration, data, set(TABLES) - {"consent_records"})

    migration.downgrade("base")
    assert migration.current() is None
    assert_all(migration, data, set())


def test_staged_upgrade_migrates_exactly_the_tables_up_to_the_revision(
    migration: Migration,
) -> None:
    data = seed_all(migration)
    later = ["delivery_addresses", "notifications", "sessions", "consent_records"]
    untouched = snapshot(migration.engine, later)

    report = migration.upgrade("0003_guest_orders")

    assert migration.current() == "0003_guest_orders"
    assert [t["table"] for t in report["tables"]] == ["users", "invitations", "guest_orders"]
    assert_all(migration, data, {"users", "invitations", "guest_orders"})
    assert snapshot(migration.engine, later) == untouched

    migration.upgrade("head")
    assert_all(migration, data, set(TABLES))


def test_rerun_after_restamp_changes_nothing(migration: Migration) -> None:
    data = seed_all(migration)
    migration.upgrade("head")
    after_first = snapshot(migration.engine, TABLES)

    migration.stamp("base")
    report = migration.upgrade("head")

    assert snapshot(migration.engine, TABLES) == after_first
    assert_all(migration, data, set(TABLES))
    for table in TABLES:
        t = table_report(report, table)
        assert t["rows_written"] == 0
        for col in CATALOG.spec(table).columns:
            counts = t["columns"][col.name]
            nulls = sum(1 for r in data[table].values() if r[col.name] is None)
            assert counts["already_migrated"] == ROWS - nulls
            assert counts["migrated"] == 0


def test_downgrade_rerun_after_restamp_changes_nothing(migration: Migration) -> None:
    data = seed_all(migration, 9)
    migration.upgrade("head")
    migration.downgrade("base")
    after = snapshot(migration.engine, TABLES)

    migration.stamp("head")
    report = migration.downgrade("base")

    assert snapshot(migration.engine, TABLES) == after
    assert_all(migration, data, set())
    assert all(t["rows_written"] == 0 for t in report["tables"])


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
@pytest.mark.parametrize("workers", [1, 3])
def test_batch_size_and_workers_give_the_same_result(
    migration: Migration, batch_size: int, workers: int
) -> None:
    tables = ["users", "invitations"]
    data = {t: seed_table(migration, t, 31) for t in tables}

    report = migration.upgrade("0002_invitations", batch_size=batch_size, workers=workers)

    for t in tables:
        assert_scheme(migration.engine, migration.vault, t, data[t], "new", migration.hmac_secret)
        summary = table_report(report, t)
        assert summary["batches"] == -(-31 // batch_size)
        assert summary["rows_scanned"] == 31


def test_empty_tables_migrate_and_stamp(migration: Migration) -> None:
    report = migration.upgrade("head")
    assert migration.current() == "0007_consent_records"
    assert all(t["rows_scanned"] == 0 for t in report["tables"])
    migration.downgrade("base")
    assert migration.current() is None


def test_revision_ids_follow_the_design(migration: Migration) -> None:
    script = ScriptDirectory.from_config(migration.config())
    chain = [s.revision for s in reversed(list(script.walk_revisions()))]
    # DESIGN.md's list is checked against the catalog in tests/unit/test_catalog.py
    assert chain == list(CATALOG.revisions)
    assert script.get_revision("0001_users").down_revision is None
