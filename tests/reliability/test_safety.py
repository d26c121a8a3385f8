"""Issue 13, "Never report success on wrong data": each case found on a real server, as a test.

Real PostgreSQL and a real OpenBao dev server (through the fault proxy where a test needs
latency, a hold or an outage); nothing is mocked. Each test ends in one of the two outcomes
the tool promises: every value in the scheme the stamped revision implies, or a stop that
names the cause and the command that resolves it, with nothing written in the wrong scheme.

1. Checkpoints of other runs (SIGKILLed CLI runs, as operators would meet them):
   (a) a stopped downgrade of a table the next upgrade does not include: refused, finished or
       undone as the message says;
   (b) a stopped upgrade of a table a downgrade does not include: refused, finished or undone;
   (c) a checkpoint older than the last stamp change (``alembic stamp``, or one an older version
       of the tool left) is not resumed: the table is processed again from its first row, so
       values written behind the checkpoint meanwhile are migrated too; such a checkpoint still
       keeps its key version, so a rotation in between does not split the column.
2. Row-level security: a role the policies apply to is refused by the preflight and by verify;
   policies enabled while a run goes stop it (``row_security = off``) instead of hiding rows.
3. Key identity: a key recreated under the same name and version (during an outage, or between
   a stop and the resume) stops the run before anything is written with it.
4. A ciphertext over Vault's 1 MiB string limit is never written: it is a failed row.
5. The new key's version is pinned once for the whole run: a rotation between tables does not
   change it.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from app_models.tables import metadata
from context_encryption.catalog import load_catalog
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import NEW_KEY, Migration, assert_all_in, seed_tables
from tests.support.reliability_helpers import (
    checkpoints,
    current_version,
    old_ct,
    popen_alembic,
    schemes_of,
    wait_no_backends,
)
from tests.support.seeding import Plain, assert_scheme, hmac_hex, read_table, snapshot
from tests.support.tools import subprocess_tool

BATCH = "batch-size=20"
ONE_WORKER = "workers=1"

Data = dict[str, dict[Any, dict[str, str | None]]]
TABLES = load_catalog().tables


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def checkpoint_of(m: Migration, revision: str, direction: str) -> dict[str, Any] | None:
    found = [
        c
        for c in checkpoints(m.engine)
        if c["revision"] == revision and c["direction"] == direction
    ]
    return found[0] if found else None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def kill_mid_table(
    m: Migration, revision: str, direction: str, *args: str, batches: int = 4
) -> dict[str, Any]:
    """Run ``alembic args``, SIGKILL it once ``batches`` batches of ``revision`` committed."""
    p = popen_alembic(m, *args, tag="killed")

    def far_enough() -> bool:
        if p.proc.poll() is not None:
            raise AssertionError(f"the run finished before the kill:\n{p.stderr}")
        cp = checkpoint_of(m, revision, direction)
        return cp is not None and cp["last_pk"] is not None and cp["batch_seq"] >= batches - 1

    try:
        wait_for(far_enough, f"{batches} batches of {revision}")
    finally:
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
    wait_no_backends(m.engine)
    cp = checkpoint_of(m, revision, direction)
    assert cp is not None
    return cp


def slow_vault(proxy: FaultProxy, m: Migration) -> None:
    """A little latency on this test's mount, so a SIGKILL lands mid-table."""
    proxy.set(latency_ms=15, latency_jitter_ms=5, paths=[f"{m.vault.mount}/"])


def cli(
    m: Migration, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``alembic args`` as an operator runs it; the caller checks the exit status."""
    return m.cli(*args, check=False, env=env)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def refused(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode != 0, f"exit 0 where the command must refuse\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    return " ".join(p.stderr.split())  # messages are wrapped: compare on single spaces


def no_leak(m: Migration, data: Data, *texts: str) -> None:
    values = [v for rows in data.values() for row in rows.values() for v in row.values()]
    secrets_ = [m.env["VAULT_TOKEN"], m.hmac_secret] + [
        v for v in values if isinstance(v, str) and len(v) > 6
    ]
    for text in texts:
        for s in secrets_:
            assert s not in text, "a secret or plaintext appeared in the output"


# --------------------------------------------------------------------------------------------
# 1. checkpoints of other runs
# --------------------------------------------------------------------------------------------

SIZES = {"users": 40, "invitations": 200}


def stopped_mid_invitations(
    m: Migration, vault_faults: FaultProxy, start: str, direction: str, *command: str
) -> tuple[dict[str, dict[Any, Plain]], dict[str, Any], dict[str, Any]]:
    """Seeded tables upgraded to ``start``, then ``command`` killed mid-invitations in
    ``direction``: the seeded data, the checkpoint it left and a snapshot of the tables."""
    data = seed_tables(m, SIZES)
    ok(cli(m, "-x", BATCH, "upgrade", start))
    slow_vault(vault_faults, m)
    cp = kill_mid_table(m, "0002_invitations", direction, "-x", BATCH, "-x", ONE_WORKER, *command)
    vault_faults.clear()
    assert current_version(m.engine) == start
    return data, cp, snapshot(m.engine, TABLES)


def assert_untouched(m: Migration, before: dict[str, Any], version: str) -> None:
    assert snapshot(m.engine, TABLES) == before
    assert current_version(m.engine) == version


def assert_invitations(
    m: Migration, data: dict[str, dict[Any, Plain]], scheme: str, version: str
) -> None:
    assert_scheme(m.engine, m.vault, "invitations", data["invitations"], scheme, m.hmac_secret)
    assert current_version(m.engine) == version


def assert_all_done(
    m: Migration, data: dict[str, dict[Any, Plain]], command: str, version: str | None
) -> None:
    """No checkpoint left; ``alembic command`` then brings every table to ``version``."""
    assert checkpoints(m.engine) == []
    ok(cli(m, "-x", BATCH, *command.split()))
    assert_all_in(m, data, "old" if version is None else "new")
    assert current_version(m.engine) == version


@pytest.mark.parametrize("resolution", ["finish", "undo"])
def test_a_upgrade_refuses_a_table_a_stopped_downgrade_left_half_old(
    migration: Migration, vault_faults: FaultProxy, resolution: str
) -> None:
    m = migration
    data, cp, before = stopped_mid_invitations(
        m, vault_faults, "0002_invitations", "downgrade", "downgrade", "base"
    )

    # the command: it would have stamped head over a half-downgraded invitations
    text = refused(cli(m, "-x", BATCH, "upgrade", "head"))
    assert "stopped before any work" in text
    assert f"invitations (0002_invitations): a downgrade stopped after id={cp['last_pk']}" in text
    assert "the stamp is 0002_invitations" in text
    assert "finish that downgrade: `alembic downgrade 0001_users`" in text
    assert "or undo it: `alembic stamp 0001_users`, then `alembic upgrade 0002_invitations`" in text
    # the neighbours: a command with nothing to do, and the dry run, refuse the same way
    assert "a downgrade stopped after id=" in refused(cli(m, "upgrade", "0002_invitations"))
    assert "a downgrade stopped after id=" in refused(
        cli(m, "-x", "dry-run=true", "upgrade", "head")
    )
    assert_untouched(m, before, "0002_invitations")

    if resolution == "finish":
        p = ok(cli(m, "-x", BATCH, "downgrade", "0001_users"))
        assert f"invitations: resuming downgrade after id={cp['last_pk']}" in p.stderr
        assert_invitations(m, data, "old", "0001_users")
    else:
        ok(cli(m, "stamp", "0001_users"))
        p = ok(cli(m, "-x", BATCH, "upgrade", "0002_invitations"))
        assert "resuming" not in p.stderr
        assert "a downgrade of 0002_invitations stopped after id=" in p.stderr
        assert "processes the whole table from its first row" in p.stderr
        assert_invitations(m, data, "new", "0002_invitations")
    assert_all_done(m, data, "upgrade head", "0007_consent_records")


@pytest.mark.parametrize("resolution", ["finish", "undo"])
def test_b_downgrade_refuses_a_table_a_stopped_upgrade_left_half_new(
    migration: Migration, vault_faults: FaultProxy, resolution: str
) -> None:
    m = migration
    data, cp, before = stopped_mid_invitations(
        m, vault_faults, "0001_users", "upgrade", "upgrade", "head"
    )

    # the command: it would have rolled users back and stamped base over invitations
    text = refused(cli(m, "-x", BATCH, "downgrade", "base"))
    assert f"invitations (0002_invitations): an upgrade stopped after id={cp['last_pk']}" in text
    assert "this downgrade runs 0001_users only" in text
    assert "finish that upgrade: `alembic upgrade 0002_invitations`" in text
    assert "or undo it: `alembic stamp 0002_invitations`, then `alembic downgrade 0001_users`" in (
        text
    )
    assert "an upgrade stopped after id=" in refused(cli(m, "downgrade", "-1"))
    assert_untouched(m, before, "0001_users")

    if resolution == "finish":
        p = ok(cli(m, "-x", BATCH, "upgrade", "0002_invitations"))
        assert f"invitations: resuming upgrade after id={cp['last_pk']}" in p.stderr
        assert_invitations(m, data, "new", "0002_invitations")
    else:
        p = ok(cli(m, "stamp", "0002_invitations"))
        p = ok(cli(m, "-x", BATCH, "downgrade", "0001_users"))
        assert "an upgrade of 0002_invitations stopped after id=" in p.stderr
        assert_invitations(m, data, "old", "0001_users")
    assert_all_done(m, data, "downgrade base", None)


def drop_checkpoint_stamp(m: Migration) -> None:
    """The checkpoint table as the tool before the stamp check left it: no stamp, no
    fingerprint."""
    with m.engine.begin() as conn:
        conn.execute(
            sa.text(
                "ALTER TABLE context_encryption_checkpoint "
                "DROP COLUMN IF EXISTS stamp, DROP COLUMN IF EXISTS key_fingerprint"
            )
        )


def rewrite_invitations(m: Migration, data: Data, pks: list[Any]) -> None:
    """The application writes new old-scheme values (and companions) into rows ``pks``."""
    inv = metadata.tables["invitations"]
    with m.engine.begin() as conn:
        for pk in pks:
            email, token = f"rewritten {pk}@example.com", f"token written later {pk}"
            conn.execute(
                sa.update(inv)
                .where(inv.c.id == pk)
                .values(
                    email=old_ct(m, email),
                    email_hmac=hmac_hex(m.hmac_secret, email),
                    token=old_ct(m, token),
                    token_hmac=hmac_hex(m.hmac_secret, token),
                )
            )
            data["invitations"][pk].update(email=email, token=token)


@pytest.mark.parametrize("made_by", ["stamp", "older tool"])
def test_c_a_checkpoint_older_than_the_last_stamp_change_is_not_resumed(
    migration: Migration, vault_faults: FaultProxy, made_by: str
) -> None:
    m = migration
    data = seed_tables(m, SIZES)
    ok(cli(m, "-x", BATCH, "upgrade", "0001_users"))
    slow_vault(vault_faults, m)
    cp = kill_mid_table(
        m, "0002_invitations", "upgrade", "-x", BATCH, "-x", ONE_WORKER, "upgrade", "head"
    )
    vault_faults.clear()
    if made_by == "older tool":
        drop_checkpoint_stamp(m)
    stamped = ok(cli(m, "stamp", "base"))
    # the rolled-back application writes old-scheme values behind the checkpoint
    behind = sorted(data["invitations"])[4:7]
    assert all(pk <= int(cp["last_pk"]) for pk in behind)
    rewrite_invitations(m, data, behind)

    report = m.tmp_path / "c.json"
    p = ok(cli(m, "-x", BATCH, "-x", f"report={report}", "upgrade", "head"))
    assert_all_in(m, data, "new")
    assert current_version(m.engine) == "0007_consent_records"
    assert checkpoints(m.engine) == []
    summary = next(
        t for t in json.loads(report.read_text())["tables"] if t["table"] == "invitations"
    )
    assert summary["resumed_after"] is None
    assert summary["rows_scanned"] == SIZES["invitations"]
    assert "resuming upgrade" not in p.stderr
    assert (
        f"not resuming the upgrade of 0002_invitations that stopped after id={cp['last_pk']}"
        in p.stderr
    )
    if made_by == "stamp":
        assert "keeps the checkpoint of an upgrade that stopped after id=" in stamped.stderr
    no_leak(m, data, p.stdout, p.stderr)


def test_a_stale_checkpoint_still_keeps_its_key_version(migration: Migration) -> None:
    """Not resumed, but its table holds values at its version: the whole-table pass keeps it."""
    m = migration
    data = seed_tables(m, {"invitations": 60})
    ok(cli(m, "upgrade", "0001_users"))
    inv = metadata.tables["invitations"]
    bad = sorted(data["invitations"])[30]
    right = read_table(m.engine, "invitations")[bad]["email_hmac"]
    with m.engine.begin() as conn:  # stops the run (on-error=abort) after the first batch
        conn.execute(sa.update(inv).where(inv.c.id == bad).values(email_hmac="0" * 64))
    refused(cli(m, "-x", BATCH, "-x", ONE_WORKER, "upgrade", "0002_invitations"))
    m.vault.client.secrets.transit.rotate_key(name=NEW_KEY, mount_point=m.vault.mount)
    ok(cli(m, "stamp", "base"))  # a stamp change: the checkpoint goes stale
    with m.engine.begin() as conn:
        conn.execute(sa.update(inv).where(inv.c.id == bad).values(email_hmac=right))
    p = ok(cli(m, "-x", BATCH, "upgrade", "0002_invitations"))
    assert "not resuming the upgrade of 0002_invitations" in p.stderr
    assert "encrypting with key 'pos-context-key' version 1, as pinned by the stopped run" in (
        p.stderr
    )
    stored = read_table(m.engine, "invitations")
    versions = {v.split(":")[1] for r in stored.values() for v in (r["email"], r["token"]) if v}
    assert versions == {"v1"}
    assert set(map(frozenset, schemes_of(m, "invitations", data["invitations"]).values())) <= {
        frozenset({"new"}),
        frozenset(),
    }


# --------------------------------------------------------------------------------------------
# 2. row-level security
# --------------------------------------------------------------------------------------------


@pytest.fixture
def limited_role(migration: Migration, pg_admin_url: sa.URL) -> Iterator[str]:
    """A real login role with the table grants a migration needs, but not BYPASSRLS."""
    name = f"cem_rls_{secrets.token_hex(4)}"
    admin = pg_admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name))
        )
    try:
        yield name
    finally:
        with migration.engine.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def grant_tables(m: Migration, role: str) -> None:
    """The role may read and write every table (the version and checkpoint tables exist)."""
    with m.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
            )
        )


def role_env(m: Migration, role: str) -> dict[str, str]:
    return {"DATABASE_URL": m.url.set(username=role).render_as_string(hide_password=False)}


def hide_a_third(m: Migration) -> None:
    with m.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE invitations ENABLE ROW LEVEL SECURITY"))
        conn.execute(sa.text("CREATE POLICY hide_a_third ON invitations USING (id % 3 <> 0)"))


def verify_cli(m: Migration, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess_tool({**m.env, **env}, "verify", *args)


def test_rls_hiding_rows_refuses_the_run_and_verify(
    migration: Migration, limited_role: str
) -> None:
    m = migration
    data = seed_tables(m, {"invitations": 90})
    ok(cli(m, "upgrade", "0001_users"))  # as postgres: the version and checkpoint tables
    grant_tables(m, limited_role)
    hide_a_third(m)
    env = role_env(m, limited_role)
    before = snapshot(m.engine, TABLES)

    text = refused(cli(m, "upgrade", "0002_invitations", env=env))
    assert "[row security]" in text
    assert (
        f"row-level security is enabled on invitations, and role '{limited_role}' is neither "
        "its owner, a superuser, nor BYPASSRLS"
    ) in text
    assert "BYPASSRLS" in text
    assert snapshot(m.engine, TABLES) == before
    assert current_version(m.engine) == "0001_users"

    v = verify_cli(m, "--tables", "invitations", env=env)
    assert v.returncode == 2, v.stdout + v.stderr
    assert "cannot verify invitations: row-level security is enabled on invitations" in v.stderr
    pre = subprocess_tool({**m.env, **env}, "preflight", "--tables", "invitations")
    assert pre.returncode == 1
    assert "FAIL row security" in pre.stdout

    # the same role with BYPASSRLS sees every row: the run and verify go through
    with m.engine.begin() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{limited_role}" BYPASSRLS'))
    ok(cli(m, "upgrade", "0002_invitations", env=env))
    assert_scheme(m.engine, m.vault, "invitations", data["invitations"], "new", m.hmac_secret)
    v = verify_cli(m, "--tables", "invitations", env=env)
    assert v.returncode == 0, v.stdout + v.stderr


def test_rls_for_the_owner_only_when_forced(migration: Migration, limited_role: str) -> None:
    """The owner bypasses row security unless the table forces it on its owner."""
    m = migration
    data = seed_tables(m, {"invitations": 30})
    ok(cli(m, "upgrade", "0001_users"))
    grant_tables(m, limited_role)
    hide_a_third(m)
    with m.engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE invitations OWNER TO "{limited_role}"'))
        conn.execute(sa.text("ALTER TABLE invitations FORCE ROW LEVEL SECURITY"))
    env = role_env(m, limited_role)
    text = refused(cli(m, "upgrade", "0002_invitations", env=env))
    assert "enabled and forced on invitations (FORCE ROW LEVEL SECURITY)" in text
    with m.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE invitations NO FORCE ROW LEVEL SECURITY"))
    ok(cli(m, "upgrade", "0002_invitations", env=env))
    assert_scheme(m.engine, m.vault, "invitations", data["invitations"], "new", m.hmac_secret)


def test_rls_enabled_while_the_run_goes_stops_it(
    migration: Migration, limited_role: str, vault_faults: FaultProxy
) -> None:
    """``row_security = off``: PostgreSQL raises instead of hiding rows from the next page."""
    m = migration
    seed_tables(m, {"invitations": 200})
    ok(cli(m, "upgrade", "0001_users"))
    grant_tables(m, limited_role)
    vault_faults.hold(paths=f"{m.vault.mount}/encrypt/")
    p = popen_alembic(
        m,
        "-x",
        BATCH,
        "-x",
        ONE_WORKER,
        "upgrade",
        "0002_invitations",
        env=role_env(m, limited_role),
    )
    try:
        step_until_batches(m, vault_faults, p.proc, "0002_invitations", "upgrade", 2)
        hide_a_third(m)  # while the next encrypt is held: the pages after it meet the policy
    finally:
        vault_faults.release()
    assert p.wait(120) != 0
    text = " ".join(p.stderr.split())
    assert "row-level security policy applies to this role" in text
    assert "Traceback" not in p.stderr
    assert current_version(m.engine) == "0001_users"


def step_until_batches(
    m: Migration,
    proxy: FaultProxy,
    proc: subprocess.Popen[bytes],
    revision: str,
    direction: str,
    batches: int,
) -> None:
    """Let held encrypt requests through one at a time until ``batches`` batches committed and
    the next encrypt request is held (one worker: the batches before it are all committed)."""
    while True:
        wait_for(lambda: proc.poll() is not None or proxy.held >= 1, "a held request")
        assert proc.poll() is None, "the run ended while stepping it"
        cp = checkpoint_of(m, revision, direction)
        if cp is not None and cp["last_pk"] is not None and cp["batch_seq"] >= batches - 1:
            return
        proxy.allow(1)
        wait_for(lambda: proxy.allowance == 0, "the allowed request to pass")


# --------------------------------------------------------------------------------------------
# 3. key identity
# --------------------------------------------------------------------------------------------


def backup_key(client: Any, mount: str, name: str) -> str:
    t = client.secrets.transit
    t.update_key_configuration(
        name=name, exportable=True, allow_plaintext_backup=True, mount_point=mount
    )
    return str(t.backup_key(name=name, mount_point=mount)["data"]["backup"])


def recreate_key(client: Any, mount: str, name: str) -> None:
    """What a restarted dev server or a wrong restore does: same name, version 1, new material."""
    t = client.secrets.transit
    t.update_key_configuration(name=name, deletion_allowed=True, mount_point=mount)
    t.delete_key(name=name, mount_point=mount)
    t.create_key(name=name, derived=True, convergent_encryption=True, mount_point=mount)


def restore_key(client: Any, mount: str, name: str, backup: str) -> None:
    t = client.secrets.transit
    t.update_key_configuration(name=name, deletion_allowed=True, mount_point=mount)
    t.delete_key(name=name, mount_point=mount)
    t.restore_key(backup=backup, name=name, mount_point=mount)


def test_key_recreated_during_an_outage_stops_the_run_before_writing(
    migration: Migration, vault_faults: FaultProxy, vault_client: Any
) -> None:
    m = migration
    data = seed_tables(m, {"invitations": 200})
    ok(cli(m, "upgrade", "0001_users"))
    backup = backup_key(vault_client, m.vault.mount, NEW_KEY)
    vault_faults.hold(paths=f"{m.vault.mount}/encrypt/")
    p = popen_alembic(m, "-x", BATCH, "-x", ONE_WORKER, "upgrade", "0002_invitations")
    try:
        step_until_batches(m, vault_faults, p.proc, "0002_invitations", "upgrade", 2)
        # the outage: the held request meets 503s while the key is created again under its name
        recreate_key(vault_client, m.vault.mount, NEW_KEY)
        vault_faults.set(next=[{"status": 503, "count": 2}], paths=f"{m.vault.mount}/encrypt/")
    finally:
        vault_faults.release()
    assert p.wait(120) != 0, p.stderr
    text = " ".join(p.stderr.split())
    assert "invitations: the run stopped before writing batch" in text
    assert (
        f"key '{NEW_KEY}' version 1 on mount '{m.vault.mount}' no longer has the key material"
        in (text)
    )
    assert "Nothing encrypted with the replaced material was written" in text
    assert current_version(m.engine) == "0001_users"
    no_leak(m, data, p.stdout, p.stderr)

    # with the original key restored, every value reads with its plaintext: none was written
    # with the replacement (it would be unreadable now)
    restore_key(vault_client, m.vault.mount, NEW_KEY, backup)
    schemes = schemes_of(m, "invitations", data["invitations"])
    assert {"new"} in schemes.values() and {"old"} in schemes.values()
    # and the same command finishes the job from its checkpoint
    p2 = ok(cli(m, "-x", BATCH, "upgrade", "0002_invitations"))
    assert "invitations: resuming upgrade after id=" in p2.stderr
    assert_scheme(m.engine, m.vault, "invitations", data["invitations"], "new", m.hmac_secret)


def test_key_replaced_between_the_stop_and_the_resume(
    migration: Migration, vault_client: Any
) -> None:
    m = migration
    data = seed_tables(m, {"invitations": 100})
    ok(cli(m, "upgrade", "0001_users"))
    backup = backup_key(vault_client, m.vault.mount, NEW_KEY)
    # a wrong companion in the third batch stops the run (on-error=abort) after two batches
    inv = metadata.tables["invitations"]
    bad = sorted(data["invitations"])[50]
    right = read_table(m.engine, "invitations")[bad]["token_hmac"]
    with m.engine.begin() as conn:
        conn.execute(sa.update(inv).where(inv.c.id == bad).values(token_hmac="0" * 64))
    refused(cli(m, "-x", BATCH, "-x", ONE_WORKER, "upgrade", "0002_invitations"))
    cp = checkpoint_of(m, "0002_invitations", "upgrade")
    assert cp is not None and cp["last_pk"] is not None

    recreate_key(vault_client, m.vault.mount, NEW_KEY)
    with m.engine.begin() as conn:
        conn.execute(sa.update(inv).where(inv.c.id == bad).values(token_hmac=right))
    before = snapshot(m.engine, TABLES)
    text = refused(cli(m, "-x", BATCH, "-x", ONE_WORKER, "upgrade", "0002_invitations"))
    assert (
        f"invitations: an upgrade of 0002_invitations stopped after id={cp['last_pk']}; "
        "nothing was done"
    ) in text
    assert "no longer has the key material it had when it was pinned" in text
    assert "The values that run wrote were encrypted with the earlier material" in text
    assert snapshot(m.engine, TABLES) == before

    restore_key(vault_client, m.vault.mount, NEW_KEY, backup)
    p = ok(cli(m, "-x", BATCH, "upgrade", "0002_invitations"))
    assert f"invitations: resuming upgrade after id={cp['last_pk']}" in p.stderr
    assert_scheme(m.engine, m.vault, "invitations", data["invitations"], "new", m.hmac_secret)


# --------------------------------------------------------------------------------------------
# 4. what is written stays readable
# --------------------------------------------------------------------------------------------

#: The longest plaintext whose ciphertext (``vault:v1:`` + base64 of nonce, text and tag) is
#: within Vault's 1 MiB string limit: 9 + 4 * ceil((n + 28) / 3) <= 1,048,576.
LONGEST_READABLE = 786_395


def test_a_ciphertext_over_the_string_limit_is_never_written(migration: Migration) -> None:
    m = migration
    data = seed_tables(m, {"notifications": 10})
    notes = metadata.tables["notifications"]
    sizes = {"fits": LONGEST_READABLE, "one over": LONGEST_READABLE + 1, "issue": 786_420}
    ids: dict[str, int] = {}
    with m.engine.begin() as conn:
        for label, n in sizes.items():
            ids[label] = conn.execute(
                sa.insert(notes).values(recipient=None, body="x" * n).returning(notes.c.id)
            ).scalar_one()
    too_long = sorted((ids["one over"], ids["issue"]))

    text = refused(cli(m, "-x", "plaintext=encrypt", "upgrade", "head"))
    for pk in too_long:
        assert f"notifications.body id={pk}: its new ciphertext would be" in text
    assert "over Vault's 1 MiB (1,048,576) string limit" in text
    assert current_version(m.engine) == "0004_delivery_addresses"

    report = m.tmp_path / "limits.json"
    ok(
        cli(
            m,
            "-x",
            "plaintext=encrypt",
            "-x",
            "on-error=skip",
            "-x",
            f"report={report}",
            "upgrade",
            "head",
        )
    )
    doc = json.loads(report.read_text())
    summary = next(t for t in doc["tables"] if t["table"] == "notifications")
    assert sorted(int(f["id"]) for f in summary["failures"]) == too_long
    stored = read_table(m.engine, "notifications")
    assert stored[ids["one over"]]["body"] == "x" * sizes["one over"]  # left as they were
    assert stored[ids["issue"]]["body"] == "x" * sizes["issue"]
    fits = stored[ids["fits"]]["body"]
    assert fits.startswith("vault:v1:")
    assert len(fits) <= 1_048_576
    assert m.vault.decrypt(NEW_KEY, [fits], ["notifications.body"]) == ["x" * LONGEST_READABLE]
    for col in ("recipient", "body"):
        seeded = [pk for pk, row in data["notifications"].items() if row[col] is not None]
        plain = m.vault.decrypt(
            NEW_KEY, [stored[pk][col] for pk in seeded], [f"notifications.{col}"] * len(seeded)
        )
        assert plain == [data["notifications"][pk][col] for pk in seeded]


# --------------------------------------------------------------------------------------------
# 5. the key version is pinned for the whole run
# --------------------------------------------------------------------------------------------


class _RotateAfter(logging.Handler):
    """Rotates the new key once, when the summary line of ``table`` is logged."""

    def __init__(self, m: Migration, table: str) -> None:
        super().__init__(logging.INFO)
        self.m, self.prefix, self.rotated = m, f"{table} (upgrade): ", False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.rotated and record.getMessage().startswith(self.prefix):
            self.m.vault.client.secrets.transit.rotate_key(
                name=NEW_KEY, mount_point=self.m.vault.mount
            )
            self.rotated = True


def test_a_rotation_between_tables_does_not_change_the_pinned_version(
    migration: Migration, caplog: pytest.LogCaptureFixture
) -> None:
    m = migration
    data = seed_tables(m, {"users": 30, "invitations": 30, "sessions": 30})
    caplog.set_level(logging.INFO, logger="context_encryption")
    rotate = _RotateAfter(m, "users")
    logging.getLogger("context_encryption").addHandler(rotate)
    try:
        report = m.upgrade("head", batch_size=20)
    finally:
        logging.getLogger("context_encryption").removeHandler(rotate)
    assert rotate.rotated
    key = m.vault.client.secrets.transit.read_key(name=NEW_KEY, mount_point=m.vault.mount)
    assert key["data"]["latest_version"] == 2
    assert {t["table"]: t["target_key_version"] for t in report["tables"]} == dict.fromkeys(
        TABLES, 1
    )
    for table in ("users", "invitations", "sessions"):  # new scheme, original plaintexts
        assert set(map(frozenset, schemes_of(m, table, data[table]).values())) <= {
            frozenset({"new"}),
            frozenset(),
        }
        for row in read_table(m.engine, table).values():
            for col in ("email", "token", "session_id", "ip_address", "first_name"):
                value = row.get(col)
                assert value is None or value.startswith("vault:v1:"), f"{table}.{col}"
