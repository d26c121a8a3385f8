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
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app_models.tables import ENCRYPTED_COLUMNS, TABLE_NAMES, metadata
from context_encryption.openbao import OpenBaoError, start_dev_server
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


def fake_value(table: str, column: str, i: int) -> str | None:
    """Deterministic, realistic-looking demo data; every 17th value is NULL, some empty."""
    if (i + len(column)) % 17 == 0:
        return None
    if (i + len(column)) % 41 == 0:
        return ""
    first, last = FIRST[i % len(FIRST)], LAST[(i // 3) % len(LAST)]
    if "email" in column or column == "recipient":
        return f"{first.lower()}.{last.lower()}{i}@example.com"
    if "name" in column:
        return (
            first
            if column == "first_name"
            else last
            if column == "last_name"
            else f"{first} {last}"
        )
    if "phone" in column:
        return f"+1-555-{i:07d}"
    if column == "ip_address":
        return f"10.{i % 250}.{(i // 250) % 250}.{i % 7 + 1}"
    if column == "user_agent":
        return f"Mozilla/5.0 (PointOfSale {i % 9}.0)"
    if column == "full_address":
        return f"{i} Market Street, Springfield"
    if column == "geocoding_result":
        return f'{{"lat": {40 + i % 10}.{i:04d}, "lng": -{70 + i % 5}.{i:04d}}}'
    if column == "body":
        return f"Your order #{i} is ready for pickup."
    return f"{table}-{column}-{secrets.token_hex(8)}"


def seed(engine: sa.Engine, transit: TransitClient, old_key: str, hmac_secret: str) -> int:
    total = 0
    for table in TABLE_NAMES:
        t = metadata.tables[table]
        n = ROWS[table]
        cols = ENCRYPTED_COLUMNS[table]
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for col in cols:
            plain = [fake_value(table, col.name, i) for i in range(n)]
            idx = [i for i, v in enumerate(plain) if v is not None]
            reqs = [
                EncryptRequest(base64.b64encode((plain[i] or "").encode()).decode(), None)
                for i in idx
            ]
            results = [
                res
                for lo in range(0, len(reqs), SEED_CHUNK)
                for res in transit.encrypt_batch(
                    old_key, reqs[lo : lo + SEED_CHUNK], key_version=None
                )
            ]
            for i in range(n):
                rows[i][col.name] = None
                if col.hmac_column:
                    rows[i][col.hmac_column] = None
            for i, res in zip(idx, results, strict=True):
                if res.value is None:
                    raise RuntimeError(f"seeding {table}.{col.name} failed: {res.error}")
                rows[i][col.name] = res.value
                if col.hmac_column:
                    rows[i][col.hmac_column] = hmac_hex(hmac_secret, (plain[i] or "").encode())
        if isinstance(t.c.id.type, sa.Uuid):
            for r in rows:
                r["id"] = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(sa.insert(t), rows)
        total += n
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "demo-out"), help="working directory")
    parser.add_argument(
        "--db",
        help="run on this (empty) database instead of SQLite, e.g. "
        "postgresql://postgres@127.0.0.1:5432/demo; the demo creates the seven tables in it",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db_path = out / "pos.sqlite"
    url = args.db or f"sqlite:///{db_path}"
    if args.db:
        engine = sa.create_engine(parse_database_url(args.db), poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            present = [t for t in TABLE_NAMES if sa.inspect(conn).has_table(t)]
        engine.dispose()
        if present:
            raise SystemExit(
                f"demo: the database already has {', '.join(present)}; give it an empty database"
            )
        url = parse_database_url(args.db).render_as_string(hide_password=False)
    bindir = Path(sys.executable).parent
    hmac_secret = secrets.token_urlsafe(24)

    banner("starting an OpenBao dev server (Vault's open-source fork, in memory)")
    try:
        server = start_dev_server()
    except OpenBaoError as exc:
        raise SystemExit(f"demo: {exc}") from None
    with server:
        server.enable_transit("transit")
        print(f"OpenBao dev server at {server.addr}, Transit mounted at transit/", flush=True)
        settings = Settings(vault_addr=server.addr, vault_token=Secret(server.token))
        transit = TransitClient.from_settings(settings)
        client = transit.hvac_client
        client.secrets.transit.create_key(name=settings.old_key)
        client.secrets.transit.create_key(
            name=settings.new_key, derived=True, convergent_encryption=True
        )
        print(f"keys: {settings.old_key} (no context), {settings.new_key} (derived, convergent)")

        where = safe_url(sa.make_url(url)) if args.db else db_path
        banner(f"creating the seven tables in {where}")
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        metadata.create_all(engine)
        n = seed(engine, transit, settings.old_key, hmac_secret)
        transit.close()
        print(f"seeded {n} rows in 7 tables, encrypted with {settings.old_key} without context")
        before = sample(engine)

        env = {
            **os.environ,
            "DATABASE_URL": url,
            "VAULT_ADDR": server.addr,
            "VAULT_TOKEN": server.token,
            "ENCRYPTION_HMAC_SECRET": hmac_secret,
        }
        alembic = [str(bindir / "alembic")]
        verify = [str(bindir / "context-encryption"), "verify"]

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
        engine.dispose()
    banner(f"done: the demo database is {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
