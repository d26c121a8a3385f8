"""Tests that kill mutmut's survivors in settings and setting_values: the operator's messages
whole, the label each names, and the edges of each parser. README "Mutation testing" lists the
survivors left and why. No server: values and a temporary directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from context_encryption.errors import ConfigurationError
from context_encryption.setting_values import (
    Secret,
    parse_database_url,
    parse_db,
    parse_duration_ms,
    parse_mount,
    parse_report_path,
    parse_vault_addr,
    safe_url,
)
from context_encryption.settings import FLAG_SPELLING, load_settings

L = "-x opt"
SAME_KEY = (
    "name the same key; they must differ (the old key has no context, the new one is derived "
    "+ convergent)"
)


def message(fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(ConfigurationError) as err:
        fn(*args)
    return str(err.value)


# -- setting_values -------------------------------------------------------------------------------


def test_a_database_url_that_does_not_parse_names_where_it_came_from() -> None:
    assert message(parse_database_url, "not a url") == (
        "the database URL does not parse (DATABASE_URL or -x db); "
        "expected e.g. postgresql://user@host:5432/dbname"
    )
    assert message(parse_db, "-x db", "not a url").startswith(
        "the database URL does not parse (-x db); "
    )


def test_a_duration_without_a_unit_whole_message() -> None:
    assert message(parse_duration_ms, L, "5") == (
        "-x opt='5' is not a duration with a unit; use e.g. 500ms, 5s, 2min, or 0 to disable"
    )


def test_a_mount_loses_its_slashes_only() -> None:
    assert parse_mount(L, " /X-transit-X/ ") == "X-transit-X"


def test_a_vault_addr_keeps_everything_but_trailing_slashes() -> None:
    assert parse_vault_addr(L, "http://X/") == "http://X"
    # only the part before the first slash is the authority: an @ deeper in the path is no user
    assert parse_vault_addr(L, "https://vault:8200/a@b/c") == "https://vault:8200/a@b/c"


def test_a_vault_addr_with_a_user_whole_message() -> None:
    assert message(parse_vault_addr, L, "https://me:pw@vault:8200") == (
        "-x opt='https://***@vault:8200': the address must not hold a user or password (the "
        "'***@' part): Vault authenticates with the token (VAULT_TOKEN), and the address is "
        "shown in messages and reports"
    )


def test_safe_url_masks_secret_query_values_with_stars() -> None:
    url = parse_database_url("postgresql://app:pw@db/pos?sslpassword=s3&application_name=a")
    assert safe_url(url) == (
        "postgresql+psycopg://app:***@db/pos?application_name=a&sslpassword=%2A%2A%2A"
    )


def test_secrets_hash_by_value() -> None:
    assert hash(Secret("a")) == hash(Secret("a"))
    assert hash(Secret("a")) != hash(Secret("b"))
    assert repr(Secret("a")) == str(Secret("a")) == "Secret('***')"


def test_report_path_messages_whole(tmp_path: Path) -> None:
    assert message(parse_report_path, L, "  ") == "-x opt= needs a file path"
    d = str(tmp_path)
    assert message(parse_report_path, L, d) == (
        f"-x opt={d!r} is a directory; the report needs a file path, "
        f"e.g. -x opt={os.path.join(d, 'context-encryption-report.json')}"
    )
    gone = str(tmp_path / "gone") + "/"
    assert message(parse_report_path, L, gone) == (
        f"-x opt={gone!r} ends with a slash; the report needs a file path"
    )
    missing = str(tmp_path / "gone" / "r.json")
    assert message(parse_report_path, L, missing) == (
        f"-x opt={missing!r}: the directory {str(tmp_path / 'gone')!r} does not exist; create "
        "it first (the report never creates directories)"
    )


def test_report_path_over_a_file_or_a_dangling_link(tmp_path: Path) -> None:
    existing = tmp_path / "old-report.json"
    existing.write_text("{}")
    assert parse_report_path(L, str(existing)) == str(existing)  # overwritten: a regular file
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "nowhere")
    assert message(parse_report_path, L, str(link)) == (
        f"-x opt={str(link)!r} exists and is not a regular file"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "old-report.json"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_report_path_in_a_directory_where_no_file_can_be_made() -> None:
    """/proc refuses new files even to root (the tests may run as root, who can write anywhere
    else): the probe is made in the report's own directory, and the refusal is named."""
    text = message(parse_report_path, L, "/proc/r.json")
    assert text.startswith("-x opt='/proc/r.json': cannot create a file in '/proc' (")
    assert text.endswith("); choose a writable directory")
    reason = text.split("(", 1)[1].rsplit(")", 1)[0]
    assert reason[0].isupper() and " " in reason  # strerror, e.g. "No such file or directory"


# -- settings -----------------------------------------------------------------------------------


def test_unknown_names_whole_message() -> None:
    text = message(load_settings, {"b-unknown": "1", "a-unknown": "2"}, {})
    assert text.startswith("unknown -x option(s): a-unknown, b-unknown; known: -x ")


def test_the_same_key_twice_names_each_side_as_it_was_given() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"vault-key": "pos-context-key"}, {}, spelling=FLAG_SPELLING)
    assert str(err.value) == f"--vault-key and --new-vault-key {SAME_KEY}"
    with pytest.raises(ConfigurationError) as err:
        load_settings({"new-vault-key": "k"}, {"VAULT_OLD_KEY": "k"})
    assert str(err.value) == f"VAULT_OLD_KEY and -x new-vault-key {SAME_KEY}"
    with pytest.raises(ConfigurationError) as err:
        load_settings({}, {"VAULT_NEW_KEY": "pos-encryption-key"}, spelling=FLAG_SPELLING)
    assert str(err.value) == f"--vault-key and VAULT_NEW_KEY {SAME_KEY}"


def test_public_dict_shows_secrets_as_set_and_tables_as_a_list() -> None:
    s = load_settings({"tables": "users"}, {"VAULT_TOKEN": "t", "ENCRYPTION_HMAC_SECRET": "h"})
    public = s.public_dict()
    assert public["vault_token"] == "set"
    assert public["hmac_secret"] == "set"
    assert public["tables"] == ["users"]
