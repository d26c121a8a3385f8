"""Shared fixtures: real PostgreSQL, a real Vault (OpenBao), the migration run as operators do."""

pytest_plugins = [
    "tests.support.db_fixtures",
    "tests.support.vault_fixtures",
    "tests.support.migration_fixtures",
]
