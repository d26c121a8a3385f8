"""The fault proxy's configuration, the shape of a fault and its statistics (no I/O here).

:func:`parse_config` validates a configuration (the keys :mod:`tests.support.fault_proxy`'s
docstring lists) into a :class:`FaultConfig`; a :class:`FaultAction` is what happens to one
request; :class:`Stats` counts what the proxy received and answered, per request kind
(:func:`kind_of`) and status.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "KINDS",
    "FaultAction",
    "FaultConfig",
    "NextFault",
    "Stats",
    "batch_items",
    "kind_of",
    "parse_config",
]

KINDS: Final = ("encrypt", "decrypt", "rewrap", "hmac", "other")

_TRANSIT_OP: Final = re.compile(
    r"^(?!sys/|auth/)[^?]+?/(encrypt|decrypt|rewrap|hmac)/[^/]+(/[^/]+)?$"
)


def kind_of(path: str) -> str:
    """``encrypt``, ``decrypt``, ``rewrap``, ``hmac`` or ``other`` for a path after ``/v1/``."""
    m = _TRANSIT_OP.match(path)
    return m.group(1) if m else "other"


@dataclass
class NextFault:
    status: int | None
    drop: bool
    count: int


@dataclass
class FaultConfig:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: [503])
    drop_rate: float = 0.0
    next: list[NextFault] = field(default_factory=list)
    paths: list[str] | None = None
    max_batch_items: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "error_rate": self.error_rate,
            "error_statuses": list(self.error_statuses),
            "drop_rate": self.drop_rate,
            "next": [
                {"drop": True, "count": n.count}
                if n.drop
                else {"status": n.status, "count": n.count}
                for n in self.next
            ],
            "paths": None if self.paths is None else list(self.paths),
            "max_batch_items": self.max_batch_items,
        }


def _number(cfg: dict[str, Any], key: str, high: float | None = None) -> float:
    v = cfg.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{key} must be a number")
    if v < 0 or (high is not None and v > high):
        raise ValueError(f"{key} out of range")
    return float(v)


def parse_config(cfg: dict[str, Any]) -> FaultConfig:
    """Validate a fault configuration (the keys :mod:`tests.support.fault_proxy` documents)."""
    known = {"latency_ms", "latency_jitter_ms", "error_rate", "error_statuses", "drop_rate"}
    unknown = sorted(set(cfg) - known - {"next", "paths", "max_batch_items"})
    if unknown:
        raise ValueError(f"unknown fault settings: {unknown}")
    out = FaultConfig(
        latency_ms=_number(cfg, "latency_ms"),
        latency_jitter_ms=_number(cfg, "latency_jitter_ms"),
        error_rate=_number(cfg, "error_rate", 1),
        drop_rate=_number(cfg, "drop_rate", 1),
    )
    statuses = cfg.get("error_statuses", [503])
    if (
        not isinstance(statuses, list | tuple)
        or not statuses
        or not all(isinstance(s, int) and 400 <= s <= 599 for s in statuses)
    ):
        raise ValueError("error_statuses must be a non-empty list of HTTP error codes")
    out.error_statuses = list(statuses)
    out.max_batch_items = int(_number(cfg, "max_batch_items"))
    nxt = cfg.get("next", [])
    if not isinstance(nxt, list | tuple):
        raise ValueError("next must be a list")
    for item in nxt:
        if not isinstance(item, dict):
            raise ValueError("next items must be objects")
        count = item.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("next[].count must be a positive integer")
        drop = bool(item.get("drop", False))
        status = item.get("status")
        if not drop and not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError("next[] needs a status (400..599) or drop: true")
        out.next.append(NextFault(None if drop else status, drop, count))
    paths = cfg.get("paths")
    if isinstance(paths, str):
        out.paths = [paths.lstrip("/")]
    elif isinstance(paths, list | tuple) and all(isinstance(p, str) for p in paths):
        out.paths = [p.lstrip("/") for p in paths]
    elif paths is not None:
        raise ValueError("paths must be a string or a list of strings")
    return out


@dataclass
class FaultAction:
    """What happens to one request: a delay (seconds), then an error status, a drop, or neither."""

    delay: float = 0.0
    status: int | None = None
    drop: bool = False


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.total = 0
            self.requests = dict.fromkeys(KINDS, 0)
            self.batch_requests = dict.fromkeys(KINDS, 0)
            self.items = dict.fromkeys(KINDS, 0)
            self.statuses: dict[str, int] = {}
            self.faults = {"errors": 0, "drops": 0, "delayed": 0}
            self.forwarded = 0
            self.upstream_failures = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total_requests": self.total,
                "requests": dict(self.requests),
                "batch_requests": dict(self.batch_requests),
                "items": dict(self.items),
                "statuses": dict(self.statuses),
                "faults_injected": dict(self.faults),
                "forwarded": self.forwarded,
                "upstream_failures": self.upstream_failures,
            }


def batch_items(body: bytes) -> int | None:
    """Number of ``batch_input`` items of a JSON body, or None when it has none."""
    if not body or b"batch_input" not in body:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    batch = doc.get("batch_input") if isinstance(doc, dict) else None
    return len(batch) if isinstance(batch, list) else None
