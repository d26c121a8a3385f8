"""The one decision (which scheme a value is in) and the reasons made from Vault's texts.

No servers: Vault's answers are the literal texts a real server gives (checked against OpenBao
by tests/contract/test_contract.py).
"""

from __future__ import annotations

import pytest

from app_models.specs import Direction
from context_encryption.schemes import (
    MAX_STRING_BYTES,
    NO_PLAINTEXT,
    Kind,
    Scheme,
    Verdict,
    decide,
    explain,
    key_version,
    precheck,
    schemes,
)
from context_encryption.settings import load_settings
from context_encryption.transit import ItemResult
from context_encryption.vault_texts import brief_reason, is_too_large

OLD = Scheme("old", "old-key", contextual=False)
NEW = Scheme("new", "new-key", contextual=True)

AUTH = "cipher: message authentication failed"
TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
MISSING = "missing 'context' for key derivation"
NO_PREFIX = "invalid ciphertext: no prefix"


def test_the_new_scheme_context_is_table_dot_column_literally() -> None:
    assert NEW.context("users", "email") == "users.email"
    assert NEW.context("guest_orders", "customer_phone") == "guest_orders.customer_phone"
    assert OLD.context("users", "email") is None
    assert NEW.describe("users", "email") == "key 'new-key' with context users.email"
    assert OLD.describe("users", "email") == "key 'old-key' without context"


@pytest.mark.parametrize(
    ("direction", "source", "target"),
    [
        (Direction.UPGRADE, "old", "new"),
        (Direction.DOWNGRADE, "new", "old"),
        (Direction.REWRAP, "new", "new"),
    ],
)
def test_source_and_target_of_each_direction(
    direction: Direction, source: str, target: str
) -> None:
    settings = load_settings({}, {"VAULT_OLD_KEY": "o", "VAULT_NEW_KEY": "n"})
    src, tgt = schemes(settings, direction)
    assert (src.name, tgt.name) == (source, target)
    assert src.key == {"old": "o", "new": "n"}[source]
    assert tgt.key == {"old": "o", "new": "n"}[target]
    assert src.contextual is (source == "new")
    assert tgt.contextual is (target == "new")


@pytest.mark.parametrize(
    ("value", "version"),
    [
        ("vault:v1:abc", 1),
        ("vault:v12:abc", 12),
        ("vault:v0:abc", 1),  # Vault reads version 0 as 1
        ("vault:v123456789:x", 123456789),
        ("vault:v1234567890:x", None),  # more digits than any key has versions
        ("vault:vx:abc", None),
        ("vault:v2abc", None),
        ("plain", None),
        ("", None),
    ],
)
def test_key_version_of_a_prefix(value: str, version: int | None) -> None:
    assert key_version(value) == version


def test_precheck_tells_what_needs_no_vault() -> None:
    assert precheck(None) is Kind.NULL
    assert precheck("") is Kind.PLAINTEXT
    assert precheck("alice@example.com") is Kind.PLAINTEXT
    assert precheck("VAULT:v1:abc") is Kind.PLAINTEXT  # the prefix is case-sensitive
    assert precheck("vault:v1:abc") is None
    at_limit = "vault:v1:" + "A" * (MAX_STRING_BYTES - len("vault:v1:"))
    assert precheck(at_limit) is None
    assert precheck(at_limit + "A") is Kind.TOO_LONG


def test_decide_first_scheme_wins_without_a_trial() -> None:
    assert decide(ItemResult("cGxhaW4=", None), None) == Verdict(Kind.FIRST, "cGxhaW4=")


def test_decide_needs_a_trial_when_the_first_failed() -> None:
    with pytest.raises(ValueError, match="trial"):
        decide(ItemResult(None, AUTH), None)


def test_decide_second_scheme_keeps_the_first_error() -> None:
    verdict = decide(ItemResult(None, AUTH), ItemResult("cGxhaW4=", None))
    assert verdict == Verdict(Kind.SECOND, "cGxhaW4=", first_error=AUTH)


def test_decide_neither_is_unreadable_with_both_texts() -> None:
    verdict = decide(ItemResult(None, AUTH), ItemResult(None, TOO_OLD))
    assert verdict == Verdict(Kind.UNREADABLE, first_error=AUTH, second_error=TOO_OLD)


def test_an_answer_without_a_value_is_never_a_success() -> None:
    """Fail closed: a 200 item with neither plaintext nor error passes nothing through."""
    verdict = decide(ItemResult(None, None), ItemResult(None, None))
    assert verdict == Verdict(Kind.UNREADABLE, first_error=NO_PLAINTEXT, second_error=NO_PLAINTEXT)
    verdict = decide(ItemResult(None, None), ItemResult("eA==", None))
    assert verdict.kind is Kind.SECOND


def _why(first_error: str, second_error: str) -> str:
    verdict = Verdict(Kind.UNREADABLE, first_error=first_error, second_error=second_error)
    return explain(verdict, OLD, NEW, table="users", column="email")


def test_explain_already_migrated_but_below_min_decryption_version() -> None:
    why = _why(AUTH, TOO_OLD)
    assert why.startswith("looks already migrated")
    assert "key 'new-key' with context users.email" in why


def test_explain_missing_context_points_at_swapped_keys() -> None:
    why = _why(MISSING, AUTH)
    assert "missing 'context' for key derivation" in why
    assert "check VAULT_OLD_KEY / VAULT_NEW_KEY" in why


def test_explain_neither_key_names_both_keys_and_the_real_context() -> None:
    why = _why(AUTH, AUTH)
    assert "key 'old-key' without context nor with key 'new-key' with context users.email" in why


def test_explain_no_prefix_and_too_old_and_anything_else() -> None:
    assert "not Transit ciphertext" in _why(NO_PREFIX, NO_PREFIX)
    too_old = _why(TOO_OLD, AUTH)
    assert "vault write <mount>/keys/old-key/config min_decryption_version=<n>" in too_old
    other = _why("something new", "something else")
    assert "'something new' for key 'old-key'" in other
    assert "'something else' for key 'new-key'" in other


@pytest.mark.parametrize(
    ("errors", "reason"),
    [
        ((AUTH, TOO_OLD), "unreadable (key version below min_decryption_version)"),
        ((NO_PREFIX, AUTH), "unreadable (malformed ciphertext)"),
        (("invalid ciphertext: wrong number of fields", ""), "unreadable (malformed ciphertext)"),
        (("invalid ciphertext length", ""), "unreadable (malformed ciphertext)"),
        ((AUTH, AUTH), "unreadable (neither key decrypts it)"),
        (("invalid ciphertext: version is too new", AUTH), "unreadable (neither key decrypts it)"),
        (
            ("invalid ciphertext: version is too new", ""),
            "unreadable (key version newer than either key's latest)",
        ),
        (("", ""), "unreadable"),
    ],
)
def test_brief_reason_picks_the_most_actionable_text(errors: tuple[str, str], reason: str) -> None:
    assert brief_reason(*errors) == reason


@pytest.mark.parametrize(
    ("text", "too_large"),
    [
        ("refused JSON input due to high complexity: exceeded maximum number of strings", True),
        ("error parsing JSON", True),
        ("JSON array exceeds allowed element count", True),
        ("http: request body too large", True),
        (AUTH, False),
        ("permission denied", False),
    ],
)
def test_too_large_refusals_are_told_from_the_others(text: str, too_large: bool) -> None:
    assert is_too_large(text) is too_large
