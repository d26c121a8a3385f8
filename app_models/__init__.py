"""The point-of-sale application's encrypted tables, and the API the revisions import.

- :mod:`app_models.tables`: the seven tables (SQLAlchemy Core), which the application owns; the
  tests and the demo create them, the revisions never import them.
- :mod:`app_models.specs`: what a revision says about its table (its frozen snapshot, the
  encrypted columns and their HMAC companions, a direction).
- :mod:`app_models.migration`: what a revision's ``upgrade()`` and ``downgrade()`` call
  (:func:`~app_models.migration.run_revision`), which hands the table to the tool's engine
  (:mod:`context_encryption.engine`).

The tool itself (Transit, settings, preflight, verify, rewrap, the command) is the
:mod:`context_encryption` package.
"""
