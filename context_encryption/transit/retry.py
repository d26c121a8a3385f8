"""The retry policy of every Vault request, and the HTTP session that carries it.

Transport errors, 429, 500, 502, 503 and 504 are retried with exponential backoff and jitter by
urllib3's ``Retry`` mounted on the ``requests`` session hvac uses (:func:`retrying_session`).
Encrypt, decrypt and rewrap are idempotent, so a retried POST is safe. Any other status (400,
403, 404, ...) is an answer, handed to hvac at once: a decrypt *answer* such as ``cipher: message
authentication failed`` is a data fault and is never retried.

Vault answers HTTP 500 to a request over its JSON limits; retrying it unchanged would only
repeat the refusal, so :class:`LoggingRetry` stops at such a 500 and raises
:class:`~context_encryption.transit.limits.RequestTooLarge` for the caller to split the
request. Each retry is said in the tool's log, so an outage is not silent.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Final, Self

import requests
import requests.adapters
import urllib3.util.retry
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse

from context_encryption.transit.answers import body_text
from context_encryption.transit.limits import RequestTooLarge
from context_encryption.vault_texts import is_too_large

log = logging.getLogger("context_encryption")

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class LoggingRetry(urllib3.util.retry.Retry):
    """urllib3's Retry, saying each retry in the tool's log so an outage is not silent.

    A 500 whose body says the request is too large stops the retries and raises
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
                raise RequestTooLarge(500, body_text(text))
        cause = f"HTTP {response.status}" if response is not None else type(error).__name__
        log.warning(
            "Vault request failed (%s); retry %d in %.1fs",
            cause,
            len(new.history),
            new.get_backoff_time(),
        )
        return new


def build_retry(
    total: int = 8, backoff_factor: float = 0.25, backoff_max: float = 20.0
) -> LoggingRetry:
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


def retrying_session(
    retry: urllib3.util.retry.Retry | None, *, verify: str | bool, pool_size: int
) -> requests.Session:
    """A session for hvac with ``retry`` (default :func:`build_retry`) on http and https.

    hvac keeps a session's own ``verify``, so the CA bundle is set on the session.
    """
    session = requests.Session()
    session.verify = verify
    adapter = requests.adapters.HTTPAdapter(
        max_retries=retry if retry is not None else build_retry(), pool_maxsize=pool_size
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
