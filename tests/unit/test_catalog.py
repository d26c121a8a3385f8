"""The catalog: what each revision migrates, read from the revisions' own snapshots."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app_models.tables import metadata
from context_encryption.catalog import load_catalog

#: DESIGN.md's table of revisions, written out once here to check the chain against it.
DESIGN = {
    "0001_users": ("users", "email*", "first_name", "last_name"),
    "0002_invitations": ("invitations", "email*", "token*"),
    "0003_guest_orders": (
        "guest_orders",
        "customer_name",
        "customer_phone*",
        "customer_email*",
        "ip_address",
        "user_agent",
    ),
    "0004_delivery_addresses": ("delivery_addresses", "full_address", "geocoding_result"),
    "0005_notifications": ("notifications", "recipient", "body"),
    "0006_sessions": ("sessions", "session_id*", "ip_address"),
    "0007_consent_records": ("consent_records", "ip_address"),
}


def test_the_chain_is_the_design_in_order() -> None:
    catalog = load_catalog()
    assert catalog.revisions == tuple(DESIGN)
    for revision, (table, *columns) in DESIGN.items():
        entry = catalog.entry(table)
        assert entry.revision == revision
        assert [c.name + ("*" if c.hmac else "") for c in entry.spec.columns] == columns
        assert all(c.hmac in (None, f"{c.name}_hmac") for c in entry.spec.columns)
    assert catalog.version_table == "alembic_version_encryption"


def test_every_snapshot_column_is_a_text_column_of_the_application() -> None:
    for entry in load_catalog().entries:
        app = metadata.tables[entry.table]
        for col in entry.spec.columns:
            for name in (col.name, col.hmac):
                if name is not None:
                    assert isinstance(app.c[name].type, sa.Text), (entry.table, name)
                    assert app.c[name].nullable


def test_lookups() -> None:
    catalog = load_catalog()
    assert catalog.revision_of("sessions") == "0006_sessions"
    assert catalog.table_of("0003_guest_orders") == "guest_orders"
    assert catalog.table_of("9999_other") is None
    assert catalog.applied_tables(None) == ()
    assert catalog.applied_tables("0002_invitations") == ("users", "invitations")
    with pytest.raises(KeyError):
        catalog.applied_tables("9999_other")
    with pytest.raises(KeyError):
        catalog.spec("no_such_table")
