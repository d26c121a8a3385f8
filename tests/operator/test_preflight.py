"""Preflight against real PostgreSQL and a real OpenBao: every failure set up on purpose.

No mock anywhere: tokens and policies are made through Vault's own API, keys are created,
rotated and configured through hvac, and the database is a fresh PostgreSQL database.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from context_encryption import cli
from context_encryption.errors import PreflightError
from context_encryption.preflight import (
    collect_preflight,
    policy_hcl,
    require_database,
    required_capabilities,
    run_preflight,
)
from context_encryption.transit import TransitClient
from tests.support.migration_fixtures import NEW_KEY, OLD_KEY, Migration, seed_table
from tests.support.seeding import Plain, pks_with, sample_rows, seed
from tests.support.tools import failure, preflight, settings_of


def child_token(vault_client: Any, policies: list[str], **opts: Any) -> str:
    resp = vault_client.auth.token.create(policies=policies, **opts)
    return str(resp["auth"]["client_token"])


@pytest.fixture
def policy(vault_client: Any, migration: Migration) -> Iterator[Any]:
    """Make ACL policies for the test (deleted afterwards); returns a factory."""
    made: list[str] = []

    def make(text: str) -> str:
        name = f"pf-{secrets.token_hex(4)}"
        vault_client.sys.create_or_update_acl_policy(name, text)
        made.append(name)
        return name

    yield make
    for name in made:
        vault_client.sys.delete_acl_policy(name)


def test_all_checks_pass_and_report_says_what_it_found(migration: Migration) -> None:
    seed_table(migration, "users", 30)
    report = preflight(migration)
    assert report.ok
    names = [c.name for c in report.checks]
    assert names == [
        "database",
        "vault",
        "token",
        "capabilities",
        "keys",
        "row security",
        "data versions",
        "hmac secret",
        "hmac sample",
    ]
    token = next(c for c in report.checks if c.name == "token")
    assert "never expires" in token.detail  # the root token
    assert report.versions["users.email"] == {
        1: 30 - sum(1 for r in sample_rows("users", 30) if r["email"] is None)
    }
    assert "postgresql+psycopg://" in report.checks[0].detail
    # downgrade needs the same, mirrored
    assert preflight(migration, "downgrade").ok


def test_required_capabilities_and_policy_text(migration: Migration) -> None:
    s = settings_of(migration)
    m = s.transit_mount
    assert required_capabilities(s, "upgrade") == [
        (f"{m}/decrypt/{OLD_KEY}", "update"),
        (f"{m}/encrypt/{NEW_KEY}", "update"),
        (f"{m}/decrypt/{NEW_KEY}", "update"),
        (f"{m}/keys/{OLD_KEY}", "read"),
        (f"{m}/keys/{NEW_KEY}", "read"),
    ]
    assert required_capabilities(s, "downgrade")[:3] == [
        (f"{m}/decrypt/{NEW_KEY}", "update"),
        (f"{m}/encrypt/{OLD_KEY}", "update"),
        (f"{m}/decrypt/{OLD_KEY}", "update"),
    ]
    hcl = policy_hcl(s)
    assert f'path "{m}/decrypt/{OLD_KEY}"' in hcl
    assert f'path "{m}/encrypt/{NEW_KEY}"' in hcl
    # four Transit paths plus renew-self and capabilities-self; two keys plus lookup-self
    assert hcl.count('capabilities = ["update"]') == 6
    assert hcl.count('capabilities = ["read"]') == 3
    assert 'path "auth/token/lookup-self"' in hcl


def test_missing_capability_prints_the_policy(
    migration: Migration, vault_client: Any, policy: Any
) -> None:
    m = migration.vault.mount
    # everything except decrypt with the new key (the engine's trial decrypt needs it)
    name = policy(
        f"""
        path "{m}/keys/*" {{ capabilities = ["read"] }}
        path "{m}/decrypt/{OLD_KEY}" {{ capabilities = ["update"] }}
        path "{m}/encrypt/{NEW_KEY}" {{ capabilities = ["update"] }}
        """
    )
    token = child_token(vault_client, [name], ttl="1h")
    text = failure(migration, vault_token=token)
    assert "[capabilities] the token lacks update on " + f"{m}/decrypt/{NEW_KEY}" in text
    assert "(has: deny)" in text
    assert policy_hcl(settings_of(migration)).replace("\n", "\n   ") in text
    assert "vault policy write context-encryption" in text
    assert token not in text
    # that policy is complete for nothing else: the keys and the token were fine
    assert "[keys]" not in text
    assert "[token]" not in text


def test_token_without_default_policy_cannot_even_ask(
    migration: Migration, vault_client: Any, policy: Any
) -> None:
    m = migration.vault.mount
    name = policy(f'path "{m}/*" {{ capabilities = ["read", "update"] }}')
    token = child_token(vault_client, [name], ttl="1h", no_default_policy=True)
    text = failure(migration, vault_token=token)
    assert "auth/token/lookup-self: permission denied" in text


def test_invalid_token(migration: Migration) -> None:
    text = failure(migration, vault_token="hvs.not-a-real-token")
    assert "[token] Vault refused the token lookup" in text
    assert "invalid, expired or revoked" in text
    assert "VAULT_TOKEN" in text
    assert "hvs.not-a-real-token" not in text


def test_short_ttl_token_not_renewable(migration: Migration, vault_client: Any) -> None:
    token = child_token(vault_client, ["root"], ttl="5m", renewable=False)
    text = failure(migration, vault_token=token)
    assert (
        "[token] the token expires in 4m5" in text or "[token] the token expires in 5m00s" in text
    )
    assert "is not renewable" in text
    assert "vault token create" in text


def test_short_ttl_renewable_token_passes_with_a_warning(
    migration: Migration, vault_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token = child_token(vault_client, ["root"], ttl="5m", renewable=True)
    with caplog.at_level("WARNING", logger="context_encryption"):
        report = preflight(migration, vault_token=token)
    assert report.ok
    detail = next(c.detail for c in report.checks if c.name == "token")
    assert "but renewable: the run renews it" in detail
    assert any("the run renews it" in r.getMessage() for r in caplog.records)


def test_renewable_token_capped_by_explicit_max_ttl(
    migration: Migration, vault_client: Any
) -> None:
    token = child_token(vault_client, ["root"], ttl="2m", renewable=True, explicit_max_ttl="5m")
    text = failure(migration, vault_token=token)
    assert "[token] the token is renewable but its explicit_max_ttl ends in" in text


def test_long_ttl_token_passes(migration: Migration, vault_client: Any) -> None:
    token = child_token(vault_client, ["root"], ttl="2h", renewable=False)
    report = preflight(migration, vault_token=token)
    detail = next(c.detail for c in report.checks if c.name == "token")
    assert "left" in detail
    assert "1h5" in detail or "2h00m" in detail


def test_missing_new_key_prints_the_create_command(migration: Migration) -> None:
    m = migration.vault.mount
    text = failure(migration, new_vault_key="pos-context-key-2")
    assert "[new key] the new key 'pos-context-key-2' does not exist in Vault" in text
    assert (
        f"vault write -f {m}/keys/pos-context-key-2 derived=true convergent_encryption=true" in text
    )


def test_new_key_not_derived_or_convergent(migration: Migration, vault_client: Any) -> None:
    m = migration.vault.mount
    vault_client.secrets.transit.create_key(name="plain-new", mount_point=m)
    text = failure(migration, new_vault_key="plain-new")
    assert "not derived + convergent (derived=false, convergent_encryption=false)" in text
    assert f"vault write -f {m}/keys/plain-new derived=true convergent_encryption=true" in text
    vault_client.secrets.transit.create_key(name="derived-only", derived=True, mount_point=m)
    text = failure(migration, new_vault_key="derived-only")
    assert "(derived=true, convergent_encryption=false)" in text


def test_old_key_derived_means_data_may_be_context_based(
    migration: Migration, vault_client: Any
) -> None:
    m = migration.vault.mount
    vault_client.secrets.transit.create_key(name="old-derived", derived=True, mount_point=m)
    text = failure(migration, vault_key="old-derived")
    assert "[old key] the old key 'old-derived' is derived" in text
    assert "may already use context-based encryption" in text


def test_downgrade_without_the_old_key_explains_the_restore(migration: Migration) -> None:
    m = migration.vault.mount
    text = failure(migration, "downgrade", vault_key="deleted-old-key")
    assert "[old key] the old key 'deleted-old-key' does not exist in Vault" in text
    assert "a rollback re-encrypts with it" in text
    assert f"vault write {m}/restore/deleted-old-key backup=" in text


def test_old_key_deleted_from_vault_for_downgrade(migration: Migration, vault_client: Any) -> None:
    m = migration.vault.mount
    t = vault_client.secrets.transit
    t.update_key_configuration(name=OLD_KEY, deletion_allowed=True, mount_point=m)
    t.delete_key(name=OLD_KEY, mount_point=m)
    text = failure(migration, "downgrade", tables=("consent_records",))
    assert f"restore it from its backup: vault write {m}/restore/{OLD_KEY} backup=" in text


def users_below_min_decryption_version(
    migration: Migration, vault_client: Any, n: int
) -> dict[Any, Plain]:
    """``n`` seeded users at v1 of the old key, then rotated to v2 and v1 no longer decryptable."""
    m = migration.vault.mount
    rows = seed_table(migration, "users", n)
    t = vault_client.secrets.transit
    t.rotate_key(name=OLD_KEY, mount_point=m)
    t.update_key_configuration(name=OLD_KEY, min_decryption_version=2, mount_point=m)
    return rows


def test_min_decryption_version_above_data_versions(
    migration: Migration, vault_client: Any
) -> None:
    m = migration.vault.mount
    rows = users_below_min_decryption_version(migration, vault_client, 12)
    text = failure(migration, tables=("users",))
    n_email = sum(1 for r in rows.values() if r["email"] is not None)
    assert f"users.email: {n_email} value(s) of version v1, below min_decryption_version 2" in text
    assert f"vault write {m}/keys/{OLD_KEY}/config min_decryption_version=1" in text
    # tables without data are not affected
    assert preflight(migration, tables=("invitations",)).ok


def test_a_wrong_hmac_secret_is_refused_even_with_on_error_skip(migration: Migration) -> None:
    """Otherwise every row would be skipped as an HMAC failure and the revision stamped."""
    seed(migration.engine, migration.vault, "users", sample_rows("users", 6), "the-real-secret")
    text = failure(migration, tables=("users",), hmac_secret="not-the-secret", on_error="skip")
    assert "HMAC verification failed for every sampled companion of users.email_hmac" in text
    assert "not-the-secret" not in text
    assert preflight(migration, tables=("users",), hmac_secret="the-real-secret").ok


def test_version_problems_are_a_warning_with_on_error_skip(
    migration: Migration, vault_client: Any
) -> None:
    """The operator chose to skip rows that cannot be migrated: preflight names them only."""
    rows = users_below_min_decryption_version(migration, vault_client, 6)
    report = preflight(migration, tables=("users",), on_error="skip")
    assert report.ok
    with_email = sorted(pk for pk, r in rows.items() if r["email"] is not None)
    n_email = len(with_email)
    assert n_email >= 1
    (warning,) = [w for w in report.warnings if "on-error=skip" in w]
    # the rows are named by primary key: the first ones in key order that hold such a value
    assert f"users.email: {n_email} value(s) of version v1, below min_decryption_version 2" in (
        warning
    )
    assert str(with_email[0]) in warning


def test_version_zero_reads_as_version_one(migration: Migration) -> None:
    """Vault decrypts ``vault:v0:`` as version 1 (legacy), so preflight must not refuse it."""
    rows = seed_table(migration, "users", 3)
    users = metadata.tables["users"]
    pk = pks_with(rows, "email")[0]
    with migration.engine.begin() as conn:
        ct = conn.execute(sa.select(users.c.email).where(users.c.id == pk)).scalar_one()
        assert ct.startswith("vault:v1:")
        conn.execute(
            sa.update(users)
            .where(users.c.id == pk)
            .values(email=ct.replace("vault:v1:", "vault:v0:"))
        )
    report = preflight(migration, tables=("users",))
    assert report.ok
    assert 0 in report.versions["users.email"]


def test_already_migrated_values_are_not_counted_as_too_old(
    migration: Migration, vault_client: Any
) -> None:
    """A re-run: users is in the new scheme (new key v1); the old key was rotated since."""
    m = migration.vault.mount
    seed_table(migration, "users", 12)
    migration.upgrade("0001_users")
    t = vault_client.secrets.transit
    t.rotate_key(name=OLD_KEY, mount_point=m)
    t.update_key_configuration(name=OLD_KEY, min_decryption_version=2, mount_point=m)
    report = preflight(migration, tables=("users",))
    assert report.ok
    assert report.versions["users.email"] == {1: report.versions["users.email"][1]}


def test_hmac_secret_missing(migration: Migration, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in migration.env.items() if k != "ENCRYPTION_HMAC_SECRET"}
    monkeypatch.setattr(migration, "env", env)
    text = failure(migration, tables=("users", "notifications"))
    assert "[hmac secret]" in text
    assert "users.email_hmac" in text
    assert "ENCRYPTION_HMAC_SECRET is not set" in text
    assert "set ENCRYPTION_HMAC_SECRET to the secret" in text
    # a table without companions does not need it
    assert preflight(migration, tables=("notifications",)).ok


def test_unreachable_vault_fails_fast(migration: Migration) -> None:
    started = time.monotonic()
    text = failure(migration, vault_addr="http://127.0.0.1:1")
    assert time.monotonic() - started < 10
    assert "[vault] cannot reach Vault at http://127.0.0.1:1" in text
    assert "check VAULT_ADDR" in text
    # the Vault checks that depend on it are skipped, not reported twice
    assert "[token]" not in text
    assert "[capabilities]" not in text


def test_unreachable_database_hides_the_password(migration: Migration) -> None:
    url = "postgresql://postgres:pw-Secret-123@127.0.0.1:1/nowhere"
    text = failure(migration, db=url)
    assert "[database] cannot connect to the database" in text
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere" in text
    assert "pw-Secret-123" not in text
    assert "check DATABASE_URL" in text


def test_several_failures_in_one_message(
    migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in migration.env.items() if k != "ENCRYPTION_HMAC_SECRET"}
    monkeypatch.setattr(migration, "env", env)
    text = failure(migration, new_vault_key="no-such-key")
    assert "2 problem(s)" in text
    assert "1. [new key]" in text
    assert "2. [hmac secret]" in text


def test_missing_table_is_reported(migration: Migration) -> None:
    with migration.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE consent_records"))
    text = failure(migration, tables=("consent_records",))
    assert "table 'consent_records' does not exist" in text


def test_collect_without_vault_settings(migration: Migration) -> None:
    settings = settings_of(migration)
    report = collect_preflight(
        settings, direction="upgrade", tables=["users"], transit=None, engine=migration.engine
    )
    assert not report.ok
    assert "set VAULT_ADDR and VAULT_TOKEN" in report.message()
    assert report.as_dict()["checks"][0] == {
        "name": "database",
        "ok": True,
        "detail": report.checks[0].detail,
        "fix": "",
    }


def test_migration_connection_can_be_handed_in(migration: Migration) -> None:
    """env.py may pass its own connection: preflight only reads, inside its transaction."""
    seed_table(migration, "users", 5)
    settings = settings_of(migration)
    transit = TransitClient.from_settings(settings)
    try:
        with migration.engine.connect() as conn, conn.begin():
            report = run_preflight(
                settings, direction="upgrade", tables=["users"], transit=transit, engine=conn
            )
            assert conn.in_transaction()
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        transit.close()
    assert report.ok
    assert report.versions["users.email"]


def test_require_database(migration: Migration) -> None:
    require_database(migration.engine)
    engine = sa.create_engine(
        "postgresql+psycopg://postgres:pw-Hidden-1@127.0.0.1:1/x", poolclass=sa.pool.NullPool
    )
    with pytest.raises(PreflightError) as info:
        require_database(engine)
    text = str(info.value)
    assert text.startswith("preflight failed: 1 problem(s)")
    assert "postgres:***@127.0.0.1:1/x" in text
    assert "pw-Hidden-1" not in text


def test_sqlite_versions_without_regular_expressions(
    migration: Migration, vault_client: Any, tmp_path: Path
) -> None:
    """The embedded demo's database: versions grouped with substr/instr."""
    url = f"sqlite:///{tmp_path / 'pf.sqlite'}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        metadata.create_all(engine)
        rows = seed(
            engine, migration.vault, "users", sample_rows("users", 10), migration.hmac_secret
        )
        with engine.begin() as conn:  # a malformed prefix is not a version
            conn.execute(sa.text("UPDATE users SET last_name = 'vault:vX:abc' WHERE rowid = 1"))
        report = preflight(migration, tables=("users",), db=url)
        n_email = sum(1 for r in rows.values() if r["email"] is not None)
        assert report.versions["users.email"] == {1: n_email}
        m = migration.vault.mount
        t = vault_client.secrets.transit
        t.rotate_key(name=OLD_KEY, mount_point=m)
        t.update_key_configuration(name=OLD_KEY, min_decryption_version=2, mount_point=m)
        text = failure(migration, tables=("users",), db=url)
        assert f"users.email: {n_email} value(s) of version v1, below min_decryption_version 2" in (
            text
        )
        assert "[data versions]" in text
    finally:
        engine.dispose()


def test_preflight_command(migration: Migration, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["preflight", "--tables", "users"]) == 0
    out = capsys.readouterr().out
    assert "ok   capabilities   the token may upgrade" in out
    assert migration.env["VAULT_TOKEN"] not in out
    # a downgrade preflight checks what `alembic downgrade base` would roll back: apply it all
    migration.upgrade("head")
    capsys.readouterr()
    code = cli.main(["preflight", "--direction", "downgrade", "--vault-key", "gone", "--json"])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["direction"] == "downgrade"
    assert doc["ok"] is False
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["old key"]
    assert "restore" in failed[0]["fix"]
    assert cli.main(["preflight", "--batch-size", "0"]) == 2
    assert "batch-size" in capsys.readouterr().err


def test_versions_above_the_keys_latest(migration: Migration, vault_client: Any) -> None:
    """The data was made by a key rotated further than the one named: another key."""
    m = migration.vault.mount
    t = vault_client.secrets.transit
    t.rotate_key(name=OLD_KEY, mount_point=m)
    seed(
        migration.engine, migration.vault, "consent_records", sample_rows("consent_records", 4), "s"
    )
    t.create_key(name="another-old-key", mount_point=m)
    text = failure(migration, tables=("consent_records",), vault_key="another-old-key")
    assert "value(s) of version v2, above the key's latest version 1" in text
    assert "not made by the old key 'another-old-key'" in text


def test_a_wrong_hmac_secret_is_refused_before_a_rollback_too(migration: Migration) -> None:
    """The sample decrypts with the new scheme (the downgrade's source) and its context."""
    seed(migration.engine, migration.vault, "users", sample_rows("users", 6), "the-real-secret")
    migration.upgrade("0001_users", hmac_secret="the-real-secret")
    text = failure(migration, "downgrade", tables=("users",), hmac_secret="not-the-secret")
    assert "HMAC verification failed for every sampled companion of users.email_hmac" in text
    assert preflight(migration, "downgrade", tables=("users",), hmac_secret="the-real-secret").ok
