"""Typed client for vaultdev's extras: fault injection and request statistics.

These endpoints do not exist in real Vault. All need the root token::

    set_faults(addr, token, next=[{"status": 503, "count": 3}])
    set_faults(addr, token, latency_ms=20, error_rate=0.05, error_statuses=[429, 503])
    clear_faults(addr, token)
    stats = get_stats(addr, token)      # {"total_requests", "requests", "items", ...}
    reset_stats(addr, token)
"""

from __future__ import annotations

from typing import Any, cast

import requests

__all__ = ["clear_faults", "get_faults", "get_stats", "reset_stats", "set_faults"]

_TIMEOUT = 10.0


def _url(addr: str, path: str) -> str:
    return addr.rstrip("/") + "/_vaultdev/" + path


def _headers(token: str) -> dict[str, str]:
    return {"X-Vault-Token": token}


def set_faults(addr: str, token: str, **cfg: Any) -> dict[str, Any]:
    """Replace the fault configuration (see :mod:`vaultdev.faults`); return the new config."""
    resp = requests.put(_url(addr, "faults"), json=cfg, headers=_headers(token), timeout=_TIMEOUT)
    resp.raise_for_status()
    return cast(dict[str, Any], resp.json()["faults"])


def get_faults(addr: str, token: str) -> dict[str, Any]:
    """The current fault configuration (with the remaining ``next`` counts)."""
    resp = requests.get(_url(addr, "faults"), headers=_headers(token), timeout=_TIMEOUT)
    resp.raise_for_status()
    return cast(dict[str, Any], resp.json()["faults"])


def clear_faults(addr: str, token: str) -> None:
    """Remove every fault."""
    resp = requests.delete(_url(addr, "faults"), headers=_headers(token), timeout=_TIMEOUT)
    resp.raise_for_status()


def get_stats(addr: str, token: str) -> dict[str, Any]:
    """Request counters: ``total_requests``, ``requests``/``batch_requests``/``items`` per kind
    (``encrypt``, ``decrypt``, ``rewrap``, ``hmac``, ``other``), ``statuses``, ``faults_injected``.
    """
    resp = requests.get(_url(addr, "stats"), headers=_headers(token), timeout=_TIMEOUT)
    resp.raise_for_status()
    return cast(dict[str, Any], resp.json())


def reset_stats(addr: str, token: str) -> None:
    """Zero every counter."""
    resp = requests.post(_url(addr, "stats/reset"), headers=_headers(token), timeout=_TIMEOUT)
    resp.raise_for_status()
