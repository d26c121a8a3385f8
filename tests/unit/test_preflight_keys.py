"""The key checks' verdicts from a KeyInfo: each problem with its fix, the exact ``vault write``
commands with the real mount and names, and options named as the operator typed them."""

from __future__ import annotations

import dataclasses

from context_encryption.preflight.keys import (
    create_new_key_command,
    new_key_problem,
    old_key_problem,
)
from context_encryption.preflight.report import DirectionName
from context_encryption.settings import FLAG_SPELLING, X_SPELLING, Settings
from context_encryption.transit import KeyInfo

S = Settings(transit_mount="tr", old_key="old-k", new_key="new-k")
OLD = KeyInfo("old-k", "aes256-gcm96", False, False, 3, 1, 0, True, True)
NEW = KeyInfo("new-k", "aes256-gcm96", True, True, 2, 1, 0, True, True)
CREATE = "vault write -f tr/keys/new-k derived=true convergent_encryption=true"


def test_good_keys_have_no_problem() -> None:
    for direction in ("upgrade", "downgrade"):
        assert old_key_problem(OLD, S, direction, X_SPELLING) is None
        assert new_key_problem(NEW, S, direction, X_SPELLING) is None
    assert new_key_problem(NEW, S, "rewrap", X_SPELLING) is None


def test_the_create_command() -> None:
    assert create_new_key_command(S) == CREATE


def test_a_missing_old_key_upgrade_names_the_options_as_typed() -> None:
    problem = old_key_problem(None, S, "upgrade", X_SPELLING)
    assert problem is not None
    detail, fix = problem
    assert detail == (
        "the old key 'old-k' does not exist in Vault (mount 'tr'): the data cannot be decrypted"
    )
    assert "(or -x vault-key=...)" in fix and "(or -x transit-mount=...)" in fix
    assert "vault write tr/restore/old-k backup=@<backup file>" in fix
    problem = old_key_problem(None, S, "upgrade", FLAG_SPELLING)
    assert problem is not None
    assert "(or --vault-key=...)" in problem[1] and "(or --transit-mount=...)" in problem[1]
    assert "-x " not in problem[1]


def test_a_missing_old_key_downgrade_is_restored_from_its_backup() -> None:
    problem = old_key_problem(None, S, "downgrade", X_SPELLING)
    assert problem is not None
    detail, fix = problem
    assert "a rollback re-encrypts with it, so it must exist" in detail
    assert fix.startswith("restore it from its backup: vault write tr/restore/old-k backup=")
    assert "vault read tr/backup/old-k" in fix


def test_a_derived_old_key() -> None:
    derived = dataclasses.replace(OLD, derived=True)
    problem = old_key_problem(derived, S, "upgrade", FLAG_SPELLING)
    assert problem is not None
    assert "the old key 'old-k' is derived" in problem[0]
    assert "may already use context-based encryption" in problem[0]
    assert "(--vault-key / --new-vault-key)" in problem[1]


def test_an_old_key_that_cannot_do_what_the_direction_needs() -> None:
    no_encrypt = dataclasses.replace(OLD, type="rsa-2048", supports_encryption=False)
    assert old_key_problem(no_encrypt, S, "upgrade", X_SPELLING) is None  # decrypts: enough
    problem = old_key_problem(no_encrypt, S, "downgrade", X_SPELLING)
    assert problem is not None
    assert problem[0] == "the old key 'old-k' (type rsa-2048) cannot encrypt and decrypt"
    no_decrypt = dataclasses.replace(OLD, type="ed25519", supports_decryption=False)
    problem = old_key_problem(no_decrypt, S, "upgrade", X_SPELLING)
    assert problem is not None and problem[0].endswith("cannot decrypt")


def test_a_missing_new_key() -> None:
    assert new_key_problem(None, S, "upgrade", X_SPELLING) == (
        "the new key 'new-k' does not exist in Vault (mount 'tr')",
        f"create it with: {CREATE}",
    )
    cases: tuple[tuple[DirectionName, str], ...] = (
        ("downgrade", "the rollback"),
        ("rewrap", "the rewrap"),
    )
    for direction, purpose in cases:
        problem = new_key_problem(None, S, direction, X_SPELLING)
        assert problem is not None
        assert problem[0].endswith(f"cannot be decrypted for {purpose}")
        assert problem[1].startswith("restore it from its backup: vault write tr/restore/new-k")


def test_a_new_key_that_is_not_derived_and_convergent() -> None:
    plain = dataclasses.replace(NEW, derived=False, convergent=False)
    problem = new_key_problem(plain, S, "upgrade", FLAG_SPELLING)
    assert problem is not None
    detail, fix = problem
    assert "not derived + convergent (derived=false, convergent_encryption=false)" in detail
    assert f"create it with: {CREATE}" in fix
    assert "vault delete tr/keys/new-k" in fix
    assert "(--new-vault-key=...)" in fix and "-x " not in fix
    derived_only = dataclasses.replace(NEW, convergent=False)
    problem = new_key_problem(derived_only, S, "upgrade", X_SPELLING)
    assert problem is not None and "(derived=true, convergent_encryption=false)" in problem[0]
    assert "(-x new-vault-key=...)" in problem[1]


def test_a_new_key_that_cannot_encrypt() -> None:
    problem = new_key_problem(
        dataclasses.replace(NEW, type="ecdsa-p256", supports_encryption=False),
        S,
        "upgrade",
        X_SPELLING,
    )
    assert problem == (
        "the new key 'new-k' (type ecdsa-p256) cannot encrypt and decrypt",
        f"create an aes256-gcm96 key with: {CREATE}",
    )
