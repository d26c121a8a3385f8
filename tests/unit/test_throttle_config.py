"""The throttle's -x options: defaults, values, and messages in the style of settings.py."""

from __future__ import annotations

import json

import pytest

from context_encryption import cli
from context_encryption.errors import ConfigurationError
from context_encryption.settings import FLAG_SPELLING, OPTION_BY_NAME, load_settings
from context_encryption.throttle_config import (
    DEFAULT_PAUSE_TABLE,
    THROTTLE_X_NAMES,
    ThrottleConfig,
    parse_throttle_options,
    throttle_help,
)

MB = 1024**2


def test_defaults_hold_on_nothing_a_lone_primary_has() -> None:
    config = parse_throttle_options({})
    assert config == ThrottleConfig()
    assert config.batch_target_s is None  # -x batch-size stays fixed
    assert (config.max_replica_lag_s, config.max_replica_lag_bytes) == (60.0, 256 * MB)
    assert config.hold_timeout_s == 1800.0
    assert config.max_batch_time_s is None
    assert config.pause_table == DEFAULT_PAUSE_TABLE


def test_values() -> None:
    config = parse_throttle_options(
        {
            "batch-target": "1.5s",
            "min-batch-size": "50",
            "max-batch-size": "5000",
            "max-replica-lag": "500ms",
            "max-replica-lag-bytes": "64MB",
            "hold-on-autovacuum": "false",
            "max-batch-time": "2min",
            "hold-timeout": "1h",
            "pause-table": "ops_pause",
            "batch-size": "200",  # not the throttle's: ignored here
        }
    )
    assert config == ThrottleConfig(
        batch_target_s=1.5,
        min_batch_size=50,
        max_batch_size=5000,
        max_replica_lag_s=0.5,
        max_replica_lag_bytes=64 * MB,
        hold_on_autovacuum=False,
        max_batch_time_s=120.0,
        hold_timeout_s=3600.0,
        pause_table="ops_pause",
    )


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("max-replica-lag", "0"),
        ("max-replica-lag", "off"),
        ("max-replica-lag-bytes", "0"),
        ("max-replica-lag-bytes", "0MB"),
        ("hold-timeout", "0"),
        ("batch-target", "off"),
        ("pause-table", "off"),
    ],
)
def test_zero_or_off_turns_a_check_off(name: str, raw: str) -> None:
    config = parse_throttle_options({name: raw})
    off = {
        "max-replica-lag": config.max_replica_lag_s,
        "max-replica-lag-bytes": config.max_replica_lag_bytes,
        "hold-timeout": config.hold_timeout_s,
        "batch-target": config.batch_target_s,
        "pause-table": config.pause_table,
    }[name]
    assert off is None


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (
            {"batch-target": "2"},
            "-x batch-target='2' is not a duration with a unit; use e.g. 500ms, 2s, 5min, "
            "or 0 to turn it off",
        ),
        (
            {"hold-timeout": "soon"},
            "-x hold-timeout='soon' is not a duration with a unit",
        ),
        (
            {"max-replica-lag-bytes": "64"},
            "-x max-replica-lag-bytes='64' is not a size with a unit; use e.g. 64MB, 1GB, or 0 "
            "to turn it off",
        ),
        ({"max-replica-lag-bytes": "-1MB"}, "-x max-replica-lag-bytes='-1MB' is not a size"),
        ({"min-batch-size": "ten"}, "-x min-batch-size='ten' is not a whole number"),
        ({"max-batch-size": "20000"}, "-x max-batch-size=20000 is out of range (1 to 10000)"),
        ({"min-batch-size": "0"}, "-x min-batch-size=0 is out of range (1 to 10000)"),
        (
            {"hold-on-autovacuum": "maybe"},
            "-x hold-on-autovacuum='maybe' is not a boolean; use true or false",
        ),
        (
            {"pause-table": "x; drop table users"},
            "-x pause-table='x; drop table users' is not a plain table name",
        ),
        (
            {"min-batch-size": "500", "max-batch-size": "100"},
            "-x min-batch-size=500 is above -x max-batch-size=100; the smallest batch cannot be "
            "larger than the largest",
        ),
    ],
)
def test_messages_name_the_option(x: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_throttle_options(x)
    assert str(err.value).startswith(message)


def test_messages_follow_the_spelling_of_the_command() -> None:
    with pytest.raises(ConfigurationError, match=r"^--hold-timeout='x' is not a duration"):
        parse_throttle_options({"hold-timeout": "x"}, label=lambda n: f"--{n}")


def test_names_do_not_collide_with_the_settings() -> None:
    assert not THROTTLE_X_NAMES & set(OPTION_BY_NAME)
    assert all(n == n.lower() and "_" not in n for n in THROTTLE_X_NAMES)


def test_help_lines() -> None:
    assert throttle_help("hold-timeout") == (
        "a hold longer than this stops the run, resumable (0: wait for ever) (default: 30min)"
    )


def test_public_dict_is_json_able() -> None:
    assert json.loads(json.dumps(ThrottleConfig().public_dict()))["hold_timeout_s"] == 1800.0


def test_the_settings_loader_takes_the_throttle_options() -> None:
    s = load_settings({"hold-timeout": "5min", "batch-target": "2s", "batch-size": "200"}, {})
    assert s.throttle == ThrottleConfig(hold_timeout_s=300.0, batch_target_s=2.0)
    assert s.batch_size == 200  # the first size of the target mode
    assert json.loads(json.dumps(s.public_dict()))["throttle"]["batch_target_s"] == 2.0
    assert load_settings({}, {}).throttle == ThrottleConfig()
    with pytest.raises(ConfigurationError, match=r"^--hold-timeout='x' is not a duration"):
        load_settings({"hold-timeout": "x"}, {}, spelling=FLAG_SPELLING)
    with pytest.raises(ConfigurationError) as err:
        load_settings({"hold-timout": "5min"}, {})
    assert str(err.value).startswith("unknown -x option(s): hold-timout; known: -x db, ")
    assert "-x hold-timeout, -x pause-table" in str(err.value)


def test_rewrap_takes_the_throttle_options_as_flags() -> None:
    args = cli._parser().parse_args(
        ["rewrap", "--max-replica-lag-bytes", "64MB", "--hold-timeout", "0", "--batch-target", "1s"]
    )
    settings = cli._settings(args)
    assert settings.throttle == ThrottleConfig(
        max_replica_lag_bytes=64 * MB, hold_timeout_s=None, batch_target_s=1.0
    )
    bad = cli._parser().parse_args(["rewrap", "--hold-timeout", "soon"])
    with pytest.raises(ConfigurationError, match=r"^--hold-timeout='soon' is not a duration"):
        cli._settings(bad)
