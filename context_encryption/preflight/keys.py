"""The key checks: the old key exists, has no derivation and does what the direction needs; the
new key exists, derived + convergent. A problem comes with the exact ``vault write`` command
that fixes it (create, restore from backup), with the real mount and key names.

:func:`old_key_problem` and :func:`new_key_problem` are pure (a
:class:`~context_encryption.transit.KeyInfo` in, a message out); :func:`check_keys` (migration)
and :func:`check_new_key` (rewrap) read the keys and report.
"""

from __future__ import annotations

from context_encryption.errors import ContextEncryptionError
from context_encryption.preflight.report import DirectionName, PreflightReport
from context_encryption.settings import Settings, Spelling
from context_encryption.transit import KeyInfo, TransitClient

#: (detail, fix) of a key that is not what the direction needs
Problem = tuple[str, str]


def create_new_key_command(settings: Settings) -> str:
    """The ``vault write`` command that creates the new key as it must be."""
    return (
        f"vault write -f {settings.transit_mount}/keys/{settings.new_key} "
        "derived=true convergent_encryption=true"
    )


def old_key_problem(
    key: KeyInfo | None, settings: Settings, direction: DirectionName, spelling: Spelling
) -> Problem | None:
    """What is wrong with the old key for ``direction`` (None: it exists and does what's needed)."""
    m, name = settings.transit_mount, settings.old_key
    if key is None and direction == "downgrade":
        return (
            f"the old key {name!r} does not exist in Vault (mount {m!r}): a rollback "
            "re-encrypts with it, so it must exist",
            f"restore it from its backup: vault write {m}/restore/{name} backup=@<backup file> "
            f"(the backup taken before the migration with vault read {m}/backup/{name}); or check "
            "VAULT_OLD_KEY / VAULT_TRANSIT_MOUNT",
        )
    if key is None:
        return (
            f"the old key {name!r} does not exist in Vault (mount {m!r}): the data cannot be "
            "decrypted",
            f"check VAULT_OLD_KEY (or {spelling('vault-key')}=...) and VAULT_TRANSIT_MOUNT (or "
            f"{spelling('transit-mount')}=...); if it was deleted, restore it: vault write "
            f"{m}/restore/{name} backup=@<backup file>",
        )
    if key.derived:
        return (
            f'the old key {name!r} is derived: without a context Vault answers "missing '
            "'context' for key derivation\", so it is not the no-context key; the data may "
            "already use context-based encryption, or the key names are swapped",
            f"check VAULT_OLD_KEY / VAULT_NEW_KEY ({spelling('vault-key')} / "
            f"{spelling('new-vault-key')}); run 'context-encryption verify' to see which scheme "
            "the data is in",
        )
    downgrade = direction == "downgrade"
    if not key.supports_decryption or (downgrade and not key.supports_encryption):
        return (
            f"the old key {name!r} (type {key.type}) cannot "
            + ("encrypt and decrypt" if downgrade else "decrypt"),
            "check VAULT_OLD_KEY: it must be the aes256-gcm96 (or similar) key the data was "
            "encrypted with",
        )
    return None


def new_key_problem(
    key: KeyInfo | None, settings: Settings, direction: DirectionName, spelling: Spelling
) -> Problem | None:
    """What is wrong with the new key for ``direction`` (None: derived + convergent, usable)."""
    m, name = settings.transit_mount, settings.new_key
    create = create_new_key_command(settings)
    if key is None and direction == "upgrade":
        return (
            f"the new key {name!r} does not exist in Vault (mount {m!r})",
            f"create it with: {create}",
        )
    if key is None:
        purpose = "the rollback" if direction == "downgrade" else "the rewrap"
        return (
            f"the new key {name!r} does not exist in Vault (mount {m!r}): values in the new "
            f"scheme cannot be decrypted for {purpose}",
            f"restore it from its backup: vault write {m}/restore/{name} backup=@<backup file>; "
            "or check VAULT_NEW_KEY / VAULT_TRANSIT_MOUNT",
        )
    if not (key.derived and key.convergent):
        return (
            f"the new key {name!r} exists but is not derived + convergent "
            f"(derived={str(key.derived).lower()}, "
            f"convergent_encryption={str(key.convergent).lower()}); these cannot be changed on an "
            "existing key",
            f"if the key holds no data yet, delete it (vault write {m}/keys/{name}/config "
            f"deletion_allowed=true; vault delete {m}/keys/{name}) and create it with: {create}; "
            "or create a key under another name the same way and set VAULT_NEW_KEY "
            f"({spelling('new-vault-key')}=...)",
        )
    if not (key.supports_encryption and key.supports_decryption):
        return (
            f"the new key {name!r} (type {key.type}) cannot encrypt and decrypt",
            f"create an aes256-gcm96 key with: {create}",
        )
    return None


def read_key(
    report: PreflightReport, transit: TransitClient, name: str
) -> tuple[bool, KeyInfo | None]:
    """(readable, info). Not readable: the capability check already said why."""
    try:
        return True, transit.read_key(name)
    except ContextEncryptionError as exc:
        report.add("keys", False, f"cannot read key {name!r}: {exc}", "see the capabilities check")
        return False, None


def check_keys(
    report: PreflightReport, settings: Settings, transit: TransitClient, direction: DirectionName
) -> tuple[KeyInfo | None, KeyInfo | None]:
    """Both keys of a migration; (old, new) as read (None: missing or unreadable)."""
    ok_old, old = read_key(report, transit, settings.old_key)
    ok_new, new = read_key(report, transit, settings.new_key)
    found: list[str] = []
    if ok_old:
        problem = old_key_problem(old, settings, direction, report.spelling)
        if problem is not None:
            report.add("old key", False, *problem)
        elif old is not None:
            found.append(f"old key {settings.old_key!r} v{old.latest_version} (no context)")
    if ok_new:
        problem = new_key_problem(new, settings, direction, report.spelling)
        if problem is not None:
            report.add("new key", False, *problem)
        elif new is not None:
            found.append(
                f"new key {settings.new_key!r} v{new.latest_version} (derived, convergent)"
            )
    if found and not any(c.name in ("old key", "new key", "keys") for c in report.failures):
        report.add("keys", True, "; ".join(found))
    return old, new


def check_new_key(
    report: PreflightReport, settings: Settings, transit: TransitClient
) -> KeyInfo | None:
    """The new key of a rewrap, with its versions; None when it is missing, unreadable or wrong."""
    readable, key = read_key(report, transit, settings.new_key)
    if not readable:
        return None
    problem = new_key_problem(key, settings, report.direction, report.spelling)
    if problem is not None:
        report.add("new key", False, *problem)
        return None
    if key is None:  # a missing key is a problem: not reached
        return None
    report.add(
        "new key",
        True,
        f"{key.name!r}: latest_version {key.latest_version}, "
        f"min_decryption_version {key.min_decryption_version}, "
        f"min_encryption_version {key.min_encryption_version}",
    )
    return key
