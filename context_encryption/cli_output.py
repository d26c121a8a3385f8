"""What ``context-encryption`` prints: the reports of verify, preflight and rewrap, and errors.

The only module of the command that prints. Each report is either its JSON document
(``as_dict()``, indented) or lines of text made by a pure function (:func:`verify_lines`,
:func:`preflight_lines`, :func:`rewrap_lines`) that the unit tests read without any server.
Reports hold counts, key names and primary keys, never a value, a ciphertext or a secret, and
neither does anything printed here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Final

from context_encryption.preflight import PreflightReport
from context_encryption.preflight_scope import PreflightScope
from context_encryption.rewrap import RewrapReport
from context_encryption.verify import ColumnResult, TableResult, VerifyReport

#: Values left as they are, and failures, listed on the terminal (the JSON report has them all).
MAX_LISTED: Final = 50


def emit(text: str) -> None:
    print(text)


def error(text: str) -> None:
    print(f"context-encryption: {text}", file=sys.stderr)


def json_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


def show(
    *, as_json: bool, doc: Callable[[], dict[str, Any]], lines: Callable[[], list[str]]
) -> None:
    """Print a report: its JSON document (``doc()``), or its lines of text (``lines()``)."""
    if as_json:
        emit(json_text(doc()))
        return
    for line in lines():
        emit(line)


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------

VERIFY_HEADER: Final = (
    f"{'table.column':<36} {'expect':<6} {'rows':>7} {'old':>7} {'new':>7} {'null':>6} "
    f"{'plain':>6} {'unread':>6}  {'hmac ok/bad/null':<18} result"
)


def print_verify(report: VerifyReport, *, as_json: bool) -> None:
    show(as_json=as_json, doc=report.as_dict, lines=lambda: verify_lines(report))


def verify_lines(report: VerifyReport) -> list[str]:
    """The text report: what is expected, a line per column, the problems, the verdict."""
    new_tables = [t.table for t in report.tables if t.applied]
    rev = report.revision or "base (nothing applied)"
    out = [
        f"revision {rev}: new scheme expected for "
        f"{', '.join(new_tables) or 'no table'}; old scheme for the others",
        f"keys: old {report.old_key!r}, new {report.new_key!r} on mount {report.transit_mount!r}; "
        + ("all rows" if report.sample is None else f"first {report.sample} rows per table")
        + ("" if report.hmac_checked else "; HMAC not checked (no ENCRYPTION_HMAC_SECRET)"),
        VERIFY_HEADER,
        "-" * len(VERIFY_HEADER),
    ]
    for t in report.tables:
        out += _table_lines(t, report.hmac_checked)
    problems = [line for t in report.tables for line in _problem_lines(t)]
    if problems:
        out += ["", "problems:", *(f"  {line}" for line in problems)]
    out.append("")
    if report.ok:
        out.append(f"OK: every value checked is in the scheme revision {rev} implies")
    else:
        out.append(f"NOT OK: {report.problems} problem value(s) for revision {rev}")
    return out


def _table_lines(t: TableResult, hmac_checked: bool) -> list[str]:
    if not t.exists:
        return [f"{t.table:<36} {t.expected:<6} table does not exist"]
    out = [_column_line(t, c, hmac_checked) for c in t.columns]
    if any(c.versions for c in t.columns):
        split = any(len(c.versions) > 1 for c in t.columns)
        out.append(
            f"{'':<4}new key versions: "
            + "; ".join(f"{c.column} {_versions(c)}" for c in t.columns if c.versions)
            + (" (SPLIT: run `context-encryption rewrap`)" if split else "")
        )
    return out


def _versions(c: ColumnResult) -> str:
    return ", ".join(f"v{v}: {n}" for v, n in sorted(c.versions.items()))


def _column_line(t: TableResult, c: ColumnResult, hmac_checked: bool) -> str:
    if c.companion is None:
        hm = "-"
    elif not hmac_checked:
        hm = "not checked"
    else:
        hm = f"{c.hmac_match}/{c.hmac_mismatch}/{c.hmac_null}"
    return (
        f"{t.table + '.' + c.column:<36} {t.expected:<6} {t.rows_checked:>7} "
        f"{c.old_scheme:>7} {c.new_scheme:>7} {c.null:>6} {c.plaintext:>6} "
        f"{c.unreadable:>6}  {hm:<18} {'ok' if c.problems == 0 else 'PROBLEM'}"
    )


def _problem_lines(t: TableResult) -> list[str]:
    if not t.exists:
        return [f"{t.table}: the table does not exist"]
    out = []
    for c in t.columns:
        if c.problems:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(c.reasons.items()))
            out.append(
                f"{t.table}.{c.column}: {reasons}; ids: {', '.join(c.failing_ids)}"
                + (" ..." if c.problems > len(c.failing_ids) else "")
            )
    if t.in_progress:
        out.append(
            f"{t.table}: a migration of this table was interrupted (checkpoint present); "
            "re-run the alembic command to finish it"
        )
    return out


# --------------------------------------------------------------------------------------------
# preflight
# --------------------------------------------------------------------------------------------


def print_preflight(
    report: PreflightReport, *, as_json: bool, scope: PreflightScope | None = None
) -> None:
    def doc() -> dict[str, Any]:
        return {**report.as_dict(), **(scope.as_dict() if scope is not None else {})}

    show(as_json=as_json, doc=doc, lines=lambda: preflight_lines(report, scope))


def preflight_lines(report: PreflightReport, scope: PreflightScope | None = None) -> list[str]:
    """The text report: the scope, a line per check and per warning, the failures' fixes."""
    out = [scope.describe()] if scope is not None else []
    out += [f"{'ok  ' if c.ok else 'FAIL'} {c.name:<14} {c.detail}" for c in report.checks]
    out += [f"warn {'':<14} {w}" for w in report.warnings]
    if not report.ok:
        out += ["", report.message()]
    return out


# --------------------------------------------------------------------------------------------
# rewrap
# --------------------------------------------------------------------------------------------


def print_rewrap(report: RewrapReport, *, as_json: bool) -> None:
    show(as_json=as_json, doc=report.as_dict, lines=lambda: rewrap_lines(report))


def rewrap_lines(report: RewrapReport) -> list[str]:
    """The text report: the key and version, a table's lines, the values left, the failures."""
    dry = " (dry run: nothing written)" if report.settings.dry_run else ""
    out = [
        f"rewrap of key {report.settings.new_key!r} to version {report.key_version} "
        f"(latest {report.latest_version}, min_decryption_version "
        f"{report.min_decryption_version}){dry}"
    ]
    if not report.tables:
        out.append(f"no table to rewrap: revision {report.revision or 'base'} applies none")
    for t in report.tables:
        out += t.lines()
    left = [
        f"  {t.summary.table}.{col} id={pk}: {kind.replace('_', ' ')}: {reason}"
        for t in report.tables
        for (col, pk), (kind, reason) in sorted(t.notes.items())
    ]
    if left:
        out += ["", f"left as they are ({len(left)} value(s), not in the new scheme):"]
        out += left[:MAX_LISTED]
        if len(left) > MAX_LISTED:
            out.append(f"  ... and {len(left) - MAX_LISTED} more (--report PATH lists them all)")
    failed = [
        f"  {t.summary.table}.{f['column']} id={f['id']}: {f['reason']}"
        for t in report.tables
        for f in t.summary.failures
    ]
    if failed:
        out += ["", f"failed ({len(failed)}; re-run to handle them again):", *failed[:MAX_LISTED]]
    return out
