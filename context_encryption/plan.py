"""What an ``alembic`` command is about to do, worked out before any row is touched.

The table filter (``-x tables=``) and the preflight need to know, before the first revision
runs, which revisions the command will apply, in which direction, and which tables they touch.
Alembic computes its steps from the migration function the command hands to ``env.py``
(``MigrationContext.opts["fn"]``); for upgrade, downgrade and stamp that function only computes
steps, so the plan is exactly the list Alembic is about to run. (``alembic current`` hands in a
function that prints: env.py does not plan for it.)

:func:`check_checkpoints` refuses, before any work, a command that would leave a table
half-migrated behind it: a checkpoint whose revision the command does not run means a run of
that revision stopped and was never finished (or undone), so the table holds values of both
schemes whatever the stamp says. The message names the stopped run and the two commands that
resolve it. Checkpoints of the revisions the command does run are the engine's to judge
(resume, or process the whole table again: see :mod:`context_encryption.reencrypt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext, RevisionStep

from app_models.tables import REVISION_OF_TABLE, TABLE_NAMES
from context_encryption.errors import ConfigurationError, PreflightError
from context_encryption.reencrypt import Checkpoint
from context_encryption.settings import Settings

#: The chain, in order (it is linear).
CHAIN: tuple[str, ...] = tuple(REVISION_OF_TABLE[t] for t in TABLE_NAMES)


@dataclass(frozen=True)
class PlannedStep:
    revision: str
    down_revision: str | None
    table: str
    upgrade: bool


def plan(mc: MigrationContext) -> list[PlannedStep]:
    """The revision steps the current command will run, in order (empty for stamp, etc.)."""
    fn = mc.opts.get("fn")
    if fn is None:
        return []
    heads = mc.get_current_heads()
    out: list[PlannedStep] = []
    for step in fn(heads, mc):
        if not isinstance(step, RevisionStep):
            continue
        script = step.revision
        snapshot = getattr(script.module, "SNAPSHOT", None)
        table = str(snapshot.name) if snapshot is not None else script.revision
        down = script.down_revision
        out.append(
            PlannedStep(
                revision=script.revision,
                down_revision=down if isinstance(down, str) or down is None else str(down),
                table=table,
                upgrade=step.is_upgrade,
            )
        )
    return out


def check_table_filter(settings: Settings, steps: Sequence[PlannedStep]) -> None:
    """A live run never stamps a revision whose table it would not migrate.

    Raises :class:`ConfigurationError` naming the tables left out and the command that does
    what was probably meant.
    """
    if settings.tables is None or settings.dry_run or not steps:
        return
    outside = [s for s in steps if s.table not in settings.tables]
    if not outside:
        return
    verb = "upgrade" if steps[0].upgrade else "downgrade"
    listed_prefix = []
    for s in steps:
        if s.table not in settings.tables:
            break
        listed_prefix.append(s)
    if listed_prefix:
        last = listed_prefix[-1]
        target = last.revision if last.upgrade else (last.down_revision or "base")
        hint = (
            f"To work on {', '.join(s.table for s in listed_prefix)} only, run "
            f"`alembic {verb} {target}` (without -x tables)."
        )
    else:
        first = steps[0]
        hint = (
            f"The next revision to {verb} is {first.revision} ({first.table}); the chain is "
            "linear, so tables are migrated in its order. Preview others with -x dry-run=true."
        )
    raise ConfigurationError(
        f"-x tables={','.join(settings.tables)} leaves out "
        f"{', '.join(s.table for s in outside)}, which this {verb} would "
        f"{'stamp' if verb == 'upgrade' else 'unstamp'} "
        f"({', '.join(s.revision for s in outside)}). Nothing was changed. {hint}"
    )


def is_stamp(mc: MigrationContext) -> bool:
    """Whether the command is ``alembic stamp`` (it changes the stamp and touches no row)."""
    return getattr(mc.opts.get("fn"), "__name__", "") == "do_stamp"


def _before(revision: str) -> str:
    i = CHAIN.index(revision)
    return CHAIN[i - 1] if i > 0 else "base"


def _cmd(*parts: str) -> str:
    return ", then ".join(f"`alembic {p}`" for p in parts)


def _resolve(cp: Checkpoint, current: str | None) -> str:
    """What finishes and what undoes the stopped run of ``cp`` from the stamp ``current``."""
    rev = cp.revision
    here = current or "base"
    applied = current is not None and CHAIN.index(rev) <= CHAIN.index(current)
    if applied:
        to_new = _cmd(f"stamp {_before(rev)}", f"upgrade {here}")
        to_old = _cmd(f"downgrade {_before(rev)}")
    else:
        to_new = _cmd(f"upgrade {rev}")
        to_old = _cmd(f"stamp {rev}", f"downgrade {here}")
    finish, undo = (to_new, to_old) if cp.direction == "upgrade" else (to_old, to_new)
    return (
        f"    finish that {cp.direction}: {finish}\n"
        f"    or undo it: {undo}\n"
        "    (a run that includes "
        f"{rev} and cannot resume the checkpoint processes the whole table again: values "
        "already in the target scheme are recognised and left alone)"
    )


def check_checkpoints(
    steps: Sequence[PlannedStep], checkpoints: Sequence[Checkpoint], heads: Sequence[str]
) -> None:
    """Refuse a command that does not run the revision of a stopped run's checkpoint.

    Raises :class:`PreflightError` naming, for each such checkpoint, the table, the stopped
    run, why this command cannot be allowed to go on, and the commands that finish or undo it.
    """
    planned = {s.revision for s in steps}
    # a stopped rewrap (context-encryption rewrap) leaves every value in the new scheme, only
    # on two key versions: no migration has to wait for it
    outside = [c for c in checkpoints if c.revision not in planned and c.direction != "rewrap"]
    if not outside:
        return
    if len(heads) > 1 or any(h not in CHAIN for h in heads):
        current = None
        where = f"the version stamp is {', '.join(heads)}"
    else:
        current = heads[0] if heads else None
        where = f"the stamp is {current or 'base'}"
    if steps:
        verb = "upgrade" if steps[0].upgrade else "downgrade"
        runs = ", ".join(s.revision for s in steps)
        this = f"this {verb} runs {runs} only"
    else:
        this = "this command runs no revision"
    parts = []
    for cp in outside:
        if cp.revision not in CHAIN:
            parts.append(
                f"  context_encryption_checkpoint holds a checkpoint of revision "
                f"{cp.revision!r} (table {cp.table_name}), which is not part of this chain "
                f"({', '.join(CHAIN)}): check DATABASE_URL; delete the row only if it is not "
                "this migration's"
            )
            continue
        applied = current is not None and CHAIN.index(cp.revision) <= CHAIN.index(current)
        parts.append(
            f"  {cp.table_name} ({cp.revision}): {cp.run} stopped {cp.position()} and "
            f"was never finished, so the table holds values of both schemes, while {where} "
            f"({cp.revision} {'applied' if applied else 'not applied'}: every value expected "
            f"in the {'new' if applied else 'old'} scheme).\n" + _resolve(cp, current)
        )
    raise PreflightError(
        "stopped before any work: a table outside this command is half-migrated, and "
        f"{this}; it would exit with that table's values in the wrong scheme.\n"
        + "\n".join(parts)
        + "\nThen run this command again."
    )
