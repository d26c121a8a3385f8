"""Shared fixtures: real PostgreSQL, Vault or vaultdev, and the migration as operators run it."""

pytest_plugins = ["tests.db_fixtures", "tests.vault_fixtures", "tests.migration_fixtures"]
