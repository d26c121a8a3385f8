"""Pytest plugin: a Vault to test against (real Vault or vaultdev) and helpers around it.

Fixtures:

* ``vault_server`` (session): the real Vault named by ``VAULT_ADDR`` + ``VAULT_TOKEN`` when both
  are set, else a vaultdev subprocess on a free port with a random root token (stopped at the
  end of the session). Returns :class:`VaultServer`.
* ``vault_client`` (session): ``hvac.Client`` for that server with its root token.
* ``transit_mount`` (function): a fresh transit mount ``transit-t-<hex>`` enabled through hvac,
  disabled afterwards. Tests that use it run unchanged against real Vault.
* ``vault_faults`` (function): a :class:`FaultHandle` on vaultdev's fault injection (skipped on
  real Vault); faults are cleared after the test.

Helpers: :func:`backup_blob` builds a restorable Transit backup with known key material (the
reference's Appendix C) and :func:`restore_known_key` restores it into a mount.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hvac
import pytest

from vaultdev import control
from vaultdev.process import start_vaultdev

__all__ = [
    "FaultHandle",
    "VaultServer",
    "backup_blob",
    "restore_known_key",
    "transit_mount",
    "vault_client",
    "vault_faults",
    "vault_server",
]


@dataclass(frozen=True)
class VaultServer:
    """Where the tests' Vault is: address, root token, and whether it is vaultdev."""

    addr: str
    token: str
    is_vaultdev: bool


@dataclass(frozen=True)
class FaultHandle:
    """vaultdev fault injection for one test (see :mod:`vaultdev.faults` for the settings)."""

    addr: str
    token: str

    def set(self, **cfg: Any) -> dict[str, Any]:
        """Replace the fault configuration, e.g. ``set(next=[{"status": 503, "count": 2}])``."""
        return control.set_faults(self.addr, self.token, **cfg)

    def get(self) -> dict[str, Any]:
        return control.get_faults(self.addr, self.token)

    def clear(self) -> None:
        control.clear_faults(self.addr, self.token)

    def stats(self) -> dict[str, Any]:
        return control.get_stats(self.addr, self.token)

    def reset_stats(self) -> None:
        control.reset_stats(self.addr, self.token)


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    addr = os.environ.get("VAULT_ADDR")
    token = os.environ.get("VAULT_TOKEN")
    if addr and token:
        yield VaultServer(addr.rstrip("/"), token, is_vaultdev=False)
        return
    proc = start_vaultdev(root_token=f"root-{secrets.token_hex(12)}")
    try:
        yield VaultServer(proc.addr, proc.token, is_vaultdev=True)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def vault_client(vault_server: VaultServer) -> Any:
    return hvac.Client(url=vault_server.addr, token=vault_server.token)


@pytest.fixture
def transit_mount(vault_client: Any) -> Iterator[str]:
    path = f"transit-t-{secrets.token_hex(6)}"
    vault_client.sys.enable_secrets_engine("transit", path=path)
    try:
        yield path
    finally:
        vault_client.sys.disable_secrets_engine(path)


@pytest.fixture
def vault_faults(vault_server: VaultServer) -> Iterator[FaultHandle]:
    if not vault_server.is_vaultdev:
        pytest.skip("fault injection is a vaultdev feature; the tests run against real Vault")
    handle = FaultHandle(vault_server.addr, vault_server.token)
    handle.clear()
    try:
        yield handle
    finally:
        handle.clear()


def backup_blob(
    name: str,
    key: bytes,
    hmac_key: bytes,
    *,
    derived: bool = False,
    convergent: bool = False,
    convergent_version: int = 3,
    kdf: int = 1,
    key_type: int = 0,
) -> str:
    """A Transit backup (base64) holding one key version with the given material.

    ``key_type`` is Vault's KeyType integer (0 aes256-gcm96, 5 chacha20-poly1305, 8 aes128-gcm96).
    ``convergent_version`` 3 is today's scheme; 2 is the legacy nonce = HMAC(context, plaintext).
    """
    entry: dict[str, Any] = {
        "key": base64.b64encode(key).decode(),
        "hmac_key": base64.b64encode(hmac_key).decode(),
        "time": "2024-01-01T00:00:00Z",
        "creation_time": 1704067200,
    }
    if convergent:
        entry["convergent_version"] = convergent_version
    policy = {
        "name": name,
        "keys": {"1": entry},
        "derived": derived,
        "kdf": kdf if derived else 0,
        "convergent_encryption": convergent,
        "exportable": True,
        "min_decryption_version": 1,
        "min_encryption_version": 0,
        "latest_version": 1,
        "archive_version": 1,
        "archive_min_version": 0,
        "min_available_version": 0,
        "deletion_allowed": True,
        "convergent_version": (-1 if convergent_version == 3 else convergent_version)
        if convergent
        else 0,
        "type": key_type,
        "backup_info": None,
        "restore_info": None,
        "allow_plaintext_backup": True,
        "version_template": "",
        "storage_prefix": "",
        "auto_rotate_period": 0,
        "Imported": False,
        "AllowImportedKeyRotation": False,
    }
    doc = {
        "policy": policy,
        "archived_keys": {
            "keys": [
                {"key": None, "hmac_key": None, "time": "0001-01-01T00:00:00Z", "creation_time": 0},
                entry,
            ]
        },
    }
    return base64.b64encode((json.dumps(doc, separators=(",", ":")) + "\n").encode()).decode()


def restore_known_key(
    client: Any,
    mount: str,
    name: str,
    key: bytes = bytes(range(32)),
    hmac_key: bytes = bytes(range(32, 64)),
    **options: Any,
) -> None:
    """Restore a key with known material (defaults: key 0x00..0x1f, hmac_key 0x20..0x3f)."""
    client.secrets.transit.restore_key(
        backup_blob(name, key, hmac_key, **options), name=name, mount_point=mount
    )
