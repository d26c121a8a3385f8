"""The planner's decisions, from given values: no database, no Vault, no Alembic run."""

from __future__ import annotations

import pytest

from context_encryption.catalog import load_catalog
from context_encryption.engine import Checkpoint
from context_encryption.errors import ConfigurationError, PreflightError
from context_encryption.plan import (
    PlannedStep,
    blocking_checkpoints,
    check_checkpoints,
    check_table_filter,
    describe,
    plan,
    stamped_tables,
)
from context_encryption.settings import Settings

CATALOG = load_catalog()
CHAIN = CATALOG.revisions


def upgrade(*revisions: str) -> list[PlannedStep]:
    return plan(CATALOG, [(r, True) for r in revisions])


def downgrade(*revisions: str) -> list[PlannedStep]:
    return plan(CATALOG, [(r, False) for r in revisions])


def checkpoint(revision: str, direction: str = "upgrade", last_pk: str | None = "41") -> Checkpoint:
    table = CATALOG.table_of(revision) or "somewhere_else"
    return Checkpoint(revision=revision, direction=direction, table_name=table, last_pk=last_pk)


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------


def test_plan_names_each_revisions_table_and_predecessor() -> None:
    steps = upgrade("0001_users", "0002_invitations", "0003_guest_orders")
    assert steps == [
        PlannedStep("0001_users", None, "users", True),
        PlannedStep("0002_invitations", "0001_users", "invitations", True),
        PlannedStep("0003_guest_orders", "0002_invitations", "guest_orders", True),
    ]
    assert downgrade("0007_consent_records")[0] == PlannedStep(
        "0007_consent_records", "0006_sessions", "consent_records", False
    )


def test_plan_of_no_step_is_empty() -> None:
    assert plan(CATALOG, []) == []


def test_plan_refuses_a_revision_the_chain_does_not_have() -> None:
    with pytest.raises(ConfigurationError, match="9999_other is not part of this chain"):
        plan(CATALOG, [("9999_other", True)])


def test_describe_names_direction_revisions_and_tables() -> None:
    steps = upgrade("0001_users", "0002_invitations")
    assert describe(steps, dry_run=False) == (
        "upgrade: 0001_users (users), 0002_invitations (invitations)"
    )
    assert describe(downgrade("0006_sessions"), dry_run=True) == (
        "dry run of downgrade: 0006_sessions (sessions)"
    )


# --------------------------------------------------------------------------------------------
# which tables a plan stamps, and the table filter
# --------------------------------------------------------------------------------------------


def test_stamped_tables_are_the_plans_tables_the_filter_keeps() -> None:
    steps = upgrade(*CHAIN)
    assert stamped_tables(steps, Settings()) == list(CATALOG.tables)
    assert stamped_tables(steps, Settings(tables=("sessions", "users"))) == ["users", "sessions"]
    assert stamped_tables(downgrade("0002_invitations", "0001_users"), Settings()) == [
        "invitations",
        "users",
    ]


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(tables=("users", "invitations"), dry_run=True)],
    ids=["no filter", "dry run"],
)
def test_no_filter_or_a_dry_run_is_always_allowed(settings: Settings) -> None:
    check_table_filter(settings, upgrade(*CHAIN))


def test_a_filter_that_lists_every_planned_table_is_allowed() -> None:
    check_table_filter(Settings(tables=("users", "invitations")), upgrade(*CHAIN[:2]))
    check_table_filter(Settings(tables=("users",)), [])


def test_a_filter_that_would_stamp_an_unmigrated_table_is_refused() -> None:
    with pytest.raises(ConfigurationError) as err:
        check_table_filter(Settings(tables=("users", "invitations")), upgrade(*CHAIN))
    message = str(err.value)
    assert "-x tables=users,invitations leaves out guest_orders, delivery_addresses" in message
    assert "which this upgrade would stamp (0003_guest_orders, 0004_delivery_addresses" in message
    assert "Nothing was changed." in message
    assert "To work on users, invitations only, run `alembic upgrade 0002_invitations`" in message


def test_a_downgrade_filter_names_the_revision_below_the_listed_tables() -> None:
    steps = downgrade("0003_guest_orders", "0002_invitations", "0001_users")
    with pytest.raises(ConfigurationError) as err:
        check_table_filter(Settings(tables=("guest_orders",)), steps)
    message = str(err.value)
    assert "leaves out invitations, users, which this downgrade would unstamp" in message
    assert "run `alembic downgrade 0002_invitations`" in message

    check_table_filter(Settings(tables=("invitations",)), downgrade("0002_invitations"))
    with pytest.raises(ConfigurationError) as err:
        check_table_filter(Settings(tables=("users",)), steps)
    assert "The next revision to downgrade is 0003_guest_orders (guest_orders)" in str(err.value)


def test_a_downgrade_to_base_of_the_listed_tables_names_base() -> None:
    steps = downgrade("0001_users")
    check_table_filter(Settings(tables=("users",)), steps)
    with pytest.raises(ConfigurationError) as err:
        check_table_filter(
            Settings(tables=("users",)), [*steps, PlannedStep("x", "0001_users", "other", False)]
        )
    assert "run `alembic downgrade base`" in str(err.value)


def test_a_filter_not_at_the_front_of_the_plan_names_the_next_revision() -> None:
    with pytest.raises(ConfigurationError) as err:
        check_table_filter(Settings(tables=("sessions",)), upgrade(*CHAIN))
    assert "The next revision to upgrade is 0001_users (users)" in str(err.value)
    assert "Preview others with -x dry-run=true" in str(err.value)


# --------------------------------------------------------------------------------------------
# checkpoints of stopped runs
# --------------------------------------------------------------------------------------------


def test_checkpoints_of_planned_revisions_and_rewraps_do_not_block() -> None:
    steps = upgrade("0002_invitations", "0003_guest_orders")
    stopped = [checkpoint("0002_invitations"), checkpoint("0001_users", "rewrap")]
    assert blocking_checkpoints(steps, stopped) == []
    check_checkpoints(CATALOG, steps, stopped, ["0001_users"])
    check_checkpoints(CATALOG, steps, [], ["0001_users"])


def test_a_stopped_upgrade_outside_the_command_blocks_it() -> None:
    """0003's upgrade stopped (not applied: the stamp is 0002); the command runs 0001 down."""
    stopped = checkpoint("0003_guest_orders", "upgrade", last_pk="17")
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, downgrade("0002_invitations"), [stopped], ["0002_invitations"])
    message = str(err.value)
    assert message.startswith("stopped before any work: a table outside this command")
    assert "this downgrade runs 0002_invitations only" in message
    assert "guest_orders (0003_guest_orders): an upgrade stopped after id=17" in message
    assert "the stamp is 0002_invitations (0003_guest_orders not applied" in message
    assert "finish that upgrade: `alembic upgrade 0003_guest_orders`" in message
    assert (
        "or undo it: `alembic stamp 0003_guest_orders`, then `alembic downgrade 0002_invitations`"
        in message
    )
    assert message.endswith("Then run this command again.")


def test_a_stopped_downgrade_of_an_applied_revision_names_its_commands() -> None:
    stopped = checkpoint("0002_invitations", "downgrade", last_pk=None)
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, [], [stopped], ["0003_guest_orders"])
    message = str(err.value)
    assert "this command runs no revision" in message
    assert "a downgrade stopped before its first batch" in message
    assert "(0002_invitations applied: every value expected in the new scheme)" in message
    assert "finish that downgrade: `alembic downgrade 0001_users`" in message
    assert (
        "or undo it: `alembic stamp 0001_users`, then `alembic upgrade 0003_guest_orders`"
        in message
    )


def test_a_stopped_run_of_the_first_revision_goes_back_to_base() -> None:
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, [], [checkpoint("0001_users")], ["0001_users"])
    message = str(err.value)
    assert "finish that upgrade: `alembic stamp base`, then `alembic upgrade 0001_users`" in message
    assert "or undo it: `alembic downgrade base`" in message


def test_at_base_nothing_is_applied() -> None:
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, [], [checkpoint("0004_delivery_addresses")], [])
    message = str(err.value)
    assert "while the stamp is base (0004_delivery_addresses not applied" in message
    assert "`alembic stamp 0004_delivery_addresses`, then `alembic downgrade base`" in message


def test_a_checkpoint_of_another_chain_says_to_check_the_database() -> None:
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, upgrade(*CHAIN), [checkpoint("9999_other")], [])
    message = str(err.value)
    assert "holds a checkpoint of revision '9999_other' (table somewhere_else)" in message
    assert "check DATABASE_URL" in message


@pytest.mark.parametrize("heads", [["0001_users", "0002_invitations"], ["9999_other"]])
def test_a_stamp_that_is_not_one_revision_of_this_chain_is_named(heads: list[str]) -> None:
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, [], [checkpoint("0003_guest_orders")], heads)
    message = str(err.value)
    assert f"while the version stamp is {', '.join(heads)}" in message
    assert "0003_guest_orders not applied" in message


def test_every_blocking_checkpoint_is_listed() -> None:
    stopped = [checkpoint("0003_guest_orders"), checkpoint("0005_notifications", "downgrade")]
    assert blocking_checkpoints(upgrade("0001_users"), stopped) == stopped
    with pytest.raises(PreflightError) as err:
        check_checkpoints(CATALOG, upgrade("0001_users"), stopped, [])
    message = str(err.value)
    assert "guest_orders (0003_guest_orders)" in message
    assert "notifications (0005_notifications)" in message
