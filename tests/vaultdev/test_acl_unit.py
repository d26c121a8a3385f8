"""ACL parsing and path matching (pure unit tests of vaultdev.acl)."""

from __future__ import annotations

import pytest

from vaultdev.acl import ACL, parse_policy
from vaultdev.errors import UserError

POLICY = """
# hash comment
path "transit/+/app*" { capabilities = ["update"] }
path "transit/encrypt/*" {
  capabilities = ["create", "update"]
  allowed_parameters = {
    "plaintext" = []
    "context" = ["a", "b"]
  }
}
/* block
   comment */
path "secret/*" { policy = "read" }   // legacy policy word
path "transit/encrypt/app" { capabilities = ["read"] }
path "transit/keys/secret" { capabilities = ["deny"] }
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("transit/encrypt/app", {"read"}),  # exact match wins
        ("transit/encrypt/app2", {"create", "update"}),  # later wildcard has priority
        ("transit/decrypt/app2", {"update"}),
        ("transit/decrypt/x", set()),
        ("transit/decrypt/app/x", {"update"}),
        ("secret/a/b", {"read", "list"}),
        ("transit/keys/secret", {"deny"}),
    ],
)
def test_matching(path: str, expected: set[str]) -> None:
    acl = ACL([parse_policy(POLICY)])
    assert acl.capabilities(path) == expected


def test_deny_wins_across_policies() -> None:
    a = parse_policy('path "transit/keys/k" { capabilities = ["read"] }')
    b = parse_policy('path "transit/keys/k" { capabilities = ["deny"] }')
    acl = ACL([a, b])
    assert not acl.allows("transit/keys/k", "read")


def test_json_policy() -> None:
    rules = parse_policy('{"path": {"transit/encrypt/k": {"capabilities": ["update"]}}}')
    assert ACL([rules]).allows("transit/encrypt/k", "update")


def test_invalid_capability() -> None:
    with pytest.raises(UserError):
        parse_policy('path "x" { capabilities = ["fly"] }')
