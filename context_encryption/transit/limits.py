"""How many items go into one Transit request, and what happens when a server says too many.

Pure: no server, no hvac. A batch's items are split into as many requests as real servers
accept (:func:`split_ranges`): at most ``-x vault-batch-items`` items (default 150) and
:data:`MAX_REQUEST_BYTES` each. OpenBao (2.4.1+) refuses a body with more than 1,000 JSON strings
(HTTP 400), HashiCorp Vault (1.20.3+) more than 10,000 array elements (HTTP **500**); a request
with context and a pinned key version costs 5 strings an item, so 150 items fit both products'
defaults with a margin.

A server configured tighter than that refuses a request as too large or too complex
(:class:`RequestTooLarge`): :func:`send_within_limits` halves that request and sends it again,
the smaller size is kept for the rest of the run (shared by every worker through
:class:`RequestLimits`) and logged once with the setting that avoids it. Such a refusal is never
a failed row and is never retried unchanged. Results always come back in input order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from context_encryption.settings import DEFAULT_VAULT_BATCH_ITEMS, MAX_VAULT_BATCH_ITEMS
from context_encryption.transit.types import ItemResult

#: Half of both products' 32 MiB ``max_request_size`` (and OpenBao's 32.5 MiB JSON memory
#: estimate, which is about the strings' length): room for JSON overhead.
MAX_REQUEST_BYTES: Final = 16 * 1_048_576
#: What an item costs in a request beside its value (JSON keys, quotes, context), in bytes.
ITEM_OVERHEAD_BYTES: Final = 64

log = logging.getLogger("context_encryption")


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


def split_ranges(
    sizes: Sequence[int], max_items: int, max_bytes: int = MAX_REQUEST_BYTES
) -> Iterator[tuple[int, int]]:
    """Index ranges ``[lo, hi)`` of at most ``max_items`` items and about ``max_bytes`` each.

    ``sizes`` are the items' value lengths; every range holds at least one item. The ranges
    cover ``0..len(sizes)`` in order, without gap or overlap.
    """
    start = 0
    acc = 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_items or acc + size > max_bytes):
            yield start, i
            start, acc = i, 0
        acc += size + ITEM_OVERHEAD_BYTES
    if start < len(sizes):
        yield start, len(sizes)


#: Sends items ``[lo, hi)`` in one request; raises :class:`RequestTooLarge` when refused.
Request = Callable[[int, int], list[ItemResult]]


def send_within_limits(
    request: Request, lo: int, hi: int, limits: RequestLimits
) -> list[ItemResult]:
    """Items ``[lo, hi)`` in one request; refused as too large: in halves, smaller from now on.

    Results are in input order, one per item. A single item the server refuses as too large is
    that item's error (the server's limits are below its size), never a failed batch.
    """
    try:
        results = request(lo, hi)
    except RequestTooLarge as exc:
        size = hi - lo
        if size == 1:
            reason = (
                f"Vault refuses even a request with this value alone as too large "
                f"({exc.text}); the server's request limits are below this value's size"
            )
            return [ItemResult(None, reason)]
        limits.refused(size, exc.text)
        out: list[ItemResult] = []
        start = lo
        while start < hi:  # at the size in force now, which another refusal may lower
            end = min(start + min(limits.max_items, (size + 1) // 2), hi)
            out.extend(send_within_limits(request, start, end, limits))
            start = end
        return out
    limits.passed(hi - lo)
    return results
