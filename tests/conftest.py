"""Shared fixtures: real PostgreSQL, a real Vault (OpenBao), the migration run as operators do."""

pytest_plugins = ["tests.db_fixtures", "tests.vault_fixtures", "tests.migration_fixtures"]
