"""Settings are validated before any work; secrets never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from context_encryption.errors import ConfigurationError
from context_encryption.settings import (
    DEFAULT_BATCH_SIZE,
    FLAG_SPELLING,
    OPTIONS,
    X_NAMES,
    Secret,
    load_settings,
    option_help,
)


def test_defaults() -> None:
    s = load_settings({}, {})
    assert s.transit_mount == "transit"
    assert s.old_key == "pos-encryption-key"
    assert s.new_key == "pos-context-key"
    assert s.dry_run is False
    assert s.plaintext == "fail"
    assert s.on_error == "abort"
    assert s.batch_size == DEFAULT_BATCH_SIZE
    assert s.tables is None


def test_environment_and_x_override() -> None:
    env = {
        "DATABASE_URL": "postgresql://app:pw@db:5432/pos",
        "VAULT_ADDR": "https://vault:8200/",
        "VAULT_TOKEN": "s.token",
        "VAULT_TRANSIT_MOUNT": "/transit-pos/",
        "VAULT_OLD_KEY": "old",
        "VAULT_NEW_KEY": "new",
        "ENCRYPTION_HMAC_SECRET": "hmac",
    }
    s = load_settings({"vault-key": "older", "batch-size": "250", "dry-run": "TRUE"}, env)
    assert s.database_url is not None
    assert s.database_url.drivername == "postgresql+psycopg"
    assert s.vault_addr == "https://vault:8200"
    assert s.transit_mount == "transit-pos"
    assert s.old_key == "older"
    assert s.new_key == "new"
    assert s.batch_size == 250
    assert s.dry_run is True
    assert s.vault_token == Secret("s.token")


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        ({"dry-rum": "true"}, "unknown -x option(s): dry-rum"),
        ({"dry-run": "maybe"}, "dry-run='maybe' is not a boolean"),
        ({"batch-size": "0"}, "batch-size=0 is out of range"),
        ({"batch-size": "ten"}, "batch-size='ten' is not a whole number"),
        ({"workers": "0"}, "workers=0 is out of range"),
        ({"plaintext": "pass"}, "plaintext='pass' must be one of: fail, encrypt, skip"),
        ({"on-error": "ignore"}, "on-error='ignore' must be one of: abort, skip"),
        ({"tables": "users,orders"}, "unknown table(s) orders"),
        ({"lock-timeout": "soon"}, "lock-timeout='soon' is not a duration"),
        ({"vault-key": "bad key"}, "not a valid Transit key name"),
        ({"vault-key": "same", "new-vault-key": "same"}, "must differ"),
        ({"db": "::::"}, "database URL does not parse"),
    ],
)
def test_bad_values_are_named(x: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings(x, {})
    assert fragment in str(err.value)


def test_durations_and_tables() -> None:
    s = load_settings(
        {"lock-timeout": "2s", "statement-timeout": "3min", "tables": "invitations, users"}, {}
    )
    assert s.lock_timeout_ms == 2000
    assert s.statement_timeout_ms == 180_000
    assert s.tables == ("users", "invitations")
    assert load_settings({"tables": "all"}, {}).tables is None


def test_public_dict_hides_secrets() -> None:
    s = load_settings(
        {
            "vault-token": "s.super-secret",
            "hmac-secret": "hmac-super-secret",
            "db": "postgresql://u:db-password@h/d",
        },
        {},
    )
    text = repr(s) + str(s.public_dict())
    for secret in ("s.super-secret", "hmac-super-secret", "db-password"):
        assert secret not in text
    assert isinstance(s.database_url, sa.URL)


def test_every_design_name_is_accepted() -> None:
    design = {
        "db",
        "vault-addr",
        "vault-token",
        "transit-mount",
        "vault-key",
        "new-vault-key",
        "hmac-secret",
        "tables",
        "batch-size",
        "dry-run",
        "plaintext",
        "on-error",
        "report",
        "workers",
        "lock-timeout",
        "statement-timeout",
    }
    assert design <= set(X_NAMES)


def test_passwords_in_the_query_string_are_masked_too() -> None:
    s = load_settings(
        {"db": "postgresql://app:pw1@db/pos?password=pw2&sslpassword=pw3&sslmode=require"}, {}
    )
    text = str(s.public_dict())
    for secret in ("pw1", "pw2", "pw3"):
        assert secret not in text
    assert "sslmode=require" in text


# --- issue 10: what an operator meets --------------------------------------------------------


def test_report_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"report": str(tmp_path)}, {})
    assert f"-x report={str(tmp_path)!r} is a directory" in str(err.value)
    assert "needs a file path" in str(err.value)


def test_report_path_in_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet"
    with pytest.raises(ConfigurationError) as err:
        load_settings({"report": str(missing / "run.json")}, {})
    assert "-x report=" in str(err.value)
    assert f"the directory {str(missing)!r} does not exist" in str(err.value)
    assert not missing.exists()


def test_report_path_that_is_fine_is_kept_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert load_settings({"report": str(path)}, {}).report == str(path)
    assert list(tmp_path.iterdir()) == []  # the writability probe is gone again


@pytest.mark.parametrize(
    ("addr", "fragment"),
    [
        ("127.0.0.1:8311", "-x vault-addr='127.0.0.1:8311': the address needs http:// or https://"),
        ("vault.example:8200", "e.g. https://vault.example:8200"),
        ("tcp://127.0.0.1:8200", "needs http:// or https://, not tcp://"),
        ("http://", "the address has no host"),
    ],
)
def test_vault_addr_needs_http_or_https(addr: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"vault-addr": addr}, {})
    assert fragment in str(err.value)


def test_vault_addr_from_the_environment_is_named_by_its_variable() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({}, {"VAULT_ADDR": "127.0.0.1:8200"})
    assert str(err.value).startswith("VAULT_ADDR='127.0.0.1:8200': the address needs http://")


def test_vault_addr_never_echoes_a_password() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"vault-addr": "user:pa55word@vault:8200"}, {})
    assert "pa55word" not in str(err.value)
    assert "***@vault:8200" in str(err.value)


def test_openbao_variable_names_are_read_when_vault_ones_are_not_set(tmp_path: Path) -> None:
    bao = {
        "BAO_ADDR": "http://bao:8200",
        "BAO_TOKEN": "bao-token",
        "BAO_NAMESPACE": "team-a",
        "BAO_CACERT": str(tmp_path),
    }
    s = load_settings({}, bao)
    assert s.vault_addr == "http://bao:8200"
    assert s.vault_token == Secret("bao-token")
    assert s.vault_namespace == "team-a"
    assert s.vault_cacert == str(tmp_path)


def test_vault_variable_names_win_over_openbao_ones() -> None:
    env = {
        "VAULT_ADDR": "https://vault:8200",
        "BAO_ADDR": "http://bao:8200",
        "VAULT_TOKEN": "vault-token",
        "BAO_TOKEN": "bao-token",
        "VAULT_NAMESPACE": "ns-v",
        "BAO_NAMESPACE": "ns-b",
    }
    s = load_settings({}, env)
    assert s.vault_addr == "https://vault:8200"
    assert s.vault_token == Secret("vault-token")
    assert s.vault_namespace == "ns-v"
    # an empty VAULT_ variable counts as not set
    assert load_settings({}, {**env, "VAULT_ADDR": ""}).vault_addr == "http://bao:8200"


def test_a_ca_bundle_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({}, {"VAULT_CACERT": str(tmp_path / "ca.pem")})
    assert "VAULT_CACERT=" in str(err.value) and "no such file" in str(err.value)


def test_secrets_on_the_command_line_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        load_settings(
            {
                "vault-token": "s.cmdline-token",
                "hmac-secret": "cmdline-hmac",
                "db": "postgresql://app:cmdline-pw@db/pos",
            },
            {},
        )
    text = caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any(
        "-x vault-token was given on the command line" in w and "VAULT_TOKEN" in w for w in warnings
    )
    assert any("-x hmac-secret" in w and "ENCRYPTION_HMAC_SECRET" in w for w in warnings)
    assert any("-x db" in w and "DATABASE_URL" in w for w in warnings)
    assert all("process list" in w and "shell history" in w for w in warnings)
    for secret in ("s.cmdline-token", "cmdline-hmac", "cmdline-pw"):
        assert secret not in text


def test_secrets_from_the_environment_are_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "VAULT_TOKEN": "t",
        "ENCRYPTION_HMAC_SECRET": "h",
        "DATABASE_URL": "postgresql://app:pw@db/pos",
    }
    with caplog.at_level(logging.WARNING, logger="context_encryption"):
        load_settings({"db": "postgresql://app@db/pos"}, env)  # no password on the line
    assert caplog.records == []


def test_messages_name_options_the_way_they_were_typed() -> None:
    with pytest.raises(ConfigurationError) as err:
        load_settings({"batch-size": "abc"}, {}, spelling=FLAG_SPELLING)
    assert str(err.value) == "--batch-size='abc' is not a whole number"
    with pytest.raises(ConfigurationError) as err:
        load_settings({"tables": "invitation"}, {}, spelling=FLAG_SPELLING)
    assert str(err.value).startswith("--tables names unknown table(s) invitation")
    with pytest.raises(ConfigurationError) as err:
        load_settings({"vault-key": "k"}, {"VAULT_NEW_KEY": "k"}, spelling=FLAG_SPELLING)
    assert str(err.value).startswith("--vault-key and VAULT_NEW_KEY name the same key")
    with pytest.raises(ConfigurationError) as err:
        load_settings({"dry-rum": "true"}, {}, spelling=FLAG_SPELLING)
    assert "unknown option(s): dry-rum; known: --db, " in str(err.value)


def test_every_option_has_help_naming_its_environment_and_default() -> None:
    for option in OPTIONS:
        text = option_help(option.name)
        assert "default: " in text, option.name
        assert "\n" not in text
        for env in option.env:
            assert env in text
    assert option_help("batch-size").endswith(f"(default: {DEFAULT_BATCH_SIZE})")
    assert "env VAULT_ADDR or BAO_ADDR" in option_help("vault-addr")
