"""verify's tally: verdicts in, counts, reasons and failing primary keys out. No servers.

The verdicts are what :func:`context_encryption.schemes.classify` gives for Vault's answers
(``Kind.FIRST``: the scheme the revision implies reads the value; ``Kind.SECOND``: only the other
one does); their errors are the literal texts a real server gives (checked against OpenBao by
tests/contract/test_contract.py).
"""

from __future__ import annotations

import base64

from context_encryption.schemes import Kind, SchemeName, Verdict
from context_encryption.transit import hmac_hex
from context_encryption.verify import TOO_LONG_REASON, Checked, ColumnResult, tally

SECRET = "hmac-secret-for-tests"
AUTH = "cipher: message authentication failed"
TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
NO_PREFIX = "invalid ciphertext: no prefix"
MISSING = "missing 'context' for key derivation"


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def read(
    pk: object, column: str, kind: Kind, plain: str, *, ct: str = "vault:v1:x", **kw: str
) -> Checked:
    """A value a scheme decrypted to ``plain``, with an optional ``companion``."""
    return Checked(pk, column, Verdict(kind, b64(plain)), ct, kw.get("companion"))


def results() -> dict[str, ColumnResult]:
    return {"email": ColumnResult("email", "email_hmac"), "name": ColumnResult("name", None)}


def run(
    page: list[Checked],
    *,
    expected: SchemeName = "new",
    secret: str | None = SECRET,
    max_ids: int = 20,
) -> dict[str, ColumnResult]:
    res = results()
    tally(res, page, expected=expected, secret=secret, max_ids=max_ids)
    return res


def test_values_told_apart_without_vault() -> None:
    res = run(
        [
            Checked(1, "name", Verdict(Kind.NULL)),
            Checked(2, "name", Verdict(Kind.PLAINTEXT), "Smith"),
            Checked(3, "name", Verdict(Kind.TOO_LONG), "vault:v1:" + "A" * 10),
        ]
    )["name"]
    assert (res.null, res.plaintext, res.unreadable) == (1, 1, 1)
    assert res.reasons == {"plaintext": 1, TOO_LONG_REASON: 1}
    assert res.failing_ids == ["2", "3"]
    assert res.problems == 2
    assert res.old_scheme == res.new_scheme == 0


def test_expected_scheme_counts_and_the_other_is_a_problem() -> None:
    page = [
        read(1, "name", Kind.FIRST, "a"),
        read(2, "name", Kind.FIRST, "b"),
        read(3, "name", Kind.SECOND, "c"),
    ]
    new = run(page, expected="new")["name"]
    assert (new.new_scheme, new.old_scheme) == (2, 1)
    assert new.reasons == {"old scheme (expected new)": 1}
    assert new.failing_ids == ["3"]
    old = run(page, expected="old")["name"]
    assert (old.old_scheme, old.new_scheme) == (2, 1)
    assert old.reasons == {"new scheme (expected old)": 1}
    assert old.failing_ids == ["3"]


def test_unreadable_reasons_come_from_vaults_texts() -> None:
    page = [
        Checked(1, "name", Verdict(Kind.UNREADABLE, first_error=AUTH, second_error=AUTH)),
        Checked(2, "name", Verdict(Kind.UNREADABLE, first_error=TOO_OLD, second_error=AUTH)),
        Checked(3, "name", Verdict(Kind.UNREADABLE, first_error=NO_PREFIX, second_error=MISSING)),
        Checked(4, "name", Verdict(Kind.UNREADABLE, first_error="odd", second_error="odder")),
    ]
    res = run(page)["name"]
    assert res.unreadable == 4
    assert res.reasons == {
        "unreadable (neither key decrypts it)": 1,
        "unreadable (key version below min_decryption_version)": 1,
        "unreadable (malformed ciphertext)": 1,
        "unreadable": 1,
    }
    assert res.failing_ids == ["1", "2", "3", "4"]


def test_new_scheme_versions_come_from_the_prefix() -> None:
    page = [
        read(1, "name", Kind.FIRST, "a", ct="vault:v1:x"),
        read(2, "name", Kind.FIRST, "b", ct="vault:v3:x"),
        read(3, "name", Kind.FIRST, "c", ct="vault:v3:x"),
        read(4, "name", Kind.FIRST, "d", ct="vault:v0:x"),  # Vault reads version 0 as 1
        read(5, "name", Kind.SECOND, "e", ct="vault:v7:x"),  # old scheme: not counted
    ]
    res = run(page)["name"]
    assert res.versions == {1: 2, 3: 2}
    assert res.problems == 1
    res.split_problem()
    assert res.problems == 3  # the two values off the newest version found
    assert (
        res.reasons[
            "split across key versions of the new key (v1: 2, v3: 2): equality lookups miss "
            "values; run `context-encryption rewrap`"
        ]
        == 2
    )
    assert run(page, expected="old")["name"].versions == {7: 1}


def test_one_version_is_no_split() -> None:
    res = run([read(1, "name", Kind.FIRST, "a", ct="vault:v2:x")])["name"]
    res.split_problem()
    assert res.problems == 0
    assert res.versions == {2: 1}


def test_hmac_companions() -> None:
    good = hmac_hex(SECRET, b"ann@example.com")
    page = [
        read(1, "email", Kind.FIRST, "ann@example.com", companion=good),
        read(2, "email", Kind.FIRST, "ann@example.com", companion=good.upper() + " "),
        read(3, "email", Kind.FIRST, "bob@example.com", companion=good),
        read(4, "email", Kind.FIRST, "bob@example.com"),  # NULL companion
        read(5, "email", Kind.SECOND, "ann@example.com", companion=good),
    ]
    res = run(page)["email"]
    assert (res.hmac_match, res.hmac_mismatch, res.hmac_null, res.hmac_unchecked) == (3, 1, 1, 0)
    assert res.reasons == {"HMAC mismatch": 1, "old scheme (expected new)": 1}
    assert res.failing_ids == ["3", "5"]
    # a column without a companion has no HMAC counts
    name = run([read(1, "name", Kind.FIRST, "x", companion=good)])["name"]
    assert (name.hmac_match, name.hmac_mismatch, name.hmac_null, name.hmac_unchecked) == (
        0,
        0,
        0,
        0,
    )


def test_hmac_without_a_secret_is_unchecked_and_no_problem() -> None:
    page = [
        read(1, "email", Kind.FIRST, "a", companion="00" * 32),
        read(2, "email", Kind.FIRST, "b"),
    ]
    res = run(page, secret=None)["email"]
    assert (res.hmac_match, res.hmac_mismatch, res.hmac_null, res.hmac_unchecked) == (0, 0, 1, 1)
    assert res.problems == 0


def test_a_plaintext_that_is_not_base64_mismatches() -> None:
    page = [Checked(1, "email", Verdict(Kind.FIRST, "not base64!"), "vault:v1:x", "00")]
    res = run(page)["email"]
    assert res.hmac_mismatch == 1
    assert res.reasons == {"HMAC mismatch": 1}


def test_failing_ids_keep_the_first_max_ids_in_a_fixed_order() -> None:
    """Within a page: values told apart without Vault, unreadable values, then the expected
    scheme's values, then the other scheme's (the order verify has always listed them in)."""
    unreadable = Verdict(Kind.UNREADABLE, first_error=AUTH, second_error=AUTH)
    bad = hmac_hex(SECRET, b"other")
    page = [
        read(1, "email", Kind.SECOND, "a"),
        read(2, "email", Kind.FIRST, "b", companion=bad),
        Checked(3, "email", unreadable, "vault:v1:x"),
        Checked(4, "email", Verdict(Kind.PLAINTEXT), "plain"),
        read(5, "email", Kind.FIRST, "c", companion=bad),
    ]
    assert run(page)["email"].failing_ids == ["4", "3", "2", "5", "1"]
    capped = run(page, max_ids=2)["email"]
    assert capped.failing_ids == ["4", "3"]
    assert capped.problems == 5
    assert run(page, max_ids=0)["email"].failing_ids == []


def test_a_row_with_two_problems_in_one_column_is_listed_once() -> None:
    bad = hmac_hex(SECRET, b"other")
    res = run([read(7, "email", Kind.SECOND, "a", companion=bad)])["email"]
    assert res.problems == 2
    assert res.reasons == {"HMAC mismatch": 1, "old scheme (expected new)": 1}
    assert res.failing_ids == ["7"]


def test_pages_add_up() -> None:
    res = results()
    for pk in range(3):
        tally(
            res,
            [read(pk, "name", Kind.FIRST, "a"), Checked(pk, "email", Verdict(Kind.NULL))],
            expected="old",
            secret=SECRET,
            max_ids=20,
        )
    assert res["name"].old_scheme == 3
    assert res["email"].null == 3
    assert res["email"].hmac_null == 0  # a NULL value has no companion to check


def test_nothing_of_a_value_reaches_the_counts() -> None:
    page = [
        read(1, "email", Kind.SECOND, "secret@example.com", companion="ab" * 32),
        Checked(2, "email", Verdict(Kind.PLAINTEXT), "plain@example.com"),
    ]
    text = repr(run(page)["email"].as_dict())
    for leak in ("secret@example.com", "plain@example.com", b64("secret@example.com"), "ab" * 32):
        assert leak not in text
