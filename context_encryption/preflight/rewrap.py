"""The rewrap's preflight (``context-encryption preflight --direction rewrap``, and before every
``context-encryption rewrap``): what a rewrap needs, checked before its first row.

Database; the tables in scope (applied revisions, no stopped migration:
:func:`context_encryption.rewrap.rewrap_scope`); Vault and the token; ``update`` on
``<mount>/rewrap/<new key>`` and the probe's and classification's paths
(:func:`~context_encryption.preflight.vault.rewrap_capabilities`); the new key, derived +
convergent, with its ``min_decryption_version`` and ``latest_version``; every row visible; and
the key versions in the data, each of which the new key must still decrypt. The checks are the
migration preflight's own, with the direction ``rewrap``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa

from context_encryption.catalog import load_catalog
from context_encryption.errors import ContextEncryptionError
from context_encryption.preflight.database import check_database, check_row_security
from context_encryption.preflight.keys import check_new_key
from context_encryption.preflight.report import DEFAULT_MIN_TOKEN_TTL, PreflightReport
from context_encryption.preflight.vault import (
    check_capabilities,
    check_token,
    check_vault,
    no_vault,
)
from context_encryption.preflight.versions import decryptable, scan_table_versions
from context_encryption.rewrap import rewrap_scope
from context_encryption.row_security import disable_row_security
from context_encryption.settings import X_SPELLING, Settings, Spelling
from context_encryption.transit import KeyInfo, TransitClient


def rewrap_preflight(
    settings: Settings,
    *,
    engine: sa.Engine,
    transit_factory: Callable[[], TransitClient],
    min_token_ttl: int = DEFAULT_MIN_TOKEN_TTL,
    spelling: Spelling = X_SPELLING,
) -> PreflightReport:
    """What a rewrap needs; never raises for a failed check. ``report.versions`` maps
    ``table.column`` to {version: count}. ``spelling``: how the operator gives options."""
    report = PreflightReport("rewrap", (), spelling=spelling)
    if not check_database(report, engine):
        return report
    scope = _check_scope(report, settings, engine)
    key = _check_vault_and_key(report, settings, transit_factory, min_token_ttl)
    hidden = check_row_security(report, engine, scope) if scope else set()
    _scan(report, engine, [t for t in scope if t not in hidden])
    if key is not None:
        _check_data_versions(report, settings, key)
    return report


def _check_scope(report: PreflightReport, settings: Settings, engine: sa.Engine) -> list[str]:
    """The tables to rewrap (check ``tables``): those whose revision is applied."""
    scope: list[str] = []
    try:
        with engine.connect() as conn:
            disable_row_security(conn)
            _rev, scope = rewrap_scope(settings, conn)
    except ContextEncryptionError as exc:
        report.add("tables", False, str(exc), "see the message")
        return []
    report.tables = tuple(scope)
    report.add(
        "tables", True, f"to rewrap: {', '.join(scope)}" if scope else "no applied table in scope"
    )
    return scope


def _check_vault_and_key(
    report: PreflightReport,
    settings: Settings,
    transit_factory: Callable[[], TransitClient],
    min_token_ttl: int,
) -> KeyInfo | None:
    """Vault, the token, the capabilities and the new key; the key when it is usable."""
    if not settings.vault_addr or settings.vault_token is None:
        no_vault(report)
        return None
    transit = transit_factory()
    try:
        if not (
            check_vault(report, transit, settings.vault_addr)
            and check_token(report, transit, min_token_ttl)
        ):
            return None
        check_capabilities(report, settings, transit, "rewrap")
        return check_new_key(report, settings, transit)
    finally:
        transit.close()


def _scan(report: PreflightReport, engine: sa.Engine, tables: Sequence[str]) -> None:
    """The key versions of every encrypted column of ``tables`` (one scan per table)."""
    catalog = load_catalog()
    with engine.connect() as conn:
        disable_row_security(conn)
        for table in tables:
            columns = [c.name for c in catalog.spec(table).columns]
            for col, versions in scan_table_versions(conn, table, columns).items():
                report.versions[f"{table}.{col}"] = versions


def _check_data_versions(report: PreflightReport, settings: Settings, key: KeyInfo) -> None:
    """Every version in the data is one the new key still decrypts."""
    lo, hi = key.min_decryption_version, key.latest_version
    outside = {
        name: sorted(v for v in d if not decryptable(v, lo, hi))
        for name, d in report.versions.items()
    }
    outside = {k: v for k, v in outside.items() if v}
    if outside:
        report.add(
            "data versions",
            False,
            "key versions in the data the new key cannot decrypt ("
            + "; ".join(f"{k}: {v}" for k, v in outside.items())
            + f"; it decrypts {lo}..{hi}): those values cannot be rewrapped",
            f"lower min_decryption_version: vault write {settings.transit_mount}/keys/"
            f"{key.name}/config min_decryption_version=<lowest version in the data>",
        )
        return
    seen = sorted({v for d in report.versions.values() for v in d})
    split = sorted(k for k, d in report.versions.items() if len(d) > 1)
    report.add(
        "data versions",
        True,
        f"ciphertext versions in scope {seen or 'none'}; the new key decrypts {lo}..{hi}"
        + (f"; split across versions: {', '.join(split)}" if split else ""),
    )
