"""``context-encryption``: operator commands beside the Alembic chain.

``context-encryption verify [--tables users,invitations] [--sample N] [--json]``
    Reads the database and Vault and reports, per table and column, how many values are in the
    old scheme, the new scheme, NULL, plaintext or unreadable, and whether HMAC companions match.
    Exit status: 0 when every value is in the scheme the current revision implies, 1 when not
    (or on plaintext, unreadable values, HMAC mismatches), 2 when it could not verify.

``context-encryption preflight [--direction upgrade|downgrade|rewrap] [--tables ...] [--json]``
    The checks ``alembic upgrade head`` (or ``alembic downgrade base``) makes before the first
    row, on exactly the tables that command would touch from the current revision (read from
    ``alembic_version_encryption``); ``--tables`` narrows them further. When the command would
    touch nothing, it says so. Exit 0 or 1 (2: could not run).

``context-encryption rewrap [--tables ...] [--to-version latest|N] [--dry-run] [--report PATH]``
    Moves every new-scheme value of the applied tables (or ``--tables``) to one version of the
    new key (the latest, pinned at the start, or N) through Transit's rewrap, each value with
    its column's context: after a rotation of the new key, so equality lookups find every value
    again (:mod:`context_encryption.rewrap`). Exit 0 when every value is at that version, 1 when
    values were reported and left as they are (old scheme, plaintext, unreadable) or rows failed
    (``--on-error skip``), 2 when it stopped.

Settings come from the same environment variables as the migration (``DATABASE_URL``,
``VAULT_ADDR``, ``VAULT_TOKEN``, ...); each ``--name`` flag maps one to one onto the ``-x name``
of the migration (``--db``, ``--vault-addr``, ``--vault-key``, ``--new-vault-key``, ...), and
messages about them name the flag. Prefer the environment for ``VAULT_TOKEN`` and the HMAC
secret: command lines are visible to other users of the machine (a flag carrying one is
accepted with a warning). No value, plaintext, token or secret is ever printed.

This module parses the arguments and runs the command; :mod:`context_encryption.cli_output`
prints the reports and errors, :mod:`context_encryption.preflight_scope` works out the tables a
preflight checks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import sqlalchemy as sa

from context_encryption import logsafety
from context_encryption.catalog import load_catalog
from context_encryption.cli_output import error, print_preflight, print_rewrap, print_verify
from context_encryption.errors import ConfigurationError, ContextEncryptionError
from context_encryption.preflight import (
    PreflightReport,
    check_database,
    check_vault,
    collect_preflight,
)
from context_encryption.preflight.rewrap import rewrap_preflight
from context_encryption.preflight_scope import preflight_scope
from context_encryption.rewrap import RewrapReport, rewrap_tables
from context_encryption.settings import FLAG_SPELLING, Settings, load_settings, option_help
from context_encryption.throttle_config import THROTTLE_OPTIONS, throttle_help
from context_encryption.transit import RequestLimits, TokenKeeper, TransitClient
from context_encryption.verify import DEFAULT_MAX_IDS, verify

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_ERROR: Final = 2

NO_DATABASE: Final = "no database URL: set DATABASE_URL (or --db ...)"

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
    held = r.add_argument_group("holding on the database's health (as alembic's -x options)")
    for option in THROTTLE_OPTIONS:
        held.add_argument(
            f"--{option.name}",
            dest=option.name.replace("-", "_"),
            metavar="VALUE",
            help=throttle_help(option.name),
        )
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
        for flag in ("report", "workers", "on-error", *(o.name for o in THROTTLE_OPTIONS)):
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
# commands
# --------------------------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.sample is not None and args.sample < 1:
        error("--sample must be at least 1")
        return EXIT_ERROR
    engine = _engine(settings)
    transit = _transit(settings)
    try:
        # the quick checks first, so an unreachable database or Vault gets a clear message
        scope = settings.tables or load_catalog().tables
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
            error(pre.message().replace("preflight failed", "cannot verify", 1))
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
            error(NO_DATABASE)
            return EXIT_ERROR
        try:
            pre = _rewrap_preflight(settings, engine)
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


def _to_version(value: str) -> int | None:
    """``--to-version``: None for ``latest``, else a key version (1, 2, ...)."""
    text = str(value).strip().lower()
    if text == "latest":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigurationError(f"--to-version {value!r}: give 'latest' or a key version (1, 2, ...)")


def _cmd_rewrap(args: argparse.Namespace, settings: Settings) -> int:
    to_version = _to_version(args.to_version)
    engine = _engine(settings)
    if engine is None:
        raise ConfigurationError(NO_DATABASE)
    report = RewrapReport(settings)
    try:
        pre = _rewrap_preflight(settings, engine)
        if not pre.ok:
            report.outcome, report.error = "failed", pre.message()
            error(pre.message())
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
        error(str(exc))
        return EXIT_ERROR
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        report.outcome = "failed"
        report.error = f"database error ({type(orig).__name__})"
        error(f"{report.error}; committed batches stay, and re-running resumes")
        return EXIT_ERROR
    except KeyboardInterrupt:
        report.outcome, report.error = "interrupted", "KeyboardInterrupt"
        error("interrupted: committed batches stay; running the same command again resumes")
        return EXIT_ERROR
    finally:
        engine.dispose()
        if settings.report:
            report.write(settings.report)
    print_rewrap(report, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _rewrap_preflight(settings: Settings, engine: sa.Engine) -> PreflightReport:
    """The rewrap's preflight (``preflight --direction rewrap``, and before every ``rewrap``)."""
    return rewrap_preflight(
        settings, engine=engine, transit_factory=_rewrap_factory(settings), spelling=FLAG_SPELLING
    )


def _rewrap_factory(settings: Settings) -> Callable[[], TransitClient]:
    keeper = TokenKeeper()  # one per run: every worker's client renews the same token
    limits = RequestLimits(settings.vault_batch_items)  # one per run: a refusal shrinks all

    def make() -> TransitClient:
        return TransitClient.from_settings(settings, keeper=keeper, limits=limits)

    return make


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
        error(str(exc))
        return EXIT_ERROR
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        error(f"database error ({type(orig).__name__}); nothing was changed")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
