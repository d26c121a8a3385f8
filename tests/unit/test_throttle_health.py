"""Hold decisions from given readings: standbys, slots, autovacuum, the stall tracker."""

from __future__ import annotations

from context_encryption.health import (
    AUTOVACUUM,
    REPLICA_LAG,
    REPLICA_LAG_BYTES,
    SLOT_LAG_BYTES,
    SlotRow,
    StallTracker,
    StandbyRow,
    VacuumRow,
    human_bytes,
    human_seconds,
    slot_readings,
    standby_readings,
    vacuum_readings,
)
from context_encryption.throttle_config import ThrottleConfig

MB = 1024**2
CONFIG = ThrottleConfig(max_replica_lag_s=10.0, max_replica_lag_bytes=64 * MB)


def standby(
    behind: int | None,
    lsn: str | None = "0/3000000",
    lag: float | None = None,
    reply: float | None = 100.0,
    pid: int = 7,
) -> StandbyRow:
    return StandbyRow(pid, "replica1", behind, lsn, lag, reply)


def test_no_standby_no_slot_is_green() -> None:
    assert standby_readings([], {}, CONFIG) == []
    assert slot_readings([], CONFIG) == []
    assert vacuum_readings([], "users") == []


def test_a_standby_behind_in_bytes_is_red_with_figure_and_limit() -> None:
    (red,) = standby_readings([standby(100 * MB)], {}, CONFIG)
    assert (red.check, red.value, red.limit) == (REPLICA_LAG_BYTES, 100 * MB, 64 * MB)
    assert red.describe() == (
        "standby 'replica1' (pid 7) is 100.0 MB behind in replay "
        "(limit -x max-replica-lag-bytes=64.0 MB)"
    )


def test_at_the_limit_is_still_green() -> None:
    assert standby_readings([standby(64 * MB, lag=10.0)], {}, CONFIG) == []


def test_seconds_from_replay_lag_or_stall_whichever_is_larger() -> None:
    (red,) = standby_readings([standby(1, lag=12.5)], {}, CONFIG)
    assert (red.check, red.value) == (REPLICA_LAG, 12.5)
    assert "12.5s behind in replay (limit -x max-replica-lag=10.0s)" in red.describe()
    (red,) = standby_readings([standby(1, lag=0.1)], {7: 75.0}, CONFIG)
    assert red.value == 75.0
    assert "1min 15s behind" in red.describe()


def test_blanked_figures_are_not_red() -> None:
    assert standby_readings([standby(None, None, None, None)], {}, CONFIG) == []


def test_a_check_set_to_off_never_holds() -> None:
    off = ThrottleConfig(max_replica_lag_s=None, max_replica_lag_bytes=None)
    assert standby_readings([standby(10**12, lag=10**6)], {7: 10**6}, off) == []
    assert slot_readings([SlotRow("s", False, 10**12)], off) == []


def test_slots_over_the_limit_and_inactive_ones_named() -> None:
    red = slot_readings(
        [SlotRow("ok", True, MB), SlotRow("gone", False, 2 * 1024 * MB), SlotRow("x", True, None)],
        CONFIG,
    )
    assert [(r.check, r.subject) for r in red] == [(SLOT_LAG_BYTES, "'gone'")]
    assert red[0].describe() == (
        "replication slot 'gone' (inactive: its standby is not connected) retains 2.0 GB of WAL "
        "(limit -x max-replica-lag-bytes=64.0 MB)"
    )


def test_with_the_standby_check_on_only_inactive_slots_count() -> None:
    slots = [SlotRow("live", True, 2 * 1024 * MB), SlotRow("gone", False, 2 * 1024 * MB)]
    assert [r.subject for r in slot_readings(slots, CONFIG)] == ["'live'", "'gone'"]
    assert [r.subject for r in slot_readings(slots, CONFIG, inactive_only=True)] == ["'gone'"]


def test_autovacuum_on_the_table() -> None:
    (red,) = vacuum_readings([VacuumRow("scanning heap", True)], "guest_orders")
    assert red.check == AUTOVACUUM
    assert red.describe() == (
        "autovacuum is working on guest_orders (phase scanning heap, to prevent wraparound; "
        "-x hold-on-autovacuum=true)"
    )


def test_stall_counts_between_replies_at_the_same_position() -> None:
    t = StallTracker()
    assert t.observe([standby(MB, "0/10", reply=100.0)]) == {7: 0.0}
    assert t.observe([standby(2 * MB, "0/10", reply=101.0)]) == {7: 1.0}
    assert t.observe([standby(3 * MB, "0/10", reply=130.0)]) == {7: 30.0}
    # replay moved: the count starts again
    assert t.observe([standby(MB, "0/20", reply=131.0)]) == {7: 0.0}


def test_no_new_reply_is_no_stall() -> None:
    """Behind only because the next reply is not due: the same reply time, no stall."""
    t = StallTracker()
    for _ in range(5):
        assert t.observe([standby(MB, "0/10", reply=100.0)]) == {7: 0.0}


def test_caught_up_forgets_the_standby() -> None:
    t = StallTracker()
    t.observe([standby(MB, "0/10", reply=100.0)])
    assert t.observe([standby(0, "0/10", reply=120.0)]) == {}
    assert t.observe([standby(MB, "0/10", reply=140.0)]) == {7: 0.0}


def test_standbys_are_tracked_apart() -> None:
    t = StallTracker()
    t.observe([standby(MB, "0/10", reply=100.0, pid=1), standby(MB, "0/10", reply=100.0, pid=2)])
    got = t.observe(
        [standby(MB, "0/10", reply=150.0, pid=1), standby(MB, "0/99", reply=150.0, pid=2)]
    )
    assert got == {1: 50.0, 2: 0.0}


def test_human_figures() -> None:
    assert human_bytes(512) == "512 bytes"
    assert human_bytes(1536) == "1.5 kB"
    assert human_bytes(256 * MB) == "256.0 MB"
    assert human_bytes(3 * 1024**4) == "3.0 TB"
    assert human_seconds(0.25) == "0.2s"
    assert human_seconds(3600) == "60min 0s"


def test_reading_as_dict_is_json_able() -> None:
    (red,) = standby_readings([standby(100 * MB)], {}, CONFIG)
    assert red.as_dict() == {
        "check": "replica-lag-bytes",
        "subject": "'replica1' (pid 7)",
        "value": 100 * MB,
        "limit": 64 * MB,
        "option": "max-replica-lag-bytes",
    }
