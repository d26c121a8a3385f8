"""Vault's error texts and status codes (reference section 5), through hvac.

Each assertion checks the hvac exception class (status) and the exact message.
"""

from __future__ import annotations

import base64
from typing import Any

import hvac.exceptions as exc
import pytest

from tests.vault_fixtures import restore_known_key

PT = base64.b64encode(b"hello world").decode()
CTX = base64.b64encode(b"users.email").decode()
MISSING_CONTEXT = (
    "missing 'context' for key derivation; the key was created using a derived key, which means "
    "additional, per-request information must be included in order to perform operations with "
    "the key"
)


def errors_of(err: exc.VaultError) -> list[str]:
    assert err.errors is not None
    return list(err.errors)


@pytest.fixture
def key(vault_client: Any, transit_mount: str) -> str:
    vault_client.secrets.transit.create_key("plain", mount_point=transit_mount)
    return "plain"


@pytest.fixture
def derived_key(vault_client: Any, transit_mount: str) -> str:
    vault_client.secrets.transit.create_key(
        "conv", derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    return "conv"


def _post(client: Any, path: str, body: Any) -> Any:
    return client.adapter.post(path, json=body)


@pytest.mark.parametrize(
    ("ciphertext", "message"),
    [
        ("xxx", "invalid ciphertext: no prefix"),
        ("vault:1:abc", "invalid ciphertext: no prefix"),
        ("vault:v1", "invalid ciphertext: wrong number of fields"),
        ("vault:vx:abcd", "invalid ciphertext: version number could not be decoded"),
        ("vault:v 1:abcd", "invalid ciphertext: version number could not be decoded"),
        ("vault:v1_0:abcd", "invalid ciphertext: version number could not be decoded"),
        (
            "vault:v99999999999999999999:abcd",
            "invalid ciphertext: version number could not be decoded",
        ),
        ("vault:v2:abcd", "invalid ciphertext: version is too new"),
        ("vault:v1:ab$d", "invalid ciphertext: could not decode base64"),
        ("vault:v1:abc:def", "invalid ciphertext: could not decode base64"),
        ("vault:v1:AAAA", "invalid ciphertext length"),
        (
            "vault:v1:" + base64.b64encode(bytes(20)).decode(),
            "cipher: message authentication failed",
        ),
    ],
)
def test_decrypt_ciphertext_errors(
    vault_client: Any, transit_mount: str, key: str, ciphertext: str, message: str
) -> None:
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.decrypt_data(key, ciphertext, mount_point=transit_mount)
    assert errors_of(info.value) == [message]


def test_version_zero_means_one_and_wrong_key(
    vault_client: Any, transit_mount: str, key: str
) -> None:
    ct = vault_client.secrets.transit.encrypt_data(key, PT, mount_point=transit_mount)["data"][
        "ciphertext"
    ]
    v0 = ct.replace("vault:v1:", "vault:v0:")
    out = vault_client.secrets.transit.decrypt_data(key, v0, mount_point=transit_mount)
    assert out["data"]["plaintext"] == PT
    vault_client.secrets.transit.create_key("other", mount_point=transit_mount)
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.decrypt_data("other", ct, mount_point=transit_mount)
    assert errors_of(info.value) == ["cipher: message authentication failed"]


def test_chacha_authentication_failure(vault_client: Any, transit_mount: str) -> None:
    vault_client.secrets.transit.create_key(
        "cc", key_type="chacha20-poly1305", mount_point=transit_mount
    )
    ct = vault_client.secrets.transit.encrypt_data("cc", PT, mount_point=transit_mount)["data"][
        "ciphertext"
    ]
    raw = bytearray(base64.b64decode(ct.split(":")[2]))
    raw[-1] ^= 1
    bad = "vault:v1:" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.decrypt_data("cc", bad, mount_point=transit_mount)
    assert errors_of(info.value) == ["chacha20poly1305: message authentication failed"]


def test_missing_context_on_derived_key(
    vault_client: Any, transit_mount: str, derived_key: str
) -> None:
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.encrypt_data(derived_key, PT, mount_point=transit_mount)
    assert errors_of(info.value) == [MISSING_CONTEXT]
    ct = vault_client.secrets.transit.encrypt_data(
        derived_key, PT, context=CTX, mount_point=transit_mount
    )["data"]["ciphertext"]
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.decrypt_data(derived_key, ct, mount_point=transit_mount)
    assert errors_of(info.value) == [MISSING_CONTEXT]


def test_context_ignored_for_non_derived_key(
    vault_client: Any, transit_mount: str, key: str
) -> None:
    ct = vault_client.secrets.transit.encrypt_data(key, PT, context=CTX, mount_point=transit_mount)[
        "data"
    ]["ciphertext"]
    out = vault_client.secrets.transit.decrypt_data(key, ct, mount_point=transit_mount)
    assert out["data"]["plaintext"] == PT


def test_version_policy_errors(vault_client: Any, transit_mount: str, key: str) -> None:
    t = vault_client.secrets.transit
    old = t.encrypt_data(key, PT, mount_point=transit_mount)["data"]["ciphertext"]
    t.rotate_key(key, mount_point=transit_mount)
    t.rotate_key(key, mount_point=transit_mount)
    for version, message in [
        (-1, "requested version for encryption is negative"),
        (4, "requested version for encryption is higher than the latest key version"),
    ]:
        with pytest.raises(exc.InvalidRequest) as info:
            t.encrypt_data(key, PT, key_version=version, mount_point=transit_mount)
        assert errors_of(info.value) == [message]
    pinned = t.encrypt_data(key, PT, key_version=2, mount_point=transit_mount)
    assert pinned["data"]["key_version"] == 2
    assert pinned["data"]["ciphertext"].startswith("vault:v2:")
    t.update_key_configuration(
        key, min_decryption_version=2, min_encryption_version=3, mount_point=transit_mount
    )
    with pytest.raises(exc.InvalidRequest) as info:
        t.encrypt_data(key, PT, key_version=2, mount_point=transit_mount)
    assert errors_of(info.value) == [
        "requested version for encryption is less than the minimum encryption key version"
    ]
    with pytest.raises(exc.InvalidRequest) as info:
        t.decrypt_data(key, old, mount_point=transit_mount)
    assert errors_of(info.value) == [
        "ciphertext or signature version is disallowed by policy (too old)"
    ]
    data = t.read_key(key, mount_point=transit_mount)["data"]
    assert sorted(data["keys"]) == ["2", "3"]
    # archived versions come back when the minimum is lowered
    t.update_key_configuration(key, min_decryption_version=1, mount_point=transit_mount)
    assert t.decrypt_data(key, old, mount_point=transit_mount)["data"]["plaintext"] == PT


def test_key_config_errors(vault_client: Any, transit_mount: str, key: str) -> None:
    for body, message in [
        ({"min_decryption_version": -1}, "min decryption version cannot be negative"),
        (
            {"min_decryption_version": 5},
            "cannot set min decryption version of 5, latest key version is 1",
        ),
        ({"min_encryption_version": -1}, "min encryption version cannot be negative"),
        (
            {"min_encryption_version": 2},
            "cannot set min encryption version of 2, latest key version is 1",
        ),
        (
            {"auto_rotate_period": "10m"},
            "auto rotate period must be 0 to disable or at least an hour",
        ),
    ]:
        with pytest.raises(exc.InvalidRequest) as info:
            _post(vault_client, f"/v1/{transit_mount}/keys/{key}/config", body)
        assert errors_of(info.value) == [message]
    with pytest.raises(exc.InvalidRequest) as info:
        _post(vault_client, f"/v1/{transit_mount}/keys/nope/config", {"deletion_allowed": True})
    assert errors_of(info.value) == ["no existing key named nope could be found"]


def test_missing_key_errors(vault_client: Any, transit_mount: str) -> None:
    t = vault_client.secrets.transit
    with pytest.raises(exc.InvalidPath) as info:
        t.read_key("nope", mount_point=transit_mount)
    assert info.value.errors == []
    with pytest.raises(exc.InvalidPath):
        t.list_keys(mount_point=transit_mount)
    with pytest.raises(exc.InvalidRequest) as info:
        t.decrypt_data("nope", "vault:v1:AAAA", mount_point=transit_mount)
    assert errors_of(info.value) == ["encryption key not found"]
    with pytest.raises(exc.InvalidRequest) as info:
        t.rewrap_data("nope", "vault:v1:AAAA", mount_point=transit_mount)
    assert errors_of(info.value) == ["encryption key not found"]
    with pytest.raises(exc.InvalidRequest) as info:
        t.generate_hmac("nope", PT, mount_point=transit_mount)
    assert errors_of(info.value) == ["encryption key not found"]
    with pytest.raises(exc.InvalidRequest) as info:
        t.rotate_key("nope", mount_point=transit_mount)
    assert errors_of(info.value) == ["key not found"]
    with pytest.raises(exc.InvalidRequest) as info:
        t.delete_key("nope", mount_point=transit_mount)
    assert errors_of(info.value) == ["error deleting policy nope: could not delete key; not found"]
    with pytest.raises(exc.InternalServerError) as info:
        t.backup_key("nope", mount_point=transit_mount)
    assert errors_of(info.value) == ['1 error occurred:\n\t* key "nope" not found\n\n']


def test_delete_rules(vault_client: Any, transit_mount: str, key: str) -> None:
    t = vault_client.secrets.transit
    with pytest.raises(exc.InvalidRequest) as info:
        t.delete_key(key, mount_point=transit_mount)
    assert errors_of(info.value) == [
        f"error deleting policy {key}: deletion is not allowed for this key"
    ]
    t.update_key_configuration(key, deletion_allowed=True, mount_point=transit_mount)
    resp = t.delete_key(key, mount_point=transit_mount)
    assert resp.status_code == 204
    assert resp.text == ""
    with pytest.raises(exc.InvalidPath):
        t.read_key(key, mount_point=transit_mount)


def test_upsert_and_disable_upsert(vault_client: Any, transit_mount: str) -> None:
    t = vault_client.secrets.transit
    t.encrypt_data("auto", PT, context=CTX, mount_point=transit_mount)
    data = t.read_key("auto", mount_point=transit_mount)["data"]
    assert data["derived"] is True
    assert data["convergent_encryption"] is False
    t.encrypt_data(
        "auto-conv", PT, context=CTX, convergent_encryption=True, mount_point=transit_mount
    )
    data = t.read_key("auto-conv", mount_point=transit_mount)["data"]
    assert data["convergent_encryption"] is True
    assert data["convergent_encryption_version"] == -1
    with pytest.raises(exc.InvalidRequest) as info:
        t.encrypt_data("auto-bad", PT, convergent_encryption=True, mount_point=transit_mount)
    assert errors_of(info.value) == [
        "convergent encryption requires derivation to be enabled, so context is required"
    ]
    with pytest.raises(exc.InvalidRequest) as info:
        t.encrypt_data("auto-bad", PT, type="foo", mount_point=transit_mount)
    assert errors_of(info.value) == ["unknown key type foo"]
    with pytest.raises(exc.InvalidRequest) as info:
        t.encrypt_data("auto-bad", PT, type="ecdsa-p256", mount_point=transit_mount)
    assert errors_of(info.value) == ["key type ecdsa-p256 not supported for this operation"]
    cfg = _post(vault_client, f"/v1/{transit_mount}/config/keys", {"disable_upsert": True})
    assert cfg["data"] == {"disable_upsert": True}
    with pytest.raises(exc.InvalidRequest) as info:
        t.encrypt_data("never", PT, mount_point=transit_mount)
    assert errors_of(info.value) == ["encryption key not found"]
    assert vault_client.adapter.get(f"/v1/{transit_mount}/config/keys")["data"] == {
        "disable_upsert": True
    }


def test_request_field_errors(vault_client: Any, transit_mount: str, key: str) -> None:
    mp = transit_mount
    cases = [
        (f"/v1/{mp}/encrypt/{key}", {}, "missing plaintext to encrypt"),
        (f"/v1/{mp}/encrypt/{key}", {"plaintext": "foobar"}, "illegal base64 data at input byte 4"),
        (
            f"/v1/{mp}/encrypt/{key}",
            {"plaintext": PT, "context": "YQ="},
            "illegal base64 data at input byte 3",
        ),
        (f"/v1/{mp}/encrypt/{key}", {"batch_input": []}, "missing batch input to process"),
        (
            f"/v1/{mp}/encrypt/{key}",
            {"plaintext": PT, "nonce": base64.b64encode(bytes(12)).decode()},
            "provided nonce not allowed for this key",
        ),
        (f"/v1/{mp}/decrypt/{key}", {}, "missing ciphertext to decrypt"),
        (f"/v1/{mp}/decrypt/{key}", {"ciphertext": ""}, "missing ciphertext to decrypt"),
        (f"/v1/{mp}/rewrap/{key}", {}, "missing ciphertext to decrypt"),
        (f"/v1/{mp}/hmac/{key}", {}, "missing input for HMAC"),
        (
            f"/v1/{mp}/hmac/{key}",
            {"input": PT, "algorithm": "md5"},
            "unsupported algorithm '\\x00'",
        ),
        (f"/v1/{mp}/restore", {}, "'backup' must be supplied"),
        (
            f"/v1/{mp}/encrypt/{key}",
            {"batch_input": [{"plaintext": PT, "context": CTX}, {"plaintext": PT}]},
            "context should be set either in all the request blocks or in none",
        ),
    ]
    for path, body, message in cases:
        with pytest.raises(exc.InvalidRequest) as info:
            _post(vault_client, path, body)
        assert errors_of(info.value) == [message], (path, body)


def test_key_create_errors(vault_client: Any, transit_mount: str) -> None:
    mp = transit_mount
    for body, message in [
        (
            {"convergent_encryption": True},
            "convergent encryption requires derivation to be enabled",
        ),
        ({"type": "nope"}, "unknown key type nope"),
        ({"key_size": 64}, "key_size is not valid for algorithm aes256-gcm96"),
        ({"auto_rotate_period": 60}, "auto rotate period must be 0 to disable or at least an hour"),
    ]:
        with pytest.raises(exc.InvalidRequest) as info:
            _post(vault_client, f"/v1/{mp}/keys/bad", body)
        assert errors_of(info.value) == [message]


def test_malformed_batch_is_500(vault_client: Any, transit_mount: str, key: str) -> None:
    with pytest.raises(exc.InternalServerError) as info:
        _post(
            vault_client,
            f"/v1/{transit_mount}/encrypt/{key}",
            {"batch_input": [{"context": CTX}]},
        )
    (message,) = errors_of(info.value)
    assert message.startswith("1 error occurred:\n\t* failed to parse batch input: ")
    assert "'[0].plaintext' missing plaintext to encrypt" in message


def test_backup_restore_errors(vault_client: Any, transit_mount: str, key: str) -> None:
    t = vault_client.secrets.transit
    with pytest.raises(exc.InternalServerError) as info:
        t.backup_key(key, mount_point=transit_mount)
    assert errors_of(info.value) == [
        "1 error occurred:\n\t* exporting is disallowed on the policy\n\n"
    ]
    t.update_key_configuration(key, exportable=True, mount_point=transit_mount)
    with pytest.raises(exc.InternalServerError) as info:
        t.backup_key(key, mount_point=transit_mount)
    assert errors_of(info.value) == [
        "1 error occurred:\n\t* plaintext backup is disallowed on the policy\n\n"
    ]
    t.update_key_configuration(key, allow_plaintext_backup=True, mount_point=transit_mount)
    blob = t.backup_key(key, mount_point=transit_mount)["data"]["backup"]
    with pytest.raises(exc.InternalServerError) as info:
        t.restore_key(blob, mount_point=transit_mount)
    assert errors_of(info.value) == [f'1 error occurred:\n\t* key "{key}" already exists\n\n']
    assert t.restore_key(blob, name="copy", mount_point=transit_mount).status_code == 204
    assert (
        t.restore_key(blob, name="copy", force=True, mount_point=transit_mount).status_code == 204
    )
    assert "backup_info" in t.read_key(key, mount_point=transit_mount)["data"]


def test_export(vault_client: Any, transit_mount: str) -> None:
    t = vault_client.secrets.transit
    restore_known_key(vault_client, transit_mount, "exp", bytes(range(32)), bytes(range(32, 64)))
    data = t.export_key("exp", "encryption-key", mount_point=transit_mount)["data"]
    assert data == {
        "name": "exp",
        "type": "aes256-gcm96",
        "keys": {"1": base64.b64encode(bytes(range(32))).decode()},
    }
    data = t.export_key("exp", "hmac-key", version="latest", mount_point=transit_mount)["data"]
    assert data["keys"] == {"1": base64.b64encode(bytes(range(32, 64))).decode()}
    t.create_key("noexp", mount_point=transit_mount)
    with pytest.raises(exc.InvalidRequest) as info:
        t.export_key("noexp", "encryption-key", mount_point=transit_mount)
    assert errors_of(info.value) == ["private key material is not exportable"]


def test_unknown_fields_warning(vault_client: Any, transit_mount: str, key: str) -> None:
    resp = _post(
        vault_client,
        f"/v1/{transit_mount}/encrypt/{key}",
        {"plaintext": PT, "zeta": 1, "alpha": 2},
    )
    assert resp["warnings"] == ["Endpoint ignored these unrecognized parameters: [alpha zeta]"]


def test_create_existing_key_returns_it_unchanged(vault_client: Any, transit_mount: str) -> None:
    t = vault_client.secrets.transit
    first = t.create_key("same", mount_point=transit_mount)["data"]
    again = t.create_key("same", derived=True, mount_point=transit_mount)["data"]
    assert again["derived"] is False
    assert again["keys"] == first["keys"]


def test_convergent_v1_nonce_rules(vault_client: Any, transit_mount: str) -> None:
    restore_known_key(
        vault_client,
        transit_mount,
        "v1key",
        derived=True,
        convergent=True,
        convergent_version=1,
    )
    short_nonce = base64.b64encode(bytes(8)).decode()
    for nonce in (None, short_nonce):
        with pytest.raises(exc.InvalidRequest) as info:
            vault_client.secrets.transit.encrypt_data(
                "v1key", PT, context=CTX, nonce=nonce, mount_point=transit_mount
            )
        assert errors_of(info.value) == [
            "base64-decoded nonce must be 12 bytes long when using convergent encryption "
            "with this key"
        ]
    nonce = base64.b64encode(bytes(12)).decode()
    ct = vault_client.secrets.transit.encrypt_data(
        "v1key", PT, context=CTX, nonce=nonce, mount_point=transit_mount
    )["data"]["ciphertext"]
    # v1 blobs carry no nonce prefix: 11 bytes of plaintext + 16 bytes of tag
    assert len(base64.b64decode(ct.split(":")[2])) == 27
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.decrypt_data(
            "v1key", ct, context=CTX, mount_point=transit_mount
        )
    assert errors_of(info.value) == ["invalid convergent nonce supplied"]


def test_hmac_key_type_cannot_encrypt(vault_client: Any, transit_mount: str) -> None:
    vault_client.adapter.post(f"/v1/{transit_mount}/keys/mac", json={"type": "hmac"})
    data = vault_client.secrets.transit.read_key("mac", mount_point=transit_mount)["data"]
    assert data["type"] == "hmac"
    assert data["supports_encryption"] is False
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.secrets.transit.encrypt_data("mac", PT, mount_point=transit_mount)
    assert errors_of(info.value) == ["message encryption not supported for key type hmac"]
    with pytest.raises(exc.InternalServerError) as info:
        vault_client.adapter.post(
            f"/v1/{transit_mount}/keys/mac2", json={"type": "hmac", "derived": True}
        )
    assert errors_of(info.value) == [
        "1 error occurred:\n\t* key derivation and convergent encryption not supported for "
        "keys of type hmac\n\n"
    ]
    mac = vault_client.secrets.transit.generate_hmac("mac", PT, mount_point=transit_mount)
    assert mac["data"]["hmac"].startswith("vault:v1:")
