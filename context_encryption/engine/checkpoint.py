"""The durable checkpoint of a table's run: where a stopped run resumes, and whether it may.

A batch's write commits together with the advance of its table's checkpoint
(``context_encryption_checkpoint``, one row per revision and direction), so a crash loses at most
the batches in flight. :class:`Checkpointer` advances it only over a contiguous prefix of
committed batches (workers finish out of order). The checkpoint is removed in the revision's own
transaction, together with Alembic's stamp (:func:`clear_checkpoints`).

A checkpoint records the version stamp it was made under (:func:`stamp_text`); every change of
the stamp marks the checkpoints left stale (:func:`invalidate_checkpoints`, called by
``migrations/env.py`` in the stamp's own transaction), and a stale one is never resumed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from app_models.specs import Direction
from context_encryption.version_stamp import current_heads

#: How a checkpoint records "no revision applied".
BASE_STAMP: Final = "base"

checkpoint_metadata = sa.MetaData()
checkpoint_table = sa.Table(
    "context_encryption_checkpoint",
    checkpoint_metadata,
    sa.Column("revision", sa.Text, primary_key=True),
    sa.Column("direction", sa.Text, primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("batch_seq", sa.BigInteger, nullable=False),
    sa.Column("last_pk", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    # what the run that wrote it used: a resumed run must encrypt the same way
    sa.Column("source_key", sa.Text, nullable=True),
    sa.Column("target_key", sa.Text, nullable=True),
    sa.Column("target_version", sa.Integer, nullable=True),
    # the version stamp the checkpoint was made under; NULL once the stamp changed since (or
    # made by an older version of this tool): such a checkpoint is never resumed
    sa.Column("stamp", sa.Text, nullable=True),
    # the probe ciphertext of the pinned target key version (see keypin.PinnedKey)
    sa.Column("key_fingerprint", sa.Text, nullable=True),
)
#: Columns added after the first release; created (nullable) on a table that lacks them.
ADDED_CHECKPOINT_COLUMNS: Final = ("stamp", "key_fingerprint")


@dataclass(frozen=True)
class Checkpoint:
    """A stopped run's progress: resume after ``last_pk`` (None: before the first row)."""

    revision: str
    direction: str
    table_name: str
    last_pk: str | None
    source_key: str | None = None
    target_key: str | None = None
    target_version: int | None = None
    stamp: str | None = None
    key_fingerprint: str | None = None

    def position(self) -> str:
        return f"after id={self.last_pk}" if self.last_pk is not None else "before its first batch"

    @property
    def run(self) -> str:
        """``an upgrade`` or ``a downgrade``: the stopped run, for messages."""
        return {
            Direction.UPGRADE.value: "an upgrade",
            Direction.DOWNGRADE.value: "a downgrade",
        }.get(self.direction, "a rewrap")


def ensure_checkpoint_table(engine: sa.Engine) -> None:
    """Create the checkpoint table, or add the columns an older version of it lacks."""
    with engine.begin() as conn:
        checkpoint_table.create(conn, checkfirst=True)
        have = {c["name"] for c in sa.inspect(conn).get_columns(checkpoint_table.name)}
        for name in ADDED_CHECKPOINT_COLUMNS:
            if name not in have:
                # constant identifiers; nullable, so existing rows read as "not trusted"
                conn.execute(sa.text(f"ALTER TABLE {checkpoint_table.name} ADD COLUMN {name} TEXT"))


def stamp_text(heads: Sequence[str] | None) -> str:
    """The version stamp as a checkpoint records it: the revision, or ``base``."""
    return ",".join(sorted(heads)) if heads else BASE_STAMP


def read_stamp(conn: sa.Connection) -> str:
    """The current version stamp (:func:`stamp_text`), read from Alembic's version table."""
    return stamp_text(current_heads(conn))


def read_checkpoints(conn: sa.Connection) -> list[Checkpoint]:
    """Every checkpoint row, oldest revision first; columns a table of an older version of this
    tool lacks read as None (such a checkpoint is never resumed)."""
    if not sa.inspect(conn).has_table(checkpoint_table.name):
        return []
    have = {c["name"] for c in sa.inspect(conn).get_columns(checkpoint_table.name)}
    names = [c.name for c in checkpoint_table.c if c.name in have]
    rows = conn.execute(
        sa.select(*(checkpoint_table.c[n] for n in names)).order_by(
            checkpoint_table.c.revision, checkpoint_table.c.direction
        )
    )
    out = []
    for row in rows:
        m = dict(zip(names, row, strict=True))
        out.append(
            Checkpoint(
                revision=str(m["revision"]),
                direction=str(m["direction"]),
                table_name=str(m["table_name"]),
                last_pk=m.get("last_pk"),
                source_key=m.get("source_key"),
                target_key=m.get("target_key"),
                target_version=m.get("target_version"),
                stamp=m.get("stamp"),
                key_fingerprint=m.get("key_fingerprint"),
            )
        )
    return out


def clear_checkpoints(conn: sa.Connection, revision: str) -> None:
    """Forget every checkpoint of ``revision`` (both directions), on the caller's transaction."""
    if sa.inspect(conn).has_table(checkpoint_table.name):
        conn.execute(sa.delete(checkpoint_table).where(checkpoint_table.c.revision == revision))


def invalidate_checkpoints(conn: sa.Connection) -> list[Checkpoint]:
    """The version stamp changed: no checkpoint left may be resumed any more.

    Called in the transaction that changes the stamp (``migrations/env.py``, Alembic's
    ``on_version_apply``), for applied and rolled-back revisions and for ``alembic stamp``. A
    checkpoint keeps its row (so a command that does not run its revision still refuses to
    start: its table is half-migrated) but loses its stamp, so the next run of its revision
    processes the whole table from its first row. Returns the checkpoints left.
    """
    left = read_checkpoints(conn)
    if left and "stamp" in {c["name"] for c in sa.inspect(conn).get_columns(checkpoint_table.name)}:
        conn.execute(
            sa.update(checkpoint_table)
            .where(checkpoint_table.c.stamp.is_not(None))
            .values(stamp=None)
        )
    return left


class Checkpointer:
    """Tracks which batches committed and advances the durable checkpoint contiguously.

    Batches finish out of order when several workers run. The checkpoint only ever names the
    end of a prefix of batches that are all committed (a batch's own advance is written in the
    batch's transaction), so a resumed run never skips an uncommitted batch.
    """

    def __init__(self, revision: str, direction: Direction, table: str) -> None:
        self.revision = revision
        self.direction = direction
        self.table = table
        #: recorded with the checkpoint, checked when a run resumes
        self.source_key: str | None = None
        self.target_key: str | None = None
        self.target_version: int | None = None
        self.key_fingerprint: str | None = None
        #: the version stamp the run works under (None: the checkpoint is never resumed)
        self.stamp: str | None = None
        self._lock = threading.Lock()
        self._done: set[int] = set()
        self._contiguous = -1  # highest seq s such that 0..s are all committed
        self._last_pk: dict[int, str] = {}

    def start(self, conn: sa.Connection, resumed: Checkpoint | None) -> None:
        """Record this run's checkpoint: continue ``resumed``, or start the table afresh.

        Starting afresh replaces every checkpoint of the revision, of either direction: this
        run processes the whole table, so none of them says anything true any more.
        """
        c = checkpoint_table.c
        if resumed is None:
            conn.execute(sa.delete(checkpoint_table).where(c.revision == self.revision))
            conn.execute(
                sa.insert(checkpoint_table).values(
                    revision=self.revision,
                    direction=self.direction.value,
                    table_name=self.table,
                    batch_seq=-1,
                    last_pk=None,
                    updated_at=sa.func.now(),
                    source_key=self.source_key,
                    target_key=self.target_key,
                    target_version=self.target_version,
                    stamp=self.stamp,
                    key_fingerprint=self.key_fingerprint,
                )
            )
            return
        if self.direction.opposite is not self.direction:
            conn.execute(
                sa.delete(checkpoint_table).where(
                    c.revision == self.revision, c.direction == self.direction.opposite.value
                )
            )
        conn.execute(
            sa.update(checkpoint_table)
            .where(c.revision == self.revision, c.direction == self.direction.value)
            .values(
                batch_seq=-1,
                updated_at=sa.func.now(),
                key_fingerprint=sa.func.coalesce(c.key_fingerprint, self.key_fingerprint),
            )
        )

    def register(self, seq: int, last_pk: Any) -> None:
        with self._lock:
            self._last_pk[seq] = str(last_pk)

    def completes(self, seq: int) -> tuple[int, str] | None:
        """The furthest prefix batch ``seq`` completes once committed: (its last batch, the last
        primary key of that batch), or None when an earlier batch is not committed yet."""
        with self._lock:
            end = self._contiguous
            while end + 1 == seq or (end + 1) in self._done:
                end += 1
            if end <= self._contiguous:
                return None
            return end, self._last_pk[end]

    def advance_in(self, conn: sa.Connection, seq: int) -> None:
        """Write, in the batch's own transaction, the furthest prefix this batch completes."""
        prefix = self.completes(seq)
        if prefix is None:
            return
        end, last_pk = prefix
        c = checkpoint_table.c
        conn.execute(
            sa.update(checkpoint_table)
            .where(
                c.revision == self.revision,
                c.direction == self.direction.value,
                c.batch_seq < end,
            )
            .values(batch_seq=end, last_pk=last_pk, updated_at=sa.func.now())
        )

    def committed(self, seq: int) -> None:
        with self._lock:
            self._done.add(seq)
            while (self._contiguous + 1) in self._done:
                self._contiguous += 1
                self._done.discard(self._contiguous)
                self._last_pk.pop(self._contiguous - 1, None)
