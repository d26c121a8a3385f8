"""Bounded waits: poll a condition until it holds, and fail (never hang) once a bound has passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

#: The default bound of :func:`until`, in seconds.
BOUND_S: Final = 30.0


def until(what: str, cond: Callable[[], bool], bound: float = BOUND_S) -> None:
    """Return once ``cond()`` is true; raise AssertionError naming ``what`` after ``bound`` s."""
    deadline = time.monotonic() + bound
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound}s: {what}")
        time.sleep(0.02)
