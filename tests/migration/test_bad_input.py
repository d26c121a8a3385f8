"""Bad input (issue 5, point 5): every kind of odd value has a defined outcome.

Each case puts one odd value into one row of ``invitations`` (columns ``email`` and ``token``,
both with HMAC companions) among ordinary rows. With ``on-error=abort`` the run stops unstamped
and its message names table, column and primary key of every failing value (and never the
value); with ``on-error=skip`` the run completes, the JSON report lists each failing row with
its reason, failing rows are left byte for byte as they were, and the rest of the table is
migrated correctly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from alembic.util import CommandError

from app_models.tables import context_string
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.reliability_helpers import (
    encrypt_raw,
    new_ct,
    old_ct,
    set_values,
    table_summary,
)
from tests.support.seeding import (
    assert_scheme,
    b64,
    encrypted_columns,
    hmac_hex,
    read_table,
    sample_rows,
    seed,
)

OTHER_KEY = "some-other-key"


@dataclass(frozen=True)
class Case:
    name: str
    column: str
    make: Callable[[Migration, str], dict[str, str | None]]  # (m, stored ct) -> new values
    outcome: str  # "failed", "migrated", "already_migrated", "null"
    reason: tuple[str, ...] = ()  # substrings of the failure reason (any of them)
    plaintext: str | None = None  # expected plaintext afterwards, for non-failures


def _hmac(m: Migration, col: str, text: str) -> str:
    return hmac_hex(m.hmac_secret, text)


def _payload(ct: str) -> str:
    return ct.split(":", 2)[2]


UNREADABLE = ("cannot be decrypted", "unreadable")


def names_row(message: str, table: str, column: str, pk: Any) -> bool:
    """The message names table, column and primary key of a value (``t.c id=pk``, or a line
    ``t.c: ... (id pk)`` / ``(ids a, pk, ...)`` as the preflight writes it)."""
    if f"{table}.{column} id={pk}" in message:
        return True
    pattern = (
        rf"{re.escape(table)}\.{re.escape(column)}\b[^\n]*\bids? [^\n]*\b{re.escape(str(pk))}\b"
    )
    return re.search(pattern, message) is not None


CASES: list[Case] = [
    Case(
        "null",
        "email",
        lambda m, ct: {"email": None, "email_hmac": None},
        "null",
    ),
    Case(
        "empty-string-plaintext",
        "token",
        lambda m, ct: {"token": "", "token_hmac": _hmac(m, "token", "")},
        "failed",
        ("plaintext",),
    ),
    Case(
        "empty-string-encrypted",
        "email",
        lambda m, ct: {"email": old_ct(m, ""), "email_hmac": _hmac(m, "email", "")},
        "migrated",
        plaintext="",
    ),
    Case(
        "plaintext",
        "token",
        lambda m, ct: {"token": "tok-plain-9f8e7d", "token_hmac": _hmac(m, "t", "x")},
        "failed",
        ("plaintext",),
    ),
    Case(
        "version-not-numeric",
        "email",
        lambda m, ct: {"email": "vault:vX:" + _payload(ct)},
        "failed",
        ("version number could not be decoded",),
    ),
    Case(
        "version-zero",  # Vault reads v0 as v1 (legacy behaviour)
        "token",
        lambda m, ct: {"token": "vault:v0:" + _payload(ct)},
        "migrated",
    ),
    Case(
        "version-too-new",
        "email",
        lambda m, ct: {"email": "vault:v99:" + _payload(ct)},
        "failed",
        ("version is too new",),
    ),
    Case(
        "no-version",
        "token",
        # the payload's first character is fixed: a random payload that starts with "v" (1 in 64)
        # would make "vault:v..." and Vault would answer "wrong number of fields" instead
        lambda m, ct: {"token": "vault:A" + _payload(ct)[1:]},
        "failed",
        ("no prefix", "prefix"),
    ),
    Case(
        "truncated",
        "email",
        lambda m, ct: {"email": ct[:-8]},
        "failed",
        ("message authentication failed",),
    ),
    Case(
        "truncated-to-almost-nothing",
        "token",
        lambda m, ct: {"token": "vault:v1:AAAA"},
        "failed",
        UNREADABLE,
    ),
    Case(
        "tampered",
        "token",
        lambda m, ct: {"token": ct[:20] + ("A" if ct[20] != "A" else "B") + ct[21:]},
        "failed",
        ("message authentication failed",),
    ),
    Case(
        "bad-base64",
        "email",
        lambda m, ct: {"email": "vault:v1:not*base64*at*all!"},
        "failed",
        ("could not decode base64",),
    ),
    Case(
        "another-key",
        "token",
        lambda m, ct: {"token": encrypt_raw(m.vault.client, m.vault.mount, OTHER_KEY, b"secret")},
        "failed",
        ("message authentication failed",),
    ),
    Case(
        "already-in-target-scheme",
        "email",
        lambda m, ct: {"email": new_ct(m, "invitations", "email", "already@new.example")},
        "already_migrated",
        plaintext="already@new.example",
    ),
    Case(
        "over-1-MiB",
        "token",
        lambda m, ct: {"token": "vault:v1:" + "A" * (1 << 20)},
        "failed",
        ("1 MiB",),
    ),
    Case(
        "not-utf8",
        "email",
        lambda m, ct: {
            "email": encrypt_raw(m.vault.client, m.vault.mount, m.vault.old_key, b"\xff\xfe\xc3(")
        },
        "failed",
        ("UTF-8",),
    ),
    Case(
        "hmac-mismatch",
        "token",
        lambda m, ct: {"token_hmac": "0" * 64},
        "failed",
        ("HMAC verification failed",),
    ),
    Case(
        "null-companion",  # nothing to verify against: migrated, the companion stays NULL
        "email",
        lambda m, ct: {"email_hmac": None},
        "migrated",
    ),
]


def setup_cases(m: Migration) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Seed ordinary rows, then give every case a row of its own; returns (data, pk by case)."""
    m.vault.client.secrets.transit.create_key(name=OTHER_KEY, mount_point=m.vault.mount)
    rows = sample_rows("invitations", 3 * len(CASES) + 10)
    for r in rows:  # ordinary values everywhere, so each case row has exactly one oddity
        for c in ("email", "token"):
            if r[c] is None:
                r[c] = f"{c} filler"
    data = seed(m.engine, m.vault, "invitations", rows, m.hmac_secret)
    pks = sorted(data)
    stored = read_table(m.engine, "invitations")
    case_pk: dict[str, Any] = {}
    for i, case in enumerate(CASES):
        pk = pks[3 * i + 5]  # spread over several batches
        case_pk[case.name] = pk
        values = case.make(m, stored[pk][case.column])
        set_values(m, "invitations", pk, **values)
        if case.outcome in ("migrated", "already_migrated"):
            if case.plaintext is not None:
                data[pk][case.column] = case.plaintext
        elif case.outcome == "null":
            data[pk][case.column] = None
    m.upgrade("0001_users")
    return data, case_pk


def check_each_case(
    case_pk: dict[str, Any],
    reasons: dict[tuple[str, str], str],
    before: dict[Any, dict[str, Any]],
    after: dict[Any, dict[str, Any]],
) -> list[str]:
    """Each failing case is reported with its reason and left unchanged; no other case failed.
    Returns a line per case, for the test's output."""
    lines = []
    for case in CASES:
        pk = case_pk[case.name]
        got = reasons.get((str(pk), case.column))
        lines.append(f"  {case.name:28s} id={pk}: {case.outcome}: {got or '-'}")
        if case.outcome == "failed":
            assert got is not None, f"{case.name}: not reported as failed"
            assert any(r in got for r in case.reason), f"{case.name}: reason {got!r}"
            assert after[pk] == before[pk], f"{case.name}: a failing row was changed"
        else:
            assert got is None, f"{case.name}: unexpectedly failed: {got}"
    return lines


def test_every_bad_input_has_a_defined_outcome(migration: Migration) -> None:
    m = migration
    data, case_pk = setup_cases(m)
    before = read_table(m.engine, "invitations")
    failing = [c for c in CASES if c.outcome == "failed"]

    # on-error=abort: unstamped, and the message names table, column and primary key
    with pytest.raises(CommandError) as err:
        m.upgrade("0002_invitations", batch_size=10, workers=1)
    message = str(err.value)
    named = [
        c.name for c in failing if names_row(message, "invitations", c.column, case_pk[c.name])
    ]
    print(f"\non-error=abort names {named}:\n{message}")
    assert named, message
    assert "tok-plain-9f8e7d" not in message
    assert m.current() == "0001_users"

    # on-error=skip: the run completes and the report gives each failing row's reason
    report = m.upgrade("0002_invitations", batch_size=10, on_error="skip")
    assert m.current() == "0002_invitations"
    summary = table_summary(report, "invitations")
    reasons = {(f["id"], f["column"]): f["reason"] for f in summary["failures"]}
    after = read_table(m.engine, "invitations")
    lines = check_each_case(case_pk, reasons, before, after)
    print("\nbad inputs tried:\n" + "\n".join(lines))
    assert {(f["id"], f["column"]) for f in summary["failures"]} == {
        (str(case_pk[c.name]), c.column) for c in failing
    }, "a row that is not a bad input failed"
    assert summary["rows_failed"] == len(failing)
    assert summary["columns"]["email"]["already_migrated"] == 1

    # the rest of the table, and the non-failing odd values, are correct in the new scheme
    failing_pks = {case_pk[c.name] for c in failing}
    good = {pk: v for pk, v in data.items() if pk not in failing_pks}
    good_only = {pk for pk in after if pk not in good}
    assert good_only == failing_pks
    _assert_good_rows(m, good)
    assert after[case_pk["null"]]["email"] is None
    assert after[case_pk["null-companion"]]["email_hmac"] is None
    assert (
        after[case_pk["already-in-target-scheme"]]["email"]
        == (before[case_pk["already-in-target-scheme"]]["email"])
    )


@pytest.mark.parametrize("case", [c for c in CASES if c.outcome == "failed"], ids=lambda c: c.name)
def test_abort_message_names_table_column_and_key(migration: Migration, case: Case) -> None:
    """One bad value among ordinary rows, on-error=abort: the message names it, nothing of its
    batch is written, the revision stays unstamped."""
    m = migration
    m.vault.client.secrets.transit.create_key(name=OTHER_KEY, mount_point=m.vault.mount)
    rows = sample_rows("invitations", 12)
    for r in rows:
        for c in ("email", "token"):
            r[c] = r[c] or f"{c} filler"
    data = seed(m.engine, m.vault, "invitations", rows, m.hmac_secret)
    pk = sorted(data)[6]
    set_values(
        m, "invitations", pk, **case.make(m, read_table(m.engine, "invitations")[pk][case.column])
    )
    m.upgrade("0001_users")
    before = read_table(m.engine, "invitations")
    with pytest.raises(CommandError) as err:
        m.upgrade("0002_invitations", batch_size=100)
    message = str(err.value)
    assert names_row(message, "invitations", case.column, pk), message
    assert m.current() == "0001_users"
    assert read_table(m.engine, "invitations") == before, "the failing batch was written"
    for value in before[pk].values():
        if isinstance(value, str) and len(value) > 12:
            assert value[:2000] not in message, "the message shows the value"
    for row in data.values():
        for v in row.values():
            if isinstance(v, str) and len(v) > 6:
                assert v not in message, "the message shows a plaintext"


def _assert_good_rows(m: Migration, good: dict[Any, Any], table: str = "invitations") -> None:
    """Rows ``good`` (a subset of the table) are in the new scheme with their plaintexts."""
    stored = read_table(m.engine, table)
    for col in encrypted_columns(table):
        pks = [pk for pk in good if good[pk][col.name] is not None]
        cts = [stored[pk][col.name] for pk in pks]
        ctx = context_string(table, col.name)
        plains = m.vault.decrypt(m.vault.new_key, cts, [ctx] * len(cts))
        for pk, p in zip(pks, plains, strict=True):
            assert p == good[pk][col.name], f"{table}.{col.name} id={pk}: not migrated correctly"
        for pk in good:
            if good[pk][col.name] is None:
                assert stored[pk][col.name] is None


def test_version_below_min_decryption_version(migration: Migration) -> None:
    m = migration
    client, mount, key = m.vault.client, m.vault.mount, m.vault.old_key
    client.secrets.transit.rotate_key(name=key, mount_point=mount)
    data = seed_table(m, "invitations", 12)
    pk = sorted(data)[4]
    text = "retired-version value"
    v1 = client.secrets.transit.encrypt_data(
        name=key, plaintext=b64(text), key_version=1, mount_point=mount
    )["data"]["ciphertext"]
    assert v1.startswith("vault:v1:")
    set_values(m, "invitations", pk, email=v1, email_hmac=hmac_hex(m.hmac_secret, text))
    client.secrets.transit.update_key_configuration(
        name=key, min_decryption_version=2, mount_point=mount
    )
    m.upgrade("0001_users")
    with pytest.raises(CommandError) as err:
        m.upgrade("0002_invitations")
    print(f"\n{err.value}")
    assert names_row(str(err.value), "invitations", "email", pk), str(err.value)
    assert text not in str(err.value)

    report = m.upgrade("0002_invitations", on_error="skip")
    failures = table_summary(report, "invitations")["failures"]
    assert [(f["id"], f["column"]) for f in failures] == [(str(pk), "email")]
    assert "too old" in failures[0]["reason"] or "min_decryption_version" in failures[0]["reason"]
    del data[pk]
    _assert_good_rows(m, data)
    assert read_table(m.engine, "invitations")[pk]["email"] == v1


@pytest.mark.parametrize(
    ("value", "outcome"),
    [("", "plaintext_encrypted"), ("x" * (1 << 20), "failed")],
    ids=["empty-string", "over-1-MiB"],
)
def test_plaintext_encrypt_policy_edges(migration: Migration, value: str, outcome: str) -> None:
    """-x plaintext=encrypt: the empty string is encrypted like any value; a plaintext over
    Vault's 1 MiB limit is that row's error (naming it), not the whole run's."""
    m = migration
    data = seed_table(m, "notifications", 30)
    pk = sorted(data)[11]
    set_values(m, "notifications", pk, body=value)
    m.upgrade("0004_delivery_addresses")
    report = m.upgrade("0005_notifications", plaintext="encrypt", on_error="skip")
    summary = table_summary(report, "notifications")
    assert summary["columns"]["body"][outcome] == 1, summary
    if outcome == "failed":
        assert [(f["id"], f["column"]) for f in summary["failures"]] == [(str(pk), "body")]
        assert read_table(m.engine, "notifications")[pk]["body"] == value
        del data[pk]
        _assert_good_rows(m, data, "notifications")
    else:
        data[pk]["body"] = value
        assert_scheme(m.engine, m.vault, "notifications", data, "new")


def test_bad_input_on_downgrade(migration: Migration) -> None:
    """Downgrade mirrors upgrade: an old-scheme value is already in its target scheme, a damaged
    new-scheme value is that row's error, and the rest of the table goes back to the old key."""
    m = migration
    data = seed_table(m, "invitations", 20)
    m.upgrade("0002_invitations")
    pks = sorted(data)
    already, damaged, plain = pks[3], pks[9], pks[14]
    old_value = old_ct(m, "still old")
    set_values(
        m, "invitations", already, email=old_value, email_hmac=hmac_hex(m.hmac_secret, "still old")
    )
    ct = read_table(m.engine, "invitations")[damaged]["token"]
    set_values(m, "invitations", damaged, token=ct[:20] + ("A" if ct[20] != "A" else "B") + ct[21:])
    set_values(m, "invitations", plain, token="plaintext on the way down")
    before = read_table(m.engine, "invitations")

    with pytest.raises(CommandError) as err:
        m.downgrade("0001_users", batch_size=5)
    assert names_row(str(err.value), "invitations", "token", damaged) or names_row(
        str(err.value), "invitations", "token", plain
    ), str(err.value)
    assert m.current() == "0002_invitations"

    report = m.downgrade("0001_users", on_error="skip")
    summary = table_summary(report, "invitations")
    failed = {(f["id"], f["column"]): f["reason"] for f in summary["failures"]}
    assert set(failed) == {(str(damaged), "token"), (str(plain), "token")}, failed
    assert "message authentication failed" in failed[(str(damaged), "token")]
    assert "plaintext" in failed[(str(plain), "token")]
    assert summary["columns"]["email"]["already_migrated"] >= 1
    after = read_table(m.engine, "invitations")
    assert after[damaged] == before[damaged] and after[plain] == before[plain]
    assert after[already]["email"] == old_value
    data[already]["email"] = "still old"
    rest = {pk: v for pk, v in data.items() if pk not in (damaged, plain)}
    for col in ("email", "token"):
        pks_c = [pk for pk in rest if rest[pk][col] is not None]
        plains = m.vault.decrypt(
            m.vault.old_key, [after[pk][col] for pk in pks_c], [None] * len(pks_c)
        )
        for pk, p in zip(pks_c, plains, strict=True):
            assert p == rest[pk][col], f"invitations.{col} id={pk}: not back in the old scheme"
        for pk in rest:
            if rest[pk][col] is None:
                assert after[pk][col] is None
