"""HTTP-level behaviour: envelope, content type, status codes, keep-alive latency."""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any

import pytest
import requests


def _headers(server: Any) -> dict[str, str]:
    return {"X-Vault-Token": server.token}


def test_envelope_and_content_type(vault_server: Any, transit_mount: str) -> None:
    resp = requests.post(
        f"{vault_server.addr}/v1/{transit_mount}/encrypt/k",
        json={"plaintext": base64.b64encode(b"x").decode()},
        headers=_headers(vault_server),
        timeout=5,
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    for field in ("request_id", "lease_id", "renewable", "lease_duration", "data", "warnings"):
        assert field in body
    assert body["lease_id"] == ""
    assert body["data"]["key_version"] == 1


def test_unsupported_path_and_operation(vault_server: Any, transit_mount: str) -> None:
    base = f"{vault_server.addr}/v1/{transit_mount}"
    resp = requests.post(f"{base}/nonsense/x", json={}, headers=_headers(vault_server), timeout=5)
    assert resp.status_code == 404
    assert resp.json() == {"errors": ["1 error occurred:\n\t* unsupported path\n\n"]}
    resp = requests.get(f"{base}/encrypt/k", headers=_headers(vault_server), timeout=5)
    assert resp.status_code == 405


def test_request_too_large(vault_server: Any, transit_mount: str) -> None:
    if not vault_server.is_vaultdev:
        pytest.skip("sends 33 MiB; only worth it against vaultdev")
    body = json.dumps({"plaintext": "A" * (33 * 1024 * 1024)})
    resp = requests.post(
        f"{vault_server.addr}/v1/{transit_mount}/encrypt/k",
        data=body,
        headers={**_headers(vault_server), "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 413


def test_keep_alive_has_no_delayed_ack_stall(vault_server: Any, transit_mount: str) -> None:
    if not vault_server.is_vaultdev:
        pytest.skip("a vaultdev performance property")
    session = requests.Session()
    url = f"{vault_server.addr}/v1/{transit_mount}/encrypt/k"
    body = {"plaintext": base64.b64encode(b"x").decode()}
    session.post(url, json=body, headers=_headers(vault_server), timeout=5)
    start = time.monotonic()
    for _ in range(50):
        session.post(url, json=body, headers=_headers(vault_server), timeout=5)
    # 50 requests with a 40 ms delayed-ACK stall each would take 2 s
    assert time.monotonic() - start < 1.0


def test_response_sent_in_one_segment(vault_server: Any) -> None:
    if not vault_server.is_vaultdev:
        pytest.skip("a vaultdev implementation property")
    host, port = vault_server.addr.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
    head, _, body = first.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    assert len(body) == length
