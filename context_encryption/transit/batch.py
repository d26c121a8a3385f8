"""One batch operation (decrypt, encrypt or rewrap) as its requests need it. Pure: no request.

A :class:`BatchCall` holds the hvac method, the key, the ``(value, context)`` items and how an
item is written (``field``, the pinned ``key_version`` in ``extra``) and read back (``answer``).
:meth:`BatchCall.batch_input` builds the ``batch_input`` of items ``[lo, hi)``; the context
travels as base64 of its string. :meth:`BatchCall.item_results` turns Vault's ``batch_results``
into :class:`~context_encryption.transit.types.ItemResult` in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from context_encryption.transit.types import ItemResult, b64_context


@dataclass(frozen=True)
class BatchCall:
    """One batch operation, as its requests need it."""

    #: for messages, e.g. "decrypt with key 'k'"
    what: str
    #: the hvac method
    fn: Any
    #: the ACL path and capability, for a permission error
    needs: str
    key: str
    #: the item's field of the value sent ("ciphertext" or "plaintext")
    field: str
    #: the result's field of the value received
    answer: str
    #: more fields of every item (``key_version``)
    extra: dict[str, Any]
    items: Sequence[tuple[str, str | None]]

    def batch_input(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """The ``batch_input`` of items ``[lo, hi)``."""
        batch = []
        for value, context in self.items[lo:hi]:
            entry: dict[str, Any] = {self.field: value, **self.extra}
            if context is not None:
                entry["context"] = b64_context(context)
            batch.append(entry)
        return batch

    def item_results(self, results: Sequence[dict[str, Any]]) -> list[ItemResult]:
        """Vault's per-item results, in order: the answer's value, or the item's error."""
        return [
            ItemResult(None, error)
            if (error := r.get("error"))
            else ItemResult(r.get(self.answer), None)
            for r in results
        ]
