"""The one table of Vault's error texts the tool reads, and the value-free reasons made from them.

Vault answers a refused item or request with a text, never a code. Every text the tool acts on is
here, once, with where it comes from (``shared/vault-transit.md`` and the contract tests in
``tests/contract``, which check each against a real server). A server that words one of them
differently is fixed here and nowhere else. The texts hold no values, so the reasons made from
them are safe to log.
"""

from __future__ import annotations

from typing import Final

# -- refusals of one ciphertext (decrypt / rewrap items, HTTP 400) --------------------------------

#: AES-GCM could not authenticate: another key, another context, or a damaged value.
AUTH_FAILED: Final = "message authentication failed"
#: A derived key asked to decrypt without a context.
MISSING_CONTEXT: Final = "missing 'context' for key derivation"
#: The value does not start with ``vault:``.
NO_PREFIX: Final = "invalid ciphertext: no prefix"
#: The value's key version is below the key's ``min_decryption_version``.
TOO_OLD: Final = "disallowed by policy (too old)"
#: The value's key version is above the key's latest version.
TOO_NEW: Final = "version is too new"
#: The value is not Transit ciphertext although it starts with ``vault:``.
MALFORMED: Final = (
    "no prefix",
    "wrong number of fields",
    "version number could not be decoded",
    "could not decode base64",
    "invalid ciphertext length",
)

# -- refusals of a whole request ----------------------------------------------------------------

#: The token's policy does not allow the path (HTTP 403).
PERMISSION_DENIED: Final = "permission denied"
#: A request refused for its size or complexity, never for its content: OpenBao 2.6+ (HTTP 400)
#: ``refused JSON input due to high complexity: exceeded maximum number of strings`` /
#: ``...estimated memory limits``; OpenBao 2.4.1-2.5.x (HTTP 400) ``error parsing JSON``;
#: Vault 1.20.3+ (HTTP 500) ``JSON array exceeds allowed element count`` and its siblings for
#: objects, strings and depth; both (HTTP 413) ``http: request body too large``.
TOO_LARGE_TEXTS: Final = (
    "refused JSON input due to high complexity",
    "error parsing JSON",
    "exceeds allowed",
    "request body too large",
)

# -- how Vault joins its error texts -------------------------------------------------------------

#: go-multierror's heading of a one-error list, as Vault's ``errors`` carry it (dropped from the
#: texts the tool shows).
MULTIERROR_HEADING: Final = "1 error occurred:\n\t* "


def is_too_large(text: str) -> bool:
    """Whether Vault's error text refuses a request for its size or complexity."""
    return any(marker in text for marker in TOO_LARGE_TEXTS)


def brief_reason(*errors: str) -> str:
    """A short, value-free reason for a value no key reads (the most actionable text wins)."""
    error = " | ".join(errors)
    if TOO_OLD in error:
        return "unreadable (key version below min_decryption_version)"
    if any(m in error for m in MALFORMED):
        return "unreadable (malformed ciphertext)"
    if AUTH_FAILED in error:
        return "unreadable (neither key decrypts it)"
    if TOO_NEW in error:
        return "unreadable (key version newer than either key's latest)"
    return "unreadable"
