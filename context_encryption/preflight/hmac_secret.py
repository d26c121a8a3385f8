"""The HMAC checks: the secret is set when a column in scope has a companion, and it matches at
least some of the companions already stored.

A wrong secret makes every row an "HMAC verification failed" error; with ``on-error=skip`` the
run would skip them all and still stamp the revision, so it is refused here. The sampled values
are decrypted through :func:`context_encryption.schemes.classify` (the source scheme, else a
trial with the target's); their plaintexts are compared and dropped, never shown.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa

from app_models.specs import ColumnSpec, Direction, TableSpec
from context_encryption.catalog import load_catalog
from context_encryption.errors import ContextEncryptionError
from context_encryption.preflight.database import Bind, connection, missing_tables
from context_encryption.preflight.report import PreflightReport
from context_encryption.row_security import disable_row_security
from context_encryption.schemes import Scheme, classify, precheck, schemes
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient, hmac_matches

#: companions sampled per column to check the HMAC secret
HMAC_SAMPLE: Final = 20


def check_hmac_secret(report: PreflightReport, settings: Settings, tables: Sequence[str]) -> None:
    """ENCRYPTION_HMAC_SECRET is set when a column in scope has a companion."""
    catalog = load_catalog()
    companions = [f"{t}.{c.hmac}" for t in tables for c in catalog.spec(t).columns if c.hmac]
    if not companions:
        report.add("hmac secret", True, "no column in scope has an HMAC companion")
        return
    if settings.hmac_secret is None:
        report.add(
            "hmac secret",
            False,
            f"columns in scope have HMAC companions ({', '.join(companions)}) but "
            "ENCRYPTION_HMAC_SECRET is not set",
            "set ENCRYPTION_HMAC_SECRET to the secret the application computes the companions with",
        )
        return
    n = len(companions)
    report.add("hmac secret", True, f"set ({n} companion column{'s' if n != 1 else ''} in scope)")


def check_hmac_sample(
    report: PreflightReport,
    *,
    settings: Settings,
    engine: Bind,
    transit: TransitClient,
    tables: Sequence[str],
) -> None:
    """The HMAC secret matches at least some companions of each column in scope."""
    secret = settings.hmac_secret.get() if settings.hmac_secret is not None else ""
    first, second = schemes(settings, Direction(report.direction))
    catalog = load_catalog()
    bad: list[str] = []
    with connection(engine) as conn:
        disable_row_security(conn)
        absent = set(missing_tables(conn, tables))
        for table in tables:
            if table in absent:
                continue
            spec = catalog.spec(table)
            for col in spec.columns:
                if col.hmac is None:
                    continue
                rows = _companion_sample(conn, spec, col)
                matches = _matches(
                    transit, table, col=col, rows=rows, secret=secret, first=first, second=second
                )
                if matches and not any(matches):
                    bad.append(f"{table}.{col.hmac} (0 of {len(matches)} sampled match)")
    if bad:
        report.add(
            "hmac sample",
            False,
            "HMAC verification failed for every sampled companion of "
            + ", ".join(bad)
            + ": the HMAC secret matches none of them",
            f"ENCRYPTION_HMAC_SECRET (or {report.spelling('hmac-secret')}) is most likely not the "
            "secret the application computes the companions with; set the right one",
        )
    else:
        report.add("hmac sample", True, "the HMAC secret matches sampled companions")


def _companion_sample(
    conn: sa.Connection, spec: TableSpec, col: ColumnSpec
) -> list[tuple[str, str]]:
    """(ciphertext, companion) of the first :data:`HMAC_SAMPLE` rows that have both."""
    t = spec.table
    value, companion = t.c[col.name], t.c[str(col.hmac)]
    stmt = (
        sa.select(value, companion)
        .where(value.like("vault:v%"), companion.is_not(None))
        .order_by(t.c[spec.pk])
        .limit(HMAC_SAMPLE)
    )
    return [(v, c) for v, c in conn.execute(stmt) if precheck(v) is None]


def _matches(
    transit: TransitClient,
    table: str,
    *,
    col: ColumnSpec,
    rows: Sequence[tuple[str, str]],
    secret: str,
    first: Scheme,
    second: Scheme,
) -> list[bool]:
    """Whether each sampled companion matches its value's plaintext (values no key reads and
    Vault errors are left out: the key, capability and version checks report those)."""
    if not rows:
        return []
    try:
        verdicts = classify(transit, table, [(col.name, v) for v, _c in rows], first, second)
    except ContextEncryptionError:
        return []
    return [
        hmac_matches(secret, base64.b64decode(verdict.plaintext), companion)
        for verdict, (_v, companion) in zip(verdicts, rows, strict=True)
        if verdict.plaintext is not None
    ]
