"""Vault Transit, typed: the only module of the tool that imports hvac.

Batch decrypt, encrypt and rewrap always use ``batch_input``, never one request per value. A
batch's items are split into as many requests as real servers accept: at most
``-x vault-batch-items`` items (default 150) and 16 MiB each. OpenBao (2.4.1+) refuses a body
with more than 1,000 JSON strings (HTTP 400), HashiCorp Vault (1.20.3+) more than 10,000 array
elements (HTTP **500**); a request with context and a pinned key version costs 5 strings an
item, so 150 items fit both products' defaults with a margin. The requests of one call are sent
several at a time (``parallel``, the run's ``-x workers``) and their results put back in input
order. A server configured tighter than that refuses a request as too large or too complex:
that request is halved and sent again, the smaller size is kept for the rest of the run (shared
by every worker through :class:`RequestLimits`) and logged once with the setting that avoids
it. Such a refusal is never a failed row and is never retried unchanged.

A batch that partly fails makes Vault answer 400 (or 500) with the per-item results in the body
and no ``errors`` key; hvac raises ``InvalidRequest`` for it, and this module turns it back into
per-item results, so a failed item is that row's error, not the batch's.

Transport errors, 429, 500, 502, 503 and 504 are retried with exponential backoff and jitter by
urllib3's ``Retry`` mounted on the session hvac uses. Encrypt and decrypt are idempotent, so a
retried POST is safe. A decrypt *answer* such as ``cipher: message authentication failed`` is a
data fault and is never retried.

Nothing here logs or returns a plaintext, a token or a secret in an error.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import hvac
import hvac.exceptions
import requests
import requests.adapters
import urllib3.util.retry
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse

from context_encryption.errors import PreflightError, VaultRequestError, VaultUnavailableError
from context_encryption.settings import DEFAULT_VAULT_BATCH_ITEMS, MAX_VAULT_BATCH_ITEMS, Settings
from context_encryption.vault_texts import is_too_large

#: Vault's ``max_json_string_value_length``.
MAX_STRING_BYTES: Final = 1_048_576
#: Half of both products' 32 MiB ``max_request_size`` (and OpenBao's 32.5 MiB JSON memory
#: estimate, which is about the strings' length): room for JSON overhead.
MAX_REQUEST_BYTES: Final = 16 * 1_048_576

log = logging.getLogger("context_encryption")

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


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


class RequestTooLarge(Exception):
    """Vault refused a request as too large or too complex; the caller sends it in halves."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


class RequestLimits:
    """The most items per Transit request, shared by every client of a run.

    Starts at ``-x vault-batch-items``; halved when the server refuses a request as too large,
    and kept at the smaller size for the rest of the run. Once a request of the smaller size
    passes, one warning says so, with the setting that avoids the refusals next time.
    """

    def __init__(self, max_items: int = DEFAULT_VAULT_BATCH_ITEMS) -> None:
        if not 1 <= max_items <= MAX_VAULT_BATCH_ITEMS:
            raise ValueError(f"max_items must be 1..{MAX_VAULT_BATCH_ITEMS}")
        self.configured = max_items
        self.max_items = max_items
        self.refusals = 0
        self._reason = ""
        self._announced = False
        self._lock = threading.Lock()

    def refused(self, size: int, reason: str) -> int:
        """A request of ``size`` items was refused: the limit becomes at most half of it."""
        with self._lock:
            self.refusals += 1
            self._reason = self._reason or reason
            self.max_items = min(self.max_items, max(1, size // 2))
            log.debug("Vault refused %d items as too large; now at most %d", size, self.max_items)
            return self.max_items

    def passed(self, size: int) -> None:
        """A request of ``size`` items passed; after refusals, the first at the limit is said."""
        if not self.refusals or self._announced or size < self.max_items:
            return
        with self._lock:
            if self._announced:
                return
            self._announced = True
        log.warning(
            "Vault refused requests of %d items as too large or too complex (%s); requests "
            "of %d items pass, and the run keeps that size. To avoid the refusals, set "
            "-x vault-batch-items=%d (or raise the server's request limits)",
            self.configured,
            self._reason,
            self.max_items,
            self.max_items,
        )


class LoggingRetry(urllib3.util.retry.Retry):
    """urllib3's Retry, saying each retry in the tool's log so an outage is not silent.

    Vault answers HTTP 500 to a request over its JSON limits; retrying it unchanged would only
    repeat the refusal, so a 500 whose body says so stops the retries and raises
    :class:`RequestTooLarge` for the caller to split the request.
    """

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if response is not None and response.status == 500:
            # The body is read only when a retry follows (urllib3 drains it next anyway); on
            # the last attempt it goes to hvac untouched.
            text = response.data.decode("utf-8", "replace")
            if is_too_large(text):
                response.release_conn()
                raise RequestTooLarge(500, _vault_text(text))
        cause = f"HTTP {response.status}" if response is not None else type(error).__name__
        log.warning(
            "Vault request failed (%s); retry %d in %.1fs",
            cause,
            len(new.history),
            new.get_backoff_time(),
        )
        return new


def build_retry(total: int = 8, backoff_factor: float = 0.25, backoff_max: float = 20.0) -> Any:
    """urllib3 Retry: transport errors and 429/5xx, exponential backoff with jitter.

    With the defaults a request is tried 9 times over about a minute before the run stops.
    """
    return LoggingRetry(
        total=total,
        connect=total,
        read=total,
        status=total,
        other=2,
        allowed_methods=None,  # POST encrypt/decrypt is idempotent
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_max=backoff_max,
        backoff_jitter=backoff_factor,
        raise_on_status=False,  # hand the last answer to hvac, which raises its own error
        respect_retry_after_header=True,
    )


def _vault_text(body: str) -> str:
    """The ``errors`` of a Vault JSON error body, else the body itself (shortened)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errs, list) and errs:
        return "; ".join(str(e).replace("1 error occurred:\n\t* ", "").strip() for e in errs)
    return body.strip()[:200]


def split_ranges(
    sizes: Sequence[int], max_items: int, max_bytes: int = MAX_REQUEST_BYTES
) -> Iterator[tuple[int, int]]:
    """Index ranges ``[lo, hi)`` of at most ``max_items`` items and about ``max_bytes`` each.

    ``sizes`` are the items' value lengths; every range holds at least one item.
    """
    start = 0
    acc = 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_items or acc + size > max_bytes):
            yield start, i
            start, acc = i, 0
        acc += size + 64
    if start < len(sizes):
        yield start, len(sizes)


class TokenKeeper:
    """Keeps the run's Vault token usable; shared by the Transit clients of all workers.

    The token is looked up once (``auth/token/lookup-self``). A token with a TTL is renewed
    (``renew-self``) once two thirds of its TTL have passed, when it is renewable; a token that
    cannot be renewed stops the run cleanly shortly before it expires, rather than failing
    half-way through a batch. A token without TTL (root, periodic with ttl 0) needs nothing.
    """

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
        """Called before each request; cheap unless a renewal is due."""
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
        self._next_check = now + (ttl * 2 / 3 if renewable else ttl - margin)

    def _lookup(self, client: Any) -> None:
        try:
            data = client.auth.token.lookup_self()["data"]
        except hvac.exceptions.Forbidden:
            raise VaultRequestError(
                "the Vault token is not valid (permission denied on auth/token/lookup-self): "
                "it may have expired or been revoked; set VAULT_TOKEN to a valid token"
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise VaultRequestError(f"token lookup failed: {_errors(exc)}") from None
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
                f"renewing the Vault token failed ({_errors(exc)}); the run stopped cleanly "
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


@dataclass(frozen=True)
class _BatchCall:
    """One batch operation, as its requests need it."""

    what: str
    fn: Any
    needs: str
    key: str
    field: str
    answer: str
    extra: dict[str, Any]
    items: Sequence[tuple[str, str | None]]


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
        retry: Any = None,
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
        session = requests.Session()
        # hvac keeps a session's own `verify`, so the CA bundle must be set on the session
        session.verify = settings.vault_cacert or True
        parallel = settings.workers
        adapter = requests.adapters.HTTPAdapter(
            max_retries=retry if retry is not None else build_retry(),
            pool_maxsize=max(4, parallel),
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        client = hvac.Client(
            url=settings.vault_addr,
            token=settings.vault_token.get(),
            namespace=settings.vault_namespace,
            verify=settings.vault_cacert or True,
            timeout=timeout,
            session=session,
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
        session = getattr(self._client.adapter, "session", None)
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
            if not self._token_valid():
                raise VaultRequestError(
                    f"Vault answered 'permission denied' to {what}: the token is no longer "
                    "valid (expired or revoked), or its policy lacks read on "
                    "auth/token/lookup-self (README, 'Vault policy'). The run stopped cleanly; "
                    "set VAULT_TOKEN to a valid token and run the same command again to resume"
                ) from None
            policy = (
                f" The token's policy needs:\n  {needs}"
                if needs
                else " (see README, 'Vault policy')"
            )
            raise VaultRequestError(
                f"Vault answered 'permission denied' to {what}: the token lacks a capability "
                f"on that path.{policy}"
            ) from None
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

    # -- keys -------------------------------------------------------------------------------

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
                f"reading Transit key {name!r} failed: {_errors(exc)}"
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
            raise VaultRequestError(f"token lookup failed: {_errors(exc)}") from None
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
        call = _BatchCall(
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
        if len(ranges) == 1 or self.parallel == 1:
            parts = [self._send(call, lo, hi) for lo, hi in ranges]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="transit")
            futures = [self._pool.submit(self._send, call, lo, hi) for lo, hi in ranges]
            parts = [f.result() for f in futures]  # input order; the first error is raised
        out = [r for part in parts for r in part]
        if len(out) != len(items):  # pragma: no cover - guarded per request in _batch
            raise VaultRequestError(f"Vault answered {call.what} with a wrong number of results")
        return out

    def _send(self, call: _BatchCall, lo: int, hi: int) -> list[ItemResult]:
        """Items ``[lo, hi)`` in one request; refused as too large: in halves, smaller from now."""
        try:
            results = self._request(call, lo, hi)
        except RequestTooLarge as exc:
            size = hi - lo
            if size == 1:
                reason = (
                    f"Vault refuses even a request with this value alone as too large "
                    f"({exc.text}); the server's request limits are below this value's size"
                )
                return [ItemResult(None, reason)]
            self.limits.refused(size, exc.text)
            out: list[ItemResult] = []
            start = lo
            while start < hi:  # at the size in force now, which another refusal may lower
                end = min(start + min(self.limits.max_items, (size + 1) // 2), hi)
                out.extend(self._send(call, start, end))
                start = end
            return out
        self.limits.passed(hi - lo)
        return results

    def _request(self, call: _BatchCall, lo: int, hi: int) -> list[ItemResult]:
        batch = []
        for value, context in call.items[lo:hi]:
            entry: dict[str, Any] = {call.field: value, **call.extra}
            if context is not None:
                entry["context"] = b64_context(context)
            batch.append(entry)
        results = self._batch(
            call.what,
            call.fn,
            needs=call.needs,
            name=call.key,
            batch_input=batch,
            mount_point=self.mount,
        )
        return [
            ItemResult(None, error)
            if (error := r.get("error"))
            else ItemResult(r.get(call.answer), None)
            for r in results
        ]

    def _batch(self, what: str, fn: Any, /, **kw: Any) -> list[dict[str, Any]]:
        expected = len(kw["batch_input"])
        try:
            resp = self._call(what, fn, **kw)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InternalServerError) as exc:
            body = exc.json if isinstance(getattr(exc, "json", None), dict) else None
            if body is None:  # hvac parses JSON only for exactly "application/json"
                try:
                    body = json.loads(getattr(exc, "text", None) or "null")
                except ValueError:
                    body = None
                body = body if isinstance(body, dict) else None
            results = (body or {}).get("data", {}) or {}
            results = results.get("batch_results") if isinstance(results, dict) else None
            if isinstance(results, list) and len(results) == expected:
                return [r if isinstance(r, dict) else {"error": "malformed item"} for r in results]
            text = _errors(exc)
            if is_too_large(text):
                status = 400 if isinstance(exc, hvac.exceptions.InvalidRequest) else 500
                raise RequestTooLarge(status, text) from None
            raise VaultRequestError(f"Vault refused the batch ({what}): {text}") from None
        except hvac.exceptions.VaultError as exc:
            text = _errors(exc)
            if is_too_large(text):  # a 413 (hvac: UnexpectedError) says "request body too large"
                raise RequestTooLarge(413, text) from None
            raise VaultRequestError(f"Vault refused the batch ({what}): {text}") from None
        if isinstance(resp, requests.Response):  # a 2xx other than 200
            resp = resp.json()
        results = resp.get("data", {}).get("batch_results")
        if not isinstance(results, list) or len(results) != expected:
            raise VaultRequestError(
                f"Vault answered the batch ({what}) with {len(results or [])} results "
                f"for {expected} items"
            )
        return results

    # -- checks before a run (used by preflight and verify) --------------------------------------

    def health(self, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """``GET sys/health`` once, **without** retries: (HTTP status, JSON body or ``{}``).

        Standby nodes answer 200 (``standbyok``); a sealed Vault answers 503, an uninitialised
        one 501. Raises :class:`VaultUnavailableError` when nothing answers at the address.
        """
        adapter = self._client.adapter
        kw = getattr(adapter, "_kwargs", {}) or {}
        url = f"{str(adapter.base_uri).rstrip('/')}/v1/sys/health"
        self._count()
        try:
            with requests.Session() as session:
                resp = session.get(
                    url,
                    params={"standbyok": "true", "perfstandbyok": "true"},
                    timeout=timeout,
                    verify=kw.get("verify", True),
                    cert=kw.get("cert"),
                    proxies=kw.get("proxies"),
                )
        except requests.exceptions.RequestException as exc:
            raise VaultUnavailableError(
                f"cannot reach Vault at {adapter.base_uri} ({type(exc).__name__})"
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
            raise VaultRequestError(f"sys/capabilities-self failed: {_errors(exc)}") from None
        data = resp.get("data") if isinstance(resp.get("data"), dict) else resp
        out: dict[str, list[str]] = {}
        for path in paths:
            caps = data.get(path.lstrip("/"), resp.get(path.lstrip("/")))
            if caps is None and len(paths) == 1:
                caps = data.get("capabilities")
            out[path] = [str(c) for c in caps] if isinstance(caps, list) else []
        return out


def _errors(exc: Exception) -> str:
    """Vault's error texts of an hvac exception (they never carry plaintext or tokens)."""
    errs = getattr(exc, "errors", None)
    if errs:
        return "; ".join(str(e).replace("1 error occurred:\n\t* ", "").strip() for e in errs)
    return f"{type(exc).__name__} (HTTP status without error text)"
