"""The two schemes and the one decision: which scheme a stored value is in.

- **old**: the old key (``VAULT_OLD_KEY``), no context.
- **new**: the new derived + convergent key (``VAULT_NEW_KEY``) with the context
  ``<table>.<column>`` (:func:`app_models.tables.context_string`).

A ciphertext does not say which key made it (``vault:v<N>:`` names a version, not a key), so a
value is classified by asking Vault: decrypt it with the scheme it is expected in (``first``);
only when that fails, a trial decrypt with the other scheme (``second``). Success of the trial
means the value is in the other scheme (already migrated, or not yet); failure of both means no
key reads it, a row error, never passed through. The engine, verify, the preflight's samples and
the rewrap all classify through :func:`classify` / :func:`decide`; the wording of the reasons
comes from :mod:`context_encryption.vault_texts`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from app_models.specs import Direction
from app_models.tables import context_string
from context_encryption.vault_texts import AUTH_FAILED, MISSING_CONTEXT, NO_PREFIX, TOO_OLD

if TYPE_CHECKING:
    from context_encryption.settings import Settings
    from context_encryption.transit import ItemResult, TransitClient

#: Every Transit ciphertext starts with this; a value without it is plaintext.
VAULT_PREFIX: Final = "vault:"
#: Vault's ``max_json_string_value_length``: a longer value can never be sent to it.
MAX_STRING_BYTES: Final = 1_048_576
#: What Vault answered when it gave neither a value nor an error (never seen; fail closed).
NO_PLAINTEXT: Final = "no plaintext in Vault's answer"

_VERSION: Final = re.compile(r"^vault:v([0-9]{1,9}):")

SchemeName = Literal["old", "new"]


@dataclass(frozen=True)
class Scheme:
    """One side of the migration: a Transit key, with or without the per-column context."""

    name: SchemeName
    key: str
    contextual: bool

    def context(self, table: str, column: str) -> str | None:
        return context_string(table, column) if self.contextual else None

    def describe(self, table: str, column: str) -> str:
        """The key and the real context of one column, e.g. ``key 'k' with context users.email``."""
        context = self.context(table, column)
        return f"key {self.key!r} " + (
            f"with context {context}" if context is not None else "without context"
        )


def old_scheme(settings: Settings) -> Scheme:
    return Scheme("old", settings.old_key, contextual=False)


def new_scheme(settings: Settings) -> Scheme:
    return Scheme("new", settings.new_key, contextual=True)


def schemes(settings: Settings, direction: Direction) -> tuple[Scheme, Scheme]:
    """(source, target) of a direction; a rewrap goes from the new scheme to the new scheme."""
    old, new = old_scheme(settings), new_scheme(settings)
    if direction is Direction.REWRAP:
        return new, new
    return (old, new) if direction is Direction.UPGRADE else (new, old)


def key_version(ciphertext: str) -> int | None:
    """The key version of a ``vault:v<N>:`` prefix (Vault reads 0 as 1); None without one."""
    m = _VERSION.match(ciphertext)
    return max(1, int(m.group(1))) if m else None


class Kind(enum.Enum):
    """What a stored value is."""

    NULL = "null"
    #: no ``vault:`` prefix
    PLAINTEXT = "plaintext"
    #: longer than Vault accepts: no key could ever read it
    TOO_LONG = "too_long"
    #: the first scheme decrypts it
    FIRST = "first"
    #: the first scheme does not, the second does
    SECOND = "second"
    #: neither does
    UNREADABLE = "unreadable"


def precheck(value: str | None) -> Kind | None:
    """What a value is without asking Vault, or None when only Vault can tell."""
    if value is None:
        return Kind.NULL
    if not value.startswith(VAULT_PREFIX):
        return Kind.PLAINTEXT
    if len(value) > MAX_STRING_BYTES:
        return Kind.TOO_LONG
    return None


@dataclass(frozen=True)
class Verdict:
    """The scheme of one ciphertext, with the base64 plaintext of whichever scheme read it.

    ``first_error`` / ``second_error`` are Vault's texts for the decrypts that failed (no values).
    """

    kind: Kind
    plaintext: str | None = None
    first_error: str | None = None
    second_error: str | None = None


def decide(first: ItemResult, second: ItemResult | None) -> Verdict:
    """The decision, from Vault's answers: ``first`` scheme, else ``second``, else unreadable.

    ``second`` is the trial decrypt's answer, None when none was made (``first`` succeeded).
    An answer without a value counts as a failure: nothing is ever passed through.
    """
    if first.error is None and first.value is not None:
        return Verdict(Kind.FIRST, first.value)
    first_error = first.error or NO_PLAINTEXT
    if second is None:
        raise ValueError("the first scheme failed: a trial decrypt with the second is needed")
    if second.error is None and second.value is not None:
        return Verdict(Kind.SECOND, second.value, first_error=first_error)
    return Verdict(
        Kind.UNREADABLE, first_error=first_error, second_error=second.error or NO_PLAINTEXT
    )


def trial(
    transit: TransitClient,
    table: str,
    failed: Sequence[tuple[str, str, ItemResult]],
    second: Scheme,
) -> list[Verdict]:
    """Verdicts for (column, ciphertext, first answer) whose first answer failed.

    One batch of trial decrypts with ``second``; for callers whose first step was not a decrypt
    (a rewrap asks Vault to rewrap first).
    """
    if not failed:
        return []
    from context_encryption.transit import DecryptRequest  # noqa: PLC0415 - no import cycle

    answers = transit.decrypt_batch(
        second.key, [DecryptRequest(ct, second.context(table, col)) for col, ct, _ in failed]
    )
    return [decide(first, answer) for (_c, _v, first), answer in zip(failed, answers, strict=True)]


def classify(
    transit: TransitClient,
    table: str,
    items: Sequence[tuple[str, str]],
    first: Scheme,
    second: Scheme,
) -> list[Verdict]:
    """Verdicts for (column, ciphertext) pairs, in order: two batch requests at most.

    Every ciphertext must have passed :func:`precheck` (None). Vault errors of the whole request
    (:class:`~context_encryption.errors.ContextEncryptionError`) propagate.
    """
    if not items:
        return []
    from context_encryption.transit import DecryptRequest  # noqa: PLC0415 - no import cycle

    answers = transit.decrypt_batch(
        first.key, [DecryptRequest(ct, first.context(table, col)) for col, ct in items]
    )
    if len(answers) != len(items):  # never passed on: each verdict must be its item's
        raise ValueError(f"{len(answers)} answers to {len(items)} decrypt items")
    verdicts = [Verdict(Kind.FIRST, a.value) if _read(a) else None for a in answers]
    failed = [i for i, v in enumerate(verdicts) if v is None]
    tried = iter(trial(transit, table, [(*items[i], answers[i]) for i in failed], second))
    return [v if v is not None else next(tried) for v in verdicts]


def _read(answer: ItemResult) -> bool:
    return answer.error is None and answer.value is not None


def explain(verdict: Verdict, first: Scheme, second: Scheme, *, table: str, column: str) -> str:
    """Why no key reads an UNREADABLE value, naming keys and what to do (never a value).

    ``first`` is the scheme the value was expected in, ``second`` the trial's.
    """
    first_error, second_error = verdict.first_error or "", verdict.second_error or ""
    src, tgt = first.describe(table, column), second.describe(table, column)
    if TOO_OLD in second_error and AUTH_FAILED in first_error:
        return (
            f"looks already migrated, but its version is below the minimum decryption version "
            f"of {tgt} (Vault: disallowed by policy (too old)); lower that key's "
            "min_decryption_version"
        )
    if MISSING_CONTEXT in first_error:
        return (
            f"cannot be decrypted with {src}: Vault says \"missing 'context' for "
            'key derivation" — the data may already be context-based, or the key names are '
            "swapped (check VAULT_OLD_KEY / VAULT_NEW_KEY)"
        )
    if AUTH_FAILED in first_error:
        return (
            f"cannot be decrypted with {src} nor with {tgt} "
            "(cipher: message authentication failed): another key, another context, or a "
            "damaged value"
        )
    if NO_PREFIX in first_error:
        return (
            "Vault says 'invalid ciphertext: no prefix': the value starts with 'vault:' but is "
            "not Transit ciphertext (damaged, or another format)"
        )
    if TOO_OLD in first_error:
        return (
            f"its key version is below the minimum decryption version of {src} "
            "(Vault: disallowed by policy (too old)); lower min_decryption_version with "
            f"vault write <mount>/keys/{first.key}/config min_decryption_version=<n>"
        )
    return (
        f"unreadable ciphertext: Vault says {first_error!r} for {src} and "
        f"{second_error!r} for {tgt}"
    )
