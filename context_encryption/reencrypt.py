"""Retiring: the engine is :mod:`context_encryption.engine` now.

Only what ``app_models/migration.py`` still imports from here is left (:func:`migrate_table`,
:class:`TableSummary`), until its import lines name :mod:`context_encryption.engine`; delete
this module then. Nothing else may import it.
"""

from __future__ import annotations

from context_encryption.engine import TableSummary, migrate_table

__all__ = ["TableSummary", "migrate_table"]
