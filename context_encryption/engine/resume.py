"""Where a table's run starts: after a checkpoint it may trust, else at the table's first row.

Only a checkpoint of the same revision and direction, made under the current version stamp and
not invalidated by a stamp change since, is resumed (:func:`choose_checkpoint`). Whether resumed
or not, a checkpoint's keys must be the run's, and its key version is kept (after its material is
checked against its fingerprint): values the stopped run wrote are in that version. A stale
checkpoint, one of the other direction, or one written by an older version of this tool makes
the run process the whole table (the classification of each value makes that safe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from app_models.specs import Direction
from context_encryption.engine.checkpoint import Checkpoint, read_checkpoints, read_stamp
from context_encryption.engine.keypin import PinnedKey, key_changed_error, make_pin
from context_encryption.errors import PreflightError
from context_encryption.schemes import Scheme
from context_encryption.transit import TransitClient

log = logging.getLogger("context_encryption")


@dataclass(frozen=True)
class Resume:
    """What a table's run works with: the checkpoint to resume after (None: the whole table)
    and the pinned target key version to encrypt with (the stopped run's, when there was one)."""

    checkpoint: Checkpoint | None
    pin: PinnedKey


@dataclass(frozen=True)
class RunOf:
    """The table run a decision is for."""

    table: str
    revision: str
    direction: Direction
    source: Scheme
    target: Scheme


def choose_checkpoint(
    conn: sa.Connection, transit: TransitClient, run: RunOf, pin: PinnedKey
) -> Resume:
    """The checkpoint to resume after, or None to process the whole table, and the pin to use."""
    stamp = read_stamp(conn)
    found = {c.direction: c for c in read_checkpoints(conn) if c.revision == run.revision}
    opposite = run.direction.opposite
    other = found.get(opposite.value) if opposite is not run.direction else None
    if other is not None:
        log.warning(
            "%s: %s of %s stopped %s and was not finished; this %s processes the whole "
            "table from its first row (values already in the target scheme are recognised "
            "and skipped)",
            run.table,
            other.run,
            run.revision,
            other.position(),
            run.direction.value,
        )
    same = found.get(run.direction.value)
    if same is None:
        return Resume(None, pin)
    check_keys(run, same)
    if run.direction is Direction.REWRAP and same.target_version != pin.version:
        # a rewrap moves values *to* the version asked for: values the stopped run moved
        # to another version must be moved again, so the whole table is processed
        log.warning(
            "%s: not resuming the rewrap that stopped %s: it rewrapped to version %s, this "
            "run to version %d; this run processes the whole table from its first row",
            run.table,
            same.position(),
            same.target_version,
            pin.version,
        )
        return Resume(None, pin)
    if same.target_key == run.target.key and same.target_version is not None:
        pin = adopt_pin(run, same, transit, pin)
    if same.stamp is not None and same.stamp == stamp:
        return Resume(same, pin)
    if same.stamp is None:
        why = (
            "the version stamp changed since it was made (a revision applied or rolled "
            "back, or alembic stamp), or an older version of this tool made it"
        )
    else:
        why = f"it was made at stamp {same.stamp}, and the stamp is now {stamp}"
    log.warning(
        "%s: not resuming the %s of %s that stopped %s: %s. Values may have been written "
        "behind it since, so this run processes the whole table from its first row",
        run.table,
        run.direction.value,
        run.revision,
        same.position(),
        why,
    )
    return Resume(None, pin)


def check_keys(run: RunOf, stopped: Checkpoint) -> None:
    """A stopped run's keys must be this run's: a column is never split between keys."""
    if stopped.target_key is None:
        return
    if (stopped.source_key, stopped.target_key) != (run.source.key, run.target.key):
        raise PreflightError(
            f"{run.table}: a stopped {run.direction.value} of {run.revision} used "
            f"keys {stopped.source_key!r} -> {stopped.target_key!r}; this run would use "
            f"{run.source.key!r} -> {run.target.key!r}. Finish it with the same keys "
            "(VAULT_OLD_KEY / VAULT_NEW_KEY), so the column is not split between keys"
        )


def adopt_pin(run: RunOf, stopped: Checkpoint, transit: TransitClient, pin: PinnedKey) -> PinnedKey:
    """The key version the stopped run used (its material checked), instead of ``pin``."""
    assert stopped.target_version is not None
    version = stopped.target_version
    if stopped.key_fingerprint is not None:
        adopted = PinnedKey(run.target.key, version, run.target.contextual, stopped.key_fingerprint)
        problem = adopted.problem(transit)
        if problem is not None:
            raise key_changed_error(
                adopted,
                transit.mount,
                f"{run.table}: {stopped.run} of {run.revision} stopped "
                f"{stopped.position()}; nothing was done",
                problem,
                "The values that run wrote were encrypted with the earlier material and "
                "cannot be decrypted with the key as it is now.",
            )
    elif version == pin.version:
        adopted = pin
    else:
        adopted = make_pin(transit, run.target, version)
    if version != pin.version:
        log.info(
            "%s: encrypting with key %r version %d, as pinned by the stopped run (the run "
            "pinned %d), so the column is not split between versions",
            run.table,
            run.target.key,
            version,
            pin.version,
        )
    return adopted
