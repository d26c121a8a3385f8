"""The engine's pure checks: a plaintext before its re-encryption, Vault's new ciphertext, and
why a rewrap leaves a value as it is. No servers: Vault's texts are the literal ones a real
server gives (checked against OpenBao by tests/contract)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from context_encryption.engine.batch import (
    HMAC_UNCHECKABLE,
    NOT_UTF8,
    TOO_LARGE_ENCODED,
    check_new_ciphertext,
    check_plaintext,
    decode_plaintext,
)
from context_encryption.engine.rewrap_rows import left_reason
from context_encryption.schemes import MAX_STRING_BYTES, Kind, Scheme, Verdict

SECRET = "unit-test-hmac-secret"
OLD = Scheme("old", "old-key", contextual=False)
NEW = Scheme("new", "new-key", contextual=True)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def companion(raw: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()


def check(raw: bytes, comp: str | None, *, hmac_column: str | None = "email_hmac") -> str | None:
    return check_plaintext(raw, b64(raw), hmac_column=hmac_column, companion=comp, secret=SECRET)


def test_a_utf8_plaintext_with_its_matching_companion_passes() -> None:
    raw = "anna.müller@example.com".encode()
    assert check(raw, companion(raw)) is None


def test_the_empty_string_is_a_value_like_any_other() -> None:
    assert check(b"", companion(b"")) is None
    assert check(b"", None) is None


def test_a_null_companion_is_not_checked() -> None:
    assert check(b"x@example.com", None) is None


def test_a_column_without_companion_ignores_the_secret() -> None:
    raw = b"Anna"
    assert check_plaintext(raw, b64(raw), hmac_column=None, companion=None, secret=None) is None


def test_a_companion_that_does_not_match_fails_and_names_the_companion_column() -> None:
    raw = b"x@example.com"
    reason = check(raw, companion(b"y@example.com"))
    assert reason == "HMAC verification failed (companion email_hmac)"
    assert "x@example.com" not in reason


def test_a_companion_made_with_another_secret_fails() -> None:
    raw = b"x@example.com"
    assert check(raw, companion(raw, "another-secret")) == (
        "HMAC verification failed (companion email_hmac)"
    )


def test_a_companion_without_a_secret_cannot_be_checked() -> None:
    raw = b"x@example.com"
    reason = check_plaintext(
        raw, b64(raw), hmac_column="email_hmac", companion=companion(raw), secret=None
    )
    assert reason == HMAC_UNCHECKABLE


def test_bytes_that_are_not_utf8_fail_before_the_companion() -> None:
    raw = b"\xff\xfe not text"
    assert check(raw, companion(raw)) == NOT_UTF8


def test_a_value_too_large_for_vault_once_encoded_fails() -> None:
    raw = b"a" * (MAX_STRING_BYTES * 3 // 4 + 3)
    assert len(b64(raw)) > MAX_STRING_BYTES
    assert check(raw, None, hmac_column=None) == TOO_LARGE_ENCODED
    fits = b"a" * (MAX_STRING_BYTES * 3 // 4)
    assert check(fits, None, hmac_column=None) is None


def test_vault_plaintexts_must_be_strict_base64() -> None:
    assert decode_plaintext(b64(b"hello")) == b"hello"
    assert decode_plaintext("") == b""
    assert decode_plaintext("not base64!") is None
    assert decode_plaintext("aGVsbG8") is None  # unpadded


def test_a_new_ciphertext_must_carry_the_vault_prefix() -> None:
    assert check_new_ciphertext("vault:v2:abc", None) is None
    assert check_new_ciphertext(None, "permission denied") == (
        "Vault could not encrypt it: 'permission denied'"
    )
    assert check_new_ciphertext("", None) == "Vault could not encrypt it: None"
    assert check_new_ciphertext("v2:abc", None) == "Vault could not encrypt it: None"


def test_a_new_ciphertext_over_vaults_string_limit_is_not_written() -> None:
    value = "vault:v1:" + "A" * MAX_STRING_BYTES
    reason = check_new_ciphertext(value, None)
    assert reason is not None
    assert f"{len(value):,} characters" in reason
    assert "could not decrypt it again" in reason


def test_a_rewrap_names_an_old_scheme_value_and_what_to_do() -> None:
    verdict = Verdict(Kind.SECOND, "cGxhaW4=", first_error="cipher: message authentication failed")
    reason = left_reason(verdict, NEW, OLD, table="users", column="email")
    assert reason == (
        "is in the old scheme (key 'old-key' without context), not the new one; a rewrap "
        "leaves it as it is: migrate it (README runbook, step 9)"
    )
    assert "cGxhaW4=" not in reason


@pytest.mark.parametrize(
    ("first_error", "second_error", "reason"),
    [
        (  # the version is below the new key's min_decryption_version
            "ciphertext or signature version is disallowed by policy (too old)",
            "cipher: message authentication failed",
            "its version is below the min_decryption_version of key 'new-key' with context "
            "users.email (Vault: disallowed by policy (too old))",
        ),
        (  # readable by neither key: both answers are quoted
            "invalid ciphertext: no prefix",
            "invalid ciphertext: no prefix",
            "unreadable: Vault says 'invalid ciphertext: no prefix' for key 'new-key' with "
            "context users.email and 'invalid ciphertext: no prefix' for key 'old-key' without "
            "context",
        ),
    ],
    ids=["below_min_decryption_version", "unreadable"],
)
def test_a_rewrap_names_why_a_value_is_unreadable(
    first_error: str, second_error: str, reason: str
) -> None:
    verdict = Verdict(Kind.UNREADABLE, first_error=first_error, second_error=second_error)
    assert left_reason(verdict, NEW, OLD, table="users", column="email") == reason
