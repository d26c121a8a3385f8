"""Fault injection and request statistics (vaultdev extras; real Vault has neither).

Faults are set at runtime through ``PUT /_vaultdev/faults`` (root token) with a JSON object::

    {
      "latency_ms": 20,            # sleep before handling each matching /v1/ request
      "latency_jitter_ms": 5,      # plus a uniform random 0..jitter ms
      "error_rate": 0.05,          # probability of answering with an error status
      "error_statuses": [429, 500, 503],   # chosen uniformly for error_rate faults
      "drop_rate": 0.02,           # probability of closing the connection without a response
      "next": [{"status": 503, "count": 3}, {"drop": true, "count": 1}],
      "paths": "transit/"          # only requests whose path (after /v1/) starts with this
    }                              # (a string or a list of prefixes; absent = every request)

``next`` faults apply, in order, to the next matching requests before any random fault.
``GET`` returns the current config (with the remaining ``next`` counts), ``DELETE`` clears it.
The ``/_vaultdev/*`` endpoints themselves are never subject to faults.

Statistics count every ``/v1/`` request by kind (``encrypt``, ``decrypt``, ``rewrap``, ``hmac``,
``other``), the batch items processed per kind, the response statuses, and the faults
injected. A request answered by an injected error or drop counts only as a fault.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from vaultdev.errors import multierror

ERROR_TEXTS: dict[int, str] = {
    400: "invalid request (injected by vaultdev)",
    412: "required index state not present (injected by vaultdev)",
    429: "request rate limit exceeded",
    500: multierror("internal error (injected by vaultdev)"),
    502: "bad gateway (injected by vaultdev)",
    503: "Vault is sealed",
    504: "gateway timeout (injected by vaultdev)",
}


def error_text(status: int) -> str:
    return ERROR_TEXTS.get(status, f"injected fault (status {status})")


@dataclass(slots=True)
class FaultAction:
    """What to do with one request: sleep, then answer ``status`` or drop (or neither)."""

    delay: float = 0.0
    status: int | None = None
    drop: bool = False


@dataclass(slots=True)
class _NextFault:
    status: int | None
    drop: bool
    count: int


@dataclass(slots=True)
class FaultConfig:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: [503])
    drop_rate: float = 0.0
    next: list[_NextFault] = field(default_factory=list)
    paths: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
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
            "paths": self.paths,
        }

    @property
    def active(self) -> bool:
        return bool(
            self.latency_ms
            or self.latency_jitter_ms
            or self.error_rate
            or self.drop_rate
            or self.next
        )


def _num(body: dict[str, Any], key: str, low: float, high: float | None = None) -> float:
    v = body.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{key} must be a number")
    if v < low or (high is not None and v > high):
        raise ValueError(f"{key} out of range")
    return float(v)


def parse_config(body: dict[str, Any]) -> FaultConfig:
    """Validate a fault configuration; raise ``ValueError`` with a readable message."""
    known = {
        "latency_ms",
        "latency_jitter_ms",
        "error_rate",
        "error_statuses",
        "drop_rate",
        "next",
        "paths",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unknown fault settings: {unknown}")
    cfg = FaultConfig(
        latency_ms=_num(body, "latency_ms", 0),
        latency_jitter_ms=_num(body, "latency_jitter_ms", 0),
        error_rate=_num(body, "error_rate", 0, 1),
        drop_rate=_num(body, "drop_rate", 0, 1),
    )
    statuses = body.get("error_statuses", [503])
    if (
        not isinstance(statuses, list)
        or not statuses
        or not all(isinstance(s, int) and 400 <= s <= 599 for s in statuses)
    ):
        raise ValueError("error_statuses must be a non-empty list of HTTP error codes")
    cfg.error_statuses = list(statuses)
    nxt = body.get("next", [])
    if not isinstance(nxt, list):
        raise ValueError("next must be a list")
    for item in nxt:
        if not isinstance(item, dict):
            raise ValueError("next items must be objects")
        count = item.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ValueError("next[].count must be a positive integer")
        drop = bool(item.get("drop", False))
        status = item.get("status")
        if not drop and not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError("next[] needs a status (400..599) or drop: true")
        cfg.next.append(_NextFault(None if drop else status, drop, count))
    paths = body.get("paths")
    if isinstance(paths, str):
        cfg.paths = [paths.lstrip("/")]
    elif isinstance(paths, list) and all(isinstance(p, str) for p in paths):
        cfg.paths = [p.lstrip("/") for p in paths]
    elif paths is not None:
        raise ValueError("paths must be a string or a list of strings")
    return cfg


class FaultInjector:
    """Thread-safe holder of the current :class:`FaultConfig`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cfg = FaultConfig()
        self._rng = random.Random()  # noqa: S311 - fault timing, not cryptography

    def set(self, cfg: FaultConfig) -> None:
        with self._lock:
            self._cfg = cfg

    def clear(self) -> None:
        self.set(FaultConfig())

    def config(self) -> dict[str, Any]:
        with self._lock:
            return self._cfg.to_json()

    def decide(self, path: str) -> FaultAction | None:
        """The fault for a request on ``path`` (after ``/v1/``), or ``None``."""
        cfg = self._cfg
        if not cfg.active:
            return None
        if cfg.paths is not None and not any(path.startswith(p) for p in cfg.paths):
            return None
        with self._lock:
            action = FaultAction()
            if cfg.latency_ms or cfg.latency_jitter_ms:
                ms = cfg.latency_ms + self._rng.uniform(0, cfg.latency_jitter_ms)
                action.delay = ms / 1000.0
            if cfg.next:
                head = cfg.next[0]
                head.count -= 1
                if head.count <= 0:
                    cfg.next.pop(0)
                action.drop = head.drop
                action.status = head.status
                return action
            if cfg.drop_rate and self._rng.random() < cfg.drop_rate:
                action.drop = True
            elif cfg.error_rate and self._rng.random() < cfg.error_rate:
                action.status = self._rng.choice(cfg.error_statuses)
            return action


KINDS = ("encrypt", "decrypt", "rewrap", "hmac", "other")


class Stats:
    """Request counters (``GET /_vaultdev/stats``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = dict.fromkeys(KINDS, 0)
            self.batch_requests = dict.fromkeys(KINDS, 0)
            self.items = dict.fromkeys(KINDS, 0)
            self.statuses: dict[str, int] = {}
            self.faults = {"errors": 0, "drops": 0, "delayed": 0}

    def record(self, kind: str, items: int, batch: bool) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.items[kind] += items
            if batch:
                self.batch_requests[kind] += 1

    def record_status(self, status: int) -> None:
        key = str(status)
        with self._lock:
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def record_fault(self, action: FaultAction) -> None:
        with self._lock:
            if action.delay:
                self.faults["delayed"] += 1
            if action.drop:
                self.faults["drops"] += 1
            elif action.status is not None:
                self.faults["errors"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total_requests": sum(self.requests.values()),
                "requests": dict(self.requests),
                "batch_requests": dict(self.batch_requests),
                "items": dict(self.items),
                "statuses": dict(self.statuses),
                "faults_injected": dict(self.faults),
            }
