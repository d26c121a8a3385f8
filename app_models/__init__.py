"""The point-of-sale application's encrypted tables and the shared helpers the revisions use.

- :mod:`app_models.tables`: the seven tables (SQLAlchemy Core) and the registry of their
  encrypted columns.
- :mod:`app_models.settings`: configuration from the environment and ``alembic -x``.
- :mod:`app_models.transit`: the only module that talks to Vault (through hvac).
- :mod:`app_models.reencrypt`: the re-encryption engine every revision calls.
- :mod:`app_models.errors`: the error family (names tables, columns and primary keys, never
  values).
"""
