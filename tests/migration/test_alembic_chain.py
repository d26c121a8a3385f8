"""pytest-alembic's built-in checks of the chain, on seeded tables.

Used: single head, upgrade from base to head, up/down consistency (every downgrade really runs).
Not used: ``test_model_definitions_match_ddl``. The chain does not own the schema (the
application does) and its revisions change data only, so "the models match the DDL the chain
produces" does not apply.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from pytest_alembic.config import Config as PytestAlembicConfig
from pytest_alembic.tests import (
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

from context_encryption.catalog import load_catalog
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.seeding import assert_scheme

__all__ = ["test_single_head_revision", "test_up_down_consistency", "test_upgrade"]


@pytest.fixture
def seeded(migration: Migration) -> dict[str, dict[Any, Any]]:
    return {t: seed_table(migration, t, 6) for t in load_catalog().tables}


@pytest.fixture
def alembic_config(migration: Migration, seeded: dict[str, Any]) -> PytestAlembicConfig:
    return PytestAlembicConfig(alembic_config=migration.config())


@pytest.fixture
def alembic_engine(migration: Migration) -> sa.Engine:
    return migration.engine


def test_up_down_up_keeps_every_plaintext(
    alembic_runner: Any, migration: Migration, seeded: dict[str, dict[Any, Any]]
) -> None:
    """pytest-alembic's up/down consistency goes up, down to base, then up again."""
    test_up_down_consistency(alembic_runner)
    for table, expected in seeded.items():
        assert_scheme(
            migration.engine, migration.vault, table, expected, "new", migration.hmac_secret
        )
    alembic_runner.migrate_down_to("base")
    for table, expected in seeded.items():
        assert_scheme(
            migration.engine, migration.vault, table, expected, "old", migration.hmac_secret
        )
