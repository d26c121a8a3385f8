"""The Transit client: typed Transit operations on one mount, over hvac.

Batch decrypt, encrypt and rewrap always use ``batch_input``, never one request per value. A
batch's items are split under the run's limits (:mod:`~context_encryption.transit.limits`), the
requests of one call are sent several at a time (``parallel``, the run's ``-x workers``) and
their results put back in input order; a partly failed batch gives per-item results
(:mod:`~context_encryption.transit.answers`). Retries happen underneath, in the HTTP session
(:mod:`~context_encryption.transit.retry`); the token is kept usable by the run's
:class:`~context_encryption.transit.token.TokenKeeper`. Keys are read as
:class:`~context_encryption.transit.types.KeyInfo`; the preflight and verify ask
``sys/health`` and ``sys/capabilities-self`` through here too.

Only public hvac API is used: ``hvac.Client`` and its ``url``, ``session``, ``auth``, ``sys``
and ``secrets`` properties, and ``hvac.exceptions``. Nothing here logs or returns a plaintext,
a token or a secret in an error.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hvac
import hvac.exceptions
import requests
import urllib3.util.retry

from context_encryption.errors import PreflightError, VaultRequestError, VaultUnavailableError
from context_encryption.settings import Settings
from context_encryption.transit.answers import answer_results, batch_results_of, error_texts
from context_encryption.transit.batch import BatchCall
from context_encryption.transit.limits import (
    RequestLimits,
    RequestTooLarge,
    send_within_limits,
    split_ranges,
)
from context_encryption.transit.retry import retrying_session
from context_encryption.transit.token import TokenKeeper
from context_encryption.transit.types import (
    DecryptRequest,
    EncryptRequest,
    ItemResult,
    KeyInfo,
    RewrapRequest,
)
from context_encryption.vault_texts import PERMISSION_DENIED, is_too_large


class TransitClient:
    """Typed Transit operations on one mount. Not shared between threads: make one per worker.

    (Its own ``parallel`` request threads share its HTTP session, which is safe for requests.)
    """

    def __init__(
        self,
        client: Any,
        mount: str,
        keeper: TokenKeeper | None = None,
        *,
        limits: RequestLimits | None = None,
        parallel: int = 1,
    ) -> None:
        self._client = client
        self.mount = mount
        self.keeper = keeper if keeper is not None else TokenKeeper()
        self.limits = limits if limits is not None else RequestLimits()
        #: requests of one batch call in flight at once
        self.parallel = max(1, parallel)
        self._pool: ThreadPoolExecutor | None = None
        self._count_lock = threading.Lock()
        self.requests = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        retry: urllib3.util.retry.Retry | None = None,
        timeout: float = 60,
        keeper: TokenKeeper | None = None,
        limits: RequestLimits | None = None,
    ) -> TransitClient:
        """A client for the run's settings; ``keeper`` and ``limits`` are shared by a run."""
        if not settings.vault_addr:
            raise PreflightError(
                "no Vault address: set VAULT_ADDR or pass -x vault-addr=https://vault.example:8200"
            )
        if settings.vault_token is None:
            raise PreflightError("no Vault token: set VAULT_TOKEN")
        verify = settings.vault_cacert or True
        parallel = settings.workers
        client = hvac.Client(
            url=settings.vault_addr,
            token=settings.vault_token.get(),
            namespace=settings.vault_namespace,
            verify=verify,
            timeout=timeout,
            session=retrying_session(retry, verify=verify, pool_size=max(4, parallel)),
        )
        if limits is None:
            limits = RequestLimits(settings.vault_batch_items)
        return cls(client, settings.transit_mount, keeper, limits=limits, parallel=parallel)

    @property
    def hvac_client(self) -> Any:
        return self._client

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        session = getattr(self._client, "session", None)
        if session is not None:
            session.close()

    def _count(self) -> None:
        with self._count_lock:
            self.requests += 1

    def _call(self, what: str, fn: Any, /, *, needs: str | None = None, **kw: Any) -> Any:
        """Call an hvac method; ``needs`` is the ACL path and capability, for the error."""
        self.keeper.check(self._client)
        self._count()
        try:
            return fn(**kw)
        except hvac.exceptions.Forbidden:
            raise self._denied(what, needs) from None
        except (hvac.exceptions.VaultDown, hvac.exceptions.BadGateway) as exc:
            raise VaultUnavailableError(
                f"Vault is unavailable ({type(exc).__name__}) during {what} after retries; "
                "the run stopped cleanly and resumes from its checkpoint when re-run"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise VaultUnavailableError(
                f"cannot reach Vault during {what} ({type(exc).__name__}) after retries; "
                "the run stopped cleanly and resumes from its checkpoint when re-run"
            ) from None

    def _denied(self, what: str, needs: str | None) -> VaultRequestError:
        """The error of a 403: an invalid token, or a capability the token's policy lacks."""
        if not self._token_valid():
            return VaultRequestError(
                f"Vault answered {PERMISSION_DENIED!r} to {what}: the token is no longer "
                "valid (expired or revoked), or its policy lacks read on "
                "auth/token/lookup-self (README, 'Vault policy'). The run stopped cleanly; "
                "set VAULT_TOKEN to a valid token and run the same command again to resume"
            )
        policy = (
            f" The token's policy needs:\n  {needs}" if needs else " (see README, 'Vault policy')"
        )
        return VaultRequestError(
            f"Vault answered {PERMISSION_DENIED!r} to {what}: the token lacks a capability "
            f"on that path.{policy}"
        )

    def _token_valid(self) -> bool:
        """After a 403: does the token itself still work? (A token whose policy lacks
        lookup-self cannot tell: OpenBao answers it the same 403 as a revoked token.)"""
        try:
            self._client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return False
        except Exception:
            return True
        return True

    # -- keys and token -------------------------------------------------------------------------

    def read_key(self, name: str) -> KeyInfo | None:
        """The key's settings, or None when it does not exist."""
        try:
            resp = self._call(
                f"reading key {name!r}",
                self._client.secrets.transit.read_key,
                needs=f'path "{self.mount}/keys/{name}" {{ capabilities = ["read"] }}',
                name=name,
                mount_point=self.mount,
            )
        except hvac.exceptions.InvalidPath:
            return None
        except hvac.exceptions.VaultError as exc:
            raise VaultRequestError(
                f"reading Transit key {name!r} failed: {error_texts(exc)}"
            ) from None
        d = resp["data"]
        return KeyInfo(
            name=str(d.get("name", name)),
            type=str(d.get("type", "")),
            derived=bool(d.get("derived", False)),
            convergent=bool(d.get("convergent_encryption", False)),
            latest_version=int(d.get("latest_version", 0)),
            min_decryption_version=int(d.get("min_decryption_version", 1)),
            min_encryption_version=int(d.get("min_encryption_version", 0)),
            supports_encryption=bool(d.get("supports_encryption", False)),
            supports_decryption=bool(d.get("supports_decryption", False)),
        )

    def lookup_self(self) -> dict[str, Any]:
        try:
            resp = self._call("token lookup", self._client.auth.token.lookup_self)
        except hvac.exceptions.VaultError as exc:
            raise VaultRequestError(f"token lookup failed: {error_texts(exc)}") from None
        return dict(resp["data"])

    # -- batch operations ---------------------------------------------------------------------

    def decrypt_batch(self, key: str, items: Sequence[DecryptRequest]) -> list[ItemResult]:
        """Decrypt every item; results in input order, ``value`` = base64 plaintext."""
        return self._transit_batch("decrypt", key, items, field="ciphertext", answer="plaintext")

    def encrypt_batch(
        self, key: str, items: Sequence[EncryptRequest], key_version: int | None
    ) -> list[ItemResult]:
        """Encrypt every item with ``key`` at ``key_version``; ``value`` = ciphertext."""
        extra = {} if key_version is None else {"key_version": key_version}
        return self._transit_batch(
            "encrypt", key, items, field="plaintext", answer="ciphertext", extra=extra
        )

    def rewrap_batch(
        self, key: str, items: Sequence[RewrapRequest], key_version: int | None
    ) -> list[ItemResult]:
        """Rewrap every item to ``key_version`` of ``key`` (``transit/rewrap/<key>``).

        Vault decrypts each item with the version in its prefix and encrypts it again with
        ``key_version``, inside Vault: no plaintext reaches this process. ``value`` = the new
        ciphertext. Split, limited and sent in parallel like decrypt and encrypt.
        """
        extra = {} if key_version is None else {"key_version": key_version}
        return self._transit_batch(
            "rewrap", key, items, field="ciphertext", answer="ciphertext", extra=extra
        )

    def _transit_batch(
        self,
        op: str,
        key: str,
        items: Sequence[tuple[str, str | None]],
        *,
        field: str,
        answer: str,
        extra: dict[str, Any] | None = None,
    ) -> list[ItemResult]:
        """``batch_input`` requests of ``(value, context)`` items, in input order.

        The items are split under the run's :class:`RequestLimits` and the request-size limit;
        the requests are sent up to ``parallel`` at a time and their results put back in order.
        """
        if not items:
            return []
        transit = self._client.secrets.transit
        call = BatchCall(
            what=f"{op} with key {key!r}",
            fn={
                "decrypt": transit.decrypt_data,
                "encrypt": transit.encrypt_data,
                # hvac always sends a top-level "ciphertext"; null when batch_input is used
                "rewrap": functools.partial(transit.rewrap_data, ciphertext=None),
            }[op],
            needs=f'path "{self.mount}/{op}/{key}" {{ capabilities = ["update"] }}',
            key=key,
            field=field,
            answer=answer,
            extra=extra or {},
            items=items,
        )
        ranges = list(split_ranges([len(v) for v, _c in items], self.limits.max_items))
        send = functools.partial(self._send, call)
        if len(ranges) == 1 or self.parallel == 1:
            parts = [send(lo, hi) for lo, hi in ranges]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="transit")
            futures = [self._pool.submit(send, lo, hi) for lo, hi in ranges]
            parts = [f.result() for f in futures]  # input order; the first error is raised
        out = [r for part in parts for r in part]
        if len(out) != len(items):  # pragma: no cover - guarded per request in _request
            raise VaultRequestError(f"Vault answered {call.what} with a wrong number of results")
        return out

    def _send(self, call: BatchCall, lo: int, hi: int) -> list[ItemResult]:
        """Items ``[lo, hi)``, in smaller requests when the server refuses them as too large."""
        return send_within_limits(functools.partial(self._request, call), lo, hi, self.limits)

    def _request(self, call: BatchCall, lo: int, hi: int) -> list[ItemResult]:
        """Items ``[lo, hi)`` in one request: one result per item, in order.

        Raises :class:`RequestTooLarge` when the server refuses the request for its size.
        """
        batch = call.batch_input(lo, hi)
        kw: dict[str, Any] = {"name": call.key, "batch_input": batch, "mount_point": self.mount}
        try:
            resp = self._call(call.what, call.fn, needs=call.needs, **kw)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InternalServerError) as exc:
            results = batch_results_of(exc, len(batch))
            if results is not None:  # a partly failed batch: per-item results
                return call.item_results(results)
            status = 400 if isinstance(exc, hvac.exceptions.InvalidRequest) else 500
            raise _refusal(exc, call.what, status) from None
        except hvac.exceptions.VaultError as exc:
            # a 413 (hvac: UnexpectedError) says "request body too large"
            raise _refusal(exc, call.what, 413) from None
        results = answer_results(resp)
        if results is None or len(results) != len(batch):
            raise VaultRequestError(
                f"Vault answered the batch ({call.what}) with {len(results or [])} results "
                f"for {len(batch)} items"
            )
        return call.item_results(results)

    # -- checks before a run (used by preflight and verify) --------------------------------------

    def health(self, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """``GET sys/health`` once, **without** retries: (HTTP status, JSON body or ``{}``).

        Standby nodes answer 200 (``standbyok``); a sealed Vault answers 503, an uninitialised
        one 501. Raises :class:`VaultUnavailableError` when nothing answers at the address.
        The request trusts what the client's own session trusts (its ``verify``, ``cert`` and
        ``proxies``: :meth:`from_settings` sets the CA bundle there), through a session of its
        own that has no retries mounted.
        """
        base_uri = str(self._client.url)
        trusted = self._client.session
        url = f"{base_uri.rstrip('/')}/v1/sys/health"
        self._count()
        try:
            with requests.Session() as session:
                resp = session.get(
                    url,
                    params={"standbyok": "true", "perfstandbyok": "true"},
                    timeout=timeout,
                    verify=trusted.verify,
                    cert=trusted.cert,
                    proxies=trusted.proxies,
                )
        except requests.exceptions.RequestException as exc:
            raise VaultUnavailableError(
                f"cannot reach Vault at {base_uri} ({type(exc).__name__})"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        return resp.status_code, body if isinstance(body, dict) else {}

    def capabilities_self(self, paths: Sequence[str]) -> dict[str, list[str]]:
        """``POST sys/capabilities-self``: the token's capabilities on each of ``paths``.

        A root token gets ``["root"]``, a path the token may not use ``["deny"]``. Raises
        :class:`VaultRequestError` (``permission denied``) when the token may not ask.
        """
        try:
            resp = self._call(
                "sys/capabilities-self", self._client.sys.get_capabilities, paths=list(paths)
            )
        except hvac.exceptions.VaultError as exc:
            raise VaultRequestError(f"sys/capabilities-self failed: {error_texts(exc)}") from None
        data = resp.get("data") if isinstance(resp.get("data"), dict) else resp
        out: dict[str, list[str]] = {}
        for path in paths:
            caps = data.get(path.lstrip("/"), resp.get(path.lstrip("/")))
            if caps is None and len(paths) == 1:
                caps = data.get("capabilities")
            out[path] = [str(c) for c in caps] if isinstance(caps, list) else []
        return out


def _refusal(exc: Exception, what: str, status: int) -> Exception:
    """A refused request: :class:`RequestTooLarge` when for its size, else the batch's error."""
    text = error_texts(exc)
    if is_too_large(text):
        return RequestTooLarge(status, text)
    return VaultRequestError(f"Vault refused the batch ({what}): {text}")
