"""The application's seven tables and the registry of their encrypted columns.

The application owns this schema; the migration chain never creates it. Tests and the demo
create the tables from :data:`metadata`. Revisions do **not** import these definitions: each
keeps its own frozen snapshot of the columns it touches, so a later schema change cannot alter
what an old revision does. :data:`ENCRYPTED_COLUMNS` is the one registry the tests, the demo and
the tools share.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa

metadata = sa.MetaData()


@dataclass(frozen=True)
class EncryptedColumn:
    """An encrypted ``text`` column, optionally with an HMAC companion ``<name>_hmac``."""

    name: str
    has_hmac: bool = False

    @property
    def hmac_column(self) -> str | None:
        return f"{self.name}_hmac" if self.has_hmac else None


def _enc(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text, nullable=True)


def _uuid_pk() -> sa.Column[uuid.UUID]:
    return sa.Column("id", sa.Uuid, primary_key=True, default=uuid.uuid4)


def _bigint_pk() -> sa.Column[int]:
    # SQLite (the embedded demo) only auto-numbers an INTEGER PRIMARY KEY.
    return sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True
    )


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


users = sa.Table(
    "users",
    metadata,
    _uuid_pk(),
    _enc("email"),
    _enc("email_hmac"),
    _enc("first_name"),
    _enc("last_name"),
    _created_at(),
)

invitations = sa.Table(
    "invitations",
    metadata,
    _bigint_pk(),
    _enc("email"),
    _enc("email_hmac"),
    _enc("token"),
    _enc("token_hmac"),
    _created_at(),
)

guest_orders = sa.Table(
    "guest_orders",
    metadata,
    _bigint_pk(),
    _enc("customer_name"),
    _enc("customer_phone"),
    _enc("customer_phone_hmac"),
    _enc("customer_email"),
    _enc("customer_email_hmac"),
    _enc("ip_address"),
    _enc("user_agent"),
    _created_at(),
)

delivery_addresses = sa.Table(
    "delivery_addresses",
    metadata,
    _bigint_pk(),
    _enc("full_address"),
    _enc("geocoding_result"),
    _created_at(),
)

notifications = sa.Table(
    "notifications",
    metadata,
    _bigint_pk(),
    _enc("recipient"),
    _enc("body"),
    _created_at(),
)

sessions = sa.Table(
    "sessions",
    metadata,
    _uuid_pk(),
    _enc("session_id"),
    _enc("session_id_hmac"),
    _enc("ip_address"),
    _created_at(),
)

consent_records = sa.Table(
    "consent_records",
    metadata,
    _bigint_pk(),
    _enc("ip_address"),
    _created_at(),
)

E = EncryptedColumn

#: Encrypted columns per table, in migration order (the order of the revision chain).
ENCRYPTED_COLUMNS: dict[str, tuple[EncryptedColumn, ...]] = {
    "users": (E("email", True), E("first_name"), E("last_name")),
    "invitations": (E("email", True), E("token", True)),
    "guest_orders": (
        E("customer_name"),
        E("customer_phone", True),
        E("customer_email", True),
        E("ip_address"),
        E("user_agent"),
    ),
    "delivery_addresses": (E("full_address"), E("geocoding_result")),
    "notifications": (E("recipient"), E("body")),
    "sessions": (E("session_id", True), E("ip_address")),
    "consent_records": (E("ip_address"),),
}

#: Revision id of each table's data migration.
REVISION_OF_TABLE: dict[str, str] = {
    "users": "0001_users",
    "invitations": "0002_invitations",
    "guest_orders": "0003_guest_orders",
    "delivery_addresses": "0004_delivery_addresses",
    "notifications": "0005_notifications",
    "sessions": "0006_sessions",
    "consent_records": "0007_consent_records",
}

TABLE_NAMES: tuple[str, ...] = tuple(ENCRYPTED_COLUMNS)


def context_string(table: str, column: str) -> str:
    """The Transit context of a column in the new scheme: ``<table>.<column>``."""
    return f"{table}.{column}"
