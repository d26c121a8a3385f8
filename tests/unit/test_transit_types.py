"""The Transit package's pure parts: the HMAC companion, contexts, batch items, Vault's answers.

Vault's answers are hvac's own exception objects built with a body (what hvac raises after a
real request); nothing of hvac is replaced.
"""

from __future__ import annotations

import json

import hvac.exceptions
import pytest

from context_encryption.transit import (
    DecryptRequest,
    EncryptRequest,
    ItemResult,
    b64_context,
    hmac_hex,
    hmac_matches,
)
from context_encryption.transit.answers import (
    MALFORMED_ITEM,
    answer_results,
    batch_results_of,
    body_text,
    error_texts,
)
from context_encryption.transit.batch import BatchCall

# --- the HMAC companion (DESIGN.md: lowercase hex HMAC-SHA256, key = the secret's UTF-8) -------


@pytest.mark.parametrize(
    ("secret", "message", "digest"),
    [
        # RFC 4231, test case 2
        (
            "Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        # the well-known pangram vector
        (
            "key",
            b"The quick brown fox jumps over the lazy dog",
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
        ),
        # empty key and message
        ("", b"", "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"),
    ],
)
def test_hmac_hex_vectors(secret: str, message: bytes, digest: str) -> None:
    assert hmac_hex(secret, message) == digest


def test_hmac_hex_keys_with_the_secrets_utf8_bytes() -> None:
    """A non-ASCII secret is its UTF-8 bytes; surrounding spaces are part of it."""
    assert hmac_hex("Zoë", b"x") != hmac_hex("Zoe", b"x")
    assert hmac_hex(" k", b"x") != hmac_hex("k", b"x")
    assert len(hmac_hex("Zoë", "Søren".encode())) == 64


def test_hmac_matches_ignores_case_and_surrounding_space_only() -> None:
    digest = hmac_hex("Jefe", b"what do ya want for nothing?")
    assert hmac_matches("Jefe", b"what do ya want for nothing?", digest)
    assert hmac_matches("Jefe", b"what do ya want for nothing?", f"  {digest.upper()}\n")
    assert not hmac_matches("Jefe", b"what do ya want for nothing!", digest)
    assert not hmac_matches("jefe", b"what do ya want for nothing?", digest)
    assert not hmac_matches("Jefe", b"what do ya want for nothing?", digest[:-1])


@pytest.mark.parametrize("damaged", ["", "not hex", "é" * 64, "\x00" * 64])
def test_a_damaged_companion_is_a_mismatch_not_an_error(damaged: str) -> None:
    assert not hmac_matches("s", b"v", damaged)


# --- contexts and batch items ---------------------------------------------------------------


def test_b64_context_is_base64_of_the_utf8_string() -> None:
    assert b64_context("users.email") == "dXNlcnMuZW1haWw="
    assert b64_context("users.email") == "dXNlcnMuZW1haWw="  # cached, same answer
    assert b64_context("t.ü") == "dC7DvA=="


def call(field: str = "ciphertext", answer: str = "plaintext", **extra: object) -> BatchCall:
    items = [DecryptRequest("vault:v1:a", None), DecryptRequest("vault:v1:b", "users.email")]
    return BatchCall("decrypt with key 'k'", None, "", "k", field, answer, dict(extra), items)


def test_batch_input_puts_the_context_in_base64_and_the_extra_fields_in_every_item() -> None:
    assert call().batch_input(0, 2) == [
        {"ciphertext": "vault:v1:a"},
        {"ciphertext": "vault:v1:b", "context": "dXNlcnMuZW1haWw="},
    ]
    encrypt = BatchCall(
        what="encrypt",
        fn=None,
        needs="",
        key="k",
        field="plaintext",
        answer="ciphertext",
        extra={"key_version": 3},
        items=[EncryptRequest("eA==", "users.email")],
    )
    assert encrypt.batch_input(0, 1) == [
        {"plaintext": "eA==", "key_version": 3, "context": "dXNlcnMuZW1haWw="}
    ]
    assert call().batch_input(1, 2) == [{"ciphertext": "vault:v1:b", "context": "dXNlcnMuZW1haWw="}]


def test_item_results_keep_order_and_take_the_error_over_the_value() -> None:
    results = call().item_results(
        [{"plaintext": "b25l"}, {"error": "cipher: message authentication failed"}, {}]
    )
    assert results == [
        ItemResult("b25l", None),
        ItemResult(None, "cipher: message authentication failed"),
        ItemResult(None, None),
    ]
    assert results[0].ok and not results[1].ok


# --- Vault's answers ---------------------------------------------------------------------------


def test_error_texts_drop_the_multierror_heading() -> None:
    exc = hvac.exceptions.InvalidRequest(
        errors=["1 error occurred:\n\t* permission denied\n\n", "second"]
    )
    assert error_texts(exc) == "permission denied; second"


def test_error_texts_without_errors_name_the_class() -> None:
    assert error_texts(hvac.exceptions.UnexpectedError()) == (
        "UnexpectedError (HTTP status without error text)"
    )


def test_body_text_reads_errors_else_a_short_body() -> None:
    assert body_text('{"errors": ["1 error occurred:\\n\\t* too big"]}') == "too big"
    assert body_text("  plain text body  ") == "plain text body"
    assert body_text("x" * 500) == "x" * 200
    assert body_text('{"errors": []}') == '{"errors": []}'


def partial(results: object, *, as_text: bool = False) -> hvac.exceptions.InvalidRequest:
    body = {"data": {"batch_results": results}}
    if as_text:  # hvac parses JSON only for exactly application/json; else only .text is set
        return hvac.exceptions.InvalidRequest(text=json.dumps(body))
    return hvac.exceptions.InvalidRequest(json=body)


def test_a_partly_failed_batch_gives_its_per_item_results() -> None:
    items = [{"plaintext": "b25l"}, {"error": "invalid ciphertext: no prefix"}]
    assert batch_results_of(partial(items), 2) == items
    assert batch_results_of(partial(items, as_text=True), 2) == items


def test_per_item_results_are_given_only_one_per_item_sent() -> None:
    items = [{"plaintext": "b25l"}]
    assert batch_results_of(partial(items), 2) is None
    assert batch_results_of(partial("not a list"), 1) is None
    assert batch_results_of(hvac.exceptions.InvalidRequest(errors=["bad"]), 1) is None
    assert batch_results_of(hvac.exceptions.InvalidRequest(text="<html>"), 1) is None


def test_an_item_that_is_not_an_object_is_an_error_item() -> None:
    assert batch_results_of(partial(["x", {"plaintext": "eA=="}]), 2) == [
        {"error": MALFORMED_ITEM},
        {"plaintext": "eA=="},
    ]


def test_answer_results_of_a_successful_answer() -> None:
    assert answer_results({"data": {"batch_results": [{"plaintext": "eA=="}]}}) == [
        {"plaintext": "eA=="}
    ]
    assert answer_results({"data": {}}) is None
    assert answer_results({"data": None}) is None
    assert answer_results({}) is None
