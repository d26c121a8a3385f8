"""The throttle's settings: the ``-x`` options of issue 15, parsed and checked before any work.

========================  ======================  ============================================
``-x`` name               default                 meaning
========================  ======================  ============================================
``batch-target``          ``off``                 target time of one batch (e.g. ``2s``): the
                                                  batch size follows it between
                                                  ``min-batch-size`` and ``max-batch-size``;
                                                  ``-x batch-size`` is then the first size.
                                                  ``off``: ``-x batch-size`` is fixed
``min-batch-size``        ``10``                  smallest batch the target mode may choose
``max-batch-size``        ``10000``               largest batch the target mode may choose
``max-replica-lag``       ``60s``                 hold while a standby's replay is further
                                                  behind than this (``0``: off)
``max-replica-lag-bytes`` ``256MB``               hold while a standby's replay, or a physical
                                                  slot's retained WAL, is more than this
                                                  behind (``0``: off)
``hold-on-autovacuum``    ``true``                hold while autovacuum works on the table
``max-batch-time``        ``0`` (off)             a batch whose transaction took longer makes
                                                  the run rest as long as it took
``hold-timeout``          ``30min``               a hold longer than this stops the run
                                                  cleanly, resumable (``0``: wait for ever)
``pause-table``           ``context_encryption_`` the control table whose rows pause runs from
                          ``pause``               outside (``off``: no pause control)
========================  ======================  ============================================

Every default is a no-op on a primary without standbys or replication slots: nothing holds
unless autovacuum works on the table or an operator asks for a pause. Messages follow
``settings.py``: they start with the option as the user gave it and never show a secret (there
is none here). Sizes and booleans are parsed by :mod:`.setting_values`' own parsers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Final

from context_encryption.errors import ConfigurationError
from context_encryption.setting_values import Parser, int_between, parse_bool

#: The size bounds of the target mode (the largest is settings.MAX_BATCH_SIZE's value).
SMALLEST_BATCH: Final = 1
LARGEST_BATCH: Final = 10_000
DEFAULT_PAUSE_TABLE: Final = "context_encryption_pause"


@dataclass(frozen=True)
class ThrottleConfig:
    """What the throttle holds on and how the batch size moves; ``None`` means off."""

    batch_target_s: float | None = None
    min_batch_size: int = 10
    max_batch_size: int = LARGEST_BATCH
    max_replica_lag_s: float | None = 60.0
    max_replica_lag_bytes: int | None = 256 * 1024**2
    hold_on_autovacuum: bool = True
    max_batch_time_s: float | None = None
    hold_timeout_s: float | None = 1800.0
    pause_table: str | None = DEFAULT_PAUSE_TABLE

    def public_dict(self) -> dict[str, object]:
        """The settings for a report (nothing here is secret)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"^\s*{_NUMBER}\s*(ms|s|sec|min|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_BYTES = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?\s*$", re.IGNORECASE)
_BYTE_FACTOR = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_OFF = {"off", "none", "0"}


def _duration(*, off: bool) -> Parser:
    """Seconds from ``500ms``, ``2s``, ``1.5min``, ``1h``; ``0`` (and ``off``) is None."""

    def parse(label: str, raw: str) -> float | None:
        if off and raw.strip().lower() in _OFF:
            return None
        m = _DURATION.match(raw)
        if not m or (m.group(2) is None and float(m.group(1)) != 0):
            disable = ", or 0 to turn it off" if off else ""
            raise ConfigurationError(
                f"{label}={raw!r} is not a duration with a unit; use e.g. 500ms, 2s, 5min{disable}"
            )
        seconds = float(m.group(1)) * _SECONDS[(m.group(2) or "s").lower()]
        if seconds == 0:
            if off:
                return None
            raise ConfigurationError(f"{label}={raw!r} must be more than 0")
        return seconds

    return parse


def _bytes(label: str, raw: str) -> int | None:
    """Bytes from ``512kB``, ``64MB``, ``1GB`` (1024-based, as PostgreSQL's units); 0 is None."""
    if raw.strip().lower() in _OFF:
        return None
    m = _BYTES.match(raw)
    if not m or (m.group(2) is None and int(m.group(1)) != 0):
        raise ConfigurationError(
            f"{label}={raw!r} is not a size with a unit; use e.g. 64MB, 1GB, or 0 to turn it off"
        )
    value = int(m.group(1)) * _BYTE_FACTOR[(m.group(2) or "b")[0].lower()]
    return value or None


#: A batch size of the target mode (``min-batch-size``, ``max-batch-size``).
_size = int_between(SMALLEST_BATCH, LARGEST_BATCH)


def _pause_table(label: str, raw: str) -> str | None:
    name = raw.strip()
    if name.lower() in ("off", "none"):
        return None
    if not _TABLE_NAME.match(name):
        raise ConfigurationError(
            f"{label}={raw!r} is not a plain table name (letters, digits, _; at most 63); "
            f"use e.g. {DEFAULT_PAUSE_TABLE}, or off"
        )
    return name


@dataclass(frozen=True)
class ThrottleOption:
    """One ``-x`` option of the throttle: its name, field, parser, default (as shown) and help."""

    name: str
    field: str
    parse: Parser
    default: str
    help: str


THROTTLE_OPTIONS: Final[tuple[ThrottleOption, ...]] = (
    ThrottleOption(
        "batch-target",
        "batch_target_s",
        _duration(off=True),
        "off",
        "target time of one batch; the batch size follows it (off: batch-size is fixed)",
    ),
    ThrottleOption(
        "min-batch-size", "min_batch_size", _size, "10", "smallest batch of batch-target"
    ),
    ThrottleOption(
        "max-batch-size", "max_batch_size", _size, "10000", "largest batch of batch-target"
    ),
    ThrottleOption(
        "max-replica-lag",
        "max_replica_lag_s",
        _duration(off=True),
        "60s",
        "hold while a standby's replay is further behind (0: off)",
    ),
    ThrottleOption(
        "max-replica-lag-bytes",
        "max_replica_lag_bytes",
        _bytes,
        "256MB",
        "hold while a standby's replay or a physical slot is more WAL behind (0: off)",
    ),
    ThrottleOption(
        "hold-on-autovacuum",
        "hold_on_autovacuum",
        parse_bool,
        "true",
        "hold while autovacuum works on the table",
    ),
    ThrottleOption(
        "max-batch-time",
        "max_batch_time_s",
        _duration(off=True),
        "0",
        "a batch's transaction longer than this makes the run rest as long (0: off)",
    ),
    ThrottleOption(
        "hold-timeout",
        "hold_timeout_s",
        _duration(off=True),
        "30min",
        "a hold longer than this stops the run, resumable (0: wait for ever)",
    ),
    ThrottleOption(
        "pause-table",
        "pause_table",
        _pause_table,
        DEFAULT_PAUSE_TABLE,
        "table whose rows pause runs from outside (off: none)",
    ),
)

#: The throttle's ``-x`` names: the settings loader accepts these and hands them over.
THROTTLE_X_NAMES: Final = frozenset(o.name for o in THROTTLE_OPTIONS)


def x_label(name: str) -> str:
    return f"-x {name}"


def parse_throttle_options(
    x_args: Mapping[str, str], *, label: Callable[[str], str] = x_label
) -> ThrottleConfig:
    """A :class:`ThrottleConfig` from the throttle's ``-x`` options; other names are ignored.

    ``label`` spells an option the way the user typed it (``-x hold-timeout`` by default,
    ``--hold-timeout`` for the ``context-encryption`` command). Raises
    :class:`ConfigurationError` naming the option for a value that does not parse, and for
    ``min-batch-size`` above ``max-batch-size``.
    """
    kw: dict[str, object] = {}
    for option in THROTTLE_OPTIONS:
        if option.name in x_args:
            kw[option.field] = option.parse(label(option.name), x_args[option.name])
    config = ThrottleConfig(**kw)  # type: ignore[arg-type]
    if config.min_batch_size > config.max_batch_size:
        raise ConfigurationError(
            f"{label('min-batch-size')}={config.min_batch_size} is above "
            f"{label('max-batch-size')}={config.max_batch_size}; the smallest batch cannot be "
            "larger than the largest"
        )
    return config


def throttle_help(name: str) -> str:
    """One line for ``--help``."""
    o = next(o for o in THROTTLE_OPTIONS if o.name == name)
    return f"{o.help} (default: {o.default})".replace("%", "%%")
