"""The one decision (which scheme a value is in) and the reasons made from Vault's texts.

No servers: Vault's answers are the literal texts a real server gives (checked against OpenBao
by tests/contract/test_contract.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import pytest

from app_models.specs import Direction
from context_encryption.schemes import (
    MAX_STRING_BYTES,
    NO_PLAINTEXT,
    Kind,
    Scheme,
    Verdict,
    classify,
    decide,
    explain,
    key_version,
    precheck,
    schemes,
    trial,
)
from context_encryption.settings import load_settings
from context_encryption.transit import DecryptRequest, ItemResult
from context_encryption.vault_texts import brief_reason, is_too_large

if TYPE_CHECKING:
    from context_encryption.transit import TransitClient

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
    with pytest.raises(
        ValueError, match=r"^the first scheme failed: a trial decrypt with the second is needed$"
    ):
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


# -- explain: the operator's text, whole, for each branch and both directions -----------------

OLD_USERS_EMAIL = "key 'old-key' without context"
NEW_USERS_EMAIL = "key 'new-key' with context users.email"


@pytest.mark.parametrize(
    ("first", "second", "errors", "text"),
    [
        (
            OLD,
            NEW,
            (AUTH, TOO_OLD),
            "looks already migrated, but its version is below the minimum decryption version of "
            f"{NEW_USERS_EMAIL} (Vault: disallowed by policy (too old)); lower that key's "
            "min_decryption_version",
        ),
        (
            NEW,
            OLD,
            (MISSING, AUTH),
            f"cannot be decrypted with {NEW_USERS_EMAIL}: Vault says \"missing 'context' for key "
            'derivation" — the data may already be context-based, or the key names are swapped '
            "(check VAULT_OLD_KEY / VAULT_NEW_KEY)",
        ),
        (
            NEW,
            OLD,
            (AUTH, AUTH),
            f"cannot be decrypted with {NEW_USERS_EMAIL} nor with {OLD_USERS_EMAIL} "
            "(cipher: message authentication failed): another key, another context, or a "
            "damaged value",
        ),
        (
            OLD,
            NEW,
            (NO_PREFIX, TOO_OLD),
            "Vault says 'invalid ciphertext: no prefix': the value starts with 'vault:' but is "
            "not Transit ciphertext (damaged, or another format)",
        ),
        (
            NEW,
            OLD,
            (TOO_OLD, TOO_OLD),
            f"its key version is below the minimum decryption version of {NEW_USERS_EMAIL} "
            "(Vault: disallowed by policy (too old)); lower min_decryption_version with "
            "vault write <mount>/keys/new-key/config min_decryption_version=<n>",
        ),
        (
            NEW,
            OLD,
            ("new text", "other text"),
            f"unreadable ciphertext: Vault says 'new text' for {NEW_USERS_EMAIL} and "
            f"'other text' for {OLD_USERS_EMAIL}",
        ),
    ],
)
def test_explain_whole_text(
    first: Scheme, second: Scheme, errors: tuple[str, str], text: str
) -> None:
    verdict = Verdict(Kind.UNREADABLE, first_error=errors[0], second_error=errors[1])
    assert explain(verdict, first, second, table="users", column="email") == text


def test_explain_without_texts_says_vault_gave_none() -> None:
    text = explain(Verdict(Kind.UNREADABLE), OLD, NEW, table="users", column="email")
    assert text == (
        f"unreadable ciphertext: Vault says '' for {OLD_USERS_EMAIL} and '' for {NEW_USERS_EMAIL}"
    )


def test_explain_too_old_in_the_trial_alone_is_not_already_migrated() -> None:
    """Both conditions: the expected key refused authentication and the trial's is too old."""
    assert not _why("something new", TOO_OLD).startswith("looks already migrated")
    assert _why(MISSING, TOO_OLD).startswith("cannot be decrypted with key 'old-key'")


# -- classify / trial: the order of the verdicts, and what is asked of Vault ------------------


class TransitTable:
    """A stand-in for the one TransitClient method classify and trial call (decrypt_batch).

    A lookup table, not a Vault: ``readable[(key, ciphertext, context)]`` is the base64
    plaintext; anything else gets Vault's authentication failure; ``empty`` ciphertexts get an
    item with neither value nor error. Each request is recorded.
    """

    def __init__(
        self,
        readable: dict[tuple[str, str, str | None], str],
        empty: Sequence[str] = (),
        *,
        drop_last: bool = False,
    ) -> None:
        self.readable = readable
        self.empty = set(empty)
        self.drop_last = drop_last
        self.requests: list[tuple[str, list[DecryptRequest]]] = []

    def decrypt_batch(self, key: str, items: Sequence[DecryptRequest]) -> list[ItemResult]:
        self.requests.append((key, list(items)))
        answers = []
        for item in items:
            value = self.readable.get((key, item.ciphertext, item.context))
            if item.ciphertext in self.empty:
                answers.append(ItemResult(None, None))
            elif value is None:
                answers.append(ItemResult(None, AUTH))
            else:
                answers.append(ItemResult(value, None))
        return answers[:-1] if self.drop_last else answers

    def client(self) -> TransitClient:
        return cast("TransitClient", self)


def test_classify_keeps_the_order_of_the_items_across_the_trial() -> None:
    vault = TransitTable(
        {
            ("old-key", "vault:v1:a", None): "YQ==",
            ("new-key", "vault:v1:b", "users.first_name"): "Yg==",
            ("old-key", "vault:v1:d", None): "ZA==",
            ("new-key", "vault:v1:e", "users.email"): "ZQ==",
        },
        empty=["vault:v1:f"],
    )
    items = [
        ("email", "vault:v1:a"),
        ("first_name", "vault:v1:b"),
        ("email", "vault:v1:c"),
        ("last_name", "vault:v1:d"),
        ("email", "vault:v1:e"),
        ("email", "vault:v1:f"),
    ]
    verdicts = classify(vault.client(), "users", items, OLD, NEW)
    assert verdicts == [
        Verdict(Kind.FIRST, "YQ=="),
        Verdict(Kind.SECOND, "Yg==", first_error=AUTH),
        Verdict(Kind.UNREADABLE, first_error=AUTH, second_error=AUTH),
        Verdict(Kind.FIRST, "ZA=="),
        Verdict(Kind.SECOND, "ZQ==", first_error=AUTH),
        Verdict(Kind.UNREADABLE, first_error=NO_PLAINTEXT, second_error=NO_PLAINTEXT),
    ]
    # two requests: every item with the first scheme, then the failed ones with the second
    assert vault.requests == [
        ("old-key", [DecryptRequest(ct, None) for _, ct in items]),
        (
            "new-key",
            [
                DecryptRequest("vault:v1:b", "users.first_name"),
                DecryptRequest("vault:v1:c", "users.email"),
                DecryptRequest("vault:v1:e", "users.email"),
                DecryptRequest("vault:v1:f", "users.email"),
            ],
        ),
    ]


def test_classify_needs_no_trial_when_the_first_scheme_reads_everything() -> None:
    vault = TransitTable({("new-key", "vault:v2:x", "sessions.ip_address"): "eA=="})
    verdicts = classify(vault.client(), "sessions", [("ip_address", "vault:v2:x")], NEW, OLD)
    assert verdicts == [Verdict(Kind.FIRST, "eA==")]
    assert vault.requests == [("new-key", [DecryptRequest("vault:v2:x", "sessions.ip_address")])]


def test_classify_and_trial_of_nothing_ask_vault_nothing() -> None:
    vault = TransitTable({})
    assert classify(vault.client(), "users", [], OLD, NEW) == []
    assert trial(vault.client(), "users", [], NEW) == []
    assert vault.requests == []


def test_trial_asks_the_second_scheme_and_keeps_the_first_answers() -> None:
    vault = TransitTable({("new-key", "vault:v1:b", "invitations.token"): "Yg=="})
    failed = [
        ("email", "vault:v1:a", ItemResult(None, TOO_OLD)),
        ("token", "vault:v1:b", ItemResult(None, MISSING)),
    ]
    assert trial(vault.client(), "invitations", failed, NEW) == [
        Verdict(Kind.UNREADABLE, first_error=TOO_OLD, second_error=AUTH),
        Verdict(Kind.SECOND, "Yg==", first_error=MISSING),
    ]
    assert vault.requests == [
        (
            "new-key",
            [
                DecryptRequest("vault:v1:a", "invitations.email"),
                DecryptRequest("vault:v1:b", "invitations.token"),
            ],
        )
    ]


def test_trial_refuses_an_answer_with_a_missing_result() -> None:
    """One answer per item or nothing: a short answer never shifts verdicts onto other values."""
    vault = TransitTable({}, drop_last=True)
    failed = [("email", "vault:v1:a", ItemResult(None, AUTH))] * 2
    with pytest.raises(ValueError, match="zip"):
        trial(vault.client(), "users", failed, NEW)


def test_classify_refuses_a_short_first_answer() -> None:
    """A first answer with an item missing is refused, never classified as fewer values."""
    vault = TransitTable({("old-key", "vault:v1:a", None): "YQ=="}, drop_last=True)
    items = [("email", "vault:v1:a"), ("email", "vault:v1:b")]
    with pytest.raises(ValueError, match="1 answers to 2 decrypt items"):
        classify(vault.client(), "users", items, OLD, NEW)
