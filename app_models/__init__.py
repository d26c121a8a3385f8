"""The point-of-sale application's encrypted tables and the shared helpers the revisions use.

- :mod:`app_models.tables`: the seven tables (SQLAlchemy Core) and the registry of their
  encrypted columns.
- :mod:`context_encryption.settings`: configuration from the environment and ``alembic -x``.
- :mod:`context_encryption.transit`: the only module that talks to Vault (through hvac).
- :mod:`context_encryption.reencrypt`: the re-encryption engine every revision calls.
- :mod:`context_encryption.errors`: the error family (names tables, columns and primary keys, never
  values).
"""
