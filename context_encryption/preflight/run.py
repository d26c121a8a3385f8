"""The migration's preflight: the order of the checks, and what a failure stops.

:func:`collect_preflight` runs every check into a report; :func:`run_preflight` raises one
:class:`~context_encryption.errors.PreflightError` listing every failure with its fix;
:func:`require_database` is the database check alone, for ``migrations/env.py``. A check that
cannot run because an earlier one failed (no database, Vault unreachable, token invalid) is
skipped, not reported twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from context_encryption.catalog import load_catalog
from context_encryption.errors import PreflightError
from context_encryption.preflight.database import (
    Bind,
    check_database,
    check_row_security,
    no_database_url,
)
from context_encryption.preflight.hmac_secret import check_hmac_sample, check_hmac_secret
from context_encryption.preflight.keys import check_keys
from context_encryption.preflight.report import (
    DEFAULT_MIN_TOKEN_TTL,
    DirectionName,
    PreflightReport,
    log,
)
from context_encryption.preflight.vault import (
    check_capabilities,
    check_token,
    check_vault,
    no_vault,
)
from context_encryption.preflight.versions import check_versions
from context_encryption.settings import X_SPELLING, Settings, Spelling
from context_encryption.throttle import preflight_messages
from context_encryption.transit import KeyInfo, TransitClient


def direction_name(direction: DirectionName | Any) -> DirectionName:
    """``"upgrade"`` or ``"downgrade"`` from a name or the engine's ``Direction``."""
    value = str(getattr(direction, "value", direction))
    return "downgrade" if value == "downgrade" else "upgrade"


def collect_preflight(
    settings: Settings,
    *,
    direction: DirectionName | Any,
    tables: Iterable[str],
    transit: TransitClient | None,
    engine: Bind | None,
    min_token_ttl: int = DEFAULT_MIN_TOKEN_TTL,
    scan_data: bool = True,
    spelling: Spelling = X_SPELLING,
) -> PreflightReport:
    """Run every check and return the report, without raising for failures.

    ``transit`` is None when no client could be built (no address or no token): the Vault checks
    then fail with what to set. ``direction`` is ``"upgrade"``/``"downgrade"`` (or the engine's
    ``Direction``). ``spelling``: how the operator gives options (``-x db=...``, ``--db=...``).
    """
    wanted = set(tables)
    scope = tuple(t for t in load_catalog().tables if t in wanted)
    report = PreflightReport(direction_name(direction), scope, spelling=spelling)

    if engine is None:
        no_database_url(report)
    db = engine if engine is not None and check_database(report, engine) else None
    old, new = _check_vault_side(report, settings, transit, min_token_ttl)

    if db is not None:  # what the throttle cannot watch with this role (warnings, no failure)
        report.warnings.extend(preflight_messages(db.engine, settings.throttle))
    hidden = check_row_security(report, db, scope) if db is not None and scope else set()
    readable = tuple(t for t in scope if t not in hidden)
    source = old if report.direction == "upgrade" else new
    if scan_data and db is not None and readable and source is not None:
        check_versions(
            report, settings=settings, engine=db, transit=transit, tables=readable, source=source
        )

    check_hmac_secret(report, settings, scope)
    keys_read = old is not None and new is not None
    secret_set = settings.hmac_secret is not None
    if scan_data and db is not None and transit is not None and keys_read and secret_set:
        check_hmac_sample(report, settings=settings, engine=db, transit=transit, tables=readable)
    return report


def _check_vault_side(
    report: PreflightReport, settings: Settings, transit: TransitClient | None, min_token_ttl: int
) -> tuple[KeyInfo | None, KeyInfo | None]:
    """Vault, the token, the capabilities and the keys: (old, new) as read."""
    if transit is None or not settings.vault_addr:
        no_vault(report)
        return None, None
    if not (
        check_vault(report, transit, settings.vault_addr)
        and check_token(report, transit, min_token_ttl)
    ):
        return None, None
    check_capabilities(report, settings, transit, report.direction)
    return check_keys(report, settings, transit, report.direction)


def run_preflight(
    settings: Settings,
    *,
    direction: DirectionName | Any,
    tables: Sequence[str],
    transit: TransitClient | None,
    engine: Bind | None,
    min_token_ttl: int = DEFAULT_MIN_TOKEN_TTL,
) -> PreflightReport:
    """Check everything the run needs before its first row; raise :class:`PreflightError`.

    The error's message lists every failure with its fix. Returns the report when all pass
    (warnings, such as a short-lived renewable token, are logged).

    ``engine`` may be the migration's own Connection (then it is only read from, in whatever
    transaction it is in) or an Engine (a connection of its own is opened and closed).
    """
    report = collect_preflight(
        settings,
        direction=direction,
        tables=tables,
        transit=transit,
        engine=engine,
        min_token_ttl=min_token_ttl,
    )
    for w in report.warnings:
        log.warning("preflight: %s", w)
    if not report.ok:
        raise PreflightError(report.message())
    log.info(
        "preflight passed (%s of %s): %s",
        report.direction,
        ", ".join(report.tables) or "no table",
        "; ".join(f"{c.name}: {c.detail}" for c in report.checks),
    )
    return report


def require_database(engine: sa.Engine) -> None:
    """Raise :class:`PreflightError` (what is wrong, how to fix it) if ``engine`` cannot connect.

    For ``migrations/env.py`` to call before it opens its own connection, so an unreachable
    database gets the preflight's message instead of a driver traceback.
    """
    report = PreflightReport("upgrade", ())
    if not check_database(report, engine):
        raise PreflightError(report.message())
