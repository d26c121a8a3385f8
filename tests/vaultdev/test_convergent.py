"""Derived + convergent keys: deterministic ciphertexts per context (the project's new scheme)."""

from __future__ import annotations

import base64
from typing import Any

import hvac.exceptions as exc
import pytest


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def conv(vault_client: Any, transit_mount: str) -> str:
    vault_client.secrets.transit.create_key(
        "pos-context-key", derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    return "pos-context-key"


def test_same_plaintext_and_context_same_ciphertext(
    vault_client: Any, transit_mount: str, conv: str
) -> None:
    t = vault_client.secrets.transit
    pt, ctx = b64("alice@example.com"), b64("users.email")
    first = t.encrypt_data(conv, pt, context=ctx, mount_point=transit_mount)["data"]
    second = t.encrypt_data(conv, pt, context=ctx, mount_point=transit_mount)["data"]
    assert first == second
    other = t.encrypt_data(conv, pt, context=b64("invitations.email"), mount_point=transit_mount)
    assert other["data"]["ciphertext"] != first["ciphertext"]
    batch = t.encrypt_data(
        conv, batch_input=[{"plaintext": pt, "context": ctx}], mount_point=transit_mount
    )
    assert batch["data"]["batch_results"][0]["ciphertext"] == first["ciphertext"]
    with pytest.raises(exc.InvalidRequest) as info:
        t.decrypt_data(
            conv, first["ciphertext"], context=b64("users.first_name"), mount_point=transit_mount
        )
    assert info.value.errors == ["cipher: message authentication failed"]
    out = t.decrypt_data(conv, first["ciphertext"], context=ctx, mount_point=transit_mount)
    assert base64.b64decode(out["data"]["plaintext"]) == b"alice@example.com"


def test_key_read_shape(vault_client: Any, transit_mount: str, conv: str) -> None:
    data = vault_client.secrets.transit.read_key(conv, mount_point=transit_mount)["data"]
    for field in (
        "name",
        "type",
        "derived",
        "deletion_allowed",
        "min_available_version",
        "min_decryption_version",
        "min_encryption_version",
        "latest_version",
        "exportable",
        "allow_plaintext_backup",
        "supports_encryption",
        "supports_decryption",
        "supports_signing",
        "supports_derivation",
        "auto_rotate_period",
        "imported_key",
        "keys",
    ):
        assert field in data, field
    assert data["type"] == "aes256-gcm96"
    assert data["kdf"] == "hkdf_sha256"
    assert data["convergent_encryption"] is True
    assert data["convergent_encryption_version"] == -1
    assert data["latest_version"] == 1
    assert data["min_decryption_version"] == 1
    assert data["min_encryption_version"] == 0
    assert isinstance(data["keys"]["1"], int)


def test_rotation_changes_ciphertext_and_pinning(
    vault_client: Any, transit_mount: str, conv: str
) -> None:
    t = vault_client.secrets.transit
    pt, ctx = b64("bob"), b64("users.email")
    v1 = t.encrypt_data(conv, pt, context=ctx, mount_point=transit_mount)["data"]["ciphertext"]
    t.rotate_key(conv, mount_point=transit_mount)
    v2 = t.encrypt_data(conv, pt, context=ctx, mount_point=transit_mount)["data"]["ciphertext"]
    assert v2.startswith("vault:v2:")
    pinned = t.encrypt_data(conv, pt, context=ctx, key_version=1, mount_point=transit_mount)
    assert pinned["data"]["ciphertext"] == v1
    for ct in (v1, v2):
        out = t.decrypt_data(conv, ct, context=ctx, mount_point=transit_mount)
        assert out["data"]["plaintext"] == pt


def test_aes128_and_chacha_convergent(vault_client: Any, transit_mount: str) -> None:
    t = vault_client.secrets.transit
    # hvac refuses aes128-gcm96 client-side: create it through the adapter
    vault_client.adapter.post(
        f"/v1/{transit_mount}/keys/k128",
        json={"type": "aes128-gcm96", "derived": True, "convergent_encryption": True},
    )
    t.create_key(
        "kcc",
        key_type="chacha20-poly1305",
        derived=True,
        convergent_encryption=True,
        mount_point=transit_mount,
    )
    for name in ("k128", "kcc"):
        a = t.encrypt_data(name, b64("x"), context=b64("c"), mount_point=transit_mount)
        b = t.encrypt_data(name, b64("x"), context=b64("c"), mount_point=transit_mount)
        assert a["data"]["ciphertext"] == b["data"]["ciphertext"]


def test_trim(vault_client: Any, transit_mount: str, conv: str) -> None:
    t = vault_client.secrets.transit
    for _ in range(4):
        t.rotate_key(conv, mount_point=transit_mount)
    t.update_key_configuration(
        conv, min_decryption_version=3, min_encryption_version=4, mount_point=transit_mount
    )
    t.trim_key(conv, min_version=2, mount_point=transit_mount)
    data = t.read_key(conv, mount_point=transit_mount)["data"]
    assert data["min_available_version"] == 2
    with pytest.raises(exc.InvalidRequest) as info:
        t.update_key_configuration(conv, min_decryption_version=1, mount_point=transit_mount)
    assert info.value.errors == [
        "min decryption version should not be less then min available version"
    ]
