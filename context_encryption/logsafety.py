"""Keep values out of logs, whatever level an operator turns on.

SQLAlchemy's engine logger writes every result row at DEBUG (``Row (...)``) and, unless the
engine hides them, statement parameters at INFO. A column that holds plaintext, or a
parameter array of ciphertexts, must not reach a log. :func:`install` adds a filter to
SQLAlchemy's engine loggers that drops row records and masks parameters; it is idempotent.
"""

from __future__ import annotations

import logging
from typing import Final

ENGINE_LOGGERS: Final = ("sqlalchemy.engine.Engine", "sqlalchemy.engine.base.Engine")
_HIDDEN: Final = "[parameters hidden by context-encryption]"


class HideValues(logging.Filter):
    """Drop ``Row``/``Col`` records; replace statement parameters with a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith(("Row ", "Col ")):
            return False
        if msg.startswith("[") and isinstance(record.args, tuple) and len(record.args) >= 2:
            record.args = (record.args[0], _HIDDEN, *record.args[2:])
        return True


_FILTER: Final = HideValues()


def install() -> None:
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
