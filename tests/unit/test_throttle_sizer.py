"""The target-time batch size (BatchSizer): converges to the target, stays in its bounds."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from context_encryption.batch_sizer import BatchSizer


def run(sizer: BatchSizer, cost: Callable[[int], float], batches: int) -> list[int]:
    """Feed ``batches`` batches whose time is ``cost(rows)``; the sizes chosen."""
    sizes = []
    for _ in range(batches):
        rows = sizer.size
        sizes.append(rows)
        sizer.observe(rows, cost(rows))
    return sizes


def test_fixed_size_without_a_target() -> None:
    sizer = BatchSizer(1000, None, 10, 10_000)
    assert run(sizer, lambda rows: rows * 0.01, 20) == [1000] * 20


@pytest.mark.parametrize("start", [10, 1000, 10_000])
def test_converges_to_the_target_from_below_and_above(start: int) -> None:
    # 50 ms per batch plus 0.5 ms per row: 2 s is 3,900 rows
    sizer = BatchSizer(start, 2.0, 10, 10_000)

    def cost(rows: int) -> float:
        return 0.05 + rows * 0.0005

    sizes = run(sizer, cost, 120)
    tail = sizes[-20:]
    assert all(0.9 * 2.0 * 0.95 <= cost(s) <= 1.1 * 2.0 * 1.05 for s in tail), tail
    assert len(set(tail)) <= 2  # settled, at most one step of hysteresis


def test_steps_are_plus_ten_and_minus_twenty_percent() -> None:
    grow = BatchSizer(1000, 10.0, 10, 10_000)
    assert grow.observe(1000, 1.0) == 1100
    shrink = BatchSizer(1000, 1.0, 10, 10_000)
    assert shrink.observe(1000, 5.0) == 800
    keep = BatchSizer(1000, 1.0, 10, 10_000)
    assert keep.observe(1000, 1.0) == 1000


def test_grows_from_a_single_row() -> None:
    sizer = BatchSizer(1, 1.0, 1, 100)
    assert run(sizer, lambda rows: rows * 0.001, 3) == [1, 2, 3]


@pytest.mark.parametrize(("per_row", "bound"), [(10.0, 50), (1e-7, 400)])
def test_stays_within_bounds(per_row: float, bound: int) -> None:
    sizer = BatchSizer(100, 1.0, 50, 400)
    sizes = run(sizer, lambda rows: rows * per_row, 60)
    assert all(50 <= s <= 400 for s in sizes)
    assert sizes[-1] == bound


def test_start_is_clamped_into_the_bounds() -> None:
    assert BatchSizer(5, 1.0, 50, 400).size == 50
    assert BatchSizer(5000, 1.0, 50, 400).size == 400


def test_noisy_batches_stay_near_the_target_and_in_bounds() -> None:
    rnd = random.Random(15)
    sizer = BatchSizer(1000, 1.0, 100, 5000)

    def cost(rows: int) -> float:
        return (0.02 + rows * 0.0004) * rnd.uniform(0.7, 1.3)

    sizes = run(sizer, cost, 400)
    assert all(100 <= s <= 5000 for s in sizes)
    mean_time = sum(0.02 + s * 0.0004 for s in sizes[-100:]) / 100
    assert 0.8 <= mean_time <= 1.2, mean_time


def test_a_sudden_slowdown_shrinks_the_batches() -> None:
    sizer = BatchSizer(2000, 1.0, 10, 10_000)
    run(sizer, lambda rows: rows * 0.0005, 40)  # settles near 2,000 rows
    settled = sizer.size
    run(sizer, lambda rows: rows * 0.005, 40)  # ten times slower
    assert sizer.size < settled / 5
    assert 0.9 * 0.95 <= sizer.size * 0.005 <= 1.1 * 1.05


def test_ignores_empty_batches() -> None:
    sizer = BatchSizer(100, 1.0, 10, 1000)
    assert sizer.observe(0, 0.0) == 100


def test_stats_for_the_report() -> None:
    sizer = BatchSizer(1000, 1.0, 10, 10_000)
    run(sizer, lambda rows: rows * 0.0005, 60)
    stats = sizer.stats()
    assert stats["mode"] == "target"
    assert (stats["first"], stats["smallest"], stats["batches"]) == (1000, 1000, 60)
    assert stats["largest"] == stats["last"] == sizer.size
    assert isinstance(stats["last10_mean_seconds"], float)
    assert 0.9 * 0.95 <= stats["last10_mean_seconds"] <= 1.1 * 1.05
    fixed = BatchSizer(500, None, 10, 10_000)
    assert fixed.stats()["last10_mean_rows"] is None
    fixed.observe(500, 0.2)
    assert fixed.stats() == {
        "mode": "fixed",
        "target_seconds": None,
        "first": 500,
        "last": 500,
        "smallest": 500,
        "largest": 500,
        "batches": 1,
        "last10_mean_rows": 500.0,
        "last10_mean_seconds": 0.2,
    }


def test_a_large_fixed_part_settles_without_swinging() -> None:
    """Mostly round trips (0.2 s) and little per row: the size settles, in the band."""
    sizer = BatchSizer(1000, 0.5, 10, 10_000)

    def cost(rows: int) -> float:
        return 0.2 + rows * 0.0002

    sizes = run(sizer, cost, 80)
    tail = sizes[-20:]
    assert len(set(tail)) == 1, tail
    assert 0.9 * 0.5 <= cost(tail[0]) <= 1.1 * 0.5
