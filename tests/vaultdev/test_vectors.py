"""Test vectors: Vault's own (KDF, HMAC) and the reference's computed ones (section 6.2).

Key material is restored from a backup blob (reference Appendix C), so every vector here can be
checked against a real Vault too.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import pytest

from tests.vault_fixtures import backup_blob, restore_known_key
from vaultdev.keys import counter_kdf, hkdf_sha256

PT = "dGhlIHF1aWNrIGJyb3duIGZveA=="  # "the quick brown fox"
CTX = "bXktY29udGV4dA=="  # "my-context"
K = bytes(range(32))
HK = bytes(range(32, 64))


def test_counter_kdf_vault_vector() -> None:
    # sdk/helper/kdf/kdf_test.go TestCounterMode
    key = bytes(range(1, 17))
    expected = bytes(
        [219, 25, 238, 6, 185, 236, 180, 64, 248, 152, 251, 153, 79, 5, 141, 222,
         66, 200, 66, 143, 40, 3, 101, 221, 206, 163, 102, 80, 88, 234, 87, 157]
    )  # fmt: skip
    assert counter_kdf(key, b"the quick brown fox") == expected
    assert counter_kdf(key, b"the quick brown fox", 128).hex() == "fc4db61afe08ace52fe5ac4def817f82"
    assert len(counter_kdf(key, b"x", 384)) == 48
    assert len(counter_kdf(key, b"x", 1024)) == 128


def test_hmac_sha256_prf_vector() -> None:
    key = bytes(range(1, 17))
    assert (
        hmac.digest(key, b"foobarbaz", "sha256").hex()
        == "09329208bc82966bcd9352aafdb71a26a7c2dc6f3876dbd11f34895af685bf7c"
    )


def test_hkdf_reference_vector() -> None:
    out = hkdf_sha256(K, b"my-context", 64)
    assert out.hex() == (
        "4a10e0dd7750402d5d67a8babd31aaaceee6a194780140dcb6bf3bcc29da533d"
        "ec02d160886b7bc2000b3e8b5a37b1634c2a53cbbf624b8874111dc86fd5e964"
    )


HMAC_VECTORS = {
    "sha2-256": "vault:v1:UcBvm5VskkukzZHlPgm3p5P/Yr/PV6xpuOGZISya3A4=",
    "sha2-224": "vault:v1:3p+ZWVquYDvu2dSTCa65Y3fgoMfIAc6fNaBbtg==",
    "sha2-384": "vault:v1:jDB9YXdPjpmr29b1JCIEJO93IydlKVfD9mA2EO9OmJtJQg3QAV5tcRRRb7IQGW9p",
    "sha2-512": "vault:v1:PSXLXvkvKF4CpU65e2bK1tGBZQpcpCEM32fq2iUoiTyQQCfBcGJJItQ+60tMwWXAPQrC"
    "290AzTrNJucGrr4GFA==",
    "sha3-224": "vault:v1:TGipmKH8LR/BkMolYpDYy0BJCIhTtGPDhV2VkQ==",
    "sha3-256": "vault:v1:+px9V/7QYLfdK808zPESC2T/L33uFf4Blzsn9Jy838o=",
    "sha3-384": "vault:v1:YGoRwN4UdTRYZeOER86jsQOB8piWenzLDzJ2wJQK/Jq59rAsY8lh7SCdqqCyFg70",
    "sha3-512": "vault:v1:GrNA8sU88naMPEQ7UZGj9EJl7YJhl03AFHfxcEURFrtvnobdea9ZlZHePpxAx/oCaC7R"
    "2HkrAO+Tu3uXPIl3lg==",
}


def _two_version_blob(name: str) -> str:
    """path_hmac_test.go material: v1 hmac_key "0123...901", v2 hmac_key "1234...012"."""
    blob = backup_blob(name, K, b"01234567890123456789012345678901")
    doc: dict[str, Any] = json.loads(base64.b64decode(blob))
    v2 = dict(doc["policy"]["keys"]["1"])
    v2["key"] = base64.b64encode(bytes(range(100, 132))).decode()
    v2["hmac_key"] = base64.b64encode(b"12345678901234567890123456789012").decode()
    doc["policy"]["keys"]["2"] = v2
    doc["policy"]["latest_version"] = 2
    doc["policy"]["archive_version"] = 2
    doc["archived_keys"]["keys"].append(v2)
    return base64.b64encode((json.dumps(doc) + "\n").encode()).decode()


@pytest.fixture
def hmac_key_name(vault_client: Any, transit_mount: str) -> str:
    vault_client.secrets.transit.restore_key(
        _two_version_blob("hmac-vec"), name="hmac-vec", mount_point=transit_mount
    )
    return "hmac-vec"


@pytest.mark.parametrize(("algorithm", "expected"), sorted(HMAC_VECTORS.items()))
def test_hmac_vectors(
    vault_client: Any, transit_mount: str, hmac_key_name: str, algorithm: str, expected: str
) -> None:
    # hvac's generate_hmac refuses sha3-* client-side, so post the body directly
    resp = vault_client.adapter.post(
        f"/v1/{transit_mount}/hmac/{hmac_key_name}",
        json={"input": PT, "key_version": 1, "algorithm": algorithm},
    )
    assert resp["data"]["hmac"] == expected
    # the algorithm in the URL wins over the body
    resp = vault_client.adapter.post(
        f"/v1/{transit_mount}/hmac/{hmac_key_name}/{algorithm}",
        json={"input": PT, "key_version": 1, "algorithm": "sha2-512"},
    )
    assert resp["data"]["hmac"] == expected
    verify = vault_client.adapter.post(
        f"/v1/{transit_mount}/verify/{hmac_key_name}/{algorithm}",
        json={"input": PT, "hmac": expected},
    )
    assert verify["data"]["valid"] is True


def test_hmac_version_2_and_batch(
    vault_client: Any, transit_mount: str, hmac_key_name: str
) -> None:
    resp = vault_client.secrets.transit.generate_hmac(hmac_key_name, PT, mount_point=transit_mount)
    assert resp["data"]["hmac"] == "vault:v2:Dt+mO/B93kuWUbGMMobwUNX5Wodr6dL3JH4DMfpQ0kw="
    resp = vault_client.adapter.post(
        f"/v1/{transit_mount}/hmac/{hmac_key_name}",
        json={
            "key_version": 1,
            "batch_input": [
                {"input": "", "reference": "one"},
                {"input": ":;.?", "reference": "two"},
                {"reference": "three"},
                {"input": PT, "reference": "four"},
            ],
        },
    )
    results = resp["data"]["batch_results"]
    assert results[0] == {
        "hmac": "vault:v1:BCfVv6rlnRsIKpjCZCxWvh5iYwSSabRXpX9XJniuNgc=",
        "reference": "one",
    }
    assert results[1]["error"] == (
        "unable to decode input as base64: illegal base64 data at input byte 0"
    )
    assert results[1]["reference"] == "two"
    assert results[2]["error"] == "missing input for HMAC"
    assert results[2]["reference"] == "three"
    assert results[3]["hmac"] == HMAC_VECTORS["sha2-256"]


# (vector id, backup options, expected ciphertext, plaintext)
ENCRYPT_VECTORS = [
    (
        "C",
        {"derived": True, "convergent": True},
        K,
        "vault:v1:Fe9pARQ9J9e6i2jrGaJTydaXAJt0vwHdtUw9TzJ/vzYX8+0tfmR33z9fVXcJLl0=",
        PT,
    ),
    (
        "D",
        {"derived": True, "convergent": True, "key_type": 8},
        K[:16],
        "vault:v1:XbIdmyYHaIMeGpK4WIXZTMk+/y1k1am3AvL1b3FCMkibw+pz4mJbb0FXdFwGoQA=",
        PT,
    ),
    (
        "E",
        {"derived": True, "convergent": True, "key_type": 5},
        K,
        "vault:v1:Fe9pARQ9J9e6i2jrBdlaJDLPL0hNA4exOrpDeRNtGpwOa79ijbLVUSc9+YNbFy4=",
        PT,
    ),
    (
        "F",
        {"derived": True, "convergent": True, "convergent_version": 2},
        K,
        "vault:v1:HIjntUqlFwJPd7TT2FZ5TR7UugiHQcaN4fYgrLAPSKW41vUWDwVuO82e7O/pAC0=",
        PT,
    ),
    (
        "H",
        {"derived": True, "convergent": True},
        K,
        "vault:v1:M+R9Vu+Bvxo50V6W1onJYY+FLj6dujzs4qOHGQ==",
        "",
    ),
]


@pytest.mark.parametrize(
    ("vector", "options", "key", "expected", "plaintext"),
    ENCRYPT_VECTORS,
    ids=[v[0] for v in ENCRYPT_VECTORS],
)
def test_deterministic_encrypt_vectors(
    vault_client: Any,
    transit_mount: str,
    vector: str,
    options: dict[str, Any],
    key: bytes,
    expected: str,
    plaintext: str,
) -> None:
    name = f"vec-{vector.lower()}"
    restore_known_key(vault_client, transit_mount, name, key, HK, **options)
    resp = vault_client.secrets.transit.encrypt_data(
        name, plaintext, context=CTX, mount_point=transit_mount
    )
    assert resp["data"] == {"ciphertext": expected, "key_version": 1}
    back = vault_client.secrets.transit.decrypt_data(
        name, expected, context=CTX, mount_point=transit_mount
    )
    assert back["data"]["plaintext"] == plaintext


DECRYPT_VECTORS = [
    (
        "A",
        {},
        None,
        None,
        "vault:v1:AAECAwQFBgcICQoLM2qzO7SQq3jmYfX53p4WTeW5/w/KdcvN6/BO3Zfwl6AY5AI=",
    ),
    (
        "A2",
        {},
        None,
        "YWFk",
        "vault:v1:AAECAwQFBgcICQoLM2qzO7SQq3jmYfX53p4WTeW5/2u3hSvksnJLyqV5la90uI4=",
    ),
    (
        "B",
        {"derived": True},
        CTX,
        None,
        "vault:v1:AAECAwQFBgcICQoL1hi4aHYcLQu1rhnoG5+7gh3V4iOlzDaBcSaHRhQ/vj+5ZQ0=",
    ),
    (
        "G",
        {"derived": True, "kdf": 0},
        CTX,
        None,
        "vault:v1:AAECAwQFBgcICQoLIlMiVYR4YC2hPTufhbgUjaFsUCHuMnej2o/w5oMwwF2LWxM=",
    ),
]


@pytest.mark.parametrize(
    ("vector", "options", "context", "aad", "ciphertext"),
    DECRYPT_VECTORS,
    ids=[v[0] for v in DECRYPT_VECTORS],
)
def test_decrypt_vectors(
    vault_client: Any,
    transit_mount: str,
    vector: str,
    options: dict[str, Any],
    context: str | None,
    aad: str | None,
    ciphertext: str,
) -> None:
    name = f"vec-{vector.lower()}"
    restore_known_key(vault_client, transit_mount, name, K, HK, **options)
    resp = vault_client.secrets.transit.decrypt_data(
        name, ciphertext, context=context, associated_data=aad, mount_point=transit_mount
    )
    assert resp["data"]["plaintext"] == PT


def test_hmac_vector_i(vault_client: Any, transit_mount: str) -> None:
    restore_known_key(vault_client, transit_mount, "vec-i", K, HK)
    resp = vault_client.secrets.transit.generate_hmac("vec-i", PT, mount_point=transit_mount)
    assert resp["data"]["hmac"] == "vault:v1:21XBfDVvOlGnlDIiisSk6Ivm/aw1B5mTXXCUX3mrQC4="


def test_backup_round_trip_keeps_material(vault_client: Any, transit_mount: str) -> None:
    restore_known_key(vault_client, transit_mount, "vec-rt", K, HK, derived=True, convergent=True)
    backup = vault_client.secrets.transit.backup_key("vec-rt", mount_point=transit_mount)
    blob = backup["data"]["backup"]
    doc = json.loads(base64.b64decode(blob))
    assert base64.b64decode(blob).endswith(b"}\n")
    assert doc["policy"]["keys"]["1"]["key"] == base64.b64encode(K).decode()
    assert doc["policy"]["keys"]["1"]["convergent_version"] == 3
    assert doc["policy"]["convergent_version"] == -1
    assert doc["policy"]["kdf"] == 1
    assert doc["archived_keys"]["keys"][0]["key"] is None
    vault_client.secrets.transit.restore_key(blob, name="vec-rt2", mount_point=transit_mount)
    resp = vault_client.secrets.transit.encrypt_data(
        "vec-rt2", PT, context=CTX, mount_point=transit_mount
    )
    assert resp["data"]["ciphertext"] == ENCRYPT_VECTORS[0][3]
    key = vault_client.secrets.transit.read_key("vec-rt2", mount_point=transit_mount)["data"]
    assert key["restore_info"]["version"] == 1
    assert key["kdf"] == "hkdf_sha256"


def test_hvac_verify_signed_data_with_hmac(
    vault_client: Any, transit_mount: str, hmac_key_name: str
) -> None:
    t = vault_client.secrets.transit
    ok = t.verify_signed_data(
        hmac_key_name,
        PT,
        hmac=HMAC_VECTORS["sha2-256"],
        hash_algorithm="sha2-256",
        mount_point=transit_mount,
    )
    assert ok["data"]["valid"] is True
    bad = t.verify_signed_data(
        hmac_key_name,
        PT,
        hmac=HMAC_VECTORS["sha2-256"],
        hash_algorithm="sha2-512",
        mount_point=transit_mount,
    )
    assert bad["data"]["valid"] is False
