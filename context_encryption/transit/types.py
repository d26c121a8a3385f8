"""The values Transit calls take and give, and the HMAC companion: pure, no server, no hvac.

A batch item goes in as a request (:class:`DecryptRequest`, :class:`EncryptRequest`,
:class:`RewrapRequest`: a value and the context *string*, e.g. ``users.email``, or None) and
comes back as an :class:`ItemResult` (a value or Vault's error text, never both). A key read
gives a :class:`KeyInfo` (settings only, never key material). :func:`hmac_hex` is DESIGN.md's
HMAC companion; :func:`b64_context` the base64 a context travels as.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class KeyInfo:
    """What the tool needs to know about a Transit key (never key material)."""

    name: str
    type: str
    derived: bool
    convergent: bool
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    supports_encryption: bool
    supports_decryption: bool


class ItemResult(NamedTuple):
    """One item of a batch: ``value`` (ciphertext, or base64 plaintext) or ``error``."""

    value: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class DecryptRequest(NamedTuple):
    ciphertext: str
    context: str | None  # the context string, e.g. "users.email"; None: no context


class EncryptRequest(NamedTuple):
    plaintext_b64: str
    context: str | None


class RewrapRequest(NamedTuple):
    ciphertext: str
    context: str | None  # the context string, e.g. "users.email"; None: no context


def hmac_hex(secret: str, plaintext: bytes) -> str:
    """The HMAC companion of DESIGN.md: lowercase hex HMAC-SHA256 keyed by the secret's UTF-8."""
    return hmac.digest(secret.encode("utf-8"), plaintext, "sha256").hex()


def hmac_matches(secret: str, plaintext: bytes, companion: str) -> bool:
    """Whether a stored companion is the plaintext's HMAC (case and surrounding space ignored)."""
    # bytes: compare_digest refuses non-ASCII str, and a damaged companion is just a mismatch
    expected = hmac_hex(secret, plaintext).encode("ascii")
    return hmac.compare_digest(expected, companion.strip().lower().encode("utf-8"))


_B64_CACHE: dict[str, str] = {}


def b64_context(context: str) -> str:
    """Base64 of the context's UTF-8 bytes (cached: a run uses a handful of contexts)."""
    cached = _B64_CACHE.get(context)
    if cached is None:
        cached = base64.b64encode(context.encode("utf-8")).decode("ascii")
        _B64_CACHE[context] = cached
    return cached
