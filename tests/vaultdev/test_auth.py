"""Tokens, ACL policies and capabilities (written to pass against real Vault too)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions as exc
import pytest

PT = base64.b64encode(b"secret").decode()


def _client(server: Any, token: str) -> Any:
    return hvac.Client(url=server.addr, token=token)


@pytest.fixture
def policy_name(vault_client: Any, transit_mount: str) -> Any:
    name = f"enc-only-{transit_mount}"
    vault_client.sys.create_or_update_acl_policy(
        name,
        f"""
        # encrypt only, with a key that must already exist
        path "{transit_mount}/encrypt/app" {{
          capabilities = ["update"]
        }}
        // decrypt too
        path "{transit_mount}/decrypt/+" {{ capabilities = ["update"] }}
        path "{transit_mount}/keys/*" {{ capabilities = ["read", "list"] }}
        path "{transit_mount}/keys/secret" {{ capabilities = ["deny"] }}
        """,
    )
    yield name
    vault_client.sys.delete_acl_policy(name)


def test_bad_token_is_permission_denied(vault_server: Any) -> None:
    client = _client(vault_server, "not-a-token")
    with pytest.raises(exc.Forbidden) as info:
        client.secrets.transit.list_keys()
    assert info.value.errors is not None
    assert "permission denied" in info.value.errors[0]
    assert client.is_authenticated() is False


def test_acl_policy_enforced(
    vault_server: Any, vault_client: Any, transit_mount: str, policy_name: str
) -> None:
    t = vault_client.secrets.transit
    t.create_key("app", mount_point=transit_mount)
    t.create_key("secret", mount_point=transit_mount)
    token = vault_client.auth.token.create(policies=[policy_name], ttl="1h")["auth"]["client_token"]
    limited = _client(vault_server, token)
    ct = limited.secrets.transit.encrypt_data("app", PT, mount_point=transit_mount)["data"][
        "ciphertext"
    ]
    assert (
        limited.secrets.transit.decrypt_data("app", ct, mount_point=transit_mount)["data"][
            "plaintext"
        ]
        == PT
    )
    assert (
        limited.secrets.transit.read_key("app", mount_point=transit_mount)["data"]["name"] == "app"
    )
    # a missing key makes encrypt a create operation: update alone is not enough
    with pytest.raises(exc.Forbidden) as info:
        limited.secrets.transit.encrypt_data("app2", PT, mount_point=transit_mount)
    assert info.value.errors == ["1 error occurred:\n\t* permission denied\n\n"]
    calls: list[Callable[[], Any]] = [
        lambda: limited.secrets.transit.rotate_key("app", mount_point=transit_mount),
        lambda: limited.secrets.transit.read_key("secret", mount_point=transit_mount),
        lambda: limited.secrets.transit.generate_hmac("app", PT, mount_point=transit_mount),
        limited.sys.list_mounted_secrets_engines,
    ]
    for call in calls:
        with pytest.raises(exc.Forbidden) as info:
            call()
        assert info.value.errors == ["1 error occurred:\n\t* permission denied\n\n"]
    caps = limited.sys.get_capabilities(
        [f"{transit_mount}/encrypt/app", f"{transit_mount}/keys/secret", "sys/mounts"]
    )
    assert caps["data"][f"{transit_mount}/encrypt/app"] == ["update"]
    assert caps[f"{transit_mount}/encrypt/app"] == ["update"]
    assert caps["data"][f"{transit_mount}/keys/secret"] == ["deny"]
    assert caps["data"]["sys/mounts"] == ["deny"]
    root_caps = vault_client.sys.get_capabilities([f"{transit_mount}/encrypt/app"])
    assert root_caps["data"]["capabilities"] == ["root"]
    policy = vault_client.sys.read_acl_policy(policy_name)["data"]
    assert "capabilities" in policy["policy"]
    assert policy_name in vault_client.sys.list_acl_policies()["data"]["keys"]


def test_json_policy(vault_server: Any, vault_client: Any, transit_mount: str) -> None:
    name = f"json-{transit_mount}"
    vault_client.sys.create_or_update_acl_policy(
        name, {"path": {f"{transit_mount}/encrypt/*": {"capabilities": ["create", "update"]}}}
    )
    try:
        token = vault_client.auth.token.create(policies=[name])["auth"]["client_token"]
        limited = _client(vault_server, token)
        resp = limited.secrets.transit.encrypt_data("fresh", PT, mount_point=transit_mount)
        assert resp["data"]["ciphertext"].startswith("vault:v1:")
    finally:
        vault_client.sys.delete_acl_policy(name)


def test_token_lookup_create_and_renew(vault_server: Any, vault_client: Any) -> None:
    root = vault_client.auth.token.lookup_self()["data"]
    assert root["policies"] == ["root"]
    assert root["ttl"] == 0
    assert root["expire_time"] is None
    created = vault_client.auth.token.create(policies=["default"], ttl="1h")
    auth = created["auth"]
    assert auth["lease_duration"] == 3600
    assert auth["renewable"] is True
    assert auth["policies"] == ["default"]
    assert auth["token_policies"] == ["default"]
    child = _client(vault_server, auth["client_token"])
    data = child.auth.token.lookup_self()["data"]
    for field in (
        "accessor",
        "creation_time",
        "creation_ttl",
        "display_name",
        "expire_time",
        "explicit_max_ttl",
        "id",
        "issue_time",
        "meta",
        "num_uses",
        "orphan",
        "path",
        "policies",
        "renewable",
        "ttl",
        "type",
    ):
        assert field in data, field
    assert data["creation_ttl"] == 3600
    assert data["type"] == "service"
    renewed = child.auth.token.renew_self(increment=7200)
    assert renewed["auth"]["lease_duration"] == 7200
    fixed = vault_client.auth.token.create(policies=["default"], ttl="1h", renewable=False)
    fixed_client = _client(vault_server, fixed["auth"]["client_token"])
    with pytest.raises(exc.InvalidRequest) as info:
        fixed_client.auth.token.renew_self()
    assert info.value.errors == ["lease is not renewable"]


def test_token_expiry(vault_server: Any, vault_client: Any) -> None:
    created = vault_client.auth.token.create(policies=["default"], ttl="1s")
    child = _client(vault_server, created["auth"]["client_token"])
    assert child.auth.token.lookup_self()["data"]["ttl"] <= 1
    time.sleep(1.3)
    with pytest.raises(exc.Forbidden) as info:
        child.auth.token.lookup_self()
    assert info.value.errors == ["permission denied"]


def test_revoke_self(vault_server: Any, vault_client: Any) -> None:
    created = vault_client.auth.token.create(policies=["default"], ttl="1h")
    child = _client(vault_server, created["auth"]["client_token"])
    child.auth.token.revoke_self()
    with pytest.raises(exc.Forbidden):
        child.auth.token.lookup_self()


def test_mounts(vault_client: Any, transit_mount: str) -> None:
    mounts = vault_client.sys.list_mounted_secrets_engines()
    assert mounts["data"][f"{transit_mount}/"]["type"] == "transit"
    with pytest.raises(exc.InvalidRequest) as info:
        vault_client.sys.enable_secrets_engine("transit", path=transit_mount)
    assert info.value.errors == [f"path is already in use at {transit_mount}/"]
    health = vault_client.sys.read_health_status(method="GET")
    assert health["initialized"] is True
    assert health["sealed"] is False
