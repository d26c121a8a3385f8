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

from context_encryption.engine import Outcome, TableSummary
from context_encryption.settings import REPORT_TEMP_PREFIX, Settings

log = logging.getLogger("context_encryption")

#: The outcome of a live run that finished and stamped, but skipped rows (on-error=skip or
#: plaintext=skip). Its exit status is 0, like any finished run: the rows are listed, and
#: ``context-encryption verify`` (exit 1) is the gate a pipeline checks.
COMPLETED_WITH_SKIPPED_ROWS = "completed with skipped rows"


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

    def left_behind(self) -> dict[str, dict[str, int]]:
        """What each table left in its old state: rows that failed and were skipped
        (``on-error=skip``) and plaintext values left as they were (``plaintext=skip``)."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tables:
            plaintext = t.total(Outcome.PLAINTEXT_SKIPPED)
            if t.rows_failed or plaintext:
                out[t.table] = {"failed_rows": t.rows_failed, "plaintext_values": plaintext}
        return out

    def left_behind_message(self) -> str | None:
        """The last lines of a run that left rows behind: how many, where, what next."""
        left = self.left_behind()
        if not left:
            return None
        where = (
            f"the failed rows are listed by primary key in the report {self.settings.report}"
            if self.settings.report
            else "the failed rows are listed by primary key in the log above (-x report=PATH "
            "keeps them in a file)"
        )
        parts = []
        for table, n in left.items():
            what = []
            if n["failed_rows"]:
                what.append(f"{n['failed_rows']} failed row(s) skipped")
            if n["plaintext_values"]:
                what.append(f"{n['plaintext_values']} plaintext value(s) left as they were")
            parts.append(f"{table}: {', '.join(what)}")
        return (
            f"LEFT BEHIND: {'; '.join(parts)}. These values are not in the scheme their "
            f"stamped revision implies; {where}. `context-encryption verify` exits 1 until they "
            "are repaired and migrated (README runbook, step 9)."
        )

    def as_dict(self) -> dict[str, Any]:
        left = self.left_behind()
        return {
            "tool": "context-encryption-migrations",
            "started_at": self.started_at.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "outcome": self.outcome,
            "error": self.error,
            "rows_left_behind": sum(n["failed_rows"] for n in left.values()),
            "left_behind": left,
            "dry_run": self.settings.dry_run,
            "keys": {"old": self.settings.old_key, "new": self.settings.new_key},
            "settings": self.settings.public_dict(),
            "tables": [t.as_dict() for t in self.tables],
        }

    def write(self, path: str) -> bool:
        """Write the report atomically (:func:`write_json_atomically`); never raise.

        A write that fails anyway (the directory removed meanwhile, a full disk) is logged as
        an error and does not turn the run's own outcome into a traceback.
        """
        reason = write_json_atomically(path, self.as_dict())
        if reason is not None:
            log.error(
                "the report could not be written to %s (%s); the run itself %s",
                path,
                reason,
                _OUTCOME_WORDS.get(self.outcome, f"ended as {self.outcome!r}"),
            )
            return False
        log.info("report written to %s", path)
        return True


def write_json_atomically(path: str, doc: dict[str, Any]) -> str | None:
    """Write ``doc`` as JSON to ``path``; the reason it could not be written, else None.

    The JSON goes to a temporary file in the report's own directory, is flushed to disk and
    then renamed over ``path``, so a reader never sees half a report and a failed write leaves
    any earlier report as it was. The directory is never created: the settings checked before
    the run that it exists and takes a new file. Never raises for an I/O problem.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp: str | None = None
    try:
        text = json.dumps(doc, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=REPORT_TEMP_PREFIX, suffix=".json", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, TypeError, ValueError) as exc:
        return getattr(exc, "strerror", None) or type(exc).__name__
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return None


_OUTCOME_WORDS = {
    "completed": "completed",
    COMPLETED_WITH_SKIPPED_ROWS: "completed, with rows left behind",
    "dry-run": "was a dry run that wrote nothing",
    "running": "had not finished",
}
