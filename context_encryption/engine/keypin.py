"""Key identity: the target key version a run encrypts with, and the probe that identifies it.

Transit knows a key by name and version only. The run pins the target key's version once
(:func:`pin_target_version`, :func:`make_pin`) together with a probe ciphertext made with it
(:class:`PinnedKey`); before each batch's write, and before a run resumes a checkpoint, the probe
must still decrypt, so a key recreated or restored from another backup under the same name and
version stops the run before anything is written with it (:func:`key_changed_error`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

from app_models.specs import Direction
from context_encryption.errors import ContextEncryptionError, PreflightError, VaultRequestError
from context_encryption.schemes import VAULT_PREFIX, Scheme
from context_encryption.transit import DecryptRequest, EncryptRequest, TransitClient
from context_encryption.vault_texts import TOO_OLD

#: A fixed, public plaintext encrypted at pin time; its ciphertext identifies the key material.
PROBE_PLAINTEXT: Final = "context-encryption key identity probe v1"
#: The context of the probe with a derived key: no ``<table>.<column>`` of the chain.
PROBE_CONTEXT: Final = "context-encryption key identity probe"
PROBE_B64: Final = base64.b64encode(PROBE_PLAINTEXT.encode("utf-8")).decode("ascii")


class KeyIdentityError(ContextEncryptionError):
    """The pinned target key version no longer has the material it had when it was pinned."""


@dataclass(frozen=True)
class PinnedKey:
    """The target key version a run encrypts with, and the probe that identifies its material.

    A key deleted and created again, or restored from another backup, has the same name and
    version and other material. ``probe`` is the ciphertext of :data:`PROBE_PLAINTEXT` made with
    this version when it was pinned; as long as it decrypts to the probe, the version has the
    same material (AES-GCM authenticates it). For the convergent key the probe is deterministic;
    for the old key it is random, which is why the check decrypts rather than compares.
    """

    key: str
    version: int
    contextual: bool
    probe: str

    def problem(self, transit: TransitClient) -> str | None:
        """None when the version still has the pinned material; else what Vault said."""
        context = PROBE_CONTEXT if self.contextual else None
        try:
            [res] = transit.decrypt_batch(self.key, [DecryptRequest(self.probe, context)])
        except VaultRequestError as exc:
            return str(exc)
        if res.error is not None:
            return f"Vault says {res.error!r}"
        if res.value != PROBE_B64:
            return "the probe decrypts to another plaintext"
        return None


def make_pin(transit: TransitClient, target: Scheme, version: int) -> PinnedKey:
    """Pin ``version`` of the target key: encrypt the probe with it (one small request)."""
    context = PROBE_CONTEXT if target.contextual else None
    [res] = transit.encrypt_batch(
        target.key, [EncryptRequest(PROBE_B64, context)], key_version=version
    )
    if res.error is not None or not res.value or not res.value.startswith(VAULT_PREFIX):
        raise PreflightError(
            f"cannot encrypt with key {target.key!r} version {version}: Vault says "
            f"{res.error!r}; check the key's min_encryption_version and the token's policy"
        )
    return PinnedKey(target.key, version, target.contextual, res.value)


def key_changed_error(
    pin: PinnedKey, mount: str, what: str, problem: str, consequence: str
) -> KeyIdentityError:
    """The stop when the probe of ``pin`` no longer decrypts: ``problem`` is Vault's answer.

    ``what`` says where the run stopped, ``consequence`` what that means for the data written.
    """
    if TOO_OLD in problem:  # the material may be intact; the key's policy changed
        return KeyIdentityError(
            f"{what}: key {pin.key!r} version {pin.version} on mount {mount!r} is now below "
            f"the key's min_decryption_version ({problem}), so values encrypted with it could "
            f"not be read back. {consequence} Lower it again (vault write "
            f"{mount}/keys/{pin.key}/config min_decryption_version={pin.version}), then run "
            "the same command again"
        )
    return KeyIdentityError(
        f"{what}: key {pin.key!r} version {pin.version} on mount {mount!r} no longer has the "
        "key material it had when it was pinned (a probe ciphertext made with it then does not "
        f"decrypt now: {problem}). The key was deleted and created again, or restored from "
        f"another backup, under the same name. {consequence} Restore the key from the backup "
        f"taken before the migration (vault write {mount}/restore/{pin.key} "
        "backup=@<backup file>; a wrong key of that name must be deleted first), then run the "
        "same command again; it resumes from its checkpoint"
    )


def pin_target_version(transit: TransitClient, target: Scheme, direction: Direction) -> int:
    """Read the target key; its latest version is the one a run pins."""
    mount = transit.mount
    info = transit.read_key(target.key)
    if info is None:
        if direction is Direction.DOWNGRADE:
            raise PreflightError(
                f"the old key {target.key!r} does not exist in Vault: a rollback needs it. "
                f"Restore it from its backup (vault write {mount}/restore/{target.key} backup=...) "
                "before downgrading"
            )
        raise PreflightError(
            f"the new key {target.key!r} does not exist on mount {mount!r}. If tables were "
            "already migrated, check VAULT_NEW_KEY / VAULT_TRANSIT_MOUNT first: a second new "
            "key would split the data between keys. Otherwise create it with: vault write -f "
            f"{mount}/keys/{target.key} derived=true convergent_encryption=true"
        )
    if target.contextual and not (info.derived and info.convergent):
        raise PreflightError(
            f"the new key {target.key!r} must be created with derived=true and "
            "convergent_encryption=true (it is not); create a new key with: vault write -f "
            f"{mount}/keys/<name> derived=true convergent_encryption=true"
        )
    if not target.contextual and info.derived:
        raise PreflightError(
            f"the old key {target.key!r} is derived: it is not a no-context key. The data may "
            "already use context-based encryption; check VAULT_OLD_KEY"
        )
    if info.latest_version < 1:
        raise PreflightError(f"key {target.key!r} reports no version")
    return info.latest_version
