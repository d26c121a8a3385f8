"""The target-time batch sizer: the size of a table's next batch, from the time of the last ones.

With ``-x batch-target`` the size follows the target time (:class:`BatchSizer`: a moving
average of recent batches' time per row, +10 % below 90 % of the target, -20 % above 110 %,
within ``min-batch-size`` and ``max-batch-size``), as GitLab's batched background migrations
do. Without it ``-x batch-size`` is fixed. :meth:`BatchSizer.stats` is how the sizes went, for
the table's report.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final


class BatchSizer:
    """The batch size of the target mode (fixed when ``target_s`` is None).

    After each batch: the moving average of the last ``window`` batches' seconds per row,
    times the current size, predicts the next batch's time. Below ``LOW`` of the target the
    size grows by ``GROW`` (at least one row); above ``HIGH`` it shrinks by ``SHRINK``; it
    always stays within ``[smallest, largest]``.
    """

    GROW: Final = 1.10
    SHRINK: Final = 0.80
    LOW: Final = 0.90
    HIGH: Final = 1.10

    def __init__(
        self,
        start: int,
        target_s: float | None,
        smallest: int,
        largest: int,
        *,
        window: int = 5,
    ) -> None:
        self.target_s = target_s
        self.smallest = smallest
        self.largest = largest
        self.size = start if target_s is None else min(max(start, smallest), largest)
        self._per_row: deque[float] = deque(maxlen=window)
        self._first = self.size
        self._sizes = [self.size, self.size]  # smallest and largest chosen
        self._batches = 0
        self._last: deque[tuple[int, float]] = deque(maxlen=10)

    def observe(self, rows: int, seconds: float) -> int:
        """Record a batch of ``rows`` that took ``seconds``; the size of the next batch."""
        if rows <= 0 or seconds < 0:
            return self.size
        self._batches += 1
        self._last.append((rows, seconds))
        if self.target_s is None:
            return self.size
        self._per_row.append(seconds / rows)
        predicted = sum(self._per_row) / len(self._per_row) * self.size
        if predicted > self.target_s * self.HIGH:
            self.size = max(self.smallest, math.floor(self.size * self.SHRINK))
        elif predicted < self.target_s * self.LOW:
            self.size = min(self.largest, max(self.size + 1, math.ceil(self.size * self.GROW)))
        self._sizes = [min(self._sizes[0], self.size), max(self._sizes[1], self.size)]
        return self.size

    def stats(self) -> dict[str, object]:
        """How the sizes went, for the report: the mode, the first, last, smallest and largest
        size, the batches seen, and the mean rows and seconds of the last ten."""
        n = len(self._last)
        return {
            "mode": "fixed" if self.target_s is None else "target",
            "target_seconds": self.target_s,
            "first": self._first,
            "last": self.size,
            "smallest": self._sizes[0],
            "largest": self._sizes[1],
            "batches": self._batches,
            "last10_mean_rows": round(sum(r for r, _ in self._last) / n, 1) if n else None,
            "last10_mean_seconds": round(sum(t for _, t in self._last) / n, 4) if n else None,
        }
