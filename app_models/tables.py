"""The application's seven tables: its schema (SQLAlchemy Core).

The application owns this schema; the migration chain never creates it. Tests and the demo
create the tables from :data:`metadata`. Revisions do **not** import these definitions: each
keeps its own frozen snapshot of the columns it touches, so a later schema change cannot alter
what an old revision does. What a revision migrates (its table, encrypted columns and HMAC
companions) comes from those snapshots, through the catalog
(:func:`context_encryption.catalog.load_catalog`).
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

metadata = sa.MetaData()


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


def context_string(table: str, column: str) -> str:
    """The Transit context of a column in the new scheme: ``<table>.<column>``."""
    return f"{table}.{column}"
