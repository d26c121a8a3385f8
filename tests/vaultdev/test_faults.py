"""vaultdev's fault injection and statistics (skipped against real Vault)."""

from __future__ import annotations

import base64
import time
from typing import Any

import hvac.exceptions as exc
import pytest
import requests

from tests.vault_fixtures import FaultHandle

PT = base64.b64encode(b"x").decode()


def test_next_n_errors_then_recovery(
    vault_client: Any, transit_mount: str, vault_faults: FaultHandle
) -> None:
    vault_client.secrets.transit.create_key("k", mount_point=transit_mount)
    vault_faults.set(next=[{"status": 503, "count": 2}, {"status": 429, "count": 1}])
    for expected in (exc.VaultDown, exc.VaultDown, exc.RateLimitExceeded):
        with pytest.raises(expected):
            vault_client.secrets.transit.encrypt_data("k", PT, mount_point=transit_mount)
    resp = vault_client.secrets.transit.encrypt_data("k", PT, mount_point=transit_mount)
    assert resp["data"]["ciphertext"].startswith("vault:v1:")
    assert vault_faults.get()["next"] == []


def test_sealed_body_and_paths_filter(
    vault_server: Any, vault_client: Any, transit_mount: str, vault_faults: FaultHandle
) -> None:
    vault_faults.set(error_rate=1.0, error_statuses=[503], paths=f"{transit_mount}/")
    resp = requests.post(
        f"{vault_server.addr}/v1/{transit_mount}/encrypt/k",
        json={"plaintext": PT},
        headers={"X-Vault-Token": vault_server.token},
        timeout=5,
    )
    assert resp.status_code == 503
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"errors": ["Vault is sealed"]}
    # other paths are untouched
    assert vault_client.auth.token.lookup_self()["data"]["policies"] == ["root"]


def test_drop_closes_connection(
    vault_client: Any, transit_mount: str, vault_faults: FaultHandle
) -> None:
    vault_faults.set(next=[{"drop": True, "count": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        vault_client.secrets.transit.create_key("k", mount_point=transit_mount)
    vault_client.secrets.transit.create_key("k", mount_point=transit_mount)


def test_latency_toggled_at_runtime(
    vault_client: Any, transit_mount: str, vault_faults: FaultHandle
) -> None:
    vault_faults.set(latency_ms=150)
    start = time.monotonic()
    vault_client.secrets.transit.create_key("k", mount_point=transit_mount)
    assert time.monotonic() - start >= 0.15
    vault_faults.clear()
    assert vault_faults.get()["latency_ms"] == 0


def test_stats_count_requests_and_items(
    vault_client: Any, transit_mount: str, vault_faults: FaultHandle
) -> None:
    vault_client.secrets.transit.create_key("k", mount_point=transit_mount)
    vault_faults.reset_stats()
    vault_client.secrets.transit.encrypt_data("k", PT, mount_point=transit_mount)
    batch = vault_client.secrets.transit.encrypt_data(
        "k", batch_input=[{"plaintext": PT}] * 5, mount_point=transit_mount
    )
    cts = [r["ciphertext"] for r in batch["data"]["batch_results"]]
    vault_client.secrets.transit.decrypt_data(
        "k", batch_input=[{"ciphertext": c} for c in cts], mount_point=transit_mount
    )
    stats = vault_faults.stats()
    assert stats["requests"]["encrypt"] == 2
    assert stats["items"]["encrypt"] == 6
    assert stats["batch_requests"]["encrypt"] == 1
    assert stats["requests"]["decrypt"] == 1
    assert stats["items"]["decrypt"] == 5
    assert stats["total_requests"] == 3


def test_control_requires_root(vault_server: Any, vault_faults: FaultHandle) -> None:
    resp = requests.get(
        f"{vault_server.addr}/_vaultdev/faults", headers={"X-Vault-Token": "nope"}, timeout=5
    )
    assert resp.status_code == 403
    bad = requests.put(
        f"{vault_server.addr}/_vaultdev/faults",
        json={"error_rate": 3},
        headers={"X-Vault-Token": vault_server.token},
        timeout=5,
    )
    assert bad.status_code == 400
