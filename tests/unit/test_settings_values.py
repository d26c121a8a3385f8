"""Edge cases of the settings' value parsers, and of reading options from the environment.

No server: only text in, a value or a ConfigurationError naming the option out.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from context_encryption.catalog import load_catalog
from context_encryption.errors import ConfigurationError
from context_encryption.setting_values import (
    Secret,
    choice,
    int_between,
    parse_bool,
    parse_database_url,
    parse_duration_ms,
    parse_key_name,
    parse_mount,
    parse_tables,
    parse_vault_addr,
    safe_url,
)
from context_encryption.settings import FLAG_SPELLING, load_settings

L = "-x opt"


def refused(parse: object, raw: str) -> str:
    assert callable(parse)
    with pytest.raises(ConfigurationError) as err:
        parse(L, raw)
    return str(err.value)


# --- booleans, whole numbers, choices, durations -------------------------------------------------


@pytest.mark.parametrize("raw", ["true", "TRUE", " yes ", "1", "On"])
def test_true_spellings(raw: str) -> None:
    assert parse_bool(L, raw) is True


@pytest.mark.parametrize("raw", ["false", "False", "0", " no", "OFF"])
def test_false_spellings(raw: str) -> None:
    assert parse_bool(L, raw) is False


@pytest.mark.parametrize("raw", ["", "maybe", "ture", "2", "y", "t"])
def test_anything_else_is_not_a_boolean(raw: str) -> None:
    assert refused(parse_bool, raw) == f"{L}={raw!r} is not a boolean; use true or false"


@pytest.mark.parametrize(("raw", "value"), [("1", 1), (" 7 ", 7), ("+10", 10), ("010", 10)])
def test_whole_numbers(raw: str, value: int) -> None:
    assert int_between(1, 10)(L, raw) == value


@pytest.mark.parametrize("raw", ["", " ", "1.5", "1e3", "ten", "1_000", "0x10", "5 5"])
def test_not_whole_numbers(raw: str) -> None:
    assert refused(int_between(1, 10_000), raw) == f"{L}={raw!r} is not a whole number"


@pytest.mark.parametrize(("raw", "shown"), [("0", "0"), ("11", "11"), ("-1", "-1"), ("+11", "11")])
def test_bounds_are_inclusive_and_named(raw: str, shown: str) -> None:
    assert refused(int_between(1, 10), raw) == f"{L}={shown} is out of range (1 to 10)"


def test_choices_ignore_case_and_space_but_nothing_else() -> None:
    parse = choice("abort", "skip")
    assert parse(L, " SKIP ") == "skip"
    assert refused(parse, "skipp") == f"{L}='skipp' must be one of: abort, skip"


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("0", 0),
        ("0s", 0),
        ("500ms", 500),
        ("5s", 5000),
        (" 5 s ", 5000),
        ("2min", 120_000),
        ("2m", 120_000),
        ("1h", 3_600_000),
    ],
)
def test_durations(raw: str, ms: int) -> None:
    assert parse_duration_ms(L, raw) == ms


@pytest.mark.parametrize("raw", ["5", "", "5sec", "-1s", "1.5s", "5S", "s", "soon"])
def test_a_duration_needs_a_unit_except_zero(raw: str) -> None:
    assert refused(parse_duration_ms, raw).startswith(f"{L}={raw!r} is not a duration with a unit")


# --- tables: the chain's own, in chain order ---------------------------------------------------


def test_tables_come_back_in_chain_order_without_duplicates() -> None:
    chain = load_catalog().tables
    raw = ", ".join([*reversed(chain), chain[0], ""])
    assert parse_tables(L, raw) == chain


def test_all_means_every_table() -> None:
    assert parse_tables(L, " all ") is None


@pytest.mark.parametrize("raw", ["", " ", ",", " , ,"])
def test_no_table_named_is_refused(raw: str) -> None:
    assert refused(parse_tables, raw) == f"{L}= is empty; name tables or use {L}=all"


def test_unknown_tables_are_named_with_the_known_ones() -> None:
    chain = load_catalog().tables
    message = refused(parse_tables, "users,all,Users,orders")
    assert message == (
        f"{L} names unknown table(s) all, Users, orders; known tables: {', '.join(chain)}"
    )


def test_the_known_tables_are_the_catalogs() -> None:
    assert load_catalog().tables == (
        "users",
        "invitations",
        "guest_orders",
        "delivery_addresses",
        "notifications",
        "sessions",
        "consent_records",
    )


# --- names, mounts, addresses, URLs ------------------------------------------------------------


@pytest.mark.parametrize("raw", ["k", "pos-context-key", "a.b_c-1", " k "])
def test_key_names(raw: str) -> None:
    assert parse_key_name(L, raw) == raw.strip()


@pytest.mark.parametrize("raw", ["", "bad key", "-k", "k-", "k/v", "ключ", "k\nk"])
def test_bad_key_names(raw: str) -> None:
    assert "is not a valid Transit key name" in refused(parse_key_name, raw)


def test_mount_slashes_are_dropped_and_an_empty_mount_refused() -> None:
    assert parse_mount(L, " /transit/pos/ ") == "transit/pos"
    assert refused(parse_mount, "//") == f"{L} is empty"


def test_vault_addr_keeps_path_and_drops_trailing_slashes() -> None:
    assert parse_vault_addr(L, " https://vault:8200/ ") == "https://vault:8200"
    assert parse_vault_addr(L, "HTTP://vault") == "HTTP://vault"


@pytest.mark.parametrize(
    "raw", ["https://user:hunter2@vault:8200", "http://hunter2@vault", "https://u:hunter2@"]
)
def test_vault_addr_with_a_user_or_password_is_refused_without_echoing_it(raw: str) -> None:
    """Bug found in issue 11: such an address was accepted, and the preflight's "Vault at
    <addr> is up" and every report's settings then showed the password."""
    message = refused(parse_vault_addr, raw)
    assert "hunter2" not in message
    assert "must not hold a user or password" in message
    assert "***@" in message


def test_an_at_sign_in_the_path_is_not_a_user() -> None:
    assert parse_vault_addr(L, "https://vault:8200/a@b") == "https://vault:8200/a@b"


def test_database_url_schemes_map_to_psycopg3() -> None:
    for raw in ("postgresql://u@h/d", "postgres://u@h/d"):
        assert parse_database_url(raw).drivername == "postgresql+psycopg"
    assert parse_database_url("sqlite:///x.db").drivername == "sqlite"


def test_safe_url_masks_password_and_secret_query_values() -> None:
    url = sa.make_url("postgresql://u:pw@h/d?sslkey=k1&token=t1&application_name=app")
    shown = safe_url(url)
    for secret in ("pw", "k1", "t1"):
        assert f"={secret}" not in shown and f":{secret}@" not in shown
    assert "application_name=app" in shown


def test_secret_never_shows_and_compares_by_value() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) + str(s) + f"{s}"
    assert s == Secret("hunter2") and s != Secret("other") and s != "hunter2"
    assert hash(s) == hash(Secret("hunter2"))


# --- reading the environment -------------------------------------------------------------------


def test_hmac_secret_is_kept_byte_for_byte_but_a_token_is_stripped() -> None:
    s = load_settings({}, {"ENCRYPTION_HMAC_SECRET": " s p ", "VAULT_TOKEN": " t\n"})
    assert s.hmac_secret == Secret(" s p ")
    assert s.vault_token == Secret("t")


def test_an_empty_variable_counts_as_not_set() -> None:
    s = load_settings({}, {"VAULT_TRANSIT_MOUNT": "", "VAULT_OLD_KEY": ""})
    assert (s.transit_mount, s.old_key) == ("transit", "pos-encryption-key")


def test_the_command_line_wins_over_the_environment_even_when_empty() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"transit-mount": ""}, {"VAULT_TRANSIT_MOUNT": "pos"})
    assert str(err.value) == "-x transit-mount is empty"


def test_a_bad_environment_value_is_named_by_its_variable() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({}, {"VAULT_OLD_KEY": "bad key"}, spelling=FLAG_SPELLING)
    assert str(err.value) == "VAULT_OLD_KEY='bad key' is not a valid Transit key name"


def test_the_same_key_twice_is_refused_whichever_side_is_defaulted() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"new-vault-key": "pos-encryption-key"}, {})
    assert str(err.value).startswith("-x vault-key and -x new-vault-key name the same key")
