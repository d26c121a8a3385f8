"""Contract tests: the server behaviours the tool relies on, one test per behaviour.

The tool recognises Vault's answers by their wording (the constants of
:mod:`context_encryption.vault_texts`: ``AUTH_FAILED``, ``MISSING_CONTEXT``, ``NO_PREFIX``,
``TOO_OLD``, ``TOO_NEW``, ``MALFORMED``, ``PERMISSION_DENIED``, ``TOO_LARGE_TEXTS``), by their
HTTP status, and by the shape of a few JSON answers
(``batch_results``, ``sys/capabilities-self``, ``auth/token/lookup-self``, a key read). Its unit
and end-to-end tests show that the tool handles those answers; these tests show that the server
really gives them. They run against whatever real server the suite has (the OpenBao dev server by
default; any Vault or OpenBao when ``VAULT_ADDR`` and ``VAULT_TOKEN`` are set), so a server that
words or shapes one of them differently fails the test named after that behaviour, and a changed
constant in the tool fails the same test.

Requests the tool sends as batches (decrypt, encrypt) are sent here as batches too, through raw
HTTP so that status and body are seen as the server sent them; keys and ciphertexts are set up
through hvac. The request-limit tests depend on the product: each skips, saying why, on the other.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import hvac
import hvac.exceptions
import pytest
import requests

from app_models.tables import context_string
from context_encryption.errors import VaultUnavailableError
from context_encryption.openbao import free_port
from context_encryption.settings import DEFAULT_VAULT_BATCH_ITEMS, Secret, Settings
from context_encryption.transit import (
    DecryptRequest,
    EncryptRequest,
    ItemResult,
    TransitClient,
    b64_context,
)
from context_encryption.vault_texts import (
    AUTH_FAILED,
    MALFORMED,
    MISSING_CONTEXT,
    NO_PREFIX,
    PERMISSION_DENIED,
    TOO_NEW,
    TOO_OLD,
    is_too_large,
)
from tests.support.vault_fixtures import VaultServer

#: base64 of "users.email", written out so that a bug in the helpers that build a context
#: cannot move the expectation along with it.
USERS_EMAIL_CONTEXT = "dXNlcnMuZW1haWw="
KEY_NOT_FOUND = "encryption key not found"
#: The server's whole text; the tool matches the shorter vault_texts.TOO_NEW inside it.
TOO_NEW_TEXT = "invalid ciphertext: version is too new"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of the server, as sent: status and JSON body."""

    status: int
    body: dict[str, Any]

    @property
    def error(self) -> str:
        """The top-level ``errors``, joined (hvac joins them the same way)."""
        return ", ".join(str(e) for e in self.body.get("errors") or [])

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.body["data"]["batch_results"])


@dataclass(frozen=True)
class Api:
    """Raw HTTP to the server with one token (no hvac, no retries)."""

    addr: str
    token: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        resp = requests.request(
            method,
            f"{self.addr}/v1/{path}",
            headers={"X-Vault-Token": self.token},
            json=body,
            timeout=30,
        )
        parsed = resp.json() if resp.content else {}
        return Answer(resp.status_code, parsed if isinstance(parsed, dict) else {})

    def post(self, path: str, body: dict[str, Any]) -> Answer:
        return self.call("POST", path, body)

    def get(self, path: str) -> Answer:
        return self.call("GET", path)

    def as_token(self, token: str) -> Api:
        return Api(self.addr, token)


def batch_decrypt(api: Api, mount: str, key: str, *items: tuple[str, str | None]) -> Answer:
    """A batch decrypt as the tool sends it: ``(ciphertext, base64 context or None)`` items."""
    batch = [
        {"ciphertext": ct} if ctx is None else {"ciphertext": ct, "context": ctx}
        for ct, ctx in items
    ]
    return api.post(f"{mount}/decrypt/{key}", {"batch_input": batch})


def item_error(api: Api, mount: str, key: str, ciphertext: str, context: str | None) -> str:
    """The error of a one-item batch decrypt that must fail: 400, per item, no ``errors``."""
    answer = batch_decrypt(api, mount, key, (ciphertext, context))
    assert answer.status == 400, answer.body
    assert "errors" not in answer.body
    [result] = answer.results
    return str(result["error"])


def encrypt(
    client: Any, mount: str, key: str, text: str, context: str | None = None, **kw: Any
) -> str:
    data = client.secrets.transit.encrypt_data(
        key, b64(text), context=context, mount_point=mount, **kw
    )["data"]
    return str(data["ciphertext"])


def create_key(client: Any, mount: str, name: str, **kw: Any) -> None:
    client.secrets.transit.create_key(name, mount_point=mount, **kw)


def tampered(ciphertext: str) -> str:
    """The ciphertext with one bit of its GCM tag flipped (prefix and length unchanged)."""
    prefix, _, payload = ciphertext.rpartition(":")
    blob = bytearray(base64.b64decode(payload))
    blob[-1] ^= 0x01
    return f"{prefix}:{base64.b64encode(bytes(blob)).decode('ascii')}"


class Token(NamedTuple):
    token: str
    client: Any  # hvac.Client with that token


@pytest.fixture
def api(vault_server: VaultServer) -> Api:
    return Api(vault_server.addr, vault_server.token)


@pytest.fixture
def make_token(vault_client: Any, vault_server: VaultServer) -> Iterator[Callable[..., Token]]:
    """``make_token(policy_hcl, **create_args)``: a child token of the root token with that
    policy (only ``default`` when None: a child given no policy would inherit ``root``), TTL 1h
    unless given; revoked, and its policy deleted, after the test."""
    policies: list[str] = []
    tokens: list[str] = []

    def make(policy: str | None, **create_args: Any) -> Token:
        names = []
        if policy is not None:
            name = f"contract-{secrets.token_hex(6)}"
            vault_client.sys.create_or_update_policy(name, policy)
            policies.append(name)
            names.append(name)
        create_args.setdefault("ttl", "1h")
        auth = vault_client.auth.token.create(policies=names or ["default"], **create_args)["auth"]
        tokens.append(auth["client_token"])
        return Token(
            auth["client_token"], hvac.Client(url=vault_server.addr, token=auth["client_token"])
        )

    yield make
    for token in tokens:
        with contextlib.suppress(hvac.exceptions.VaultError):
            vault_client.auth.token.revoke(token)
    for name in policies:
        vault_client.sys.delete_policy(name)


def _version(health: dict[str, Any]) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", str(health.get("version", "")))
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def server_identity(client: Any) -> tuple[str, tuple[int, int, int]]:
    """("openbao" | "vault" | "unknown", version) from ``sys/health``.

    OpenBao's versions start at 2.0 and its health answer has no ``enterprise`` field;
    HashiCorp Vault's has one, and its versions are 1.x.
    """
    health = client.sys.read_health_status(method="GET", standby_ok=True)
    version = _version(health)
    if "enterprise" in health or version[0] == 1:
        return "vault", version
    if version[0] >= 2:
        return "openbao", version
    return "unknown", version


# --------------------------------------------------------------------------------------------
# decrypt errors the tool classifies by their text (schemes.explain, vault_texts.brief_reason)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convergent", [False, True], ids=["derived", "derived+convergent"])
def test_no_context_ciphertext_on_derived_key_says_missing_context(
    vault_client: Any, api: Api, transit_mount: str, convergent: bool
) -> None:
    create_key(vault_client, transit_mount, "old")
    create_key(
        vault_client, transit_mount, "new", derived=True, convergent_encryption=convergent or None
    )
    old_scheme = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    assert MISSING_CONTEXT in item_error(api, transit_mount, "new", old_scheme, None)


def test_encrypt_on_derived_key_without_context_says_missing_context(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    answer = api.post(
        f"{transit_mount}/encrypt/new", {"batch_input": [{"plaintext": b64("alice@example.com")}]}
    )
    assert answer.status == 400
    assert MISSING_CONTEXT in answer.results[0]["error"]


@pytest.mark.parametrize("value", ["alice@example.com", "vault:abc", "vault:V1:abc"])
def test_value_without_vault_v_prefix_says_no_prefix(
    vault_client: Any, api: Api, transit_mount: str, value: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    assert NO_PREFIX in item_error(api, transit_mount, "old", value, None)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("vault:v1", "invalid ciphertext: wrong number of fields"),
        ("vault:vX:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v1:!!!!", "invalid ciphertext: could not decode base64"),
        ("vault:v1:AAAA", "invalid ciphertext length"),
    ],
    ids=["fields", "version", "base64", "length"],
)
def test_malformed_ciphertext_texts_verify_recognises(
    vault_client: Any, api: Api, transit_mount: str, value: str, text: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    error = item_error(api, transit_mount, "old", value, None)
    assert text in error
    assert any(marker in error for marker in MALFORMED)  # what the tool reads it by


def test_ciphertext_of_another_key_fails_authentication(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    old_scheme = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    new_scheme = encrypt(
        vault_client, transit_mount, "new", "alice@example.com", USERS_EMAIL_CONTEXT
    )
    # the engine's trial decrypt of an old-scheme value with the new key and a context ...
    assert AUTH_FAILED in item_error(api, transit_mount, "new", old_scheme, USERS_EMAIL_CONTEXT)
    # ... and an already migrated value decrypted with the old key (no context)
    assert AUTH_FAILED in item_error(api, transit_mount, "old", new_scheme, None)


def test_ciphertext_under_another_context_fails_authentication(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    ct = encrypt(vault_client, transit_mount, "new", "alice@example.com", USERS_EMAIL_CONTEXT)
    other = b64("invitations.email")
    assert AUTH_FAILED in item_error(api, transit_mount, "new", ct, other)


def test_tampered_ciphertext_fails_authentication(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    ct = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    assert AUTH_FAILED in item_error(api, transit_mount, "old", tampered(ct), None)


def test_version_below_min_decryption_version_is_too_old(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    v1 = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    vault_client.secrets.transit.rotate_key("old", mount_point=transit_mount)
    vault_client.secrets.transit.update_key_configuration(
        "old", min_decryption_version=2, mount_point=transit_mount
    )
    assert TOO_OLD in item_error(api, transit_mount, "old", v1, None)


def test_version_above_latest_is_too_new(vault_client: Any, api: Api, transit_mount: str) -> None:
    create_key(vault_client, transit_mount, "old")
    v1 = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    v2 = "vault:v2:" + v1.removeprefix("vault:v1:")
    error = item_error(api, transit_mount, "old", v2, None)
    assert TOO_NEW_TEXT in error
    assert TOO_NEW in error  # what the tool reads it by


# --------------------------------------------------------------------------------------------
# a key that does not exist
# --------------------------------------------------------------------------------------------


def test_decrypt_with_missing_key_is_400_encryption_key_not_found(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    ct = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    answer = batch_decrypt(api, transit_mount, "missing", (ct, None))
    # the whole batch is refused: top-level errors, no batch_results
    assert answer.status == 400
    assert KEY_NOT_FOUND in answer.error
    assert "data" not in answer.body


def test_encrypt_with_missing_key_creates_it_when_the_token_may(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    """Transit's upsert: encrypt creates a missing key (derived when the request has a context,
    never convergent). The tool must never encrypt with a key the preflight did not find."""
    answer = api.post(
        f"{transit_mount}/encrypt/typo",
        {"batch_input": [{"plaintext": b64("x"), "context": USERS_EMAIL_CONTEXT}]},
    )
    assert answer.status == 200
    assert answer.results[0]["ciphertext"].startswith("vault:v1:")
    key = vault_client.secrets.transit.read_key("typo", mount_point=transit_mount)["data"]
    assert key["derived"] is True
    assert key["convergent_encryption"] is False


def test_encrypt_with_missing_key_and_upsert_disabled_is_400_encryption_key_not_found(
    api: Api, transit_mount: str
) -> None:
    assert api.post(f"{transit_mount}/config/keys", {"disable_upsert": True}).status == 200
    answer = api.post(
        f"{transit_mount}/encrypt/missing", {"batch_input": [{"plaintext": b64("x")}]}
    )
    assert answer.status == 400
    assert KEY_NOT_FOUND in answer.error


def test_encrypt_with_missing_key_and_only_update_capability_is_403(
    api: Api, transit_mount: str, make_token: Callable[..., Token]
) -> None:
    """Encrypting with a key that does not exist is a *create*: an update-only token is denied
    (permission denied), not told the key is missing."""
    tok = make_token(f'path "{transit_mount}/encrypt/*" {{ capabilities = ["update"] }}')
    answer = api.as_token(tok.token).post(
        f"{transit_mount}/encrypt/missing", {"batch_input": [{"plaintext": b64("x")}]}
    )
    assert answer.status == 403
    assert PERMISSION_DENIED in answer.error


# --------------------------------------------------------------------------------------------
# tokens and capabilities
# --------------------------------------------------------------------------------------------


def test_token_without_capability_gets_403_permission_denied(
    vault_client: Any, api: Api, transit_mount: str, make_token: Callable[..., Token]
) -> None:
    create_key(vault_client, transit_mount, "old")
    tok = make_token(f'path "{transit_mount}/decrypt/old" {{ capabilities = ["update"] }}')
    answer = api.as_token(tok.token).post(
        f"{transit_mount}/encrypt/old", {"batch_input": [{"plaintext": b64("x")}]}
    )
    assert answer.status == 403
    assert PERMISSION_DENIED in answer.error
    with pytest.raises(hvac.exceptions.Forbidden) as exc:  # what the tool's _call catches
        tok.client.secrets.transit.encrypt_data("old", b64("x"), mount_point=transit_mount)
    assert PERMISSION_DENIED in ", ".join(exc.value.errors)


def test_revoked_token_gets_403_permission_denied_on_lookup_self(
    vault_client: Any, make_token: Callable[..., Token]
) -> None:
    """How the tool tells an invalid token from a missing capability after a 403."""
    tok = make_token(None)
    tok.client.auth.token.lookup_self()
    vault_client.auth.token.revoke(tok.token)
    with pytest.raises(hvac.exceptions.Forbidden) as exc:
        tok.client.auth.token.lookup_self()
    assert PERMISSION_DENIED in ", ".join(exc.value.errors)


def test_token_without_default_policy_gets_403_on_lookup_self_and_capabilities_self(
    vault_client: Any, transit_mount: str, make_token: Callable[..., Token]
) -> None:
    create_key(vault_client, transit_mount, "old")
    policy = f'path "{transit_mount}/decrypt/old" {{ capabilities = ["update"] }}'
    tok = make_token(policy, no_default_policy=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        tok.client.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        tok.client.sys.get_capabilities(paths=[f"{transit_mount}/decrypt/old"])


def test_capabilities_self_answer_for_root_token(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    paths = [f"{transit_mount}/decrypt/old", f"{transit_mount}/keys/old"]
    answer = api.post("sys/capabilities-self", {"paths": paths})
    assert answer.status == 200
    for path in paths:
        assert answer.body["data"][path] == ["root"]
    caps = TransitClient(vault_client, transit_mount).capabilities_self(paths)
    assert caps == {p: ["root"] for p in paths}


def test_capabilities_self_answer_for_limited_token(
    api: Api, transit_mount: str, make_token: Callable[..., Token]
) -> None:
    m = transit_mount
    tok = make_token(
        f'path "{m}/decrypt/old" {{ capabilities = ["update"] }}\n'
        f'path "{m}/keys/old" {{ capabilities = ["read"] }}'
    )
    paths = [f"{m}/decrypt/old", f"{m}/keys/old", f"{m}/encrypt/old"]
    answer = api.as_token(tok.token).post("sys/capabilities-self", {"paths": paths})
    assert answer.status == 200
    expected = {paths[0]: ["update"], paths[1]: ["read"], paths[2]: ["deny"]}
    assert {p: answer.body["data"][p] for p in paths} == expected
    assert TransitClient(tok.client, m).capabilities_self(paths) == expected
    # one path: the answer also carries "capabilities", which the tool falls back on
    one = api.as_token(tok.token).post("sys/capabilities-self", {"paths": [paths[2]]})
    assert one.body["data"]["capabilities"] == ["deny"]
    assert TransitClient(tok.client, m).capabilities_self([paths[2]]) == {paths[2]: ["deny"]}


def test_lookup_self_fields_of_root_token(vault_client: Any) -> None:
    data = vault_client.auth.token.lookup_self()["data"]
    assert data["ttl"] == 0
    assert data["explicit_max_ttl"] == 0
    assert data["renewable"] is False
    assert data["expire_time"] is None
    assert data["num_uses"] == 0
    assert "root" in data["policies"]


def test_lookup_self_fields_of_child_token_with_ttl(make_token: Callable[..., Token]) -> None:
    tok = make_token(None, explicit_max_ttl="2h")
    data = tok.client.auth.token.lookup_self()["data"]
    assert isinstance(data["ttl"], int)
    assert 3500 < data["ttl"] <= 3600
    assert data["renewable"] is True
    assert data["explicit_max_ttl"] == 7200
    assert isinstance(data["creation_time"], int)
    assert isinstance(data["expire_time"], str)
    assert data["num_uses"] == 0
    assert data["policies"] == ["default"]


def test_renew_self_answers_lease_duration_and_renewable(
    make_token: Callable[..., Token],
) -> None:
    """What TokenKeeper._renew reads."""
    tok = make_token(None, explicit_max_ttl="2h")
    auth = tok.client.auth.token.renew_self()["auth"]
    assert isinstance(auth["lease_duration"], int)
    assert 3500 < auth["lease_duration"] <= 3600
    assert auth["renewable"] is True


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------


def test_key_read_fields_of_no_context_and_convergent_keys(
    vault_client: Any, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    read = vault_client.secrets.transit.read_key
    old = read("old", mount_point=transit_mount)["data"]
    new = read("new", mount_point=transit_mount)["data"]
    for key in (old, new):
        assert key["type"] == "aes256-gcm96"
        assert key["latest_version"] == 1
        assert key["min_decryption_version"] == 1
        assert key["min_encryption_version"] == 0
        assert key["supports_encryption"] is True
        assert key["supports_decryption"] is True
    assert old["derived"] is False
    assert old.get("convergent_encryption", False) is False  # absent: not derived
    assert new["derived"] is True
    assert new["convergent_encryption"] is True
    info = TransitClient(vault_client, transit_mount).read_key("new")
    assert info is not None
    assert (info.derived, info.convergent, info.latest_version) == (True, True, 1)


def test_read_of_missing_key_is_404(vault_client: Any, api: Api, transit_mount: str) -> None:
    answer = api.get(f"{transit_mount}/keys/missing")
    assert answer.status == 404
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault_client.secrets.transit.read_key("missing", mount_point=transit_mount)
    assert TransitClient(vault_client, transit_mount).read_key("missing") is None


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def _partial_batch(vault_client: Any, mount: str) -> tuple[str, list[dict[str, Any]]]:
    """A no-context key and a batch: good, no prefix, good, other key's ciphertext."""
    create_key(vault_client, mount, "old")
    create_key(vault_client, mount, "other")
    good1 = encrypt(vault_client, mount, "old", "one")
    good2 = encrypt(vault_client, mount, "old", "two")
    foreign = encrypt(vault_client, mount, "other", "three")
    batch = [{"ciphertext": c} for c in (good1, "not ciphertext", good2, foreign)]
    return "old", batch


def _check_partial_results(results: list[dict[str, Any]]) -> None:
    assert len(results) == 4
    assert "error" not in results[0]
    assert results[0]["plaintext"] == b64("one")
    assert NO_PREFIX in results[1]["error"]
    assert "error" not in results[2]
    assert results[2]["plaintext"] == b64("two")
    assert AUTH_FAILED in results[3]["error"]


def test_partial_batch_failure_is_400_with_per_item_results(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    key, batch = _partial_batch(vault_client, transit_mount)
    answer = api.post(f"{transit_mount}/decrypt/{key}", {"batch_input": batch})
    assert answer.status == 400
    assert "errors" not in answer.body
    _check_partial_results(answer.results)


def test_partial_batch_failure_through_hvac_raises_invalid_request_with_the_body(
    vault_client: Any, transit_mount: str
) -> None:
    key, batch = _partial_batch(vault_client, transit_mount)
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        vault_client.secrets.transit.decrypt_data(key, batch_input=batch, mount_point=transit_mount)
    assert exc.value.errors is None
    body = exc.value.json
    assert isinstance(body, dict), "the server's Content-Type is not exactly application/json"
    assert "errors" not in body
    _check_partial_results(body["data"]["batch_results"])


def test_partial_batch_failure_through_transit_client_gives_item_results_in_order(
    vault_client: Any, transit_mount: str
) -> None:
    key, batch = _partial_batch(vault_client, transit_mount)
    transit = TransitClient(vault_client, transit_mount)
    results = transit.decrypt_batch(key, [DecryptRequest(i["ciphertext"], None) for i in batch])
    assert [r.value for r in results] == [b64("one"), None, b64("two"), None]
    assert results[0] == ItemResult(b64("one"), None)
    assert NO_PREFIX in (results[1].error or "")
    assert AUTH_FAILED in (results[3].error or "")


def test_batch_where_every_item_fails_is_400_with_per_item_results(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    answer = batch_decrypt(api, transit_mount, "old", ("vault:abc", None), ("x", None))
    assert answer.status == 400
    assert "errors" not in answer.body
    assert [NO_PREFIX in r["error"] for r in answer.results] == [True, True]


def test_batch_encrypt_partial_failure_is_400_with_per_item_results(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "old")
    batch = [{"plaintext": "!!not base64!!"}, {"plaintext": b64("ok")}]
    answer = api.post(f"{transit_mount}/encrypt/old", {"batch_input": batch})
    assert answer.status == 400
    assert "errors" not in answer.body
    first, second = answer.results
    assert "illegal base64 data" in first["error"]
    assert "ciphertext" not in first
    assert second["ciphertext"].startswith("vault:v1:")
    assert "error" not in second


# --------------------------------------------------------------------------------------------
# convergent encryption, contexts, versions
# --------------------------------------------------------------------------------------------


def test_convergent_derived_key_gives_same_ciphertext_per_context(
    vault_client: Any, transit_mount: str
) -> None:
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    email = "alice@example.com"
    first = encrypt(vault_client, transit_mount, "new", email, USERS_EMAIL_CONTEXT)
    again = encrypt(vault_client, transit_mount, "new", email, USERS_EMAIL_CONTEXT)
    other_column = encrypt(vault_client, transit_mount, "new", email, b64("invitations.email"))
    assert first == again
    assert other_column != first
    # the tool's own context for users.email is the pinned literal, so it finds the same value
    assert base64.b64decode(USERS_EMAIL_CONTEXT) == b"users.email"
    assert b64_context(context_string("users", "email")) == USERS_EMAIL_CONTEXT
    [tool] = TransitClient(vault_client, transit_mount).encrypt_batch(
        "new", [EncryptRequest(b64(email), context_string("users", "email"))], key_version=None
    )
    assert tool == ItemResult(first, None)


def rotated_new_key(vault_client: Any, transit_mount: str) -> dict[str, str]:
    """Key "new" (derived, convergent) rotated to v2; an encrypt item of users.email for it."""
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    vault_client.secrets.transit.rotate_key("new", mount_point=transit_mount)
    return {"plaintext": b64("alice@example.com"), "context": USERS_EMAIL_CONTEXT}


def test_encrypt_with_key_version_pins_the_prefix_after_rotation(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    item = rotated_new_key(vault_client, transit_mount)
    # the tool pins the version inside each batch item
    answer = api.post(
        f"{transit_mount}/encrypt/new",
        {"batch_input": [{**item, "key_version": 1}, {**item, "key_version": 2}, item]},
    )
    assert answer.status == 200
    prefixes = [r["ciphertext"][: len("vault:v1:")] for r in answer.results]
    assert prefixes == ["vault:v1:", "vault:v2:", "vault:v2:"]
    assert [r["key_version"] for r in answer.results] == [1, 2, 2]


def test_batch_encrypt_ignores_a_top_level_key_version(
    vault_client: Any, api: Api, transit_mount: str
) -> None:
    """Why the tool pins ``key_version`` per item: beside ``batch_input`` it is ignored."""
    item = rotated_new_key(vault_client, transit_mount)
    answer = api.post(f"{transit_mount}/encrypt/new", {"batch_input": [item], "key_version": 1})
    assert answer.status == 200
    assert answer.results[0]["ciphertext"].startswith("vault:v2:")


def test_rewrap_moves_ciphertext_to_the_latest_version(
    vault_client: Any, transit_mount: str
) -> None:
    transit = vault_client.secrets.transit
    create_key(vault_client, transit_mount, "old")
    v1 = encrypt(vault_client, transit_mount, "old", "alice@example.com")
    transit.rotate_key("old", mount_point=transit_mount)
    rewrapped = transit.rewrap_data("old", v1, mount_point=transit_mount)["data"]
    assert rewrapped["ciphertext"].startswith("vault:v2:")
    assert rewrapped["key_version"] == 2
    plain = transit.decrypt_data("old", rewrapped["ciphertext"], mount_point=transit_mount)
    assert plain["data"]["plaintext"] == b64("alice@example.com")


# --------------------------------------------------------------------------------------------
# request limits (DESIGN.md "The Vault of tests", vault-transit.md §10)
# --------------------------------------------------------------------------------------------


def version_of(vault_client: Any, flavour: str, what: str) -> tuple[int, int, int]:
    """The server's version; the test is skipped unless the server is ``flavour``."""
    found, version = server_identity(vault_client)
    if found != flavour:
        pytest.skip(f"{what}; this server is {found}")
    return version


def _batch_with_context(n: int) -> list[dict[str, str]]:
    return [
        {"plaintext": b64(f"user{i}@example.com"), "context": USERS_EMAIL_CONTEXT} for i in range(n)
    ]


def test_openbao_refuses_250_items_with_context_as_too_complex(
    vault_client: Any, transit_mount: str
) -> None:
    version = version_of(vault_client, "openbao", "OpenBao's max_request_json_strings limit")
    if version < (2, 4, 1):
        pytest.skip(f"OpenBao {version} predates the JSON complexity limits (2.4.1)")
    expected = (
        "refused JSON input due to high complexity"
        if version >= (2, 6, 0)
        else "error parsing JSON"
    )
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    encrypt_data = vault_client.secrets.transit.encrypt_data
    # hvac sends "plaintext": null beside batch_input: 2 + 4 * 249 = 998 strings pass ...
    ok = encrypt_data("new", batch_input=_batch_with_context(249), mount_point=transit_mount)
    assert len(ok["data"]["batch_results"]) == 249
    # ... 2 + 4 * 250 = 1002 are over the default 1000
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:  # HTTP 400
        encrypt_data("new", batch_input=_batch_with_context(250), mount_point=transit_mount)
    assert expected in str(exc.value)
    assert is_too_large(str(exc.value))  # the tool halves such a request, never fails a row


def test_default_request_of_the_tool_fits_the_servers_default_limits(
    vault_client: Any, transit_mount: str
) -> None:
    """DEFAULT_VAULT_BATCH_ITEMS items of the tool's largest shape (context and key_version) are one
    request the server accepts: no refusal, so no halving."""
    create_key(vault_client, transit_mount, "new", derived=True, convergent_encryption=True)
    items = [
        EncryptRequest(b64(f"user{i}@example.com"), context_string("users", "email"))
        for i in range(DEFAULT_VAULT_BATCH_ITEMS)
    ]
    transit = TransitClient(vault_client, transit_mount)
    results = transit.encrypt_batch("new", items, key_version=1)
    assert transit.limits.refusals == 0
    assert all(r.ok and (r.value or "").startswith("vault:v1:") for r in results)
    assert len(results) == DEFAULT_VAULT_BATCH_ITEMS


def _vault_has_json_limits(version: tuple[int, int, int]) -> bool:
    """Vault 1.20.3+ / 1.21+, and the backports 1.16.25, 1.18.14, 1.19.9."""
    backports = {(1, 16): 25, (1, 18): 14, (1, 19): 9, (1, 20): 3}
    minor = version[:2]
    return version >= (1, 21, 0) or (minor in backports and version[2] >= backports[minor])


def test_vault_refuses_more_than_10000_items_with_500(
    vault_client: Any, transit_mount: str
) -> None:
    version = version_of(vault_client, "vault", "HashiCorp Vault's max_json_array_element_count")
    if not _vault_has_json_limits(version):
        pytest.skip(f"Vault {version} predates the JSON limits (1.20.3, backports)")
    create_key(vault_client, transit_mount, "old")
    batch = [{"plaintext": b64("x")}] * 10_001
    with pytest.raises(hvac.exceptions.InternalServerError) as exc:  # HTTP 500, not 400
        vault_client.secrets.transit.encrypt_data(
            "old", batch_input=batch, mount_point=transit_mount
        )
    assert "exceeds allowed" in str(exc.value)
    assert is_too_large(str(exc.value))  # the tool halves such a request, never retries it


# --------------------------------------------------------------------------------------------
# sys/health (the preflight's first question), asked without retries
# --------------------------------------------------------------------------------------------


def test_health_of_the_server_through_the_transit_client(
    vault_server: VaultServer, vault_client: Any, transit_mount: str
) -> None:
    """health() asks with the trust settings of the client's own session (public hvac API), for
    a client made from the settings and for one made from a plain hvac.Client alike."""
    settings = Settings(vault_addr=vault_server.addr, vault_token=Secret(vault_server.token))
    made = TransitClient.from_settings(settings)
    try:
        assert made.hvac_client.session.verify is True  # what health() passes on
        for transit in (made, TransitClient(vault_client, transit_mount)):
            status, body = transit.health()
            assert status == 200
            assert body["initialized"] is True
            assert body["sealed"] is False
            assert transit.requests == 1
    finally:
        made.close()


def test_health_of_an_address_where_nothing_listens_fails_at_once_without_retries() -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    transit = TransitClient.from_settings(Settings(vault_addr=addr, vault_token=Secret("t")))
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError) as err:
        transit.health(timeout=5)
    assert time.monotonic() - started < 5  # the run's retry budget is about a minute
    assert str(err.value) == f"cannot reach Vault at {addr} (ConnectionError)"
    transit.close()


def test_a_ca_bundle_of_the_settings_is_what_the_session_and_health_trust(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    settings = Settings(
        vault_addr="https://127.0.0.1:1", vault_token=Secret("t"), vault_cacert=str(bundle)
    )
    transit = TransitClient.from_settings(settings)
    assert transit.hvac_client.session.verify == str(bundle)
    transit.close()
