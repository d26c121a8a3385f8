"""Keeping the run's Vault token usable: one :class:`TokenKeeper` shared by every worker.

The token is looked up once (``auth/token/lookup-self``). A token with a TTL is renewed
(``renew-self``) once half of its TTL has passed, when it is renewable: the other half is the
slack for the requests already in flight when the renewal falls due and for a loaded machine
whose threads are scheduled late (with a renewal only after two thirds, a 2 s token expired
mid-run on a busy machine). A token that cannot be renewed stops the run cleanly shortly before
it expires, rather than failing half-way through a batch. A token without TTL (root, periodic
with ttl 0) needs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import hvac.exceptions
import requests

from context_encryption.errors import VaultRequestError, VaultUnavailableError
from context_encryption.transit.answers import error_texts
from context_encryption.vault_texts import PERMISSION_DENIED

log = logging.getLogger("context_encryption")


class TokenKeeper:
    """Keeps the run's Vault token usable; shared by the Transit clients of all workers."""

    #: stop this many seconds before a non-renewable token expires
    STOP_MARGIN: Final = 15.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known = False
        self._next_check = 0.0  # monotonic time of the next renewal or stop
        self._expires: float | None = None
        self._renewable = False
        self.renewals = 0

    def check(self, client: Any) -> None:
        """Called before each request with the hvac client; cheap unless a renewal is due."""
        if self._known and (self._expires is None or time.monotonic() < self._next_check):
            return
        with self._lock:
            if not self._known:
                self._lookup(client)
            if self._expires is None:
                return
            now = time.monotonic()
            if now < self._next_check:
                return
            if self._renewable:
                self._renew(client)
                return
            left = max(0, int(self._expires - now))
            raise VaultRequestError(
                f"the Vault token expires in {left}s and is not renewable; the run stopped "
                "cleanly before it expired. Re-run with a token whose TTL covers the run "
                "(or a renewable one): the run resumes from its checkpoint"
            )

    def _set(self, ttl: int, renewable: bool) -> None:
        now = time.monotonic()
        self._known = True
        self._renewable = renewable
        if ttl <= 0:
            self._expires = None
            return
        self._expires = now + ttl
        margin = min(self.STOP_MARGIN, ttl / 4)
        self._next_check = now + (ttl / 2 if renewable else ttl - margin)

    def _lookup(self, client: Any) -> None:
        try:
            data = client.auth.token.lookup_self()["data"]
        except hvac.exceptions.Forbidden:
            raise VaultRequestError(
                f"the Vault token is not valid ({PERMISSION_DENIED} on auth/token/lookup-self): "
                "it may have expired or been revoked; set VAULT_TOKEN to a valid token"
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise VaultRequestError(f"token lookup failed: {error_texts(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise VaultUnavailableError(
                f"cannot reach Vault for the token lookup ({type(exc).__name__})"
            ) from None
        self._set(int(data.get("ttl") or 0), bool(data.get("renewable")))

    def _renew(self, client: Any) -> None:
        try:
            auth = client.auth.token.renew_self()["auth"]
        except hvac.exceptions.VaultError as exc:
            raise VaultRequestError(
                f"renewing the Vault token failed ({error_texts(exc)}); the run stopped cleanly "
                "and resumes from its checkpoint when re-run with a valid token"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise VaultUnavailableError(
                f"cannot reach Vault to renew the token ({type(exc).__name__})"
            ) from None
        self.renewals += 1
        ttl = int(auth.get("lease_duration") or 0)
        log.info("Vault token renewed (TTL now %ss)", ttl)
        previous = self._expires
        self._set(ttl, renewable=bool(auth.get("renewable", True)))
        if previous is not None and self._expires is not None and self._expires <= previous + 1:
            # at its maximum TTL: renewing no longer extends it; stop before it expires
            self._set(ttl, renewable=False)
