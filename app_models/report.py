"""The run report: per-table summaries, written as JSON with ``-x report=PATH``.

Holds counts, key names and versions, settings without secrets, primary keys of failed rows and
timings. Never a value, a plaintext, a token, an HMAC secret or a database password.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from app_models.reencrypt import TableSummary
from app_models.settings import REPORT_TEMP_PREFIX, Settings

log = logging.getLogger("context_encryption")


@dataclass
class RunReport:
    settings: Settings
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    tables: list[TableSummary] = field(default_factory=list)
    outcome: str = "running"
    error: str | None = None

    def add(self, summary: TableSummary) -> None:
        self.tables.append(summary)

    def would_fail(self) -> str | None:
        """For a dry run: why a live run with the same settings would stop, or None."""
        if self.settings.on_error != "abort":
            return None
        failing = [t for t in self.tables if t.rows_failed]
        if not failing:
            return None
        lines = [
            f"dry run: a live run would stop (on-error=abort); {len(failing)} table(s) have "
            "rows that cannot be migrated:"
        ]
        for t in failing:
            lines.append(f"  {t.table}: {t.rows_failed} row(s)")
            lines.extend(
                f"    {t.table}.{f['column']} id={f['id']}: {f['reason']}" for f in t.failures[:10]
            )
            if len(t.failures) > 10:
                lines.append(f"    ... and {len(t.failures) - 10} more (see -x report=PATH)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": "context-encryption-migrations",
            "started_at": self.started_at.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "outcome": self.outcome,
            "error": self.error,
            "dry_run": self.settings.dry_run,
            "keys": {"old": self.settings.old_key, "new": self.settings.new_key},
            "settings": self.settings.public_dict(),
            "tables": [t.as_dict() for t in self.tables],
        }

    def write(self, path: str) -> bool:
        """Write the report atomically; never raise. Returns whether it was written.

        The JSON goes to a temporary file in the report's own directory, is flushed to disk and
        then renamed over ``path``, so a reader never sees half a report and a failed write
        leaves any earlier report as it was. The directory is never created: the settings
        checked before the run that it exists and takes a new file. A write that fails anyway
        (the directory removed meanwhile, a full disk) is logged as an error and does not turn
        the run's own outcome into a traceback.
        """
        directory = os.path.dirname(os.path.abspath(path))
        tmp: str | None = None
        try:
            text = json.dumps(self.as_dict(), indent=2, sort_keys=False) + "\n"
            fd, tmp = tempfile.mkstemp(prefix=REPORT_TEMP_PREFIX, suffix=".json", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        except (OSError, TypeError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            log.error(
                "the report could not be written to %s (%s); the run itself %s",
                path,
                reason,
                _OUTCOME_WORDS.get(self.outcome, f"ended as {self.outcome!r}"),
            )
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        log.info("report written to %s", path)
        return True


_OUTCOME_WORDS = {
    "completed": "completed",
    "dry-run": "was a dry run that wrote nothing",
    "running": "had not finished",
}
