"""The README's Vault policy and key backup commands, run as written against the real server.

The policy block is the one an operator copies: a token made from exactly it, without the
``default`` policy, must pass the preflight of both directions. The backup and restore
commands are run with the server's own CLI (``bao`` takes Vault's arguments), on the test's
mount instead of ``transit``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from context_encryption.openbao import find_binary
from tests.support.migration_fixtures import ROOT, Migration, seed_table
from tests.support.readme import blocks, readme_policy, section
from tests.support.seeding import assert_scheme
from tests.support.tools import subprocess_tool


def test_a_token_from_exactly_the_readme_policy_passes_the_preflight(
    migration: Migration,
) -> None:
    client = migration.vault.client
    policy = readme_policy(migration.vault.mount)
    client.sys.create_or_update_policy(name="readme-policy", policy=policy)
    token = client.auth.token.create(policies=["readme-policy"], no_default_policy=True, ttl="1h")[
        "auth"
    ]["client_token"]
    seed_table(migration, "users", 5)
    for direction in ("upgrade", "downgrade"):
        proc = subprocess_tool(
            {**migration.env, "VAULT_TOKEN": token}, "preflight", "--direction", direction, "--json"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["ok"] is True
        assert token not in proc.stdout + proc.stderr

    report = migration.upgrade("0001_users", vault_token=token)
    assert report["outcome"] == "completed"


def _run_cli(command: str, env: dict[str, str], mount: str, cwd: Path) -> str:
    argv = shlex.split(command.replace("transit/", f"{mount}/"))
    assert argv[0] == "vault"
    redirect = None
    if ">" in argv:
        i = argv.index(">")
        argv, redirect = argv[:i], argv[i + 1]
    proc = subprocess.run(
        [find_binary(), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{command}: {proc.stderr}"
    if redirect:
        (cwd / redirect).write_text(proc.stdout)
    return proc.stdout


def test_the_readme_backup_and_restore_commands_bring_a_deleted_key_back(
    migration: Migration, tmp_path: Path
) -> None:
    m = migration
    data = seed_table(m, "users", 12)
    backup_section = section("### Backing up and restoring the keys")
    backup, restore = (
        [line for line in block.splitlines() if line.startswith("vault ")]
        for block in blocks(backup_section)
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
        "VAULT_ADDR": m.env["VAULT_ADDR"],
        "VAULT_TOKEN": m.env["VAULT_TOKEN"],
        "HOME": str(tmp_path),
    }
    for command in backup:
        _run_cli(command, env, m.vault.mount, tmp_path)
    assert (tmp_path / "pos-encryption-key.backup").stat().st_size > 100

    # the key is lost: deleted (a wrong restore or a rebuilt server look the same)
    transit: Any = m.vault.client.secrets.transit
    transit.update_key_configuration(
        name=m.vault.old_key, deletion_allowed=True, mount_point=m.vault.mount
    )
    transit.delete_key(name=m.vault.old_key, mount_point=m.vault.mount)
    for command in restore:
        _run_cli(command, env, m.vault.mount, tmp_path)

    assert_scheme(m.engine, m.vault, "users", data, "old", m.hmac_secret)


def test_every_troubleshooting_entry_is_a_text_the_tool_or_the_server_really_says() -> None:
    """The table is keyed by exact texts: each must occur in the tool or in a contract test.

    (HashiCorp Vault's 500 text, which OpenBao never says, is the fault proxy's copy of it.)
    """
    sources = [*(ROOT / "app_models").glob("*.py"), *(ROOT / "context_encryption").glob("**/*.py")]
    sources += [
        ROOT / "tests" / "contract" / "test_contract.py",
        ROOT / "tests" / "support" / "fault_proxy.py",
    ]
    said = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    said = re.sub(r'"\n\s*f?"', "", said)  # implicitly joined string literals
    rows = [
        line.split("|")[1]
        for line in section("## Troubleshooting").splitlines()
        if line.startswith("| ") and not line.startswith(("| you see", "|---"))
    ]
    assert len(rows) >= 15
    for cell in rows:
        for text in re.findall(r"`([^`]+)`", cell):
            for fragment in (f.strip() for f in text.split("...")):
                if len(fragment) >= 6:
                    assert fragment in said, f"README Troubleshooting quotes {fragment!r}"
