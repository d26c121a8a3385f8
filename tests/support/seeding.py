"""Seed the application's tables with old-scheme ciphertext, and check what the migration left.

Talks to Vault through hvac over HTTP, like the application would; no mock anywhere. Batches
are split into requests of at most :data:`VAULT_BATCH_ITEMS` items: real servers refuse large
bodies (OpenBao: more than 1000 JSON strings, about 249 items with a context).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hvac.exceptions
import sqlalchemy as sa

from app_models.specs import ColumnSpec
from app_models.tables import context_string, metadata
from context_encryption.catalog import load_catalog

Plain = dict[str, str | None]  # encrypted column -> plaintext (None: NULL)

#: Most items in one Transit request of the test helpers (4 JSON strings an item with a context,
#: so a request stays far below OpenBao's 1000).
VAULT_BATCH_ITEMS = 100

#: Values that exercise the edges: empty string, unicode, quotes, long text.
SPECIAL_VALUES: tuple[str | None, ...] = (
    None,
    "",
    "Zoë Ærøskøbing — 東京都 🚀 naïve café",
    'O\'Brien "quoted" \\ back\\slash; DROP TABLE users; --',
    "x" * 20_000,
    " leading and trailing spaces ",
    "line one\nline two\ttabbed",
)


def encrypted_columns(table: str) -> tuple[ColumnSpec, ...]:
    """The encrypted columns of ``table`` and their companions, from its revision's snapshot."""
    return load_catalog().spec(table).columns


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def hmac_hex(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode("utf-8"), hashlib.sha256).hexdigest()


def sample_rows(table: str, n: int, salt: str = "") -> list[Plain]:
    """``n`` rows of plaintexts for ``table``: mostly ordinary values, every special value."""
    rows: list[Plain] = []
    cols = encrypted_columns(table)
    for i in range(n):
        row: Plain = {}
        for j, col in enumerate(cols):
            k = i + j
            if k % 5 == 4:
                row[col.name] = SPECIAL_VALUES[(i // 5 + j) % len(SPECIAL_VALUES)]
            else:
                row[col.name] = f"{table}.{col.name} value {i}{salt} ({'é' if i % 3 else 'e'})"
        rows.append(row)
    return rows


def pks_with(data: Mapping[Any, Plain], column: str, n: int = 1) -> list[Any]:
    """Primary keys (sorted) of seeded rows whose ``column`` holds a non-empty value.

    A test picks the rows it needs by what they hold, never by position: ``users`` and
    ``sessions`` have uuid keys, so the n-th row by key is a random one, and a seeded row may
    hold NULL or the empty string. Fails when fewer than ``n`` rows qualify.
    """
    found = sorted(pk for pk, row in data.items() if row[column])
    assert len(found) >= n, f"the seeded data has only {len(found)} rows with a {column}"
    return found


@dataclass
class Vault:
    """The test's view of Vault: an hvac client, the mount and the two key names."""

    client: Any
    mount: str
    old_key: str
    new_key: str

    def encrypt(self, key: str, texts: Sequence[str], contexts: Sequence[str | None]) -> list[str]:
        """Ciphertexts of ``texts`` (with each item's context), in order."""
        items: list[dict[str, str]] = []
        for text, ctx in zip(texts, contexts, strict=True):
            item = {"plaintext": b64(text)}
            if ctx is not None:
                item["context"] = b64(ctx)
            items.append(item)
        out: list[str] = []
        for lo in range(0, len(items), VAULT_BATCH_ITEMS):
            batch = items[lo : lo + VAULT_BATCH_ITEMS]
            resp = self.client.secrets.transit.encrypt_data(
                name=key, batch_input=batch, mount_point=self.mount
            )
            results = resp["data"]["batch_results"]
            assert len(results) == len(batch)
            errors = [r["error"] for r in results if r.get("error")]
            assert not errors, f"seeding: Vault refused to encrypt: {errors[:3]}"
            out += [r["ciphertext"] for r in results]
        return out

    def decrypt(
        self, key: str, ciphertexts: Sequence[str], contexts: Sequence[str | None]
    ) -> list[str | None]:
        """Plaintexts, or None for an item Vault could not decrypt."""
        items: list[dict[str, str]] = []
        for ct, ctx in zip(ciphertexts, contexts, strict=True):
            item = {"ciphertext": ct}
            if ctx is not None:
                item["context"] = b64(ctx)
            items.append(item)
        out: list[str | None] = []
        for lo in range(0, len(items), VAULT_BATCH_ITEMS):
            batch = items[lo : lo + VAULT_BATCH_ITEMS]
            try:
                resp = self.client.secrets.transit.decrypt_data(
                    name=key, batch_input=batch, mount_point=self.mount
                )
                results = resp["data"]["batch_results"]
            except hvac.exceptions.InvalidRequest as exc:
                # a batch with failed items: 400, the per-item results in the body
                results = (exc.json or {}).get("data", {}).get("batch_results")
                if not isinstance(results, list):
                    raise
            assert len(results) == len(batch)
            out += [
                None if r.get("error") else base64.b64decode(r["plaintext"]).decode("utf-8")
                for r in results
            ]
        return out


def seed(
    engine: sa.Engine,
    vault: Vault,
    table: str,
    rows: Sequence[Plain],
    hmac_secret: str,
    scheme: str = "old",
) -> dict[Any, Plain]:
    """Insert ``rows`` encrypted in ``scheme`` ("new": the new key's latest version, each
    column's context); returns plaintexts by primary key."""
    assert scheme in ("old", "new")
    t = metadata.tables[table]
    values: list[dict[str, Any]] = [{} for _ in rows]
    for col in encrypted_columns(table):
        idx = [i for i, r in enumerate(rows) if r[col.name] is not None]
        texts = [rows[i][col.name] or "" for i in idx]
        if scheme == "new":
            ctx = context_string(table, col.name)
            cts = vault.encrypt(vault.new_key, texts, [ctx] * len(texts))
        else:
            cts = vault.encrypt(vault.old_key, texts, [None] * len(texts))
        for i in range(len(rows)):
            values[i][col.name] = None
            if col.hmac:
                values[i][col.hmac] = None
        for i, ct in zip(idx, cts, strict=True):
            values[i][col.name] = ct
            if col.hmac:
                values[i][col.hmac] = hmac_hex(hmac_secret, rows[i][col.name] or "")
    if isinstance(t.c.id.type, sa.Uuid):
        for v in values:
            v["id"] = uuid.uuid4()
    out: dict[Any, Plain] = {}
    with engine.begin() as conn:
        for chunk in range(0, len(values), 1000):
            part = values[chunk : chunk + 1000]
            ids = conn.execute(sa.insert(t).returning(t.c.id), part).scalars().all()
            for pk, src in zip(ids, rows[chunk : chunk + 1000], strict=True):
                out[pk] = dict(src)
    return out


def read_table(engine: sa.Engine, table: str) -> dict[Any, dict[str, Any]]:
    t = metadata.tables[table]
    with engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))}


def values_to_check(
    table: str, column: str, stored: Mapping[Any, Plain], expected: Mapping[Any, Plain]
) -> tuple[list[Any], list[Any]]:
    """The rows whose expected ``column`` is not NULL and their stored values; fails on a NULL
    that changed (``stored`` and ``expected`` hold the same rows)."""
    for pk, row in expected.items():
        if row[column] is None:
            assert stored[pk][column] is None, f"{table}.{column} id={pk}: NULL changed"
    pks = [pk for pk in expected if expected[pk][column] is not None]
    return pks, [stored[pk][column] for pk in pks]


def assert_scheme(
    engine: sa.Engine,
    vault: Vault,
    table: str,
    expected: Mapping[Any, Plain],
    scheme: str,
    hmac_secret: str | None = None,
) -> None:
    """Every value of ``table`` is in ``scheme`` ("old" or "new") with its original plaintext.

    For the new scheme, every ciphertext also equals a fresh encryption of its plaintext with
    the same context: the deterministic property the application relies on for lookups.
    """
    assert scheme in ("old", "new")
    stored = read_table(engine, table)
    assert set(stored) == set(expected), f"{table}: rows differ"
    for col in encrypted_columns(table):
        pks, cts = values_to_check(table, col.name, stored, expected)
        assert all(isinstance(c, str) and c.startswith("vault:v") for c in cts)
        ctx = context_string(table, col.name) if scheme == "new" else None
        key = vault.new_key if scheme == "new" else vault.old_key
        plains = vault.decrypt(key, cts, [ctx] * len(cts))
        for pk, plain in zip(pks, plains, strict=True):
            assert plain is not None, f"{table}.{col.name} id={pk}: not in the {scheme} scheme"
            assert plain == expected[pk][col.name], f"{table}.{col.name} id={pk}: plaintext changed"
        if scheme == "new":
            fresh = vault.encrypt(
                key, [expected[pk][col.name] or "" for pk in pks], [ctx] * len(pks)
            )
            assert fresh == cts, f"{table}.{col.name}: not deterministic"
        if col.hmac and hmac_secret is not None:
            for pk in expected:
                text = expected[pk][col.name]
                want = None if text is None else hmac_hex(hmac_secret, text)
                assert stored[pk][col.hmac] == want, f"{table}.{col.hmac} changed"


def snapshot(engine: sa.Engine, tables: Iterable[str]) -> dict[str, dict[Any, dict[str, Any]]]:
    return {t: read_table(engine, t) for t in tables}
