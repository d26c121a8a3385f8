"""A rewrap's work on one batch of rows: the engine's row strategy for ``rewrap``.

Each value is classified by its rewrap (``transit/rewrap/<new key>``, with its column's context,
to the pinned version): NULL; rewrapped; already at the target version (left alone, counted);
or, when the new key cannot read it, noted by primary key and left as it is: plaintext (no
``vault:`` prefix), old scheme (:func:`~context_encryption.schemes.trial` with the old scheme
reads it: that trial's plaintext is dropped unread), or unreadable. Such values never stop the
run and never hold other columns of their row back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

from app_models.specs import ColumnSpec, TableSpec
from context_encryption.engine.rows import Row
from context_encryption.engine.summary import Outcome
from context_encryption.errors import RowError
from context_encryption.schemes import (
    MAX_STRING_BYTES,
    VAULT_PREFIX,
    Kind,
    Scheme,
    Verdict,
    key_version,
    precheck,
    trial,
)
from context_encryption.settings import Settings
from context_encryption.transit import ItemResult, RewrapRequest, TransitClient
from context_encryption.vault_texts import TOO_OLD

#: kinds of the values a rewrap reports and leaves as they are
PLAINTEXT: Final = "plaintext"
OLD_SCHEME: Final = "old_scheme"
UNREADABLE: Final = "unreadable"
NOTE_KINDS: Final = (PLAINTEXT, OLD_SCHEME, UNREADABLE)

#: {(column, primary key): (kind, reason)} of the values a rewrap left as they are
Notes = dict[tuple[str, str], tuple[str, str]]


def left_reason(verdict: Verdict, target: Scheme, old: Scheme, *, table: str, column: str) -> str:
    """Why a value the new key does not read is left as it is (no value in it).

    ``verdict`` is the trial of ``old`` after the rewrap with ``target`` failed.
    """
    if verdict.kind is Kind.SECOND:
        return (
            f"is in the old scheme (key {old.key!r} without context), not the new "
            "one; a rewrap leaves it as it is: migrate it (README runbook, step 9)"
        )
    first_error = verdict.first_error or ""
    if TOO_OLD in first_error:
        return (
            f"its version is below the min_decryption_version of "
            f"{target.describe(table, column)} (Vault: disallowed by policy (too old))"
        )
    return (
        f"unreadable: Vault says {first_error!r} for {target.describe(table, column)} "
        f"and {verdict.second_error!r} for {old.describe(table, column)}"
    )


class RewrapRows:
    """The engine's per-batch strategy for a rewrap (a :class:`~.rows.RowProcessor`).

    Values it cannot rewrap are not row errors: they are kept here by (column, primary key),
    so a row re-read after a concurrent change is noted once, as it is now. Thread safe.
    """

    def __init__(self, old: Scheme) -> None:
        self.old = old
        self._lock = threading.Lock()
        self._notes: Notes = {}

    def notes(self) -> Notes:
        """{(column, primary key): (kind, reason)} of the values left as they are."""
        with self._lock:
            return dict(self._notes)

    def _note(self, col: str, pk: Any, kind: str, reason: str) -> None:
        with self._lock:
            self._notes[(col, str(pk))] = (kind, reason)

    def _forget(self, col: str, pk: Any) -> None:
        with self._lock:
            self._notes.pop((col, str(pk)), None)

    def __call__(
        self,
        rows: Sequence[Row],
        spec: TableSpec,
        *,
        source: Scheme,  # noqa: ARG002 (the RowProcessor signature: a rewrap's is the target)
        target: Scheme,
        target_version: int,
        settings: Settings,  # noqa: ARG002
        transit: TransitClient,
    ) -> None:
        table = spec.name
        todo = [
            (row, col, value)
            for row in rows
            for col in spec.columns
            if (value := self._precheck(row, col)) is not None
        ]
        if not todo:
            return
        results = transit.rewrap_batch(
            target.key,
            [RewrapRequest(v, target.context(table, c.name)) for _r, c, v in todo],
            key_version=target_version,
        )
        failed: list[tuple[Row, ColumnSpec, str, ItemResult]] = []
        for (row, col, value), res in zip(todo, results, strict=True):
            if res.error is not None or not res.value or not res.value.startswith(VAULT_PREFIX):
                answer = ItemResult(None, res.error or "no ciphertext in Vault's answer")
                failed.append((row, col, value, answer))
            else:
                self._rewrapped(table, row, col, value, res.value, target_version=target_version)
        verdicts = trial(transit, table, [(c.name, v, a) for _r, c, v, a in failed], self.old)
        for (row, col, _v, _a), verdict in zip(failed, verdicts, strict=True):
            kind = OLD_SCHEME if verdict.kind is Kind.SECOND else UNREADABLE
            reason = left_reason(verdict, target, self.old, table=table, column=col.name)
            self._note(col.name, row.pk, kind, reason)

    def _precheck(self, row: Row, col: ColumnSpec) -> str | None:
        """The value to rewrap, or None when it is NULL or left as it is without asking Vault."""
        value = row.values[col.name]
        kind = precheck(value)
        if kind is Kind.NULL:
            row.outcomes[col.name] = Outcome.NULL
            self._forget(col.name, row.pk)
        elif kind is Kind.PLAINTEXT:
            self._note(
                col.name,
                row.pk,
                PLAINTEXT,
                "holds plaintext (no 'vault:' prefix); a rewrap leaves it as it is",
            )
        elif kind is Kind.TOO_LONG:
            self._note(col.name, row.pk, UNREADABLE, "longer than Vault's 1 MiB string limit")
        else:
            return value
        return None

    def _rewrapped(
        self, table: str, row: Row, col: ColumnSpec, value: str, new: str, *, target_version: int
    ) -> None:
        """Vault rewrapped ``value`` into ``new``: already there, too long, or to be written."""
        self._forget(col.name, row.pk)
        if key_version(value) == target_version:
            row.outcomes[col.name] = Outcome.ALREADY
        elif len(new) > MAX_STRING_BYTES:
            row.outcomes[col.name] = Outcome.FAILED
            row.errors.append(
                RowError(table, col.name, row.pk, "its rewrapped ciphertext is over 1 MiB")
            )
        else:
            row.new[col.name] = new
            row.outcomes[col.name] = Outcome.MIGRATED
