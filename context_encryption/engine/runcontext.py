"""What one command's run shares across its tables: settings, Vault clients, a summary sink, pins.

``migrations/env.py`` makes one :class:`RunContext` per ``alembic`` command (and the rewrap one
per ``context-encryption rewrap``); the target key's version is pinned once for the whole run
(:meth:`RunContext.pin`), so a rotation while it runs, even between tables, does not change it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from app_models.specs import Direction
from context_encryption.engine.keypin import PinnedKey, make_pin, pin_target_version
from context_encryption.engine.rows import TransitFactory
from context_encryption.engine.summary import TableSummary
from context_encryption.schemes import Scheme
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient

log = logging.getLogger("context_encryption")


@dataclass
class RunContext:
    """What a revision's run needs besides the table: settings, Vault clients, a sink."""

    settings: Settings
    transit_factory: TransitFactory
    on_summary: Callable[[TableSummary], None] = lambda _s: None
    progress_interval: float = 5.0
    _pins: dict[str, PinnedKey] = field(default_factory=dict, repr=False)
    _pin_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pin(self, transit: TransitClient, target: Scheme, direction: Direction) -> PinnedKey:
        """The run's pinned version of the target key (read and probed at its first use)."""
        with self._pin_lock:
            pinned = self._pins.get(target.key)
            if pinned is None:
                version = pin_target_version(transit, target, direction)
                pinned = self._pin(transit, target, version)
            return pinned

    def pin_version(self, transit: TransitClient, target: Scheme, version: int) -> PinnedKey:
        """Pin ``version`` of the target key for this run (a rewrap's ``--to-version``)."""
        with self._pin_lock:
            return self._pin(transit, target, version)

    def _pin(self, transit: TransitClient, target: Scheme, version: int) -> PinnedKey:
        pinned = make_pin(transit, target, version)
        self._pins[target.key] = pinned
        log.info(
            "key %r: version %d pinned for this run (with a fingerprint of its material)",
            target.key,
            version,
        )
        return pinned
