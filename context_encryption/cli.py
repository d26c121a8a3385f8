"""``context-encryption``: operator commands beside the Alembic chain.

``context-encryption verify [--tables users,invitations] [--sample N] [--json]``
    Reads the database and Vault and reports, per table and column, how many values are in the
    old scheme, the new scheme, NULL, plaintext or unreadable, and whether HMAC companions match.
    Exit status: 0 when every value is in the scheme the current revision implies, 1 when not
    (or on plaintext, unreadable values, HMAC mismatches), 2 when it could not verify.

``context-encryption preflight [--direction upgrade|downgrade] [--tables ...] [--json]``
    The checks ``alembic upgrade head`` (or ``alembic downgrade base``) makes before the first
    row, on exactly the tables that command would touch from the current revision (read from
    ``alembic_version_encryption``); ``--tables`` narrows them further. When the command would
    touch nothing, it says so. Exit 0 or 1 (2: could not run).

``context-encryption rewrap [--tables ...] [--to-version latest|N] [--dry-run] [--report PATH]``
    Moves every new-scheme value of the applied tables (or ``--tables``) to one version of the
    new key (the latest, pinned at the start, or N) through Transit's rewrap, each value with
    its column's context: after a rotation of the new key, so equality lookups find every value
    again (:mod:`context_encryption.rewrap`). Exit 0 when every value is at that version, 1 when
    values
    were reported and left as they are (old scheme, plaintext, unreadable) or rows failed
    (``--on-error skip``), 2 when it stopped.

Settings come from the same environment variables as the migration (``DATABASE_URL``,
``VAULT_ADDR``, ``VAULT_TOKEN``, ...); each ``--name`` flag maps one to one onto the ``-x name``
of the migration (``--db``, ``--vault-addr``, ``--vault-key``, ``--new-vault-key``, ...), and
messages about them name the flag. Prefer the environment for ``VAULT_TOKEN`` and the HMAC
secret: command lines are visible to other users of the machine (a flag carrying one is
accepted with a warning). No value, plaintext, token or secret is ever printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from app_models.tables import TABLE_NAMES
from context_encryption import logsafety
from context_encryption.alembic_runtime import applied_tables, current_revision
from context_encryption.errors import ContextEncryptionError
from context_encryption.preflight import (
    PreflightReport,
    check_database,
    check_vault,
    collect_preflight,
)
from context_encryption.preflight.rewrap import rewrap_preflight
from context_encryption.rewrap import RewrapReport, rewrap_tables
from context_encryption.settings import FLAG_SPELLING, Settings, load_settings, option_help
from context_encryption.transit import RequestLimits, TokenKeeper, TransitClient
from context_encryption.verify import DEFAULT_MAX_IDS, VerifyReport, verify

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_ERROR: Final = 2

#: command-line flag -> -x name of the migration (values are validated by load_settings)
_SETTING_FLAGS: Final = (
    "db",
    "vault-addr",
    "vault-token",
    "vault-namespace",
    "vault-cacert",
    "transit-mount",
    "vault-key",
    "new-vault-key",
    "hmac-secret",
    "tables",
    "batch-size",
    "vault-batch-items",
)

log = logging.getLogger("context_encryption")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group(
        "settings (default: the environment variables of the migration)"
    )
    for flag in _SETTING_FLAGS:
        group.add_argument(
            f"--{flag}", dest=flag.replace("-", "_"), metavar="VALUE", help=option_help(flag)
        )
    common.add_argument("--json", action="store_true", help="print a JSON document")
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log progress to stderr (INFO level)"
    )

    parser = argparse.ArgumentParser(
        prog="context-encryption",
        description="Operator commands of the context-encryption migrations.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify",
        parents=[common],
        help="report which scheme every value is in, against the current revision",
        description="Exit 0 when every value is in the scheme the current revision implies, "
        "1 when not, 2 when it could not verify. --sample N checks the first N rows of each "
        "table by primary key (deterministic).",
    )
    v.add_argument("--sample", type=int, metavar="N", help="check only the first N rows per table")
    v.add_argument(
        "--max-ids",
        type=int,
        default=DEFAULT_MAX_IDS,
        metavar="N",
        help=f"failing primary keys listed per column (default {DEFAULT_MAX_IDS})",
    )
    r = sub.add_parser(
        "rewrap",
        parents=[common],
        help="move every new-scheme value to one version of the new key (after a rotation)",
        description="Rewrap every new-scheme value of the applied tables to one key version "
        "of the new key, with the migration's guarantees (checkpoint and resume, "
        "compare-and-swap, run lock). Exit 0: done; 1: values left as they are (listed); 2: "
        "stopped.",
    )
    r.add_argument(
        "--to-version",
        default="latest",
        metavar="latest|N",
        help="the key version to move every value to (default: the latest, pinned at the start)",
    )
    r.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
    r.add_argument("--report", metavar="PATH", help="write a JSON report of the run to PATH")
    r.add_argument("--workers", metavar="N", help=option_help("workers"))
    r.add_argument("--on-error", metavar="abort|skip", help=option_help("on-error"))
    p = sub.add_parser(
        "preflight",
        parents=[common],
        help="the checks a migration makes before its first row",
    )
    p.add_argument(
        "--direction",
        choices=("upgrade", "downgrade", "rewrap"),
        default="upgrade",
        help="check for `alembic upgrade head` (default) or `alembic downgrade base`, from the "
        "current revision, or for `context-encryption rewrap`",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    x = {
        flag: str(getattr(args, flag.replace("-", "_")))
        for flag in _SETTING_FLAGS
        if getattr(args, flag.replace("-", "_")) is not None
    }
    if getattr(args, "command", None) == "rewrap":
        x["dry-run"] = "true" if args.dry_run else "false"
        for flag in ("report", "workers", "on-error"):
            value = getattr(args, flag.replace("-", "_"))
            if value is not None:
                x[flag] = str(value)
    return load_settings(x, os.environ, spelling=FLAG_SPELLING)


def _transit(settings: Settings) -> TransitClient | None:
    if not settings.vault_addr or settings.vault_token is None:
        return None
    return TransitClient.from_settings(settings)


def _engine(settings: Settings) -> sa.Engine | None:
    if settings.database_url is None:
        return None
    return sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool, hide_parameters=True)


# --------------------------------------------------------------------------------------------
# output (the only place that prints)
# --------------------------------------------------------------------------------------------


def _emit(text: str) -> None:
    print(text)


def _error(text: str) -> None:
    print(f"context-encryption: {text}", file=sys.stderr)


def print_verify(report: VerifyReport, *, as_json: bool) -> None:
    if as_json:
        _emit(json.dumps(report.as_dict(), indent=2))
        return
    applied = applied_tables(report.revision)
    new_tables = [t.table for t in report.tables if t.table in applied]
    rev = report.revision or "base (nothing applied)"
    _emit(
        f"revision {rev}: new scheme expected for "
        f"{', '.join(new_tables) or 'no table'}; old scheme for the others"
    )
    _emit(
        f"keys: old {report.old_key!r}, new {report.new_key!r} on mount {report.transit_mount!r}; "
        + ("all rows" if report.sample is None else f"first {report.sample} rows per table")
        + ("" if report.hmac_checked else "; HMAC not checked (no ENCRYPTION_HMAC_SECRET)")
    )
    header = (
        f"{'table.column':<36} {'expect':<6} {'rows':>7} {'old':>7} {'new':>7} {'null':>6} "
        f"{'plain':>6} {'unread':>6}  {'hmac ok/bad/null':<18} result"
    )
    _emit(header)
    _emit("-" * len(header))
    problems: list[str] = []
    for t in report.tables:
        if not t.exists:
            _emit(f"{t.table:<36} {t.expected:<6} table does not exist")
            problems.append(f"{t.table}: the table does not exist")
            continue
        for c in t.columns:
            if c.companion is None:
                hm = "-"
            elif not report.hmac_checked:
                hm = "not checked"
            else:
                hm = f"{c.hmac_match}/{c.hmac_mismatch}/{c.hmac_null}"
            _emit(
                f"{t.table + '.' + c.column:<36} {t.expected:<6} {t.rows_checked:>7} "
                f"{c.old_scheme:>7} {c.new_scheme:>7} {c.null:>6} {c.plaintext:>6} "
                f"{c.unreadable:>6}  {hm:<18} {'ok' if c.problems == 0 else 'PROBLEM'}"
            )
            if c.problems:
                reasons = ", ".join(f"{n} {r}" for r, n in sorted(c.reasons.items()))
                problems.append(
                    f"{t.table}.{c.column}: {reasons}; ids: {', '.join(c.failing_ids)}"
                    + (" ..." if c.problems > len(c.failing_ids) else "")
                )
        split = [c for c in t.columns if len(c.versions) > 1]
        if t.columns and any(c.versions for c in t.columns):
            _emit(
                f"{'':<4}new key versions: "
                + "; ".join(
                    f"{c.column} " + ", ".join(f"v{v}: {n}" for v, n in sorted(c.versions.items()))
                    for c in t.columns
                    if c.versions
                )
                + (" (SPLIT: run `context-encryption rewrap`)" if split else "")
            )
        if t.in_progress:
            problems.append(
                f"{t.table}: a migration of this table was interrupted (checkpoint present); "
                "re-run the alembic command to finish it"
            )
    if problems:
        _emit("")
        _emit("problems:")
        for line in problems:
            _emit(f"  {line}")
    _emit("")
    if report.ok:
        _emit(f"OK: every value checked is in the scheme revision {rev} implies")
    else:
        _emit(f"NOT OK: {report.problems} problem value(s) for revision {rev}")


def print_preflight(
    report: PreflightReport, *, as_json: bool, scope: PreflightScope | None = None
) -> None:
    if as_json:
        doc = report.as_dict()
        if scope is not None:
            doc.update(scope.as_dict())
        _emit(json.dumps(doc, indent=2))
        return
    if scope is not None:
        _emit(scope.describe())
    for c in report.checks:
        _emit(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<14} {c.detail}")
    for w in report.warnings:
        _emit(f"warn {'':<14} {w}")
    if not report.ok:
        _emit("")
        _emit(report.message())


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreflightScope:
    """The tables a preflight checks: those the alembic command would touch from the current
    revision, narrowed by ``--tables``."""

    direction: str
    #: False when the revision could not be read (no database, or it does not answer): then
    #: every selected table is checked and the database check says what is wrong.
    known: bool
    revision: str | None  # None: base
    touched: tuple[str, ...]  # what `alembic upgrade head` / `downgrade base` would touch
    tables: tuple[str, ...]  # what is checked

    @property
    def command(self) -> str:
        return "alembic upgrade head" if self.direction == "upgrade" else "alembic downgrade base"

    @property
    def nothing_to_do(self) -> str | None:
        """Why there is nothing to check, or None."""
        if not self.known:
            return None
        rev = self.revision or "base"
        if not self.touched and self.direction == "downgrade":
            return (
                f"nothing to roll back: no revision is applied ({rev}); "
                f"`{self.command}` would touch no table"
            )
        if not self.touched:
            return (
                f"nothing to migrate: revision {rev} is the head, every table is in the new "
                f"scheme; `{self.command}` would touch no table"
            )
        if not self.tables:
            return (
                f"nothing to check: from revision {rev}, `{self.command}` would touch "
                f"{', '.join(self.touched)}, and --tables names none of them"
            )
        return None

    def describe(self) -> str:
        if not self.known:
            return (
                "current revision unknown (the database could not be read); checking "
                f"{', '.join(self.tables)}"
            )
        note = self.nothing_to_do
        if note is not None:
            return note
        verb = "migrate" if self.direction == "upgrade" else "roll back"
        text = (
            f"revision {self.revision or 'base'}: `{self.command}` would {verb} "
            f"{', '.join(self.touched)}"
        )
        if self.tables != self.touched:
            text += f"; checking {', '.join(self.tables)} (--tables)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision if self.known else None,
            "revision_known": self.known,
            "would_touch": list(self.touched) if self.known else None,
            "nothing_to_do": self.nothing_to_do,
        }


def preflight_scope(settings: Settings, direction: str, engine: sa.Engine | None) -> PreflightScope:
    """What ``alembic upgrade head`` (or ``downgrade base``) would touch from the current
    revision, read from ``alembic_version_encryption``, narrowed by ``--tables``."""
    selected = settings.tables or TABLE_NAMES
    try:
        if engine is None:
            raise LookupError
        with engine.connect() as conn:
            revision = current_revision(conn)
    except (LookupError, sa.exc.SQLAlchemyError):
        return PreflightScope(direction, False, None, TABLE_NAMES, tuple(selected))
    applied = applied_tables(revision)
    touched = tuple(t for t in TABLE_NAMES if (t in applied) == (direction == "downgrade"))
    if direction == "downgrade":
        touched = touched[::-1]  # the order alembic rolls them back in
    return PreflightScope(
        direction, True, revision, touched, tuple(t for t in touched if t in selected)
    )


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.sample is not None and args.sample < 1:
        _error("--sample must be at least 1")
        return EXIT_ERROR
    engine = _engine(settings)
    transit = _transit(settings)
    try:
        # the quick checks first, so an unreachable database or Vault gets a clear message
        scope = settings.tables or TABLE_NAMES
        pre = PreflightReport("upgrade", tuple(scope), spelling=FLAG_SPELLING)
        if engine is None:
            pre.add("database", False, "no database URL", "set DATABASE_URL (or --db ...)")
        else:
            check_database(pre, engine)
        if transit is None or not settings.vault_addr:
            pre.add(
                "vault",
                False,
                "no Vault address or token",
                "set VAULT_ADDR and VAULT_TOKEN (or --vault-addr ...)",
            )
        else:
            check_vault(pre, transit, settings.vault_addr)
        if not pre.ok or engine is None or transit is None:
            _error(pre.message().replace("preflight failed", "cannot verify", 1))
            return EXIT_ERROR
        report = verify(
            settings,
            engine=engine,
            transit=transit,
            sample=args.sample,
            batch_size=settings.batch_size,
            max_ids=max(0, args.max_ids),
        )
    finally:
        if transit is not None:
            transit.close()
        if engine is not None:
            engine.dispose()
    print_verify(report, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _cmd_preflight(args: argparse.Namespace, settings: Settings) -> int:
    engine = _engine(settings)
    if args.direction == "rewrap":
        if engine is None:
            _error("no database URL: set DATABASE_URL (or --db ...)")
            return EXIT_ERROR
        try:
            pre = rewrap_preflight(
                settings,
                engine=engine,
                transit_factory=_rewrap_factory(settings),
                spelling=FLAG_SPELLING,
            )
        finally:
            engine.dispose()
        print_preflight(pre, as_json=args.json)
        return EXIT_OK if pre.ok else EXIT_PROBLEMS
    transit: TransitClient | None = None
    try:
        scope = preflight_scope(settings, args.direction, engine)
        if scope.nothing_to_do is not None and engine is not None:
            # the alembic command would run no revision, hence no preflight either
            report = PreflightReport(args.direction, (), spelling=FLAG_SPELLING)
            check_database(report, engine)
        else:
            transit = _transit(settings)
            report = collect_preflight(
                settings,
                direction=args.direction,
                tables=scope.tables,
                transit=transit,
                engine=engine,
                spelling=FLAG_SPELLING,
            )
    finally:
        if transit is not None:
            transit.close()
        if engine is not None:
            engine.dispose()
    print_preflight(report, as_json=args.json, scope=scope)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _cmd_rewrap(args: argparse.Namespace, settings: Settings) -> int:
    text = str(args.to_version).strip().lower()
    if text == "latest":
        to_version = None
    elif text.isdigit() and int(text) >= 1:
        to_version = int(text)
    else:
        _error(f"--to-version {args.to_version!r}: give 'latest' or a key version (1, 2, ...)")
        return EXIT_ERROR
    engine = _engine(settings)
    if engine is None:
        _error("no database URL: set DATABASE_URL (or --db ...)")
        return EXIT_ERROR
    report = RewrapReport(settings)
    try:
        pre = rewrap_preflight(
            settings,
            engine=engine,
            transit_factory=_rewrap_factory(settings),
            spelling=FLAG_SPELLING,
        )
        if not pre.ok:
            report.outcome, report.error = "failed", pre.message()
            _error(pre.message())
            return EXIT_ERROR
        rewrap_tables(
            settings,
            engine=engine,
            transit_factory=_rewrap_factory(settings),
            to_version=to_version,
            report=report,
        )
    except ContextEncryptionError as exc:
        report.outcome, report.error = "failed", str(exc)
        _error(str(exc))
        return EXIT_ERROR
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        report.outcome = "failed"
        report.error = f"database error ({type(orig).__name__})"
        _error(f"{report.error}; committed batches stay, and re-running resumes")
        return EXIT_ERROR
    except KeyboardInterrupt:
        report.outcome, report.error = "interrupted", "KeyboardInterrupt"
        _error("interrupted: committed batches stay; running the same command again resumes")
        return EXIT_ERROR
    finally:
        engine.dispose()
        if settings.report:
            report.write(settings.report)
    print_rewrap(report, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _rewrap_factory(settings: Settings) -> Any:
    keeper = TokenKeeper()  # one per run: every worker's client renews the same token
    limits = RequestLimits(settings.vault_batch_items)  # one per run: a refusal shrinks all

    def make() -> TransitClient:
        return TransitClient.from_settings(settings, keeper=keeper, limits=limits)

    return make


def print_rewrap(report: RewrapReport, *, as_json: bool) -> None:
    if as_json:
        _emit(json.dumps(report.as_dict(), indent=2))
        return
    dry = " (dry run: nothing written)" if report.settings.dry_run else ""
    _emit(
        f"rewrap of key {report.settings.new_key!r} to version {report.key_version} "
        f"(latest {report.latest_version}, min_decryption_version "
        f"{report.min_decryption_version}){dry}"
    )
    if not report.tables:
        _emit(f"no table to rewrap: revision {report.revision or 'base'} applies none")
    for t in report.tables:
        for line in t.lines():
            _emit(line)
    left = [
        f"  {t.summary.table}.{col} id={pk}: {kind.replace('_', ' ')}: {reason}"
        for t in report.tables
        for (col, pk), (kind, reason) in sorted(t.notes.items())
    ]
    if left:
        _emit("")
        _emit(f"left as they are ({len(left)} value(s), not in the new scheme):")
        for line in left[:50]:
            _emit(line)
        if len(left) > 50:
            _emit(f"  ... and {len(left) - 50} more (--report PATH lists them all)")
    failed = [
        f"  {t.summary.table}.{f['column']} id={f['id']}: {f['reason']}"
        for t in report.tables
        for f in t.summary.failures
    ]
    if failed:
        _emit("")
        _emit(f"failed ({len(failed)}; re-run to handle them again):")
        for line in failed[:50]:
            _emit(line)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logsafety.install()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = _settings(args)
        commands: dict[str, Any] = {
            "verify": _cmd_verify,
            "preflight": _cmd_preflight,
            "rewrap": _cmd_rewrap,
        }
        return int(commands[args.command](args, settings))
    except ContextEncryptionError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        _error(f"database error ({type(orig).__name__}); nothing was changed")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
