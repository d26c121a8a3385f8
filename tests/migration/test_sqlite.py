"""The embedded default: the same revisions on SQLite (the demo's database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from context_encryption.catalog import load_catalog
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.seeding import assert_scheme


@pytest.fixture
def sqlite_migration(
    migration: Migration, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Migration:
    url = sa.make_url(f"sqlite:///{tmp_path / 'pos.sqlite'}")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    metadata.create_all(engine)
    monkeypatch.setenv("DATABASE_URL", str(url))
    migration.engine = engine
    migration.url = url
    migration.env["DATABASE_URL"] = str(url)
    return migration


def test_upgrade_and_downgrade_on_sqlite(sqlite_migration: Migration) -> None:
    m = sqlite_migration
    tables = load_catalog().tables
    data: dict[str, dict[Any, Any]] = {t: seed_table(m, t, 40) for t in tables}
    report = m.upgrade("head", batch_size=16, workers=4)
    assert report["outcome"] == "completed"
    assert m.current() == "0007_consent_records"
    for t in tables:
        assert_scheme(m.engine, m.vault, t, data[t], "new", m.hmac_secret)

    m.cli("downgrade", "-1")
    assert m.current() == "0006_sessions"
    assert_scheme(m.engine, m.vault, "consent_records", data["consent_records"], "old")

    m.downgrade("base")
    for t in tables:
        assert_scheme(m.engine, m.vault, t, data[t], "old", m.hmac_secret)
    assert m.current() is None
