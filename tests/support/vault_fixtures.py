"""Pytest plugin: a real Vault-API server to test against, and helpers around it.

Fixtures:

* ``vault_server`` (session): the real Vault or OpenBao named by ``VAULT_ADDR`` + ``VAULT_TOKEN``
  when both are set (used as is), else one throwaway OpenBao dev server for the whole session
  (:func:`context_encryption.openbao.start_dev_server`, random root token, stopped at the end). Its
  ``tight_addr`` is a second listener of that server refusing bodies of more than
  :data:`TIGHT_JSON_STRINGS` JSON strings (``None`` on a server given by the environment).
  With ``CI=true`` and no server to be had the session fails loudly; elsewhere the tests that
  need Vault are skipped with the reason.
* ``vault_client`` (session): ``hvac.Client`` for that server with its root token.
* ``transit_mount`` (function): a fresh transit mount ``transit-t-<hex>`` enabled through hvac,
  disabled afterwards.

Faults (latency, error statuses, dropped connections) come from :mod:`tests.support.fault_proxy` in
front of this server: the ``vault_faults`` fixture of :mod:`tests.support.migration_fixtures`.

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
from typing import Any, Final

import hvac
import pytest

from context_encryption.openbao import OpenBaoError, start_dev_server

__all__ = [
    "TIGHT_JSON_STRINGS",
    "VaultServer",
    "backup_blob",
    "restore_known_key",
    "transit_mount",
    "vault_client",
    "vault_server",
]

#: ``max_request_json_strings`` of the session dev server's second listener (``tight_addr``).
TIGHT_JSON_STRINGS: Final = 120


@dataclass(frozen=True)
class VaultServer:
    """Where the tests' Vault is: address and root token (and the tight listener, if any)."""

    addr: str
    token: str
    tight_addr: str | None = None


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    addr = os.environ.get("VAULT_ADDR")
    token = os.environ.get("VAULT_TOKEN")
    if addr and token:
        yield VaultServer(addr.rstrip("/"), token)
        return
    try:
        server = start_dev_server(
            token=f"root-{secrets.token_hex(12)}",
            listener_options={"max_request_json_strings": TIGHT_JSON_STRINGS},
        )
    except OpenBaoError as exc:
        reason = f"no Vault to test against: VAULT_ADDR/VAULT_TOKEN unset, and {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield VaultServer(server.addr, server.token, server.tight_addr)
    finally:
        server.stop()


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
