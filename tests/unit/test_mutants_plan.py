"""Tests that kill mutmut's survivors in the planner: its messages whole, where a stopped run's
revision is the stamp itself, and several blocking checkpoints. README "Mutation testing" lists
the survivors left and why. No database, no Vault: values only."""

from __future__ import annotations

import pytest

from context_encryption.catalog import load_catalog
from context_encryption.engine import Checkpoint
from context_encryption.errors import ConfigurationError, PreflightError
from context_encryption.plan import PlannedStep, check_checkpoints, check_table_filter, plan
from context_encryption.settings import Settings

CATALOG = load_catalog()
CHAIN = ", ".join(CATALOG.revisions)
NOTE = (
    "    (a run that includes {rev} and cannot resume the checkpoint processes the whole table "
    "again: values already in the target scheme are recognised and left alone)"
)


def stopped(revision: str, table: str, direction: str = "upgrade") -> Checkpoint:
    return Checkpoint(revision=revision, direction=direction, table_name=table, last_pk="7")


def refusal(steps: list[PlannedStep], checkpoints: list[Checkpoint], heads: list[str]) -> str:
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, steps, checkpoints, heads)
    return str(err.value)


def test_plan_of_a_revision_of_another_chain_whole_message() -> None:
    with pytest.raises(ConfigurationError) as err:
        plan(CATALOG, [("9999_other", True)])
    assert str(err.value) == f"revision 9999_other is not part of this chain ({CHAIN})"


def test_a_filter_of_no_table_at_the_front_whole_hint() -> None:
    steps = plan(CATALOG, [("0001_users", True), ("0002_invitations", True)])
    with pytest.raises(ConfigurationError) as err:
        check_table_filter(Settings(tables=("invitations",)), steps)
    assert str(err.value).endswith(
        "The next revision to upgrade is 0001_users (users); the chain is linear, so tables are "
        "migrated in its order. Preview others with -x dry-run=true."
    )


def test_two_stopped_runs_one_at_the_stamp_one_of_another_chain_whole_message() -> None:
    """The stamp's own revision is applied (index <=, not <); each checkpoint on its lines."""
    steps = plan(CATALOG, [("0001_users", True), ("0002_invitations", True)])
    text = refusal(
        steps,
        [stopped("0003_guest_orders", "guest_orders"), stopped("9999_other", "elsewhere")],
        ["0003_guest_orders"],
    )
    assert text == (
        "stopped before any work: a table outside this command is half-migrated, and this "
        "upgrade runs 0001_users, 0002_invitations only; it would exit with that table's "
        "values in the wrong scheme.\n"
        "  guest_orders (0003_guest_orders): an upgrade stopped after id=7 and was never "
        "finished, so the table holds values of both schemes, while the stamp is "
        "0003_guest_orders (0003_guest_orders applied: every value expected in the new "
        "scheme).\n"
        "    finish that upgrade: `alembic stamp 0002_invitations`, then "
        "`alembic upgrade 0003_guest_orders`\n"
        "    or undo it: `alembic downgrade 0002_invitations`\n"
        + NOTE.format(rev="0003_guest_orders")
        + "\n"
        "  context_encryption_checkpoint holds a checkpoint of revision '9999_other' (table "
        f"elsewhere), which is not part of this chain ({CHAIN}): check DATABASE_URL; delete "
        "the row only if it is not this migration's\n"
        "Then run this command again."
    )


def test_a_stopped_run_not_applied_expects_the_old_scheme_whole_lines() -> None:
    text = refusal(
        [], [stopped("0005_notifications", "notifications")], ["0004_delivery_addresses"]
    )
    assert text.startswith(
        "stopped before any work: a table outside this command is half-migrated, and this "
        "command runs no revision; it would exit"
    )
    assert "(0005_notifications not applied: every value expected in the old scheme).\n" in text
