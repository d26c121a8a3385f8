"""The preflight's Vault side that needs no server: the capabilities each direction needs, the
policy text, the reading of ``sys/capabilities-self`` answers, durations and the token verdict.
"""

from __future__ import annotations

from context_encryption.preflight.vault import (
    TOKEN_SELF_PATHS,
    capabilities_fix,
    duration,
    has_capability,
    policy_hcl,
    required_capabilities,
    rewrap_capabilities,
    token_verdict,
)
from context_encryption.settings import Settings

S = Settings(transit_mount="tr", old_key="old-k", new_key="new-k")
NOW = 1_800_000_000


def test_upgrade_needs_decrypt_old_encrypt_and_trial_decrypt_new_and_both_keys() -> None:
    assert required_capabilities(S, "upgrade") == [
        ("tr/decrypt/old-k", "update"),
        ("tr/encrypt/new-k", "update"),
        ("tr/decrypt/new-k", "update"),
        ("tr/keys/old-k", "read"),
        ("tr/keys/new-k", "read"),
    ]


def test_downgrade_needs_the_mirror() -> None:
    assert required_capabilities(S, "downgrade") == [
        ("tr/decrypt/new-k", "update"),
        ("tr/encrypt/old-k", "update"),
        ("tr/decrypt/old-k", "update"),
        ("tr/keys/old-k", "read"),
        ("tr/keys/new-k", "read"),
    ]


def test_rewrap_needs_rewrap_on_the_new_key_its_probe_and_the_old_keys_trial() -> None:
    assert required_capabilities(S, "rewrap") == rewrap_capabilities(S)
    assert rewrap_capabilities(S) == [
        ("tr/rewrap/new-k", "update"),
        ("tr/keys/new-k", "read"),
        ("tr/encrypt/new-k", "update"),
        ("tr/decrypt/new-k", "update"),
        ("tr/decrypt/old-k", "update"),
    ]


def test_the_policy_covers_upgrade_and_rollback_and_the_tokens_own_paths() -> None:
    hcl = policy_hcl(S)
    lines = hcl.splitlines()
    assert len(lines) == 6 + len(TOKEN_SELF_PATHS)
    for direction in ("upgrade", "downgrade"):
        for path, cap in required_capabilities(S, direction):
            assert any(f'"{path}"' in line and f'["{cap}"]' in line for line in lines), path
    for path, cap, _note in TOKEN_SELF_PATHS:
        assert any(f'"{path}"' in line and f'["{cap}"]' in line for line in lines), path
    assert 'path "tr/encrypt/old-k"' in hcl and "# downgrade (rollback) only" in hcl
    # one column of braces: the paths are padded to one width
    assert len({line.index("{") for line in lines}) == 1


def test_the_fix_for_a_missing_capability_is_the_directions_policy() -> None:
    fix = capabilities_fix(S, "upgrade")
    assert policy_hcl(S) in fix
    assert "vault policy write context-encryption" in fix
    assert capabilities_fix(S, "downgrade") == fix
    rewrap = capabilities_fix(S, "rewrap")
    assert 'path "tr/rewrap/new-k" { capabilities = ["update"] }' in rewrap
    assert "tr/encrypt/old-k" not in rewrap


def test_capabilities_self_answers() -> None:
    assert has_capability(["root"], "update")
    assert has_capability(["read", "update"], "update")
    assert not has_capability(["deny"], "read")
    assert not has_capability(["root", "deny"], "read")
    assert not has_capability(["create"], "update")  # an existing key's encrypt is an update
    assert not has_capability([], "read")


def test_durations() -> None:
    assert duration(0) == "0s"
    assert duration(59) == "59s"
    assert duration(60) == "1m00s"
    assert duration(245) == "4m05s"
    assert duration(3600) == "1h00m"
    assert duration(3900) == "1h05m"
    assert duration(90_000) == "25h00m"


def _info(**kw: object) -> dict[str, object]:
    return {"policies": ["default", "ce"], "expire_time": "2027-01-01T00:00:00Z", **kw}


def test_a_token_that_never_expires() -> None:
    v = token_verdict({"ttl": 0, "policies": ["root"], "expire_time": None}, 900, NOW)
    assert v.ok and v.warning is None
    assert v.detail == "valid, never expires (policies: root)"


def test_a_token_with_enough_time_left() -> None:
    v = token_verdict(_info(ttl=7200), 900, NOW)
    assert v.ok and v.warning is None
    assert v.detail == "valid, 2h00m left (policies: default, ce)"


def test_a_short_renewable_token_passes_with_a_warning() -> None:
    v = token_verdict(_info(ttl=300, renewable=True), 900, NOW)
    assert v.ok
    assert "only 5m00s left but renewable: the run renews it" in v.detail
    assert v.warning is not None and "5m00s left; it is renewable" in v.warning


def test_a_renewable_token_capped_by_its_explicit_max_ttl() -> None:
    info = _info(ttl=120, renewable=True, explicit_max_ttl=300, creation_time=NOW - 60)
    v = token_verdict(info, 900, NOW)
    assert not v.ok
    assert v.detail.startswith("the token is renewable but its explicit_max_ttl ends in 4m00s")
    # a cap far enough away is no problem
    assert token_verdict(_info(ttl=120, renewable=True, explicit_max_ttl=7200,
                               creation_time=NOW), 900, NOW).ok  # fmt: skip


def test_a_short_token_that_is_not_renewable() -> None:
    v = token_verdict(_info(ttl=245), 900, NOW)
    assert not v.ok
    assert v.detail == (
        "the token expires in 4m05s and is not renewable; a run that outlives it stops half-way"
    )


def test_a_token_with_a_use_limit_fails_even_when_it_lasts() -> None:
    v = token_verdict(_info(ttl=7200, num_uses=5), 900, NOW)
    assert not v.ok
    assert v.detail == "the token is limited to 5 more use(s); a run makes several per batch"
