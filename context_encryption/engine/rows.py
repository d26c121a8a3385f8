"""A batch's rows as the engine holds them, and the strategy that processes them.

:class:`Row` is one row as read (its encrypted columns and companions) with what processing made
of it; a :class:`RowProcessor` is what a batch does to its rows before the compare-and-swap
write: :func:`~context_encryption.engine.batch.process_rows` for the migration,
:class:`~context_encryption.engine.rewrap_rows.RewrapRows` for a rewrap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app_models.specs import TableSpec
from context_encryption.engine.summary import Outcome
from context_encryption.errors import RowError
from context_encryption.schemes import Scheme
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient

#: Makes one Transit client (one per worker thread).
TransitFactory = Callable[[], TransitClient]


@dataclass
class Row:
    pk: Any
    values: dict[str, str | None]  # encrypted columns and companions, as read
    new: dict[str, str] = field(default_factory=dict)  # column -> new ciphertext
    errors: list[RowError] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class RowProcessor(Protocol):
    """What a batch does to its rows before the compare-and-swap write.

    It fills each row's ``new`` (column -> ciphertext to write), ``outcomes`` and ``errors`` in
    place, and never touches the database.
    """

    def __call__(
        self,
        rows: Sequence[Row],
        spec: TableSpec,
        *,
        source: Scheme,
        target: Scheme,
        target_version: int,
        settings: Settings,
        transit: TransitClient,
    ) -> None: ...
