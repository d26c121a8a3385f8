"""The migration's work on one batch of rows, between the read and the write (no database).

Each value goes through four steps (:func:`process_rows`):

1. :func:`~context_encryption.schemes.precheck` without Vault: NULL, plaintext (handled by
   ``-x plaintext``), or too long for Vault;
2. :func:`~context_encryption.schemes.classify` with Vault: the source scheme decrypts it, or the
   target scheme does (already migrated, skipped), or neither (a row error explained by
   :func:`~context_encryption.schemes.explain`, never passed through);
3. :func:`check_plaintext` on what was decrypted (or plaintext to encrypt): UTF-8 text, its HMAC
   companion, a size Vault accepts;
4. one ``batch_input`` encrypt with the target scheme at the pinned key version, each new
   ciphertext checked by :func:`check_new_ciphertext`.

The checks of steps 3 and 4 are pure functions. Nothing here logs or returns a value.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from app_models.specs import ColumnSpec, TableSpec
from context_encryption.engine.rows import Row
from context_encryption.engine.summary import Outcome
from context_encryption.errors import RowError
from context_encryption.schemes import (
    MAX_STRING_BYTES,
    VAULT_PREFIX,
    Kind,
    Scheme,
    classify,
    explain,
    precheck,
)
from context_encryption.settings import Settings
from context_encryption.transit import EncryptRequest, TransitClient, hmac_matches

PLAINTEXT_REFUSED: Final = (
    "holds plaintext (no 'vault:' prefix); if the column really holds unencrypted data use "
    "-x plaintext=encrypt, or -x plaintext=skip to leave it"
)
TOO_LONG: Final = "ciphertext is longer than Vault's 1 MiB string limit"
NOT_BASE64: Final = "Vault returned a plaintext that is not base64"
NOT_UTF8: Final = "decrypted bytes are not valid UTF-8 text"
HMAC_UNCHECKABLE: Final = "has an HMAC companion but no ENCRYPTION_HMAC_SECRET"
TOO_LARGE_ENCODED: Final = "value is larger than Vault's 1 MiB string limit once encoded"


def decode_plaintext(b64: str) -> bytes | None:
    """The bytes of a plaintext Vault returned (base64), or None when it is not base64."""
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_plaintext(
    raw: bytes,
    encoded: str,
    *,
    hmac_column: str | None,
    companion: str | None,
    secret: str | None,
) -> str | None:
    """Why a plaintext may not be re-encrypted, or None: its checks before the encrypt.

    ``raw`` is the plaintext, ``encoded`` its base64 as it would be sent to Vault; ``companion``
    the HMAC companion's stored value (column ``hmac_column``). The reason names no value.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    if hmac_column is not None and companion is not None:
        if secret is None:
            return HMAC_UNCHECKABLE
        if not hmac_matches(secret, raw, companion):
            return f"HMAC verification failed (companion {hmac_column})"
    if len(encoded) > MAX_STRING_BYTES:
        return TOO_LARGE_ENCODED
    return None


def check_new_ciphertext(value: str | None, error: str | None) -> str | None:
    """Why Vault's answer to an encrypt may not be written, or None."""
    if error is not None or not value or not value.startswith(VAULT_PREFIX):
        return f"Vault could not encrypt it: {error!r}"
    if len(value) > MAX_STRING_BYTES:
        # Vault refuses JSON strings over 1 MiB: it could never decrypt this again
        return (
            f"its new ciphertext would be {len(value):,} characters, over Vault's "
            f"1 MiB ({MAX_STRING_BYTES:,}) string limit: Vault could not decrypt it "
            "again, so it was left as it is"
        )
    return None


@dataclass
class _Work:
    """The values of a batch on their way through the steps (rows are changed in place)."""

    table: str
    to_decrypt: list[tuple[Row, ColumnSpec]]
    #: (row, column, plaintext bytes, base64 of them when Vault already gave it, outcome)
    to_encrypt: list[tuple[Row, ColumnSpec, bytes, str | None, Outcome]]

    def fail(self, row: Row, column: str, reason: str) -> None:
        row.outcomes[column] = Outcome.FAILED
        row.errors.append(RowError(self.table, column, row.pk, reason))


def process_rows(
    rows: Sequence[Row],
    spec: TableSpec,
    *,
    source: Scheme,
    target: Scheme,
    target_version: int,
    settings: Settings,
    transit: TransitClient,
) -> None:
    """Classify, decrypt, check and re-encrypt every value of ``rows`` in place.

    The migration's :class:`~context_encryption.engine.rows.RowProcessor`.
    """
    work = _Work(spec.name, [], [])
    for row in rows:
        for col in spec.columns:
            _precheck(work, row, col, settings)
    _classify(work, transit, source, target)
    secret = settings.hmac_secret.get() if settings.hmac_secret is not None else None
    checked: list[tuple[Row, ColumnSpec, str, Outcome]] = []
    for row, col, raw, b64_or_none, outcome in work.to_encrypt:
        encoded = b64_or_none or base64.b64encode(raw).decode("ascii")
        companion = row.values[col.hmac] if col.hmac is not None else None
        reason = check_plaintext(
            raw, encoded, hmac_column=col.hmac, companion=companion, secret=secret
        )
        if reason is not None:
            work.fail(row, col.name, reason)
        else:
            checked.append((row, col, encoded, outcome))
    _encrypt(work, transit, checked, target, target_version)


def _precheck(work: _Work, row: Row, col: ColumnSpec, settings: Settings) -> None:
    """Step 1: what a value is without Vault; ciphertexts are queued for classification."""
    value = row.values[col.name]
    kind = precheck(value)
    if kind is Kind.NULL:
        row.outcomes[col.name] = Outcome.NULL
    elif kind is Kind.PLAINTEXT:
        assert value is not None
        if settings.plaintext == "skip":
            row.outcomes[col.name] = Outcome.PLAINTEXT_SKIPPED
        elif settings.plaintext == "encrypt":
            work.to_encrypt.append(
                (row, col, value.encode("utf-8"), None, Outcome.PLAINTEXT_ENCRYPTED)
            )
        else:
            work.fail(row, col.name, PLAINTEXT_REFUSED)
    elif kind is Kind.TOO_LONG:
        work.fail(row, col.name, TOO_LONG)
    else:
        work.to_decrypt.append((row, col))


def _classify(work: _Work, transit: TransitClient, source: Scheme, target: Scheme) -> None:
    """Step 2: decrypt with the source scheme, else a trial decrypt with the target scheme."""
    verdicts = classify(
        transit,
        work.table,
        [(c.name, r.values[c.name] or "") for r, c in work.to_decrypt],
        source,
        target,
    )
    for (row, col), verdict in zip(work.to_decrypt, verdicts, strict=True):
        if verdict.kind is Kind.SECOND:
            row.outcomes[col.name] = Outcome.ALREADY
        elif verdict.kind is Kind.FIRST and verdict.plaintext is not None:
            raw = decode_plaintext(verdict.plaintext)
            if raw is None:
                work.fail(row, col.name, NOT_BASE64)
            else:
                work.to_encrypt.append((row, col, raw, verdict.plaintext, Outcome.MIGRATED))
        else:
            reason = explain(verdict, source, target, table=work.table, column=col.name)
            work.fail(row, col.name, reason)


def _encrypt(
    work: _Work,
    transit: TransitClient,
    checked: list[tuple[Row, ColumnSpec, str, Outcome]],
    target: Scheme,
    target_version: int,
) -> None:
    """Step 4: re-encrypt with the target scheme, version pinned; each answer checked."""
    if not checked:
        return
    results = transit.encrypt_batch(
        target.key,
        [
            EncryptRequest(encoded, target.context(work.table, c.name))
            for _r, c, encoded, _ in checked
        ],
        key_version=target_version,
    )
    for (row, col, _encoded, outcome), res in zip(checked, results, strict=True):
        reason = check_new_ciphertext(res.value, res.error)
        if reason is not None:
            work.fail(row, col.name, reason)
        else:
            assert res.value is not None
            row.new[col.name] = res.value
            row.outcomes[col.name] = outcome
