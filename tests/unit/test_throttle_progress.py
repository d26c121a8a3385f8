"""The progress bar shows what the run holds for, and its own label again when it goes on."""

from __future__ import annotations

from context_encryption.progress import Progress


def test_the_bar_shows_a_hold_and_clears_it() -> None:
    with Progress("users (upgrade)", 100, terminal=True) as progress:
        task = progress._bar.tasks[0]
        progress.hold("holding: standby 'r1' is 300.0 MB behind in replay")
        assert task.description == (
            "users (upgrade) [holding: standby 'r1' is 300.0 MB behind in replay]"
        )
        progress.hold(None)
        assert task.description == "users (upgrade)"


def test_without_a_terminal_a_hold_shows_nothing() -> None:
    with Progress("users (upgrade)", 100, terminal=False) as progress:
        progress.hold("holding: paused from outside")  # the throttle logs it instead
        assert progress._bar is None
