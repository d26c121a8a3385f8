"""The one-command demo on the embedded default (SQLite), run by ``scripts/demo``.

It starts a throwaway OpenBao dev server (the open-source fork of Vault, same Transit engine
and API; ``context_encryption.openbao``), mounts Transit and creates the two keys, creates a SQLite
database with the seven tables and a few thousand rows encrypted the old way (no context), then
drives the real ``alembic`` command line: ``upgrade head`` (progress visible), a before/after
sample of ciphertexts, ``context-encryption verify``, ``downgrade base`` and ``verify`` again.

Everything it creates lives under ``demo-out/`` (or ``--out``) and in the server's memory (it
forgets every key when it stops); the Vault token and the HMAC secret are random for each run
and only passed through the environment of the child processes. No plaintext is printed: the
sample shows ciphertexts.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from app_models.specs import TableSpec
from app_models.tables import metadata
from context_encryption.catalog import load_catalog
from context_encryption.openbao import DevServer, OpenBaoError, start_dev_server
from context_encryption.settings import Secret, Settings, parse_database_url, safe_url
from context_encryption.transit import EncryptRequest, TransitClient, hmac_hex

ROOT = Path(__file__).resolve().parent.parent
ROWS = {
    "users": 2000,
    "invitations": 600,
    "guest_orders": 1200,
    "delivery_addresses": 600,
    "notifications": 600,
    "sessions": 800,
    "consent_records": 600,
}
#: Items per seeding request: OpenBao refuses a body of more than 1000 JSON strings (2 per
#: item without a context), whatever the tool's own request splitting does.
SEED_CHUNK = 200
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Zoë", "Łukasz", "Søren", "美咲", "José"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Ørsted", "Nuñez", "Kowalski"]


def _person(i: int) -> tuple[str, str]:
    return FIRST[i % len(FIRST)], LAST[(i // 3) % len(LAST)]


def _email(i: int) -> str:
    first, last = _person(i)
    return f"{first.lower()}.{last.lower()}{i}@example.com"


def _name(column: str, i: int) -> str:
    first, last = _person(i)
    return {"first_name": first, "last_name": last}.get(column, f"{first} {last}")


#: What each kind of column holds, by exact column name.
_BY_COLUMN: Final[dict[str, Callable[[int], str]]] = {
    "recipient": _email,
    "ip_address": lambda i: f"10.{i % 250}.{(i // 250) % 250}.{i % 7 + 1}",
    "user_agent": lambda i: f"Mozilla/5.0 (PointOfSale {i % 9}.0)",
    "full_address": lambda i: f"{i} Market Street, Springfield",
    "geocoding_result": lambda i: f'{{"lat": {40 + i % 10}.{i:04d}, "lng": -{70 + i % 5}.{i:04d}}}',
    "body": lambda i: f"Your order #{i} is ready for pickup.",
}


def fake_value(table: str, column: str, i: int) -> str | None:
    """Deterministic, realistic-looking demo data; every 17th value is NULL, some empty."""
    if (i + len(column)) % 17 == 0:
        return None
    if (i + len(column)) % 41 == 0:
        return ""
    if "email" in column:
        return _email(i)
    if "name" in column:
        return _name(column, i)
    if "phone" in column:
        return f"+1-555-{i:07d}"
    make = _BY_COLUMN.get(column)
    return make(i) if make is not None else f"{table}-{column}-{secrets.token_hex(8)}"


def _encrypt_column(
    transit: TransitClient, old_key: str, table: str, column: str, plain: list[str | None]
) -> dict[int, str]:
    """The old-scheme ciphertext of each non-NULL value, by row index."""
    idx = [i for i, v in enumerate(plain) if v is not None]
    reqs = [EncryptRequest(base64.b64encode((plain[i] or "").encode()).decode(), None) for i in idx]
    results = [
        res
        for lo in range(0, len(reqs), SEED_CHUNK)
        for res in transit.encrypt_batch(old_key, reqs[lo : lo + SEED_CHUNK], key_version=None)
    ]
    out: dict[int, str] = {}
    for i, res in zip(idx, results, strict=True):
        if res.value is None:
            raise RuntimeError(f"seeding {table}.{column} failed: {res.error}")
        out[i] = res.value
    return out


def _rows(
    transit: TransitClient, old_key: str, hmac_secret: str, spec: TableSpec, n: int
) -> list[dict[str, Any]]:
    """``n`` rows of the table: every encrypted column old-scheme, with its HMAC companion."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for col in spec.columns:
        plain = [fake_value(spec.name, col.name, i) for i in range(n)]
        encrypted = _encrypt_column(transit, old_key, spec.name, col.name, plain)
        for i, row in enumerate(rows):
            row[col.name] = encrypted.get(i)
            if col.hmac:
                value = plain[i]
                row[col.hmac] = None if value is None else hmac_hex(hmac_secret, value.encode())
    return rows


def seed(engine: sa.Engine, transit: TransitClient, old_key: str, hmac_secret: str) -> int:
    """Fill the chain's tables with rows encrypted the old way; the number of rows."""
    catalog = load_catalog()
    total = 0
    for table in catalog.tables:
        t = metadata.tables[table]
        rows = _rows(transit, old_key, hmac_secret, catalog.spec(table), ROWS[table])
        if isinstance(t.c.id.type, sa.Uuid):
            for r in rows:
                r["id"] = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(sa.insert(t), rows)
        total += len(rows)
    return total


def sample(engine: sa.Engine, n: int = 3) -> list[tuple[str, str | None]]:
    users = metadata.tables["users"]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(users.c.id, users.c.email)
            .where(users.c.email.is_not(None))
            .order_by(users.c.id)
            .limit(n)
        )
        return [(str(r.id), r.email) for r in rows]


def short(ct: str | None, width: int = 46) -> str:
    if ct is None:
        return "NULL"
    return ct if len(ct) <= width else ct[: width - 1] + "…"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(cmd: list[str], env: dict[str, str], *, check: bool = True) -> int:
    shown = [Path(cmd[0]).name, *cmd[1:]]
    print("$ " + " ".join(shown), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)  # noqa: S603 - our own tools
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(cmd[:2])} failed with exit code {proc.returncode}")
    return proc.returncode


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "demo-out"), help="working directory")
    parser.add_argument(
        "--db",
        help="run on this (empty) database instead of SQLite, e.g. "
        "postgresql://postgres@127.0.0.1:5432/demo; the demo creates the seven tables in it",
    )
    return parser.parse_args(argv)


def _database(db: str | None, out: Path) -> tuple[str, str | Path]:
    """(URL the demo and its children use, where it is as shown); a given database must be
    empty of the chain's tables."""
    if not db:
        path = out / "pos.sqlite"
        return f"sqlite:///{path}", path
    url = parse_database_url(db)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        present = [t for t in load_catalog().tables if sa.inspect(conn).has_table(t)]
    engine.dispose()
    if present:
        raise SystemExit(
            f"demo: the database already has {', '.join(present)}; give it an empty database"
        )
    return url.render_as_string(hide_password=False), safe_url(url)


def _create_keys(server: DevServer) -> Settings:
    """Transit mounted, the old and the new key created; the settings naming them."""
    server.enable_transit("transit")
    print(f"OpenBao dev server at {server.addr}, Transit mounted at transit/", flush=True)
    settings = Settings(vault_addr=server.addr, vault_token=Secret(server.token))
    transit = TransitClient.from_settings(settings)
    try:
        keys = transit.hvac_client.secrets.transit
        keys.create_key(name=settings.old_key)
        keys.create_key(name=settings.new_key, derived=True, convergent_encryption=True)
    finally:
        transit.close()
    print(f"keys: {settings.old_key} (no context), {settings.new_key} (derived, convergent)")
    return settings


def _seed_database(url: str, where: str | Path, settings: Settings, hmac_secret: str) -> sa.Engine:
    banner(f"creating the seven tables in {where}")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    metadata.create_all(engine)
    transit = TransitClient.from_settings(settings)
    try:
        n = seed(engine, transit, settings.old_key, hmac_secret)
    finally:
        transit.close()
    tables = len(load_catalog().tables)
    print(f"seeded {n} rows in {tables} tables, encrypted with {settings.old_key} without context")
    return engine


def _round_trip(engine: sa.Engine, env: dict[str, str]) -> None:
    """``alembic upgrade head``, a before/after sample, verify, ``downgrade base``, verify."""
    bindir = Path(sys.executable).parent
    alembic = [str(bindir / "alembic")]
    verify = [str(bindir / "context-encryption"), "verify"]
    before = sample(engine)

    banner("alembic upgrade head")
    run([*alembic, "upgrade", "head"], env)
    after = sample(engine)
    banner("before / after: users.email (ciphertexts only)")
    for (pk, old), (_pk, new) in zip(before, after, strict=True):
        print(f"id={pk}\n  before {short(old)}\n  after  {short(new)}")
    print("(after: deterministic — the same e-mail in users.email always encrypts the same)")

    banner("context-encryption verify (expects every table in the new scheme)")
    run(verify, env)

    banner("alembic downgrade base")
    run([*alembic, "downgrade", "base"], env)

    banner("context-encryption verify (expects every table back in the old scheme)")
    run(verify, env)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    url, where = _database(args.db, out)
    hmac_secret = secrets.token_urlsafe(24)

    banner("starting an OpenBao dev server (Vault's open-source fork, in memory)")
    try:
        server = start_dev_server()
    except OpenBaoError as exc:
        raise SystemExit(f"demo: {exc}") from None
    with server:
        settings = _create_keys(server)
        engine = _seed_database(url, where, settings, hmac_secret)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "VAULT_ADDR": server.addr,
            "VAULT_TOKEN": server.token,
            "ENCRYPTION_HMAC_SECRET": hmac_secret,
        }
        try:
            _round_trip(engine, env)
        finally:
            engine.dispose()
    banner(f"done: the demo database is {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
