"""Splitting a batch into requests, and shrinking them when a server refuses: no server needed.

``send_within_limits`` is driven here by a plain function standing in for "one request" (our own
seam, not hvac's): it answers each item with its own index, so the tests see exactly which item
each result belongs to after any number of splits.
"""

from __future__ import annotations

import logging
import threading

import pytest

from context_encryption.settings import DEFAULT_VAULT_BATCH_ITEMS, MAX_VAULT_BATCH_ITEMS
from context_encryption.transit import (
    MAX_REQUEST_BYTES,
    ItemResult,
    RequestLimits,
    RequestTooLarge,
    send_within_limits,
    split_ranges,
)
from context_encryption.transit.limits import ITEM_OVERHEAD_BYTES

TOO_COMPLEX = "refused JSON input due to high complexity: exceeded maximum number of strings"


def covers(ranges: list[tuple[int, int]], n: int) -> bool:
    """The ranges are non-empty, in order, and cover 0..n without gap or overlap."""
    at = 0
    for lo, hi in ranges:
        if lo != at or hi <= lo:
            return False
        at = hi
    return at == n


# --- split_ranges ------------------------------------------------------------------------------


def test_no_items_no_ranges() -> None:
    assert list(split_ranges([], 10)) == []


@pytest.mark.parametrize(("n", "max_items"), [(1, 1), (5, 1), (10, 3), (150, 150), (151, 150)])
def test_ranges_hold_at_most_max_items_and_cover_every_item_in_order(
    n: int, max_items: int
) -> None:
    ranges = list(split_ranges([10] * n, max_items))
    assert covers(ranges, n)
    assert all(hi - lo <= max_items for lo, hi in ranges)
    # as few requests as the item limit allows
    assert len(ranges) == -(-n // max_items)


def test_exact_ranges_of_ten_items_by_four() -> None:
    assert list(split_ranges([1] * 10, 4)) == [(0, 4), (4, 8), (8, 10)]


def test_ranges_stay_under_the_byte_budget() -> None:
    sizes = [400, 400, 400, 400, 400]
    budget = 2 * (400 + ITEM_OVERHEAD_BYTES) + 399  # a third item would be one byte over
    ranges = list(split_ranges(sizes, 100, max_bytes=budget))
    assert ranges == [(0, 2), (2, 4), (4, 5)]


def test_an_item_larger_than_the_budget_goes_alone() -> None:
    ranges = list(split_ranges([10, MAX_REQUEST_BYTES + 1, 10], 100))
    assert ranges == [(0, 1), (1, 2), (2, 3)]


def test_default_budget_splits_large_values() -> None:
    big = MAX_REQUEST_BYTES // 3
    ranges = list(split_ranges([big] * 7, DEFAULT_VAULT_BATCH_ITEMS))
    assert covers(ranges, 7)
    assert all(hi - lo <= 3 for lo, hi in ranges)
    assert len(ranges) > 1


# --- RequestLimits -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, MAX_VAULT_BATCH_ITEMS + 1])
def test_limits_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_items must be"):
        RequestLimits(bad)


def test_limits_start_at_the_setting() -> None:
    limits = RequestLimits()
    assert limits.configured == limits.max_items == DEFAULT_VAULT_BATCH_ITEMS
    assert limits.refusals == 0


def test_a_refusal_halves_the_limit_and_it_never_grows_back() -> None:
    limits = RequestLimits(150)
    assert limits.refused(150, TOO_COMPLEX) == 75
    assert limits.refused(150, TOO_COMPLEX) == 75  # a late refusal of a larger size: no growth
    assert limits.refused(75, TOO_COMPLEX) == 37
    assert limits.refused(1, TOO_COMPLEX) == 1  # never below one item
    assert (limits.max_items, limits.refusals, limits.configured) == (1, 4, 150)


def test_passed_says_nothing_without_refusals(caplog: pytest.LogCaptureFixture) -> None:
    limits = RequestLimits(10)
    with caplog.at_level(logging.DEBUG, logger="context_encryption"):
        limits.passed(10)
    assert caplog.records == []


def test_one_warning_once_a_request_at_the_new_limit_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = RequestLimits(150)
    limits.refused(150, TOO_COMPLEX)
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        limits.passed(10)  # smaller than the limit: not yet proof that the limit passes
        assert caplog.records == []
        limits.passed(75)
        limits.passed(75)
        limits.passed(75)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "requests of 150 items" in warnings[0]
    assert "of 75 items pass" in warnings[0]
    assert "-x vault-batch-items=75" in warnings[0]
    assert TOO_COMPLEX in warnings[0]


def test_one_warning_even_from_many_threads(caplog: pytest.LogCaptureFixture) -> None:
    limits = RequestLimits(100)
    limits.refused(100, TOO_COMPLEX)
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        threads = [threading.Thread(target=limits.passed, args=(50,)) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(caplog.records) == 1


# --- send_within_limits --------------------------------------------------------------------------


class Server:
    """Refuses requests of more than ``accepts`` items as too large; answers item i with "v<i>"."""

    def __init__(self, accepts: int, status: int = 400) -> None:
        self.accepts = accepts
        self.status = status
        self.sent: list[tuple[int, int]] = []
        self.refused: list[tuple[int, int]] = []

    def __call__(self, lo: int, hi: int) -> list[ItemResult]:
        if hi - lo > self.accepts:
            self.refused.append((lo, hi))
            raise RequestTooLarge(self.status, TOO_COMPLEX)
        self.sent.append((lo, hi))
        return [ItemResult(f"v{i}", None) for i in range(lo, hi)]


def expected(lo: int, hi: int) -> list[ItemResult]:
    return [ItemResult(f"v{i}", None) for i in range(lo, hi)]


def test_a_request_that_passes_is_sent_once() -> None:
    server, limits = Server(accepts=150), RequestLimits(150)
    assert send_within_limits(server, 0, 150, limits) == expected(0, 150)
    assert server.sent == [(0, 150)]
    assert limits.refusals == 0


@pytest.mark.parametrize(("n", "accepts"), [(150, 59), (150, 23), (61, 4), (7, 1), (100, 99)])
def test_refused_requests_are_halved_and_results_come_back_in_input_order(
    n: int, accepts: int
) -> None:
    server, limits = Server(accepts=accepts), RequestLimits(150)
    results = send_within_limits(server, 0, n, limits)
    assert results == expected(0, n)  # item by item, whatever the splits
    assert covers(sorted(server.sent), n)
    assert all(hi - lo <= accepts for lo, hi in server.sent)
    assert limits.max_items <= accepts
    assert limits.refusals == len(server.refused) >= 1


def test_a_refused_request_is_never_sent_again_unchanged() -> None:
    server, limits = Server(accepts=10), RequestLimits(150)
    send_within_limits(server, 0, 150, limits)
    assert len(server.refused) == len(set(server.refused))
    assert not set(server.refused) & set(server.sent)


def test_the_smaller_size_is_kept_for_the_next_requests() -> None:
    server, limits = Server(accepts=40), RequestLimits(150)
    send_within_limits(server, 0, 150, limits)
    refusals = limits.refusals
    server.sent.clear()
    # the caller splits the next batch at the kept size: nothing is refused any more
    ranges = list(split_ranges([10] * 150, limits.max_items))
    results = [r for lo, hi in ranges for r in send_within_limits(server, lo, hi, limits)]
    assert results == expected(0, 150)
    assert limits.refusals == refusals
    assert server.sent == ranges


def test_offsets_other_than_zero_keep_their_items() -> None:
    server, limits = Server(accepts=3), RequestLimits(150)
    assert send_within_limits(server, 40, 57, limits) == expected(40, 57)


def test_a_single_item_refused_as_too_large_is_that_items_error_only() -> None:
    server, limits = Server(accepts=0, status=500), RequestLimits(4)
    results = send_within_limits(server, 0, 4, limits)
    assert [r.value for r in results] == [None] * 4
    for r in results:
        assert r.error is not None
        assert "refuses even a request with this value alone as too large" in r.error
        assert TOO_COMPLEX in r.error


def test_other_errors_are_not_taken_for_a_refusal() -> None:
    limits = RequestLimits(10)

    def broken(lo: int, hi: int) -> list[ItemResult]:
        raise RuntimeError("not a size refusal")

    with pytest.raises(RuntimeError):
        send_within_limits(broken, 0, 10, limits)
    assert limits.refusals == 0
