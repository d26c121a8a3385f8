"""Loose conversion of request fields, like Vault's ``framework.FieldData`` (weak decoding).

Vault decodes JSON with ``UseNumber`` and converts field values loosely: ``"true"`` becomes a
bool, ``"3"`` an int. A value that cannot be converted gives 400
``Field validation failed: error converting input <v> for field "<name>": <reason>``
(text taken from OpenBao's ``sdk/framework``; unconfirmed for Vault).
"""

from __future__ import annotations

import re
from typing import Any

from vaultdev.errors import UserError

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def _fail(name: str, value: Any, reason: str) -> UserError:
    return UserError(
        f'Field validation failed: error converting input {value} for field "{name}": {reason}'
    )


def to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        if value in _TRUE:
            return True
        if value in _FALSE or value == "":
            return False
        raise _fail(name, value, f'cannot parse "{value}" as bool')
    raise _fail(name, value, "expected type 'bool'")


def to_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _fail(name, value, "cannot parse float with fraction as int")
    if isinstance(value, str):
        if value == "":
            return 0
        if _INT_RE.fullmatch(value):
            return int(value)
        raise _fail(name, value, f'strconv.ParseInt: parsing "{value}": invalid syntax')
    raise _fail(name, value, "expected type 'int'")


def to_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    raise _fail(name, value, "expected type 'string'")


def parse_duration_seconds(name: str, value: Any) -> int:
    """Seconds from an int, a numeric string, or a Go duration string (``"1h30m"``, ``"30s"``)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _fail(name, value, "expected a duration")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0
        if _INT_RE.fullmatch(text):
            return int(text)
        sign = 1
        if text[0] in "+-":
            sign = -1 if text[0] == "-" else 1
            text = text[1:]
        pos = 0
        total = 0.0
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            if m is None or m.group(1) in ("", "."):
                raise _fail(name, value, f'time: invalid duration "{value}"')
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos == 0:
            raise _fail(name, value, f'time: invalid duration "{value}"')
        return sign * int(total)
    raise _fail(name, value, "expected a duration")


class Fields:
    """Typed access to a request body with Vault's loose conversions. Absent and null are alike."""

    __slots__ = ("body",)

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def raw(self, name: str) -> Any:
        return self.body.get(name)

    def get_str(self, name: str, default: str = "") -> str:
        v = self.body.get(name)
        return default if v is None else to_str(name, v)

    def get_int(self, name: str, default: int = 0) -> int:
        v = self.body.get(name)
        return default if v is None else to_int(name, v)

    def get_bool(self, name: str, default: bool = False) -> bool:
        v = self.body.get(name)
        return default if v is None else to_bool(name, v)

    def get_duration(self, name: str, default: int = 0) -> int:
        v = self.body.get(name)
        return default if v is None else parse_duration_seconds(name, v)
