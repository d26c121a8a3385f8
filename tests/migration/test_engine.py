"""The engine's guarantees: classification, fail-closed errors, compare-and-swap, checkpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util import CommandError

from app_models.tables import metadata
from context_encryption.alembic_runtime import TRANSIT_FACTORY_KEY
from context_encryption.engine import PROBE_B64
from context_encryption.settings import Settings
from context_encryption.transit import EncryptRequest, ItemResult, TransitClient
from tests.support.migration_fixtures import Migration
from tests.support.reliability_helpers import old_ct, set_values
from tests.support.seeding import assert_scheme, hmac_hex, read_table, sample_rows, seed

invitations = metadata.tables["invitations"]
users = metadata.tables["users"]


def seed_invitations(m: Migration, n: int, salt: str = "") -> dict[Any, Any]:
    return seed(
        m.engine, m.vault, "invitations", sample_rows("invitations", n, salt), m.hmac_secret
    )


def set_value(m: Migration, pk: Any, **values: str | None) -> None:
    set_values(m, "invitations", pk, **values)


def repair_token(m: Migration, data: dict[Any, Any], pk: Any) -> None:
    """The invitation ``pk`` gets a valid old-scheme token ("repaired"), in ``data`` too."""
    data[pk]["token"] = "repaired"
    set_value(m, pk, token=old_ct(m, "repaired"), token_hmac=hmac_hex(m.hmac_secret, "repaired"))


class HookedTransit(TransitClient):
    """A real TransitClient whose encrypt runs a hook first: a write at a chosen moment.

    The hook runs before the next ``times`` encrypt requests of rows (default: the next one);
    the run's key-identity probe (one item, the probe plaintext) does not count.
    """

    hook: Callable[[], None] | None = None
    times = 0
    lock = threading.Lock()

    def encrypt_batch(
        self, key: str, items: Sequence[EncryptRequest], key_version: int | None
    ) -> list[ItemResult]:
        if [i.plaintext_b64 for i in items] == [PROBE_B64]:
            return super().encrypt_batch(key, items, key_version)
        with HookedTransit.lock:
            hook = HookedTransit.hook if HookedTransit.times > 0 else None
            HookedTransit.times -= 1
        if hook is not None:
            hook()
        return super().encrypt_batch(key, items, key_version)


def with_hook(m: Migration, hook: Callable[[], None], times: int = 1) -> Any:
    HookedTransit.hook = hook
    HookedTransit.times = times

    def make(settings: Settings) -> TransitClient:
        base = TransitClient.from_settings(settings)
        return HookedTransit(base.hvac_client, base.mount)

    return make


def run_upgrade(m: Migration, rev: str, factory: Any, **x: object) -> dict[str, Any]:

    path = m.tmp_path / "hooked-report.json"
    cfg = m.config(report=path, **x)
    cfg.attributes[TRANSIT_FACTORY_KEY] = factory
    command.upgrade(cfg, rev)
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_concurrent_update_is_not_overwritten(migration: Migration) -> None:
    data = seed_invitations(migration, 10)
    target = sorted(data)[3]
    latest = "changed while the migration ran"

    def concurrent_write() -> None:
        set_value(
            migration,
            target,
            email=old_ct(migration, latest),
            email_hmac=hmac_hex(migration.hmac_secret, latest),
        )

    report = run_upgrade(
        migration,
        "0002_invitations",
        with_hook(migration, concurrent_write),
        workers=1,
        batch_size=100,
    )

    data[target]["email"] = latest
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["changed_concurrently"] == 1
    assert summary["rows_failed"] == 0
    assert_scheme(
        migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
    )


def test_concurrent_write_in_new_scheme_is_kept(migration: Migration) -> None:
    data = seed_invitations(migration, 6)
    target = sorted(data)[0]
    latest = "written by the new application"

    def concurrent_write() -> None:
        ct = migration.vault.encrypt(migration.vault.new_key, [latest], ["invitations.email"])[0]
        set_value(migration, target, email=ct, email_hmac=hmac_hex(migration.hmac_secret, latest))

    report = run_upgrade(migration, "0002_invitations", with_hook(migration, concurrent_write))
    data[target]["email"] = latest
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["changed_concurrently"] == 1
    assert summary["columns"]["email"]["already_migrated"] == 1
    assert_scheme(
        migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
    )


def test_concurrent_delete_is_counted(migration: Migration) -> None:
    data = seed_invitations(migration, 6)
    target = sorted(data)[2]

    def concurrent_delete() -> None:
        with migration.engine.begin() as conn:
            conn.execute(sa.delete(invitations).where(invitations.c.id == target))

    report = run_upgrade(migration, "0002_invitations", with_hook(migration, concurrent_delete))
    del data[target]
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["deleted_concurrently"] == 1
    assert_scheme(
        migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
    )


def test_abort_leaves_revision_unstamped_and_rerun_resumes(migration: Migration) -> None:
    data = seed_invitations(migration, 30)
    pks = sorted(data)
    bad = pks[17]  # in the fourth batch of five
    set_value(migration, bad, token="not encrypted at all")

    with pytest.raises(CommandError) as err:
        migration.upgrade("0002_invitations", batch_size=5, workers=1)
    message = str(err.value)
    assert f"invitations.token id={bad}" in message
    assert "plaintext" in message and "not encrypted at all" not in message
    assert migration.current() == "0001_users"
    failed = migration.reports[-1]
    assert failed["outcome"] == "failed"

    # batches before the failing one are committed; the failing row is untouched
    stored = read_table(migration.engine, "invitations")
    assert stored[bad]["token"] == "not encrypted at all"

    # repair the row, re-run: the run resumes after the last committed batch
    repair_token(migration, data, bad)
    report = migration.upgrade("0002_invitations", batch_size=5, workers=1)
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["resumed_after"] == str(pks[14])
    assert summary["rows_scanned"] == 15
    assert migration.current() == "0002_invitations"
    assert_scheme(
        migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
    )
    with migration.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM context_encryption_checkpoint")).scalar()
    assert left == 0


def test_on_error_skip_completes_and_reports_failing_rows(migration: Migration) -> None:
    data = seed_invitations(migration, 12)
    pks = sorted(data)
    unreadable, tampered, wrong_hmac, plaintext = pks[1], pks[4], pks[7], pks[10]
    set_value(migration, unreadable, email="vault:v1:bm90IGEgY2lwaGVydGV4dA==")
    stored = read_table(migration.engine, "invitations")
    ct = stored[tampered]["token"]
    flipped = ct[:-6] + ("A" if ct[-6] != "A" else "B") + ct[-5:]
    set_value(migration, tampered, token=flipped)
    set_value(migration, wrong_hmac, email_hmac="0" * 64)
    set_value(migration, plaintext, token="raw plaintext token")
    before = read_table(migration.engine, "invitations")

    report = migration.upgrade("0002_invitations", on_error="skip", batch_size=4)

    assert migration.current() == "0002_invitations"
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    failed = {(f["id"], f["column"]): f["reason"] for f in summary["failures"]}
    assert set(failed) == {
        (str(unreadable), "email"),
        (str(tampered), "token"),
        (str(wrong_hmac), "email"),
        (str(plaintext), "token"),
    }
    assert "HMAC verification failed" in failed[(str(wrong_hmac), "email")]
    assert "message authentication failed" in failed[(str(tampered), "token")]
    assert "plaintext" in failed[(str(plaintext), "token")]
    assert summary["rows_failed"] == 4
    after = read_table(migration.engine, "invitations")
    for pk in (unreadable, tampered, wrong_hmac, plaintext):
        assert after[pk] == before[pk], "a failing row must stay untouched"
    good = {
        pk: v for pk, v in data.items() if pk not in {unreadable, tampered, wrong_hmac, plaintext}
    }
    for pk in good:
        assert after[pk]["email"] != before[pk]["email"] or before[pk]["email"] is None


@pytest.mark.parametrize("policy", ["skip", "encrypt"])
def test_plaintext_policies(migration: Migration, policy: str) -> None:
    data = seed_invitations(migration, 5)
    pk = sorted(data)[2]
    set_value(
        migration,
        pk,
        email="plain@example.com",
        email_hmac=hmac_hex(migration.hmac_secret, "plain@example.com"),
    )

    report = migration.upgrade("0002_invitations", plaintext=policy)

    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    stored = read_table(migration.engine, "invitations")
    if policy == "skip":
        assert summary["columns"]["email"]["plaintext_skipped"] == 1
        assert stored[pk]["email"] == "plain@example.com"
    else:
        assert summary["columns"]["email"]["plaintext_encrypted"] == 1
        data[pk]["email"] = "plain@example.com"
        assert_scheme(
            migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
        )


def test_context_based_value_under_old_key_name_is_reported(migration: Migration) -> None:
    """The old key given is derived: the data may already be context-based."""
    seed_invitations(migration, 3)
    migration.vault.client.secrets.transit.create_key(
        name="derived-old", derived=True, mount_point=migration.vault.mount
    )
    with pytest.raises(CommandError) as err:
        migration.upgrade("0002_invitations", vault_key="derived-old", batch_size=2)
    assert "missing 'context' for key derivation" in str(err.value)


def test_new_key_must_be_derived_and_convergent(migration: Migration) -> None:
    seed_invitations(migration, 3)
    migration.vault.client.secrets.transit.create_key(
        name="plain-new", mount_point=migration.vault.mount
    )
    with pytest.raises(CommandError) as err:
        migration.upgrade("0001_users", new_vault_key="plain-new")
    assert "derived=true" in str(err.value) and "convergent_encryption=true" in str(err.value)
    assert migration.current() is None


def test_missing_new_key_says_how_to_create_it(migration: Migration) -> None:
    with pytest.raises(CommandError) as err:
        migration.upgrade("0001_users", new_vault_key="no-such-key")
    mount = migration.vault.mount
    assert (
        f"vault write -f {mount}/keys/no-such-key derived=true convergent_encryption=true"
        in str(err.value)
    )


def test_downgrade_needs_the_old_key(migration: Migration) -> None:
    seed_invitations(migration, 3)
    migration.upgrade("0002_invitations")
    with pytest.raises(CommandError) as err:
        migration.downgrade("0001_users", vault_key="deleted-old-key")
    assert "does not exist in Vault" in str(err.value) and "backup" in str(err.value)
    assert migration.current() == "0002_invitations"


def test_hmac_secret_required_for_tables_with_companions(
    migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENCRYPTION_HMAC_SECRET")
    with pytest.raises(CommandError) as err:
        migration.upgrade("0001_users")
    assert "ENCRYPTION_HMAC_SECRET" in str(err.value)


def test_wrong_hmac_secret_is_refused_before_any_row(migration: Migration) -> None:
    seed_invitations(migration, 8)
    before = read_table(migration.engine, "invitations")
    with pytest.raises(CommandError) as err:
        migration.upgrade("0002_invitations", hmac_secret="not-the-secret", on_error="skip")
    assert "HMAC verification failed for every sampled companion" in str(err.value)
    assert "most likely not the secret" in str(err.value)
    assert "not-the-secret" not in str(err.value)
    assert read_table(migration.engine, "invitations") == before


def test_mostly_hmac_failures_name_the_secret_as_the_likely_cause(migration: Migration) -> None:
    """The preflight's sample matched, but most failing rows of the run are HMAC mismatches."""
    data = seed_invitations(migration, 40)
    for pk in sorted(data)[30:]:
        set_value(migration, pk, email_hmac="0" * 64)
    with pytest.raises(CommandError) as err:
        migration.upgrade("0002_invitations")
    assert "HMAC verification failed" in str(err.value)
    assert "most likely not the secret" in str(err.value)


def test_a_companion_that_does_not_match_is_a_row_error_on_downgrade_too(
    migration: Migration,
) -> None:
    """Downgrade checks companions as upgrade does: a mismatch is never re-encrypted."""
    data = seed_invitations(migration, 10)
    migration.upgrade("0002_invitations")
    stale = sorted(pk for pk, row in data.items() if row["email"])[2]
    set_value(migration, stale, email_hmac="0" * 64)
    before = read_table(migration.engine, "invitations")

    report = migration.downgrade("base", on_error="skip")

    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert [(f["id"], f["column"]) for f in summary["failures"]] == [(str(stale), "email")]
    assert "HMAC verification failed" in summary["failures"][0]["reason"]
    after = read_table(migration.engine, "invitations")
    assert after[stale] == before[stale], "the row must stay as it was, in the new scheme"
    for col in ("email", "token"):
        pks = [pk for pk, row in data.items() if pk != stale and row[col] is not None]
        plains = migration.vault.decrypt(
            migration.vault.old_key, [after[pk][col] for pk in pks], [None] * len(pks)
        )
        assert plains == [data[pk][col] for pk in pks], "the other rows are back in the old scheme"


def test_target_key_version_is_pinned(migration: Migration) -> None:
    data = seed_invitations(migration, 4)
    client, mount = migration.vault.client, migration.vault.mount
    client.secrets.transit.rotate_key(name=migration.vault.new_key, mount_point=mount)
    report = migration.upgrade("0002_invitations")
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["target_key_version"] == 2
    stored = read_table(migration.engine, "invitations")
    assert all(
        r["email"].startswith("vault:v2:") for r in stored.values() if r["email"] is not None
    )
    assert_scheme(
        migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
    )


AWKWARD = [
    "emoji 🚀 and CJK 東京 and combining é",
    "quotes \" ' and backslash \\ and \\u0041 literally",
    "newline\nreturn\r\ntab\tend",
    "x" * 50_000,
    "",
]


@pytest.mark.parametrize("text", AWKWARD, ids=["unicode", "escapes", "controls", "long", "empty"])
def test_compare_and_swap_keeps_awkward_unmigrated_values(migration: Migration, text: str) -> None:
    """A skipped plaintext in one column travels through the write's comparison unchanged."""
    data = seed_invitations(migration, 3)
    pk = sorted(data)[1]
    set_value(migration, pk, token=text, token_hmac=None)
    report = migration.upgrade("0002_invitations", plaintext="skip")
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["changed_concurrently"] == 0
    assert summary["rows_failed"] == 0
    stored = read_table(migration.engine, "invitations")
    assert stored[pk]["token"] == text
    plain = migration.vault.decrypt(
        migration.vault.new_key, [stored[pk]["email"]], ["invitations.email"]
    )
    assert plain == [data[pk]["email"]]


def test_a_row_that_keeps_changing_is_never_passed_by_the_checkpoint(migration: Migration) -> None:
    """It stops the run unstamped (abort), and the re-run migrates it: it is not skipped."""
    data = seed_invitations(migration, 10)
    target = sorted(data)[4]
    counter = iter(range(100))

    def keep_changing() -> None:
        text = f"changed {next(counter)}"
        data[target]["email"] = text
        set_value(
            migration,
            target,
            email=old_ct(migration, text),
            email_hmac=hmac_hex(migration.hmac_secret, text),
        )

    with pytest.raises(CommandError) as err:
        run_upgrade(
            migration,
            "0002_invitations",
            with_hook(migration, keep_changing, times=100),
            workers=1,
            batch_size=3,
        )
    assert f"invitations.* id={target}: kept changing" in str(err.value)
    assert migration.current() == "0001_users"

    report = migration.upgrade("0002_invitations", batch_size=3, workers=1)
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["resumed_after"] == str(sorted(data)[2])  # before the row's batch
    assert migration.current() == "0002_invitations"
    assert_scheme(
        migration.engine, migration.vault, "invitations", data, "new", migration.hmac_secret
    )


def test_skipped_failures_hold_the_checkpoint_back_across_a_crash(migration: Migration) -> None:
    """on-error=skip, then the run dies: the re-run looks at the failing row again."""
    data = seed_invitations(migration, 12)
    pks = sorted(data)
    bad = pks[4]  # second batch of four
    set_value(migration, bad, token="vault:v1:not-a-ciphertext")
    calls = iter(range(100))

    def crash_at_the_third_encrypt() -> None:
        if next(calls) == 2:  # batches 1 and 2 are committed by then
            raise RuntimeError("simulated crash")

    factory = with_hook(migration, crash_at_the_third_encrypt, times=100)
    with pytest.raises(RuntimeError):
        run_upgrade(
            migration, "0002_invitations", factory, on_error="skip", batch_size=4, workers=1
        )
    assert migration.current() == "0001_users"

    report = migration.upgrade("0002_invitations", on_error="skip", batch_size=4, workers=1)
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["resumed_after"] == str(pks[3])  # not past the failing batch
    assert [f["id"] for f in summary["failures"]] == [str(bad)]
    assert migration.current() == "0002_invitations"


def test_a_resumed_run_keeps_the_key_version_it_started_with(migration: Migration) -> None:
    data = seed_invitations(migration, 12)
    pks = sorted(data)
    bad = pks[9]
    set_value(migration, bad, token="plain")
    with pytest.raises(CommandError):
        migration.upgrade("0002_invitations", batch_size=4, workers=1)

    client, mount = migration.vault.client, migration.vault.mount
    client.secrets.transit.rotate_key(name=migration.vault.new_key, mount_point=mount)
    repair_token(migration, data, bad)
    report = migration.upgrade("0002_invitations", batch_size=4, workers=1)

    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["target_key_version"] == 1
    stored = read_table(migration.engine, "invitations")
    versions = {v.split(":")[1] for r in stored.values() for v in (r["email"], r["token"]) if v}
    assert versions == {"v1"}
    for col in ("email", "token"):
        pks_with = [pk for pk in pks if data[pk][col] is not None]
        plain = migration.vault.decrypt(
            migration.vault.new_key,
            [stored[pk][col] for pk in pks_with],
            [f"invitations.{col}"] * len(pks_with),
        )
        assert plain == [data[pk][col] for pk in pks_with]


def test_a_resumed_run_refuses_other_keys(migration: Migration) -> None:
    data = seed_invitations(migration, 8)
    set_value(migration, sorted(data)[6], token="plain")
    with pytest.raises(CommandError):
        migration.upgrade("0002_invitations", batch_size=4, workers=1)
    migration.vault.client.secrets.transit.create_key(
        name="other-new",
        derived=True,
        convergent_encryption=True,
        mount_point=migration.vault.mount,
    )
    with pytest.raises(CommandError) as err:
        migration.upgrade("0002_invitations", new_vault_key="other-new", on_error="skip")
    assert "Finish it with the same keys" in str(err.value)


def test_dry_run_previews_the_whole_table_despite_failures(migration: Migration) -> None:
    data = seed_invitations(migration, 40)
    pks = sorted(data)
    set_value(migration, pks[2], token="plain")
    with pytest.raises(CommandError):
        migration.upgrade("0002_invitations", dry_run="true", batch_size=5, workers=2)
    summary = next(t for t in migration.reports[-1]["tables"] if t["table"] == "invitations")
    assert summary["rows_scanned"] == 40
    assert summary["status"] == "dry-run"


def test_a_damaged_non_ascii_companion_is_a_row_error(migration: Migration) -> None:
    data = seed_invitations(migration, 5)
    pk = sorted(data)[1]
    set_value(migration, pk, email_hmac="ünïcödé companion")
    report = migration.upgrade("0002_invitations", on_error="skip")
    summary = next(t for t in report["tables"] if t["table"] == "invitations")
    assert summary["failures"] == [
        {
            "column": "email",
            "id": str(pk),
            "reason": "HMAC verification failed (companion email_hmac)",
        }
    ]


def test_aborted_batch_counts_only_failures(migration: Migration) -> None:
    data = seed_invitations(migration, 6)
    set_value(migration, sorted(data)[0], token="plain")
    with pytest.raises(CommandError):
        migration.upgrade("0002_invitations", batch_size=100)
    summary = next(t for t in migration.reports[-1]["tables"] if t["table"] == "invitations")
    assert summary["status"] == "aborted"
    assert summary["rows_written"] == 0
    assert summary["columns"].get("email", {}).get("migrated", 0) == 0
    assert summary["columns"]["token"]["failed"] == 1
