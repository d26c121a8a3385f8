"""What an ``alembic`` command is about to do, worked out before any row is touched.

The table filter (``-x tables=``) and the preflight need to know, before the first revision
runs, which revisions the command will apply, in which direction, and which tables they touch.
Alembic computes its steps from the migration function the command hands to ``env.py``
(``MigrationContext.opts["fn"]``); for upgrade, downgrade and stamp that function only computes
steps, so the plan is exactly the list Alembic is about to run. (``alembic current`` hands in a
function that prints: env.py does not plan for it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext, RevisionStep

from app_models.errors import ConfigurationError
from app_models.settings import Settings


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
