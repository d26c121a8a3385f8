"""``context-encryption rewrap`` (issue 12): after a rotation of the new key, every new-scheme
value onto one key version, against real PostgreSQL and a real OpenBao.

The tables are migrated with ``alembic upgrade``, the new key is rotated, rows are written at
the new version while older rows stay at the first one, and the rewrap must leave every value of
every column at one version with its plaintext (equal plaintexts, equal ciphertexts), resume
after a kill, lose no concurrent write, change nothing in a dry run, and report (and leave
alone) what is not in the new scheme.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import hvac
import pytest
import sqlalchemy as sa

from app_models.tables import context_string, metadata
from context_encryption import cli
from context_encryption.alembic_runtime import RUN_LOCK_KEY
from context_encryption.transit import RequestLimits, RewrapRequest, TransitClient
from tests.support.fault_proxy import FaultProxy
from tests.support.leaks import assert_no_leak, secrets_of
from tests.support.migration_fixtures import ROOT, Migration, seed_table
from tests.support.reliability_helpers import (
    b64,
    checkpoints,
    committed_batches,
    new_ct,
    old_ct,
    set_values,
    step_until,
    wait_no_backends,
)
from tests.support.seeding import (
    Plain,
    assert_scheme,
    encrypted_columns,
    read_table,
    sample_rows,
    seed,
)

TABLES = ("users", "invitations")


def rotate(m: Migration) -> int:
    m.vault.client.secrets.transit.rotate_key(name=m.vault.new_key, mount_point=m.vault.mount)
    info = m.vault.client.secrets.transit.read_key(name=m.vault.new_key, mount_point=m.vault.mount)
    return int(info["data"]["latest_version"])


def versions(m: Migration, table: str) -> dict[str, dict[int, int]]:
    """{column: {key version: count}} from the stored prefixes."""
    out: dict[str, dict[int, int]] = {}
    for row in read_table(m.engine, table).values():
        for col in encrypted_columns(table):
            value = row[col.name]
            if value is None:
                continue
            v = int(value.split(":")[1][1:])
            out.setdefault(col.name, {})
            out[col.name][v] = out[col.name].get(v, 0) + 1
    return out


def migrated(m: Migration, sizes: dict[str, int]) -> dict[str, dict[Any, Plain]]:
    """Seed old-scheme rows, migrate them (new key version 1)."""
    data = {t: seed_table(m, t, n) for t, n in sizes.items()}
    m.upgrade("0002_invitations")
    return data


def migrated_and_rotated(m: Migration, sizes: dict[str, int]) -> dict[str, dict[Any, Plain]]:
    """:func:`migrated`, then the new key rotated once (latest version 2)."""
    data = migrated(m, sizes)
    rotate(m)
    return data


def add_rows_at_latest(m: Migration, table: str, n: int, salt: str) -> dict[Any, Plain]:
    """Rows written by the application after the rotation: new scheme at the latest version."""
    rows = sample_rows(table, n, salt=salt)
    return seed(m.engine, m.vault, table, rows, m.hmac_secret, scheme="new")


def rewrap(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = cli.main(["rewrap", "--json", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def verify_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["verify", "--json", *args])
    out, _err = capsys.readouterr()
    return code, json.loads(out)


def test_rewrap_moves_every_value_to_the_latest_version(
    migration: Migration, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    m = migration
    data = migrated(m, {"users": 60, "invitations": 30})
    assert rotate(m) == 2
    for table in TABLES:
        data[table].update(add_rows_at_latest(m, table, 7, salt="-after"))
    # an existing row rewritten by the application at v2, beside v1 rows of the same column
    pk = next(pk for pk, r in data["users"].items() if r["first_name"])
    set_values(m, "users", pk, first_name=new_ct(m, "users", "first_name", "Rotated Name"))
    data["users"][pk]["first_name"] = "Rotated Name"
    assert set(versions(m, "users")["email"]) == {1, 2}

    code, doc = verify_json(capsys)
    assert code == 1
    users = next(t for t in doc["tables"] if t["table"] == "users")
    email = next(c for c in users["columns"] if c["column"] == "email")
    assert set(email["versions"]) == {"1", "2"}
    assert any("context-encryption rewrap" in r for r in email["reasons"])
    assert cli.main(["verify", "--tables", "users"]) == 1
    text, _err = capsys.readouterr()
    assert "new key versions: email v1: " in text
    assert "SPLIT: run `context-encryption rewrap`" in text

    report = tmp_path / "rewrap.json"
    code, doc, err = rewrap(capsys, "--report", str(report))
    assert code == 0, err
    assert doc["target_key_version"] == 2
    assert json.loads(report.read_text())["outcome"] == "completed"
    for table in TABLES:
        assert {v for d in versions(m, table).values() for v in d} == {2}
        # plaintexts kept, equal plaintexts give equal ciphertexts at v2, companions untouched
        assert_scheme(m.engine, m.vault, table, data[table], "new", m.hmac_secret)
        t = next(t for t in doc["tables"] if t["table"] == table)
        assert t["status"] == "completed"
        assert sum(c["rewrapped"] for c in t["columns"].values()) > 0
        assert sum(c["already_at_target"] for c in t["columns"].values()) > 0
    assert not [c for c in checkpoints(m.engine) if c["direction"] == "rewrap"]

    code, doc = verify_json(capsys)
    assert code == 0, doc
    users = next(t for t in doc["tables"] if t["table"] == "users")
    assert all(set(c["versions"]) <= {"2"} for c in users["columns"])

    # a second run finds everything at v2 and writes nothing
    code, doc, _err = rewrap(capsys)
    assert code == 0
    assert all(t["rows_written"] == 0 for t in doc["tables"])
    assert_no_leak(json.dumps(doc) + report.read_text(), secrets_of(m, data))


def test_dry_run_changes_nothing(migration: Migration, capsys: pytest.CaptureFixture[str]) -> None:
    m = migration
    migrated_and_rotated(m, {"users": 30, "invitations": 10})
    before = {t: read_table(m.engine, t) for t in TABLES}
    code, doc, err = rewrap(capsys, "--dry-run")
    assert code == 0, err
    assert doc["outcome"] == "dry-run"
    users = next(t for t in doc["tables"] if t["table"] == "users")
    assert users["columns"]["email"]["rewrapped"] > 0
    assert users["rows_written"] == 0
    assert {t: read_table(m.engine, t) for t in TABLES} == before
    assert not [c for c in checkpoints(m.engine) if c["direction"] == "rewrap"]


def test_old_scheme_plaintext_and_unreadable_values_are_reported_and_untouched(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    m = migration
    data = migrated_and_rotated(m, {"users": 20})
    pks = sorted(pk for pk, r in data["users"].items() if r["email"] and r["last_name"])
    old_pk, plain_pk, bad_pk = pks[:3]
    old_value = old_ct(m, "written by an old application")
    set_values(m, "users", old_pk, email=old_value)
    set_values(m, "users", plain_pk, email="plain@example.com")
    bad = new_ct(m, "users", "first_name", "another column's context")
    set_values(m, "users", bad_pk, email=bad)
    code, doc, err = rewrap(capsys, "--tables", "users")
    assert code == 1, err
    users = doc["tables"][0]
    kinds = {(e["id"], e["kind"]) for e in users["left_unchanged"]}
    assert kinds == {
        (str(old_pk), "old_scheme"),
        (str(plain_pk), "plaintext"),
        (str(bad_pk), "unreadable"),
    }
    stored = read_table(m.engine, "users")
    assert stored[old_pk]["email"] == old_value
    assert stored[plain_pk]["email"] == "plain@example.com"
    assert stored[bad_pk]["email"] == bad
    # the other columns of those rows were rewrapped all the same
    for pk in (old_pk, plain_pk, bad_pk):
        assert stored[pk]["last_name"].startswith("vault:v2:")
    # the text output names them too; a re-run changes nothing
    assert cli.main(["rewrap", "--tables", "users"]) == 1
    out, _err = capsys.readouterr()
    assert "left as they are (3 value(s), not in the new scheme)" in out
    assert f"users.email id={old_pk}: old scheme: " in out
    assert f"users.email id={plain_pk}: plaintext: " in out
    assert f"users.email id={bad_pk}: unreadable: " in out
    assert read_table(m.engine, "users") == stored
    assert_no_leak(json.dumps(doc) + out, [*secrets_of(m, data), "plain@example.com"])


def test_to_version_is_pinned_and_bounded(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    m = migration
    migrated_and_rotated(m, {"users": 10})
    rotate(m)
    code, _doc, err = rewrap(capsys, "--to-version", "4")
    assert code == 2
    assert "above" in err and "latest version 3" in err
    m.vault.client.secrets.transit.update_key_configuration(
        name=m.vault.new_key, min_decryption_version=1, mount_point=m.vault.mount
    )
    code, doc, err = rewrap(capsys, "--to-version", "2", "--tables", "users")
    assert code == 0, err
    assert doc["target_key_version"] == 2
    assert {v for d in versions(m, "users").values() for v in d} == {2}
    code, _doc, err = rewrap(capsys, "--to-version", "0")
    assert code == 2


def popen_rewrap(m: Migration, *args: str, tag: str) -> tuple[subprocess.Popen[bytes], Path]:
    exe = Path(sys.executable).with_name("context-encryption")
    assert exe.exists(), "run .venv/bin/pip install -e . --group dev once"
    err = m.tmp_path / f"{tag}.err"
    with err.open("wb") as fe:
        proc = subprocess.Popen(
            [str(exe), "rewrap", *args],
            cwd=ROOT,
            env={**os.environ, **m.env},
            stdout=subprocess.DEVNULL,
            stderr=fe,
            stdin=subprocess.DEVNULL,
        )
    return proc, err


def rows_after(m: Migration, table: str, last_pk: str) -> int:
    t = metadata.tables[table]
    pk: Any = uuid.UUID(last_pk) if isinstance(t.c.id.type, sa.Uuid) else int(last_pk)
    with m.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(t.c.id > pk)).scalar_one())


def test_a_killed_rewrap_resumes_from_its_checkpoint(
    migration: Migration,
    vault_faults: FaultProxy,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = migration
    data = migrated_and_rotated(m, {"users": 400})
    proxy = vault_faults
    proxy.hold(f"{m.vault.mount}/")
    proc, err = popen_rewrap(
        m, "--tables", "users", "--batch-size", "40", "--workers", "1", tag="killed"
    )
    try:
        step_until(
            proxy,
            lambda: committed_batches(m.engine, "rewrap:users") >= 3,
            lambda: proc.poll() is None,
            "the rewrap",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proxy.release()
    wait_no_backends(m.engine)
    [cp] = [c for c in checkpoints(m.engine) if c["revision"] == "rewrap:users"]
    assert cp["direction"] == "rewrap" and cp["last_pk"] is not None, err.read_text()
    left = rows_after(m, "users", cp["last_pk"])
    assert 0 < left < 400
    # the migration's own commands do not wait for a stopped rewrap
    assert m.upgrade("0002_invitations")["outcome"] == "completed"

    caplog.set_level(logging.INFO, logger="context_encryption")
    code, doc, stderr = rewrap(capsys, "--tables", "users", "--batch-size", "40")
    assert code == 0, stderr
    users = doc["tables"][0]
    assert users["resumed_after"] == cp["last_pk"]
    assert users["rows_scanned"] == left
    assert f"resuming rewrap after id={cp['last_pk']}" in caplog.text
    assert {v for d in versions(m, "users").values() for v in d} == {2}
    assert_scheme(m.engine, m.vault, "users", data["users"], "new", m.hmac_secret)
    assert not [c for c in checkpoints(m.engine) if c["direction"] == "rewrap"]


def test_concurrent_writes_are_not_lost(
    migration: Migration, vault_faults: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    m = migration
    data = migrated_and_rotated(m, {"users": 120})
    first = sorted(data["users"])[:40]  # the first batch, by primary key
    changed = [pk for pk in first if data["users"][pk]["last_name"]][:10]
    proxy = vault_faults
    proxy.hold(f"{m.vault.mount}/rewrap/")
    report = m.tmp_path / "concurrent.json"
    proc, err = popen_rewrap(
        m,
        "--tables",
        "users",
        "--batch-size",
        "40",
        "--workers",
        "1",
        "--report",
        str(report),
        tag="concurrent",
    )
    try:
        deadline = time.monotonic() + 60
        while not proxy.held:  # the first batch was read; its rewrap waits at the proxy
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # the application rewrites rows of that batch meanwhile, with the version it still holds
        for i, pk in enumerate(changed):
            text = f"written during the rewrap {i}"
            resp = m.vault.client.secrets.transit.encrypt_data(
                name=m.vault.new_key,
                plaintext=b64(text),
                context=b64(context_string("users", "last_name")),
                key_version=1,
                mount_point=m.vault.mount,
            )
            set_values(m, "users", pk, last_name=resp["data"]["ciphertext"])
            data["users"][pk]["last_name"] = text
    finally:
        proxy.release()
    assert proc.wait(120) == 0, err.read_text()
    users = json.loads(report.read_text())["tables"][0]
    assert users["changed_concurrently"] == len(changed)  # re-read and rewrapped, not lost
    assert_scheme(m.engine, m.vault, "users", data["users"], "new", m.hmac_secret)
    assert {v for d in versions(m, "users").values() for v in d} == {2}
    code, doc = verify_json(capsys, "--tables", "users")
    assert code == 0, doc


def preflight_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["preflight", "--direction", "rewrap", "--json", *args])
    out, _err = capsys.readouterr()
    return code, json.loads(out)


def test_preflight_rewrap_reports_key_versions_and_capabilities(
    migration: Migration, vault_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    m = migration
    migrated_and_rotated(m, {"users": 20})
    add_rows_at_latest(m, "users", 3, salt="-v2")
    code, doc = preflight_json(capsys)
    assert code == 0, doc
    assert doc["direction"] == "rewrap"
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["capabilities"]["ok"]
    assert "latest_version 2, min_decryption_version 1" in checks["new key"]["detail"]
    assert doc["versions"]["users.email"].keys() == {"1", "2"}
    assert "split across versions" in checks["data versions"]["detail"]
    assert "users" in checks["tables"]["detail"] and "invitations" in checks["tables"]["detail"]

    # a token without update on <mount>/rewrap/<new key>
    mount = m.vault.mount
    name = f"rw-{uuid.uuid4().hex[:8]}"
    vault_client.sys.create_or_update_acl_policy(
        name,
        f"""
        path "{mount}/keys/*" {{ capabilities = ["read"] }}
        path "{mount}/decrypt/*" {{ capabilities = ["update"] }}
        path "{mount}/encrypt/*" {{ capabilities = ["update"] }}
        """,
    )
    try:
        token = vault_client.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
        code, doc = preflight_json(capsys, "--vault-token", token)
        assert code == 1
        failed = [c for c in doc["checks"] if not c["ok"]]
        assert [c["name"] for c in failed] == ["capabilities"]
        assert f"update on {mount}/rewrap/{m.vault.new_key}" in failed[0]["detail"]
        assert token not in json.dumps(doc)
        # the rewrap itself stops before any work with the same message
        before = read_table(m.engine, "users")
        code, _doc, err = rewrap(capsys, "--vault-token", token)
        assert code == 2
        assert f"{mount}/rewrap/{m.vault.new_key}" in err
        assert read_table(m.engine, "users") == before
    finally:
        vault_client.sys.delete_acl_policy(name)


def test_a_second_run_is_refused_by_the_run_lock(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    m = migration
    migrated_and_rotated(m, {"users": 10})
    before = read_table(m.engine, "users")
    with m.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.pg_try_advisory_lock(RUN_LOCK_KEY))).scalar()
        code, _doc, err = rewrap(capsys)
        conn.execute(sa.select(sa.func.pg_advisory_unlock(RUN_LOCK_KEY)))
    assert code == 2
    assert "run lock" in err
    assert read_table(m.engine, "users") == before


def test_rewrap_batches_split_under_a_tight_server_limit(
    vault_server: Any, vault_client: Any, transit_mount: str
) -> None:
    if vault_server.tight_addr is None:
        pytest.skip("no tight listener on a server given by the environment")
    key = "conv"
    vault_client.secrets.transit.create_key(
        name=key, derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    items = [(f"value {i}", f"users.col{i % 3}") for i in range(61)]
    v1 = [
        vault_client.secrets.transit.encrypt_data(
            name=key, plaintext=b64(t), context=b64(c), mount_point=transit_mount
        )["data"]["ciphertext"]
        for t, c in items
    ]
    vault_client.secrets.transit.rotate_key(name=key, mount_point=transit_mount)
    limits = RequestLimits(150)
    transit = TransitClient(
        hvac.Client(url=vault_server.tight_addr, token=vault_server.token),
        transit_mount,
        limits=limits,
        parallel=3,
    )
    try:
        results = transit.rewrap_batch(
            key, [RewrapRequest(ct, c) for ct, (_t, c) in zip(v1, items, strict=True)], 2
        )
    finally:
        transit.close()
    assert limits.refusals >= 1 and limits.max_items < 150
    assert all(r.ok and (r.value or "").startswith("vault:v2:") for r in results)
    # each result is its own item's: convergent, so equal to a fresh v2 encryption of it
    fresh = [
        vault_client.secrets.transit.encrypt_data(
            name=key, plaintext=b64(t), context=b64(c), mount_point=transit_mount
        )["data"]["ciphertext"]
        for t, c in items
    ]
    assert [r.value for r in results] == fresh


def test_only_applied_tables_are_rewrapped(
    migration: Migration, capsys: pytest.CaptureFixture[str]
) -> None:
    m = migration
    data = {t: seed_table(m, t, 8) for t in TABLES}
    m.upgrade("0001_users")
    rotate(m)
    before = read_table(m.engine, "invitations")
    code, _doc, err = rewrap(capsys, "--tables", "invitations")
    assert code == 2
    assert "not applied" in err and "invitations" in err
    code, doc, err = rewrap(capsys)
    assert code == 0, err
    assert [t["table"] for t in doc["tables"]] == ["users"]
    assert read_table(m.engine, "invitations") == before  # old scheme: not a rewrap's
    assert_scheme(m.engine, m.vault, "users", data["users"], "new", m.hmac_secret)
