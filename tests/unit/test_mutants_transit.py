"""Tests that kill mutmut's survivors in context_encryption.transit (limits, answers, types,
retry).

Each test names what the surviving mutant changed; README "Mutation testing" lists the survivors
left (equivalent mutants) and why. No server: plain values and functions, as in the other unit
tests of the Transit package.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid

import hvac.exceptions
import pytest
import requests
import requests.adapters
import urllib3.exceptions
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.response import HTTPResponse
from urllib3.util.retry import RequestHistory

from context_encryption.settings import MAX_VAULT_BATCH_ITEMS
from context_encryption.transit import (
    ItemResult,
    RequestLimits,
    RequestTooLarge,
    build_retry,
    send_within_limits,
    split_ranges,
)
from context_encryption.transit.answers import (
    answer_results,
    batch_results_of,
    body_text,
    error_texts,
)
from context_encryption.transit.limits import ITEM_OVERHEAD_BYTES
from context_encryption.transit.retry import retrying_session
from context_encryption.transit.types import b64_context

TOO_COMPLEX = "refused JSON input due to high complexity: exceeded maximum number of strings"

# -- split_ranges: the byte budget's boundaries ------------------------------------------------


def test_a_request_exactly_at_the_byte_budget_is_not_split() -> None:
    """``acc + size > max_bytes``, not ``>=``; the budget starts (and restarts) at 0 bytes."""
    budget = 2 * ITEM_OVERHEAD_BYTES + 100
    first = budget - ITEM_OVERHEAD_BYTES - 100  # with its overhead, leaves exactly 100 bytes
    assert list(split_ranges([first, 100], 10, budget)) == [(0, 2)]
    assert list(split_ranges([first, 101], 10, budget)) == [(0, 1), (1, 2)]
    # after a split the next range starts from 0 bytes again
    assert list(split_ranges([budget, first, 100], 10, budget)) == [(0, 1), (1, 3)]


def test_a_first_item_over_the_budget_is_a_range_of_its_own_never_an_empty_one() -> None:
    assert list(split_ranges([500], 10, 200)) == [(0, 1)]
    assert list(split_ranges([500, 500], 1, 200)) == [(0, 1), (1, 2)]


# -- RequestLimits --------------------------------------------------------------------------------


def test_the_limits_accept_one_item_and_the_maximum() -> None:
    assert RequestLimits(1).max_items == 1
    assert RequestLimits(MAX_VAULT_BATCH_ITEMS).max_items == MAX_VAULT_BATCH_ITEMS
    for bad in (0, MAX_VAULT_BATCH_ITEMS + 1):
        with pytest.raises(ValueError, match=f"^max_items must be 1..{MAX_VAULT_BATCH_ITEMS}$"):
            RequestLimits(bad)


def test_a_refusal_and_the_size_that_passes_are_logged_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = RequestLimits(8)
    with caplog.at_level(logging.DEBUG, logger="context_encryption"):
        limits.refused(8, TOO_COMPLEX)
        limits.passed(4)
    assert caplog.messages == [
        "Vault refused 8 items as too large; now at most 4",
        "Vault refused requests of 8 items as too large or too complex "
        f"({TOO_COMPLEX}); requests of 4 items pass, and the run keeps that size. To avoid the "
        "refusals, set -x vault-batch-items=4 (or raise the server's request limits)",
    ]


def test_request_too_large_says_the_status_and_the_text() -> None:
    exc = RequestTooLarge(413, "http: request body too large")
    assert str(exc) == "HTTP 413: http: request body too large"
    assert (exc.status, exc.text) == (413, "http: request body too large")


# -- send_within_limits -----------------------------------------------------------------------


def by_index(lo: int, hi: int) -> list[ItemResult]:
    return [ItemResult(f"v{i}", None) for i in range(lo, hi)]


def test_the_warning_names_the_servers_refusal(caplog: pytest.LogCaptureFixture) -> None:
    def server(lo: int, hi: int) -> list[ItemResult]:
        if hi - lo > 2:
            raise RequestTooLarge(400, TOO_COMPLEX)
        return by_index(lo, hi)

    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        assert send_within_limits(server, 0, 4, RequestLimits(4)) == by_index(0, 4)
    assert len(caplog.messages) == 1
    assert f"too large or too complex ({TOO_COMPLEX})" in caplog.messages[0]


def test_a_refused_request_is_sent_in_halves_of_the_new_limit() -> None:
    sent: list[tuple[int, int]] = []

    def server(lo: int, hi: int) -> list[ItemResult]:
        if hi - lo > 2:
            raise RequestTooLarge(400, TOO_COMPLEX)
        sent.append((lo, hi))
        return by_index(lo, hi)

    assert send_within_limits(server, 10, 14, RequestLimits(4)) == by_index(10, 14)
    assert sent == [(10, 12), (12, 14)]


def test_a_small_request_at_an_offset_is_not_taken_for_one_at_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``passed`` gets the request's size (hi - lo), not anything that grows with the offset."""
    limits = RequestLimits(8)
    limits.refused(8, TOO_COMPLEX)  # now at most 4
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        send_within_limits(by_index, 100, 102, limits)  # 2 items: not proof that 4 pass
    assert caplog.messages == []


# -- Vault's answers: anything that is not the expected shape gives None, never an exception ---


def test_error_texts_of_an_exception_without_errors() -> None:
    assert error_texts(ValueError("x")) == "ValueError (HTTP status without error text)"


def test_batch_results_of_exceptions_without_a_json_body() -> None:
    assert batch_results_of(ValueError("x"), 1) is None  # neither .json nor .text
    assert batch_results_of(hvac.exceptions.InvalidRequest(text="[1]"), 1) is None
    assert batch_results_of(hvac.exceptions.InvalidRequest(text='"data"'), 1) is None
    assert batch_results_of(hvac.exceptions.InvalidRequest(json={"data": [1]}), 1) is None


def test_body_text_of_json_that_is_not_an_object() -> None:
    assert body_text(" [1, 2] ") == "[1, 2]"
    assert body_text('"errors"') == '"errors"'


def test_answer_results_of_other_shapes() -> None:
    assert answer_results([{"data": {}}]) is None
    assert answer_results({"data": {"batch_results": {"0": {}}}}) is None


def test_answer_results_of_a_response_other_than_200() -> None:
    """hvac gives its requests.Response back for a 2xx other than 200: its JSON is read."""
    resp = requests.Response()
    resp.status_code = 202
    resp._content = json.dumps({"data": {"batch_results": [{"plaintext": "eA=="}]}}).encode()
    assert answer_results(resp) == [{"plaintext": "eA=="}]


# -- b64_context: a context never seen before (the cache cannot hide a wrong computation) -----


def test_b64_context_of_a_new_context_then_from_the_cache() -> None:
    context = f"table_{uuid.uuid4().hex}.column"
    expected = base64.b64encode(context.encode()).decode()
    assert b64_context(context) == expected
    assert b64_context(context) == expected


# -- retry: the policy's settings, the history urllib3 keeps, bodies that are not UTF-8 -------


def test_the_retry_policys_other_settings() -> None:
    retry = build_retry()
    assert retry.other == 2  # errors neither of connecting nor of reading
    assert (retry.backoff_factor, retry.backoff_jitter) == (0.25, 0.25)
    assert build_retry(backoff_factor=1.0).backoff_jitter == 1.0


def test_the_session_pools_as_many_connections_as_asked() -> None:
    session = retrying_session(None, verify=True, pool_size=6)
    try:
        adapter = session.get_adapter("https://vault:8200/v1/sys/health")
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter.poolmanager.connection_pool_kw["maxsize"] == 6
    finally:
        session.close()


URL = "/v1/transit/decrypt/pos-encryption-key"


def test_each_retry_is_recorded_with_what_urllib3_gave() -> None:
    answer = HTTPResponse(body=b"{}", status=503, preload_content=True)
    new = build_retry().increment("POST", URL, response=answer)
    assert new.history == (RequestHistory("POST", URL, None, 503, None),)
    error = urllib3.exceptions.ConnectTimeoutError("timed out")
    new = new.increment("POST", URL, error=error)
    assert new.history[-1] == RequestHistory("POST", URL, error, None, None)


def test_retries_run_out_naming_the_pool() -> None:
    pool = HTTPConnectionPool("vault", 8200)
    error = urllib3.exceptions.ConnectTimeoutError("timed out")
    with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
        build_retry(total=0).increment("POST", URL, error=error, _pool=pool)
    assert err.value.pool is pool
    assert err.value.url == URL
    pool.close()


def test_a_500_whose_body_is_not_utf8_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    answer = HTTPResponse(body=b"\xff\xfe internal error", status=500, preload_content=True)
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        new = build_retry().increment("POST", URL, response=answer)
    assert len(new.history) == 1
    assert caplog.messages == ["Vault request failed (HTTP 500); retry 1 in 0.0s"]
