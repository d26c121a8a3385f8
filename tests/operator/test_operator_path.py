"""What an operator meets around the migration (issue 10): the last lines of a run that left
rows behind, reasons that name the real context, and preflight verdicts that name the rows at
fault rather than a whole column. Real PostgreSQL, real OpenBao, the real ``alembic`` CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app_models.tables import metadata
from tests.support.migration_fixtures import Migration, seed_table
from tests.support.readme import readme_policy
from tests.support.seeding import Plain, pks_with, seed
from tests.support.tools import failure, preflight, subprocess_tool, subprocess_verify

invitations = metadata.tables["invitations"]


def _seed(m: Migration, n: int = 12) -> dict[Any, Any]:
    return seed_table(m, "invitations", n)


def _set(m: Migration, pk: Any, **values: str | None) -> None:
    with m.engine.begin() as conn:
        conn.execute(sa.update(invitations).where(invitations.c.id == pk).values(**values))


def test_a_run_that_skipped_rows_says_so_in_its_last_lines_and_its_report(
    migration: Migration, tmp_path: Path
) -> None:
    m = migration
    data = _seed(m)
    damaged, raw = pks_with(data, "email", 2)[:2]
    _set(m, damaged, email="vault:v1:bm90IGEgY2lwaGVydGV4dA==")
    _set(m, raw, email="raw plaintext")
    report_path = tmp_path / "run.json"

    proc = m.cli(
        "-x", "on-error=skip", "-x", "plaintext=skip", "-x", f"report={report_path}",
        "upgrade", "0002_invitations",
    )  # fmt: skip

    assert proc.returncode == 0  # stamped, as on-error=skip asks; verify is the gate
    last = proc.stderr.strip().splitlines()[-1]
    assert "LEFT BEHIND" in last
    assert "invitations: 1 failed row(s) skipped, 1 plaintext value(s) left as they were" in last
    assert str(report_path) in last
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "completed with skipped rows"
    assert report["rows_left_behind"] == 1
    assert report["left_behind"] == {"invitations": {"failed_rows": 1, "plaintext_values": 1}}
    verify = subprocess_verify(m.env, "--tables", "invitations")
    assert verify.returncode == 1


def test_a_clean_run_reports_completed_and_says_nothing_is_left(
    migration: Migration, tmp_path: Path
) -> None:
    _seed(migration, 5)
    report_path = tmp_path / "run.json"
    proc = migration.cli("-x", f"report={report_path}", "upgrade", "0002_invitations")
    assert "LEFT BEHIND" not in proc.stderr
    report = json.loads(report_path.read_text())
    assert report["outcome"] == "completed"
    assert report["rows_left_behind"] == 0


def test_a_failure_reason_names_the_columns_real_context(migration: Migration) -> None:
    m = migration
    data = _seed(m)
    pk = pks_with(data, "token")[0]
    # a value of another key: neither scheme reads it
    other = m.vault.client.secrets.transit
    other.create_key(name="stranger", mount_point=m.vault.mount)
    foreign = other.encrypt_data(name="stranger", plaintext="eA==", mount_point=m.vault.mount)
    _set(m, pk, token=foreign["data"]["ciphertext"])

    report = m.upgrade("0002_invitations", on_error="skip")

    (summary,) = [t for t in report["tables"] if t["table"] == "invitations"]
    (failure,) = summary["failures"]
    assert failure["column"] == "token"
    assert "with context invitations.token" in failure["reason"]
    assert "<table>.<column>" not in failure["reason"]


def _token_without(m: Migration, path: str) -> str:
    """A token made without the default policy, from README's policy less one path."""
    policy = "\n".join(
        line for line in readme_policy(m.vault.mount).splitlines() if f'"{path}"' not in line
    )
    client = m.vault.client
    client.sys.create_or_update_policy(name="readme-less-one", policy=policy)
    token: str = client.auth.token.create(
        policies=["readme-less-one"], no_default_policy=True, ttl="1h"
    )["auth"]["client_token"]
    return token


def _preflight_text(m: Migration, token: str) -> str:
    proc = subprocess_tool({**m.env, "VAULT_TOKEN": token}, "preflight")
    assert proc.returncode != 0
    assert token not in proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_a_policy_without_lookup_self_is_named_not_called_an_invalid_token(
    migration: Migration,
) -> None:
    text = _preflight_text(migration, _token_without(migration, "auth/token/lookup-self"))
    assert "its policy lacks read on auth/token/lookup-self" in text
    assert 'path "auth/token/lookup-self"' in text


def test_a_policy_without_capabilities_self_gets_that_one_path_as_its_fix(
    migration: Migration,
) -> None:
    text = _preflight_text(migration, _token_without(migration, "sys/capabilities-self"))
    assert "lacks sys/capabilities-self" in text
    assert 'path "sys/capabilities-self" { capabilities = ["update"] }' in text
    assert "decrypt/pos-encryption-key" not in text.split("sys/capabilities-self", 1)[1]


def _consent_rows_old_key_v2(m: Migration, n: int) -> dict[Any, Any]:
    """consent_records in the old scheme at the old key's version 2 (rotated once)."""
    m.vault.client.secrets.transit.rotate_key(name=m.vault.old_key, mount_point=m.vault.mount)
    rows: list[Plain] = [{"ip_address": f"10.0.{i // 250}.{i % 250}"} for i in range(n)]
    data = seed(m.engine, m.vault, "consent_records", rows, m.hmac_secret)
    t = metadata.tables["consent_records"]
    with m.engine.connect() as conn:
        values = conn.execute(sa.select(t.c.ip_address)).scalars().all()
    assert all(v.startswith("vault:v2:") for v in values)
    return data


def test_one_damaged_value_is_named_alone_not_blamed_on_its_column(migration: Migration) -> None:
    """Runbook back-out (stamp, then downgrade) with one damaged value among old-scheme v2."""
    m = migration
    data = _consent_rows_old_key_v2(m, 60)
    damaged = sorted(data)[3]
    t = metadata.tables["consent_records"]
    with m.engine.begin() as conn:
        conn.execute(
            sa.update(t).where(t.c.id == damaged).values(ip_address="vault:v2:ZGFtYWdlZA==")
        )
    report = preflight(m, "downgrade", tables=("consent_records",))
    assert report.ok, [c.detail for c in report.failures]
    (warning,) = [w for w in report.warnings if "consent_records.ip_address" in w]
    assert f"id {damaged};" in warning
    assert "1 cannot be decrypted by either key" in warning


def test_a_column_whose_every_sampled_value_fails_is_still_a_column_verdict(
    migration: Migration,
) -> None:
    m = migration
    _consent_rows_old_key_v2(m, 30)
    # the operator named another old key: no value of version 2 is readable by either side
    m.vault.client.secrets.transit.create_key(name="another-old", mount_point=m.vault.mount)
    text = failure(m, "downgrade", tables=("consent_records",), vault_key="another-old")
    assert "consent_records.ip_address: 30 value(s) of version v2" in text
