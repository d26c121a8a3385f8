"""Many clients at once: batch encrypt/decrypt while the key rotates."""

from __future__ import annotations

import base64
import threading
from typing import Any

import hvac


def test_parallel_batches_with_rotation(
    vault_server: Any, vault_client: Any, transit_mount: str
) -> None:
    vault_client.secrets.transit.create_key(
        "shared", derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    ctx = base64.b64encode(b"users.email").decode()
    failures: list[str] = []

    def worker(n: int) -> None:
        client = hvac.Client(url=vault_server.addr, token=vault_server.token)
        t = client.secrets.transit
        try:
            for round_no in range(15):
                values = [f"user-{n}-{round_no}-{i}@example.com" for i in range(50)]
                items = [
                    {"plaintext": base64.b64encode(v.encode()).decode(), "context": ctx}
                    for v in values
                ]
                enc = t.encrypt_data("shared", batch_input=items, mount_point=transit_mount)
                cts = [r["ciphertext"] for r in enc["data"]["batch_results"]]
                dec = t.decrypt_data(
                    "shared",
                    batch_input=[{"ciphertext": c, "context": ctx} for c in cts],
                    mount_point=transit_mount,
                )
                got = [
                    base64.b64decode(r["plaintext"]).decode() for r in dec["data"]["batch_results"]
                ]
                if got != values:
                    failures.append(f"worker {n} round {round_no}: mismatch")
        except Exception as err:
            failures.append(f"worker {n}: {err!r}")

    def rotator() -> None:
        for _ in range(10):
            vault_client.secrets.transit.rotate_key("shared", mount_point=transit_mount)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=rotator))
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert failures == []
    key = vault_client.secrets.transit.read_key("shared", mount_point=transit_mount)
    assert key["data"]["latest_version"] == 11
