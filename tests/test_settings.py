"""Settings are validated before any work; secrets never show."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app_models.errors import ConfigurationError
from app_models.settings import DEFAULT_BATCH_SIZE, X_NAMES, Secret, load_settings


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
