"""``context-encryption verify`` against real PostgreSQL (and SQLite) and a real OpenBao."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from context_encryption import cli
from context_encryption.catalog import load_catalog
from tests.support.leaks import assert_no_leak, secrets_of
from tests.support.migration_fixtures import Migration, seed_tables
from tests.support.seeding import Plain, sample_rows, seed
from tests.support.tools import subprocess_verify

TABLES = load_catalog().tables

SIZES = {"users": 40, "invitations": 25}


def seed_all(m: Migration, sizes: dict[str, int] | None = None) -> dict[str, dict[Any, Plain]]:
    return seed_tables(m, SIZES if sizes is None else sizes, default=8)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = run(capsys, "--json", *args)
    return code, json.loads(out)


def column(doc: dict[str, Any], table: str, col: str) -> dict[str, Any]:
    t = next(t for t in doc["tables"] if t["table"] == table)
    c: dict[str, Any] = next(c for c in t["columns"] if c["column"] == col)
    return c


def non_null(data: dict[Any, Plain], col: str) -> int:
    return sum(1 for r in data.values() if r[col] is not None)


def test_base_after_seeding_everything_is_old(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed_all(migration)
    code, doc = run_json(capsys)
    assert code == 0
    assert doc["ok"] is True
    assert doc["revision"] is None
    assert [t["table"] for t in doc["tables"]] == list(TABLES)
    assert all(t["expected_scheme"] == "old" for t in doc["tables"])
    email = column(doc, "users", "email")
    assert email["old_scheme"] == non_null(data["users"], "email")
    assert email["new_scheme"] == 0
    assert email["null"] == SIZES["users"] - email["old_scheme"]
    assert email["hmac"]["match"] == email["old_scheme"]
    assert email["hmac"]["mismatch"] == 0
    assert email["hmac"]["null"] == 0
    assert column(doc, "users", "first_name")["hmac"] is None


def test_after_upgrade_to_invitations_from_the_shell(migration: Migration) -> None:
    data = seed_all(migration)
    migration.upgrade("0002_invitations")
    proc = subprocess_verify(migration.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert_no_leak(out + proc.stderr, secrets_of(migration, data))
    assert "revision 0002_invitations: new scheme expected for users, invitations" in out
    n = non_null(data["users"], "email")
    line = next(x for x in out.splitlines() if x.startswith("users.email "))
    assert line.split()[1:6] == ["new", str(SIZES["users"]), "0", str(n), str(SIZES["users"] - n)]
    assert line.rstrip().endswith("ok")
    line = next(x for x in out.splitlines() if x.startswith("guest_orders.customer_name "))
    assert line.split()[1] == "old"
    assert "OK: every value checked is in the scheme revision 0002_invitations implies" in out

    # --json from the shell too
    proc = subprocess_verify(migration.env, "--json", "--tables", "users,invitations")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert [t["table"] for t in doc["tables"]] == ["users", "invitations"]
    assert column(doc, "invitations", "token")["new_scheme"] == non_null(
        data["invitations"], "token"
    )
    assert all(t["applied"] and t["expected_scheme"] == "new" for t in doc["tables"])


def test_restamped_without_migrating_is_not_ok(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed_all(migration)
    migration.stamp("0001_users")
    code, out, _err = run(capsys, "--max-ids", "3")
    assert code == 1
    n = non_null(data["users"], "email")
    assert f"users.email: {n} old scheme (expected new); ids: " in out
    ids = out.split("users.email: ")[1].split("ids: ")[1].splitlines()[0]
    assert ids.endswith(" ...")
    assert len(ids.removesuffix(" ...").split(", ")) == 3
    assert "NOT OK" in out
    assert_no_leak(out, secrets_of(migration, data))
    code, doc = run_json(capsys)
    assert code == 1
    assert doc["ok"] is False
    users = next(t for t in doc["tables"] if t["table"] == "users")
    assert users["applied"] is True
    assert users["expected_scheme"] == "new"
    assert column(doc, "users", "email")["reasons"] == {"old scheme (expected new)": n}
    # the other tables are fine
    assert all(t["ok"] for t in doc["tables"] if t["table"] != "users")


def test_corrupted_and_plaintext_values(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed_all(migration)
    migration.upgrade("0001_users")
    users = metadata.tables["users"]
    pks = sorted(pk for pk, row in data["users"].items() if row["last_name"] is not None)
    broken, plain, old = pks[0], pks[1], pks[2]
    old_ct = migration.vault.encrypt(migration.vault.old_key, ["someone"], [None])[0]
    with migration.engine.begin() as conn:
        conn.execute(
            sa.update(users)
            .where(users.c.id == broken)
            .values(last_name="vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        )
        conn.execute(sa.update(users).where(users.c.id == plain).values(last_name="Smith-Jones"))
        conn.execute(sa.update(users).where(users.c.id == old).values(last_name=old_ct))
    code, doc = run_json(capsys, "--tables", "users")
    assert code == 1
    last = column(doc, "users", "last_name")
    assert last["unreadable"] == 1
    assert last["plaintext"] == 1
    assert last["old_scheme"] == 1
    assert last["reasons"] == {
        "old scheme (expected new)": 1,
        "plaintext": 1,
        "unreadable (neither key decrypts it)": 1,
    }
    assert sorted(last["failing_ids"]) == sorted(str(p) for p in (broken, plain, old))
    code, out, _err = run(capsys, "--tables", "users")
    assert code == 1
    assert "Smith-Jones" not in out
    assert "someone" not in out
    assert "AAAAAAAA" not in out


def test_json_shape(migration: Migration, capsys: pytest.CaptureFixture[str]) -> None:
    seed_all(migration, {"users": 5})
    code, doc = run_json(capsys, "--tables", "users", "--sample", "3")
    assert code == 0
    assert set(doc) == {
        "tool",
        "revision",
        "keys",
        "sample",
        "sampling",
        "hmac_checked",
        "ok",
        "problems",
        "tables",
    }
    assert doc["keys"] == {
        "old": migration.vault.old_key,
        "new": migration.vault.new_key,
        "mount": migration.vault.mount,
    }
    assert doc["sampling"] == "first 3 rows of each table by primary key"
    (table,) = doc["tables"]
    assert set(table) == {
        "table",
        "revision",
        "applied",
        "expected_scheme",
        "exists",
        "rows_checked",
        "migration_in_progress",
        "ok",
        "problems",
        "columns",
    }
    assert table["revision"] == "0001_users"
    assert set(table["columns"][0]) == {
        "column",
        "old_scheme",
        "new_scheme",
        "null",
        "plaintext",
        "unreadable",
        "hmac",
        "ok",
        "problems",
        "reasons",
        "failing_ids",
        "versions",
    }
    assert set(table["columns"][0]["hmac"]) == {
        "companion",
        "match",
        "mismatch",
        "null",
        "unchecked",
    }


def test_sample_checks_the_first_rows_by_primary_key(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed_all(migration, {"invitations": 30})
    pks = sorted(data["invitations"])
    inv = metadata.tables["invitations"]
    with migration.engine.begin() as conn:  # a problem beyond the first 10 rows
        conn.execute(sa.update(inv).where(inv.c.id == pks[20]).values(email="plain@example.com"))
    code, doc = run_json(capsys, "--tables", "invitations", "--sample", "10", "--batch-size", "4")
    assert code == 0
    assert doc["tables"][0]["rows_checked"] == 10
    assert doc["sample"] == 10
    code, doc = run_json(capsys, "--tables", "invitations", "--batch-size", "7")
    assert code == 1
    assert doc["tables"][0]["rows_checked"] == 30
    assert column(doc, "invitations", "email")["failing_ids"] == [str(pks[20])]
    code, doc = run_json(capsys, "--tables", "invitations", "--sample", "21")
    assert code == 1
    code, _out, err = run(capsys, "--sample", "0")
    assert code == 2
    assert "--sample must be at least 1" in err


def test_hmac_companions(
    migration: Migration, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = seed_all(migration, {"users": 12})
    pks = sorted(pk for pk, row in data["users"].items() if row["email"] is not None)
    users = metadata.tables["users"]
    with migration.engine.begin() as conn:
        conn.execute(sa.update(users).where(users.c.id == pks[0]).values(email_hmac="00" * 32))
        conn.execute(sa.update(users).where(users.c.id == pks[1]).values(email_hmac=None))
    code, doc = run_json(capsys, "--tables", "users")
    assert code == 1
    hm = column(doc, "users", "email")["hmac"]
    n = non_null(data["users"], "email")
    assert hm == {
        "companion": "email_hmac",
        "match": n - 2,
        "mismatch": 1,
        "null": 1,
        "unchecked": 0,
    }
    assert column(doc, "users", "email")["failing_ids"] == [str(pks[0])]
    code, out, _err = run(capsys, "--tables", "users")
    assert f"{n - 2}/1/1" in out
    assert "1 HMAC mismatch" in out
    # a wrong secret: every companion mismatches
    code, doc = run_json(capsys, "--tables", "users", "--hmac-secret", "not-the-secret")
    assert code == 1
    assert column(doc, "users", "email")["hmac"]["mismatch"] == n - 1
    # without the secret the companions are not checked, and that alone is not a problem
    monkeypatch.delenv("ENCRYPTION_HMAC_SECRET")
    code, doc = run_json(capsys, "--tables", "users")
    assert code == 0
    assert doc["hmac_checked"] is False
    assert column(doc, "users", "email")["hmac"]["unchecked"] == n - 1


def test_interrupted_migration_is_flagged(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_all(migration, {"users": 6})
    with migration.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE context_encryption_checkpoint (revision text, direction text, "
                "table_name text, batch_seq bigint, last_pk text, updated_at timestamptz)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO context_encryption_checkpoint VALUES "
                "('0001_users', 'upgrade', 'users', 0, NULL, now())"
            )
        )
    code, doc = run_json(capsys, "--tables", "users")
    assert doc["tables"][0]["migration_in_progress"] is True
    assert code == 0  # the values themselves are still all old: nothing was committed
    code, out, _err = run(capsys, "--tables", "users")
    assert "a migration of this table was interrupted" in out


def test_cannot_verify_exits_2(
    migration: Migration, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _out, err = run(capsys, "--vault-addr", "http://127.0.0.1:1")
    assert code == 2
    assert "cannot reach Vault at http://127.0.0.1:1" in err
    code, _out, err = run(capsys, "--db", "postgresql://postgres:pw-Xyz-987@127.0.0.1:1/none")
    assert code == 2
    assert "postgres:***@127.0.0.1:1/none" in err
    assert "pw-Xyz-987" not in err
    code, _out, err = run(capsys, "--tables", "userz")
    assert code == 2
    assert "unknown table(s) userz" in err
    with migration.engine.begin() as conn:
        version = load_catalog().version_table
        conn.execute(sa.text(f"CREATE TABLE {version} (version_num text)"))
        conn.execute(sa.text(f"INSERT INTO {version} VALUES ('9999_other')"))
    code, _out, err = run(capsys)
    assert code == 2
    assert "not part of this chain" in err
    monkeypatch.delenv("VAULT_TOKEN")
    code, _out, err = run(capsys)
    assert code == 2
    assert "set VAULT_ADDR and VAULT_TOKEN" in err


def test_sqlite_database(
    migration: Migration, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded demo's database: SQLite, no regular expressions, uuid as text."""
    path = tmp_path / "demo.sqlite"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        metadata.create_all(engine)
        data = {
            t: seed(engine, migration.vault, t, sample_rows(t, 9), migration.hmac_secret)
            for t in ("users", "consent_records")
        }
        env = {**migration.env, "DATABASE_URL": url}
        proc = subprocess_verify(env, "--json", "--tables", "users,consent_records")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["revision"] is None
        assert column(doc, "users", "email")["old_scheme"] == non_null(data["users"], "email")
        assert column(doc, "users", "email")["hmac"]["match"] == non_null(data["users"], "email")

        # the real migration on SQLite, then verify
        monkeypatch.setenv("DATABASE_URL", url)
        migration.upgrade("0001_users")
        proc = subprocess_verify(env, "--tables", "users,consent_records")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "revision 0001_users: new scheme expected for users" in proc.stdout

        # restamped to base without migrating back: users is in the wrong scheme
        migration.stamp("base")
        proc = subprocess_verify(env, "--tables", "users,consent_records", "--sample", "4")
        assert proc.returncode == 1
        assert "users.email" in proc.stdout
        assert "new scheme (expected old)" in proc.stdout
        assert_no_leak(proc.stdout + proc.stderr, secrets_of(migration, data))
    finally:
        engine.dispose()


def test_values_below_min_decryption_version_are_unreadable(
    migration: Migration, vault_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed_all(migration, {"users": 6})
    m = migration.vault.mount
    t = vault_client.secrets.transit
    t.rotate_key(name=migration.vault.old_key, mount_point=m)
    t.update_key_configuration(
        name=migration.vault.old_key, min_decryption_version=2, mount_point=m
    )
    code, doc = run_json(capsys, "--tables", "users")
    assert code == 1
    email = column(doc, "users", "email")
    n = non_null(data["users"], "email")
    assert email["unreadable"] == n
    assert email["reasons"] == {"unreadable (key version below min_decryption_version)": n}
