"""What an ``alembic`` command is about to do, and whether it may: pure decisions, no I/O.

Before the first revision runs, the table filter (``-x tables=``), the preflight and the
checkpoint check need to know which revisions the command applies, in which direction, and
which tables they touch. :func:`plan` turns the steps Alembic is about to run
(:func:`context_encryption.alembic_runtime.command_steps`) into :class:`PlannedStep` values,
naming each revision's table from the catalog (the revisions' own snapshots).

:func:`check_table_filter` refuses a live run that would stamp a revision whose table the
filter leaves out. :func:`check_checkpoints` refuses, before any work, a command that would
leave a table half-migrated behind it: a checkpoint whose revision the command does not run
means a run of that revision stopped and was never finished (or undone), so the table holds
values of both schemes whatever the stamp says. The message names the stopped run and the two
commands that resolve it. Checkpoints of the revisions the command does run are the engine's to
judge (resume, or process the whole table again: see :mod:`context_encryption.engine`).

Everything here takes its inputs as values (catalog, settings, checkpoints, heads), so the
decisions are unit-tested without a database or a Vault (tests/unit/test_plan.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from context_encryption.catalog import Catalog
from context_encryption.engine import Checkpoint
from context_encryption.errors import ConfigurationError, PreflightError
from context_encryption.settings import Settings


@dataclass(frozen=True)
class PlannedStep:
    revision: str
    down_revision: str | None
    table: str
    upgrade: bool


def plan(catalog: Catalog, steps: Iterable[tuple[str, bool]]) -> list[PlannedStep]:
    """The command's steps (``(revision id, is_upgrade)``, in order) with their tables.

    Raises :class:`ConfigurationError` for a revision the catalog does not have (it cannot
    happen with the chain Alembic runs, whose revisions are the catalog).
    """
    out = []
    for revision, upgrade in steps:
        table = catalog.table_of(revision)
        if table is None:
            raise ConfigurationError(
                f"revision {revision} is not part of this chain ({', '.join(catalog.revisions)})"
            )
        i = catalog.revisions.index(revision)
        down = catalog.revisions[i - 1] if i > 0 else None
        out.append(PlannedStep(revision, down, table, upgrade))
    return out


def verb(steps: Sequence[PlannedStep]) -> str:
    """``upgrade`` or ``downgrade``: the direction of a non-empty plan."""
    return "upgrade" if steps[0].upgrade else "downgrade"


def describe(steps: Sequence[PlannedStep], *, dry_run: bool) -> str:
    """One log line: what the command is about to run."""
    runs = ", ".join(f"{s.revision} ({s.table})" for s in steps)
    return f"{'dry run of ' if dry_run else ''}{verb(steps)}: {runs}"


def stamped_tables(steps: Sequence[PlannedStep], settings: Settings) -> list[str]:
    """The tables the plan's revisions migrate and the table filter keeps, in plan order: what
    the preflight checks."""
    return [s.table for s in steps if settings.table_selected(s.table)]


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
    action = verb(steps)
    raise ConfigurationError(
        f"-x tables={','.join(settings.tables)} leaves out "
        f"{', '.join(s.table for s in outside)}, which this {action} would "
        f"{'stamp' if action == 'upgrade' else 'unstamp'} "
        f"({', '.join(s.revision for s in outside)}). Nothing was changed. "
        + _filter_hint(settings.tables, steps)
    )


def _filter_hint(tables: Sequence[str], steps: Sequence[PlannedStep]) -> str:
    """The command that works on the listed tables at the front of the plan, if any."""
    action = verb(steps)
    listed_prefix = []
    for s in steps:
        if s.table not in tables:
            break
        listed_prefix.append(s)
    if not listed_prefix:
        first = steps[0]
        return (
            f"The next revision to {action} is {first.revision} ({first.table}); the chain is "
            "linear, so tables are migrated in its order. Preview others with -x dry-run=true."
        )
    last = listed_prefix[-1]
    target = last.revision if last.upgrade else (last.down_revision or "base")
    return (
        f"To work on {', '.join(s.table for s in listed_prefix)} only, run "
        f"`alembic {action} {target}` (without -x tables)."
    )


def _cmd(*parts: str) -> str:
    return ", then ".join(f"`alembic {p}`" for p in parts)


def _resolve(chain: Sequence[str], cp: Checkpoint, current: str | None) -> str:
    """What finishes and what undoes the stopped run of ``cp`` from the stamp ``current``."""
    rev = cp.revision
    here = current or "base"
    i = chain.index(rev)
    before = chain[i - 1] if i > 0 else "base"
    applied = current is not None and i <= chain.index(current)
    if applied:
        to_new = _cmd(f"stamp {before}", f"upgrade {here}")
        to_old = _cmd(f"downgrade {before}")
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


def blocking_checkpoints(
    steps: Sequence[PlannedStep], checkpoints: Sequence[Checkpoint]
) -> list[Checkpoint]:
    """The stopped runs' checkpoints of revisions the command does not run.

    A stopped rewrap (``context-encryption rewrap``) leaves every value in the new scheme,
    only on two key versions: no migration has to wait for it.
    """
    planned = {s.revision for s in steps}
    return [c for c in checkpoints if c.revision not in planned and c.direction != "rewrap"]


def check_checkpoints(
    catalog: Catalog,
    steps: Sequence[PlannedStep],
    checkpoints: Sequence[Checkpoint],
    heads: Sequence[str],
) -> None:
    """Refuse a command that does not run the revision of a stopped run's checkpoint.

    Raises :class:`PreflightError` naming, for each such checkpoint, the table, the stopped
    run, why this command cannot be allowed to go on, and the commands that finish or undo it.
    """
    outside = blocking_checkpoints(steps, checkpoints)
    if not outside:
        return
    chain = catalog.revisions
    if len(heads) > 1 or any(h not in chain for h in heads):
        current = None
        where = f"the version stamp is {', '.join(heads)}"
    else:
        current = heads[0] if heads else None
        where = f"the stamp is {current or 'base'}"
    if steps:
        this = f"this {verb(steps)} runs {', '.join(s.revision for s in steps)} only"
    else:
        this = "this command runs no revision"
    parts = [_blocked(chain, cp, current, where) for cp in outside]
    raise PreflightError(
        "stopped before any work: a table outside this command is half-migrated, and "
        f"{this}; it would exit with that table's values in the wrong scheme.\n"
        + "\n".join(parts)
        + "\nThen run this command again."
    )


def _blocked(chain: Sequence[str], cp: Checkpoint, current: str | None, where: str) -> str:
    """The lines of :func:`check_checkpoints`'s message about one checkpoint."""
    if cp.revision not in chain:
        return (
            f"  context_encryption_checkpoint holds a checkpoint of revision "
            f"{cp.revision!r} (table {cp.table_name}), which is not part of this chain "
            f"({', '.join(chain)}): check DATABASE_URL; delete the row only if it is not "
            "this migration's"
        )
    applied = current is not None and chain.index(cp.revision) <= chain.index(current)
    return (
        f"  {cp.table_name} ({cp.revision}): {cp.run} stopped {cp.position()} and "
        f"was never finished, so the table holds values of both schemes, while {where} "
        f"({cp.revision} {'applied' if applied else 'not applied'}: every value expected "
        f"in the {'new' if applied else 'old'} scheme).\n" + _resolve(chain, cp, current)
    )
