"""Vault Transit, typed: the only package of the tool that imports hvac.

One job per module:

- :mod:`.types`: the values calls take and give (requests, :class:`ItemResult`,
  :class:`KeyInfo`) and the HMAC companion (:func:`hmac_hex`); pure.
- :mod:`.limits`: how a batch is split into requests real servers accept, and the halving when
  one is refused as too large (:class:`RequestLimits`, :func:`split_ranges`); pure.
- :mod:`.answers`: Vault's error texts and per-item results out of hvac's exceptions; pure.
- :mod:`.batch`: one batch operation's ``batch_input`` and results; pure.
- :mod:`.retry`: the retry policy (429 and 5xx with backoff, never a too-large refusal
  unchanged) and the HTTP session that carries it.
- :mod:`.token`: :class:`TokenKeeper`, renewing the run's token or stopping before it expires.
- :mod:`.client`: :class:`TransitClient`, the typed Transit operations on one mount.

Everything the rest of the tool uses is re-exported here: ``from context_encryption.transit
import TransitClient``. Nothing here logs or returns a plaintext, a token or a secret.
"""

from __future__ import annotations

from context_encryption.schemes import MAX_STRING_BYTES
from context_encryption.transit.client import TransitClient
from context_encryption.transit.limits import (
    MAX_REQUEST_BYTES,
    RequestLimits,
    RequestTooLarge,
    send_within_limits,
    split_ranges,
)
from context_encryption.transit.retry import RETRY_STATUSES, LoggingRetry, build_retry
from context_encryption.transit.token import TokenKeeper
from context_encryption.transit.types import (
    DecryptRequest,
    EncryptRequest,
    ItemResult,
    KeyInfo,
    RewrapRequest,
    b64_context,
    hmac_hex,
    hmac_matches,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_STRING_BYTES",
    "RETRY_STATUSES",
    "DecryptRequest",
    "EncryptRequest",
    "ItemResult",
    "KeyInfo",
    "LoggingRetry",
    "RequestLimits",
    "RequestTooLarge",
    "RewrapRequest",
    "TokenKeeper",
    "TransitClient",
    "b64_context",
    "build_retry",
    "hmac_hex",
    "hmac_matches",
    "send_within_limits",
    "split_ranges",
]
