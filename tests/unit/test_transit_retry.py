"""The retry policy's decisions, without a server: which answers are retried, and that a
request refused as too large is never retried unchanged.

The answers are urllib3's own response objects built from a status and a body (what urllib3
hands its ``Retry`` after a real request); nothing of hvac or requests is replaced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import pytest
import requests.adapters
import urllib3.exceptions
from urllib3.response import HTTPResponse

from context_encryption.transit import RETRY_STATUSES, LoggingRetry, RequestTooLarge, build_retry
from context_encryption.transit.retry import retrying_session
from context_encryption.vault_texts import TOO_LARGE_TEXTS

URL = "/v1/transit/decrypt/pos-encryption-key"


def answer(status: int, body: Mapping[str, object] | str = "") -> HTTPResponse:
    data = body if isinstance(body, str) else json.dumps(body)
    return HTTPResponse(body=data.encode("utf-8"), status=status, preload_content=True)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_overload_and_server_errors_are_retried_for_every_method(method: str, status: int) -> None:
    """POST too: encrypt, decrypt and rewrap are idempotent."""
    assert build_retry().is_retry(method, status)


@pytest.mark.parametrize("status", [200, 204, 400, 401, 403, 404, 405, 412, 413, 501])
def test_answers_are_not_retried(status: int) -> None:
    """400 (a decrypt's per-item failures, OpenBao's too-complex refusal), 403, 404, 413 are
    answers: retrying them would only repeat them."""
    assert not build_retry().is_retry("POST", status)


def test_the_retried_statuses_are_exactly_these() -> None:
    assert frozenset({429, 500, 502, 503, 504}) == RETRY_STATUSES


def test_defaults_try_nine_times_with_capped_backoff() -> None:
    retry = build_retry()
    assert isinstance(retry, LoggingRetry)
    assert (retry.total, retry.connect, retry.read, retry.status) == (8, 8, 8, 8)
    assert retry.raise_on_status is False  # the last answer goes to hvac
    assert retry.respect_retry_after_header is True
    assert retry.backoff_max == 20.0


def test_a_500_is_retried_with_a_warning_that_names_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retry = build_retry(total=3)
    body = {"errors": ["internal error: secret-ish detail"]}
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        new = retry.increment("POST", URL, response=answer(500, body))
    assert len(new.history) == 1
    assert new.total == 2
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("Vault request failed (HTTP 500); retry 1 in ")
    assert "secret-ish" not in message


def test_a_connection_error_is_retried_with_its_class_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retry = build_retry(total=3)
    error = urllib3.exceptions.ProtocolError("connection aborted")
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        new = retry.increment("POST", URL, error=error)
    assert len(new.history) == 1
    assert "(ProtocolError)" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "text",
    [
        "JSON array exceeds allowed element count",
        "JSON object exceeds allowed entry count",
        "1 error occurred:\n\t* JSON string exceeds allowed length",
    ],
)
def test_a_500_refusing_the_request_as_too_large_is_not_retried(text: str) -> None:
    retry = build_retry(total=8)
    with pytest.raises(RequestTooLarge) as exc:
        retry.increment("POST", URL, response=answer(500, {"errors": [text]}))
    assert exc.value.status == 500
    assert "exceeds allowed" in exc.value.text
    assert "error occurred" not in exc.value.text  # Vault's multierror heading is dropped


def test_every_too_large_text_stops_the_retries() -> None:
    for text in TOO_LARGE_TEXTS:
        with pytest.raises(RequestTooLarge):
            build_retry().increment("POST", URL, response=answer(500, {"errors": [text]}))


def test_a_too_large_500_without_json_is_still_not_retried() -> None:
    with pytest.raises(RequestTooLarge) as exc:
        build_retry().increment("POST", URL, response=answer(500, "http: request body too large"))
    assert exc.value.text == "http: request body too large"


def test_retries_run_out() -> None:
    retry = build_retry(total=2, backoff_factor=0)
    retry = retry.increment("POST", URL, response=answer(503))
    retry = retry.increment("POST", URL, response=answer(503))
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        retry.increment("POST", URL, response=answer(503))


def test_backoff_grows_and_is_capped() -> None:
    retry = build_retry(total=8, backoff_factor=1.0, backoff_max=4.0)
    waits = []
    for _ in range(6):
        retry = retry.increment("POST", URL, response=answer(502))
        waits.append(retry.get_backoff_time())
    assert waits[-1] <= 4.0 + 1.0  # the cap, plus at most the jitter
    assert max(waits) >= 2.0


def test_the_session_carries_the_policy_on_http_and_https() -> None:
    session = retrying_session(None, verify="/etc/ca.pem", pool_size=6)
    try:
        assert session.verify == "/etc/ca.pem"
        for prefix in ("http://", "https://"):
            adapter = session.get_adapter(f"{prefix}vault:8200/v1/sys/health")
            assert isinstance(adapter, requests.adapters.HTTPAdapter)
            assert isinstance(adapter.max_retries, LoggingRetry)
            assert adapter.max_retries.total == 8
    finally:
        session.close()


def test_a_given_retry_is_the_one_mounted() -> None:
    retry = build_retry(total=2)
    session = retrying_session(retry, verify=True, pool_size=4)
    try:
        adapter = session.get_adapter("https://vault:8200")
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter.max_retries is retry
    finally:
        session.close()
