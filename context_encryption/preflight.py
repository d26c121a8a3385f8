"""Preflight: everything a run needs, checked before the first row is touched.

:func:`run_preflight` checks, in this order, and collects every failure into one
:class:`~context_encryption.errors.PreflightError` whose message says what is wrong and how to fix
it:

1. the database answers ``SELECT 1`` (its URL is shown with the password hidden);
2. Vault answers ``sys/health`` (one request, no retries) and is unsealed;
3. the token is valid (``auth/token/lookup-self``) and has at least ``min_token_ttl`` seconds
   left, or is renewable (the report says which), and has no use limit;
4. ``sys/capabilities-self`` grants what the direction needs (upgrade: decrypt with the old key,
   encrypt and decrypt with the new key, read both keys; downgrade: the reverse). On a missing
   capability the message carries the HCL policy the token needs, with the real names;
5. the keys: the old key exists, is not derived and can decrypt (and encrypt, for a downgrade:
   otherwise it must be restored from its backup); the new key exists with ``derived=true`` and
   ``convergent_encryption=true`` (otherwise the exact ``vault write`` command that creates it);
6. the ciphertext versions found in the tables in scope are ones the source key still
   decrypts (``min_decryption_version`` .. ``latest_version``). Versions outside that range are
   trial-decrypted (a small sample) with the target scheme, so values a previous run already
   migrated do not count. PostgreSQL groups versions with a regular expression, SQLite with
   ``substr``/``instr``; other databases parse a sample in Python;
7. the HMAC secret is set when a column in scope has a companion;
8. (PostgreSQL) every table in scope shows all its rows to the current role: a table with
   row-level security enabled is refused unless the role is a superuser, has ``BYPASSRLS``, or
   owns the table and the table does not ``FORCE ROW LEVEL SECURITY``. Such a table is left out
   of the data checks (6, 7), which could not see all of it either. The run, verify and these
   checks read with ``row_security = off`` besides, so PostgreSQL raises rather than filters.

A check that cannot run because an earlier one failed (no database, Vault unreachable, token
invalid) is skipped, not reported twice. Nothing here reads or logs a value or a secret: only
ciphertext *prefixes* are looked at, and rows are counted, never shown.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from app_models.tables import ENCRYPTED_COLUMNS, TABLE_NAMES, context_string, metadata
from context_encryption.errors import (
    ContextEncryptionError,
    PreflightError,
    VaultRequestError,
    VaultUnavailableError,
)
from context_encryption.row_security import (
    ROW_SECURITY_FIX,
    disable_row_security,
    row_security_blockers,
)
from context_encryption.settings import Settings, safe_url
from context_encryption.transit import (
    DecryptRequest,
    KeyInfo,
    TransitClient,
    hmac_matches,
)
from context_encryption.vault_texts import PERMISSION_DENIED

log = logging.getLogger("context_encryption")

DirectionName = Literal["upgrade", "downgrade", "rewrap"]

#: A token with less time left than this (and not renewable) fails the preflight.
DEFAULT_MIN_TOKEN_TTL: Final = 15 * 60
#: Values per (column, version) trial-decrypted when a version is outside the key's range.
TRIAL_SAMPLE: Final = 20
#: Rows parsed in Python on databases that have neither regex nor instr.
GENERIC_SAMPLE: Final = 10_000

_VERSION = re.compile(r"^vault:v([0-9]{1,9}):")


@dataclass(frozen=True)
class Check:
    """One preflight check: ``ok``, what was found, and how to fix it when not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


@dataclass
class PreflightReport:
    """What the preflight found. ``versions`` maps ``table.column`` to {version: count}."""

    direction: DirectionName
    tables: tuple[str, ...]
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, dict[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> Check:
        check = Check(name, ok, detail, fix)
        self.checks.append(check)
        if ok:
            log.debug("preflight %s: %s", name, detail)
        return check

    def message(self) -> str:
        """All failures, each with its fix, as one operator-facing text."""
        fails = self.failures
        scope = f" ({self.direction} of {', '.join(self.tables)})" if self.tables else ""
        head = f"preflight failed{scope}: {len(fails)} problem(s); nothing was changed"
        parts = [head]
        for i, c in enumerate(fails, 1):
            text = f"{i}. [{c.name}] {c.detail}"
            if c.fix:
                text += "\n   Fix: " + c.fix.replace("\n", "\n   ")
            parts.append(text)
        return "\n".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "tables": list(self.tables),
            "ok": self.ok,
            "checks": [c.as_dict() for c in self.checks],
            "versions": {
                k: {str(v): n for v, n in sorted(d.items())} for k, d in self.versions.items()
            },
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------------------------
# what a direction needs
# --------------------------------------------------------------------------------------------


def required_capabilities(settings: Settings, direction: DirectionName) -> list[tuple[str, str]]:
    """(path, capability) pairs the run needs on the Transit mount."""
    m, old, new = settings.transit_mount, settings.old_key, settings.new_key
    source, target = (old, new) if direction == "upgrade" else (new, old)
    return [
        (f"{m}/decrypt/{source}", "update"),
        (f"{m}/encrypt/{target}", "update"),
        # the engine trial-decrypts with the target key to recognise already-migrated values
        (f"{m}/decrypt/{target}", "update"),
        (f"{m}/keys/{old}", "read"),
        (f"{m}/keys/{new}", "read"),
    ]


#: What the tool asks about its own token: a token made without the ``default`` policy (as
#: many production tokens are) needs these in its own policy.
TOKEN_SELF_PATHS: Final = (
    ("auth/token/lookup-self", "read", "  # the preflight and the run check the token"),
    ("auth/token/renew-self", "update", "  # a renewable token is renewed as the run goes"),
    ("sys/capabilities-self", "update", "  # the preflight checks these capabilities"),
)


def policy_hcl(settings: Settings) -> str:
    """The HCL policy a token needs for upgrade *and* downgrade (rollback), real names."""
    m, old, new = settings.transit_mount, settings.old_key, settings.new_key
    rows = [
        (f"{m}/keys/{old}", "read", ""),
        (f"{m}/keys/{new}", "read", ""),
        (f"{m}/decrypt/{old}", "update", ""),
        (f"{m}/encrypt/{old}", "update", "  # downgrade (rollback) only"),
        (f"{m}/decrypt/{new}", "update", ""),
        (f"{m}/encrypt/{new}", "update", ""),
        *TOKEN_SELF_PATHS,
    ]
    width = max(len(p) for p, _c, _n in rows) + 2
    lines = []
    for p, c, note in rows:
        quoted = f'"{p}"'
        lines.append(f'path {quoted:<{width}} {{ capabilities = ["{c}"] }}{note}')
    return "\n".join(lines)


def _has(caps: Sequence[str], needed: str) -> bool:
    if "deny" in caps:
        return False
    if "root" in caps:
        return True
    # an existing key's encrypt path is an update; "create" alone is not enough for it
    return needed in caps


def _duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _safe_url(url: sa.URL) -> str:
    return safe_url(url)


def _scrub(text: str, url: sa.URL) -> str:
    """An error text without the database password, should a driver ever echo it."""
    if url.password:
        text = text.replace(str(url.password), "***")
    for key, value in url.query.items():
        if any(s in key.lower() for s in ("password", "secret", "token", "key")):
            for v in (value,) if isinstance(value, str) else value:
                text = text.replace(v, "***")
    return text.splitlines()[0] if text else text


# --------------------------------------------------------------------------------------------
# row-level security
# --------------------------------------------------------------------------------------------


def check_row_security(report: PreflightReport, engine: Bind, tables: Sequence[str]) -> set[str]:
    """Refuse the tables whose rows the role may not all see; returns them."""
    with _connection(engine) as conn:
        if conn.dialect.name != "postgresql":
            return set()
        blockers = row_security_blockers(conn, tables)
    if not blockers:
        report.add("row security", True, "the role sees every row of the tables in scope")
        return set()
    report.add(
        "row security",
        False,
        "; ".join(blockers.values())
        + ": PostgreSQL would hide rows from the migration and from verify, which would leave "
        "them in the old scheme and still stamp the revision",
        ROW_SECURITY_FIX,
    )
    return set(blockers)


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------


Bind = sa.Engine | sa.Connection


@contextlib.contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    """A connection of ``bind``: a new one for an Engine, the caller's own for a Connection
    (used as is, inside whatever transaction it is in: preflight only reads)."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


def check_database(report: PreflightReport, engine: Bind) -> bool:
    url = engine.engine.url
    try:
        with _connection(engine) as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        orig = getattr(exc, "orig", None) or exc
        report.add(
            "database",
            False,
            f"cannot connect to the database {_safe_url(url)} "
            f"({type(orig).__name__}: {_scrub(str(orig), url)})",
            "check DATABASE_URL (or -x db=...): host, port, database name, user and password, "
            "and that the server is running and accepts connections from this host",
        )
        return False
    report.add("database", True, f"connected to {_safe_url(url)}")
    return True


def check_vault(report: PreflightReport, transit: TransitClient, addr: str) -> bool:
    try:
        status, body = transit.health()
    except VaultUnavailableError as exc:
        report.add(
            "vault",
            False,
            f"{exc}: nothing answers there",
            "check VAULT_ADDR (or -x vault-addr=...): scheme (http/https), host and port, and "
            "that Vault is running and reachable from this host (firewall, proxy, VPN)",
        )
        return False
    if status == 503 or body.get("sealed") is True:
        report.add(
            "vault",
            False,
            f"Vault at {addr} is sealed (sys/health answered {status})",
            "unseal it (vault operator unseal) or point VAULT_ADDR at an unsealed node",
        )
        return False
    if status == 501 or body.get("initialized") is False:
        report.add(
            "vault",
            False,
            f"Vault at {addr} is not initialised (sys/health answered {status})",
            "point VAULT_ADDR at the Vault that holds the Transit keys",
        )
        return False
    if status >= 400 and status not in (429, 472, 473):
        report.add(
            "vault",
            False,
            f"Vault at {addr} answered sys/health with HTTP {status}",
            "check VAULT_ADDR: it should be the Vault API address (e.g. https://vault:8200)",
        )
        return False
    version = body.get("version")
    report.add(
        "vault", True, f"Vault at {addr} is up" + (f" (version {version})" if version else "")
    )
    return True


def check_token(report: PreflightReport, transit: TransitClient, min_ttl: int) -> bool:
    try:
        info = transit.lookup_self()
    except (VaultRequestError, VaultUnavailableError) as exc:
        denied = PERMISSION_DENIED in str(exc)
        report.add(
            "token",
            False,
            "Vault refused the token lookup (auth/token/lookup-self: permission denied): the "
            "token is invalid, expired or revoked, or its policy lacks read on "
            "auth/token/lookup-self (a token made without the default policy needs it)"
            if denied
            else f"the token lookup failed: {exc}",
            "set VAULT_TOKEN to a valid token, e.g. one from "
            "'vault login' or 'vault token create -policy=<policy> -ttl=2h'; if `vault token "
            'lookup` works with it, add to its policy:\n  path "auth/token/lookup-self" '
            '{ capabilities = ["read"] }',
        )
        return False
    ttl = int(info.get("ttl") or 0)
    renewable = bool(info.get("renewable"))
    uses = int(info.get("num_uses") or 0)
    policies = ", ".join(str(p) for p in info.get("policies") or [])
    # a renewable token still cannot outlive its explicit_max_ttl
    max_ttl = int(info.get("explicit_max_ttl") or 0)
    created = int(info.get("creation_time") or 0)
    cap = created + max_ttl - int(time.time()) if max_ttl and created else None
    ok = True
    if ttl == 0 and info.get("expire_time") in (None, ""):
        detail = f"valid, never expires (policies: {policies})"
    elif ttl >= min_ttl:
        detail = f"valid, {_duration(ttl)} left (policies: {policies})"
    elif renewable and (cap is None or cap >= min_ttl):
        detail = (
            f"valid, only {_duration(ttl)} left but renewable: the run renews it as it goes "
            f"(policies: {policies})"
        )
        report.warnings.append(
            f"the Vault token has only {_duration(ttl)} left; it is renewable and the run "
            "renews it, but a token with a longer TTL is safer for a long run"
        )
    elif renewable:
        ok = False
        detail = (
            f"the token is renewable but its explicit_max_ttl ends in {_duration(max(cap or 0, 0))}"
            "; a run that outlives it stops half-way"
        )
    else:
        ok = False
        detail = (
            f"the token expires in {_duration(ttl)} and is not renewable; a run that outlives it "
            "stops half-way"
        )
    if ok and uses > 0:
        ok = False
        detail = f"the token is limited to {uses} more use(s); a run makes several per batch"
    if ok:
        report.add("token", True, detail)
        return True
    report.add(
        "token",
        False,
        detail,
        f"use a token with at least {_duration(min_ttl)} left, no use limit, or renewable, e.g. "
        "vault token create -policy=<policy> -ttl=4h",
    )
    return True  # the token works now: later checks can still run


def check_capabilities(
    report: PreflightReport, settings: Settings, transit: TransitClient, direction: DirectionName
) -> bool:
    needed = required_capabilities(settings, direction)
    policy = policy_hcl(settings)
    fix_tail = (
        "give the token a policy with (upgrade and rollback):\n"
        f"{policy}\n"
        "e.g. save it as context-encryption.hcl, then: vault policy write context-encryption "
        "context-encryption.hcl && vault token create -policy=context-encryption -ttl=4h"
    )
    try:
        caps = transit.capabilities_self([p for p, _c in needed])
    except (VaultRequestError, VaultUnavailableError) as exc:
        report.add(
            "capabilities",
            False,
            f"cannot check the token's capabilities (sys/capabilities-self: {exc}); the token "
            "was made without the default policy and its own policy lacks "
            "sys/capabilities-self",
            'add to its policy:\n  path "sys/capabilities-self" { capabilities = ["update"] }\n'
            "(the complete policy is in README, 'Vault policy')",
        )
        return False
    missing = [(p, c) for p, c in needed if not _has(caps.get(p, []), c)]
    if missing:
        report.add(
            "capabilities",
            False,
            "the token lacks "
            + ", ".join(
                f"{c} on {p} (has: {', '.join(caps.get(p, [])) or 'none'})" for p, c in missing
            )
            + f"; Vault would answer 'permission denied' during the {direction}",
            fix_tail,
        )
        return False
    report.add("capabilities", True, f"the token may {direction} ({len(needed)} paths checked)")
    return True


def _read_key(
    report: PreflightReport, transit: TransitClient, name: str
) -> tuple[bool, KeyInfo | None]:
    """(readable, info). Not readable: the capability check already said why."""
    try:
        return True, transit.read_key(name)
    except ContextEncryptionError as exc:
        report.add("keys", False, f"cannot read key {name!r}: {exc}", "see the capabilities check")
        return False, None


def check_keys(
    report: PreflightReport, settings: Settings, transit: TransitClient, direction: DirectionName
) -> tuple[KeyInfo | None, KeyInfo | None]:
    m, old_name, new_name = settings.transit_mount, settings.old_key, settings.new_key
    ok_old, old = _read_key(report, transit, old_name)
    ok_new, new = _read_key(report, transit, new_name)
    found: list[str] = []
    create_new = f"vault write -f {m}/keys/{new_name} derived=true convergent_encryption=true"

    if ok_old:
        if old is None:
            if direction == "downgrade":
                report.add(
                    "old key",
                    False,
                    f"the old key {old_name!r} does not exist in Vault (mount {m!r}): a rollback "
                    "re-encrypts with it, so it must exist",
                    f"restore it from its backup: vault write {m}/restore/{old_name} "
                    "backup=@<backup file> (the backup taken before the migration with "
                    f"vault read {m}/backup/{old_name}); or check VAULT_OLD_KEY / "
                    "VAULT_TRANSIT_MOUNT",
                )
            else:
                report.add(
                    "old key",
                    False,
                    f"the old key {old_name!r} does not exist in Vault (mount {m!r}): the data "
                    "cannot be decrypted",
                    "check VAULT_OLD_KEY (or -x vault-key=...) and VAULT_TRANSIT_MOUNT (or -x "
                    f"transit-mount=...); if it was deleted, restore it: vault write "
                    f"{m}/restore/{old_name} backup=@<backup file>",
                )
        elif old.derived:
            report.add(
                "old key",
                False,
                f"the old key {old_name!r} is derived: without a context Vault answers "
                "\"missing 'context' for key derivation\", so it is not the no-context key; the "
                "data may already use context-based encryption, or the key names are swapped",
                "check VAULT_OLD_KEY / VAULT_NEW_KEY (-x vault-key / -x new-vault-key); run "
                "'context-encryption verify' to see which scheme the data is in",
            )
        elif not old.supports_decryption or (
            direction == "downgrade" and not old.supports_encryption
        ):
            report.add(
                "old key",
                False,
                f"the old key {old_name!r} (type {old.type}) cannot "
                + ("encrypt and decrypt" if direction == "downgrade" else "decrypt"),
                "check VAULT_OLD_KEY: it must be the aes256-gcm96 (or similar) key the data "
                "was encrypted with",
            )
        else:
            found.append(f"old key {old_name!r} v{old.latest_version} (no context)")

    if ok_new:
        if new is None:
            if direction == "downgrade":
                report.add(
                    "new key",
                    False,
                    f"the new key {new_name!r} does not exist in Vault (mount {m!r}): values in "
                    "the new scheme cannot be decrypted for the rollback",
                    f"restore it from its backup: vault write {m}/restore/{new_name} "
                    "backup=@<backup file>; or check VAULT_NEW_KEY / VAULT_TRANSIT_MOUNT",
                )
            else:
                report.add(
                    "new key",
                    False,
                    f"the new key {new_name!r} does not exist in Vault (mount {m!r})",
                    f"create it with: {create_new}",
                )
        elif not (new.derived and new.convergent):
            report.add(
                "new key",
                False,
                f"the new key {new_name!r} exists but is not derived + convergent "
                f"(derived={str(new.derived).lower()}, "
                f"convergent_encryption={str(new.convergent).lower()}); these cannot be changed "
                "on an existing key",
                f"if the key holds no data yet, delete it (vault write {m}/keys/{new_name}/config "
                f"deletion_allowed=true; vault delete {m}/keys/{new_name}) and create it with: "
                f"{create_new}; or create a key under another name the same way and set "
                "VAULT_NEW_KEY (-x new-vault-key=...)",
            )
        elif not (new.supports_encryption and new.supports_decryption):
            report.add(
                "new key",
                False,
                f"the new key {new_name!r} (type {new.type}) cannot encrypt and decrypt",
                f"create an aes256-gcm96 key with: {create_new}",
            )
        else:
            found.append(f"new key {new_name!r} v{new.latest_version} (derived, convergent)")
    if found and not any(c.name in ("old key", "new key", "keys") for c in report.failures):
        report.add("keys", True, "; ".join(found))
    return (old if ok_old else None), (new if ok_new else None)


def check_hmac_secret(report: PreflightReport, settings: Settings, tables: Sequence[str]) -> None:
    companions = [
        f"{t}.{c.hmac_column}" for t in tables for c in ENCRYPTED_COLUMNS[t] if c.hmac_column
    ]
    if not companions:
        report.add("hmac secret", True, "no column in scope has an HMAC companion")
        return
    if settings.hmac_secret is None:
        report.add(
            "hmac secret",
            False,
            f"columns in scope have HMAC companions ({', '.join(companions)}) but "
            "ENCRYPTION_HMAC_SECRET is not set",
            "set ENCRYPTION_HMAC_SECRET to the secret the application computes the companions with",
        )
        return
    n = len(companions)
    report.add("hmac secret", True, f"set ({n} companion column{'s' if n != 1 else ''} in scope)")


#: companions sampled per column to check the HMAC secret
HMAC_SAMPLE: Final = 20


def check_hmac_sample(
    report: PreflightReport,
    *,
    settings: Settings,
    engine: Bind,
    transit: TransitClient,
    direction: DirectionName,
    tables: Sequence[str],
) -> None:
    """The HMAC secret matches at least some companions of each column in scope.

    A wrong secret makes every row an "HMAC verification failed" error; with on-error=skip the
    run would skip them all and still stamp the revision, so it is refused here.
    """
    secret = settings.hmac_secret.get() if settings.hmac_secret is not None else ""
    upgrade = direction == "upgrade"
    source_key, target_key = (
        (settings.old_key, settings.new_key) if upgrade else (settings.new_key, settings.old_key)
    )
    bad: list[str] = []
    with _connection(engine) as conn:
        disable_row_security(conn)
        inspector = sa.inspect(conn)
        for table in tables:
            if not inspector.has_table(table):
                continue
            t = metadata.tables[table]
            for col in ENCRYPTED_COLUMNS[table]:
                if not col.hmac_column:
                    continue
                value, companion = t.c[col.name], t.c[col.hmac_column]
                rows = conn.execute(
                    sa.select(value, companion)
                    .where(value.like("vault:v%"), companion.is_not(None))
                    .order_by(t.c.id)
                    .limit(HMAC_SAMPLE)
                ).all()
                if not rows:
                    continue
                ctx = context_string(table, col.name)
                try:
                    first = transit.decrypt_batch(
                        source_key,
                        [DecryptRequest(v, None if upgrade else ctx) for v, _c in rows],
                    )
                    retry = [i for i, r in enumerate(first) if not r.ok]
                    again = (
                        transit.decrypt_batch(
                            target_key,
                            [DecryptRequest(rows[i][0], ctx if upgrade else None) for i in retry],
                        )
                        if retry
                        else []
                    )
                except ContextEncryptionError:
                    continue  # the key and capability checks report Vault problems
                plain = [r.value if r.ok else None for r in first]
                for i, r in zip(retry, again, strict=True):
                    plain[i] = r.value if r.ok else None
                checked = [
                    hmac_matches(secret, base64.b64decode(p), c)
                    for p, (_v, c) in zip(plain, rows, strict=True)
                    if p is not None
                ]
                if checked and not any(checked):
                    bad.append(f"{table}.{col.hmac_column} (0 of {len(checked)} sampled match)")
    if bad:
        report.add(
            "hmac sample",
            False,
            "HMAC verification failed for every sampled companion of "
            + ", ".join(bad)
            + ": the HMAC secret matches none of them",
            "ENCRYPTION_HMAC_SECRET (or -x hmac-secret) is most likely not the secret the "
            "application computes the companions with; set the right one",
        )
    else:
        report.add("hmac sample", True, "the HMAC secret matches sampled companions")


# --------------------------------------------------------------------------------------------
# ciphertext versions in the data
# --------------------------------------------------------------------------------------------


def scan_table_versions(
    conn: sa.Connection, table: str, columns: Sequence[str]
) -> dict[str, dict[int, int]]:
    """{column: {key version: number of values}} for ``columns`` of ``table``.

    PostgreSQL: one scan of the table for all its columns (a lateral ``unnest``), so the
    preflight reads a large table once rather than once per column. Elsewhere: per column.
    """
    if conn.dialect.name != "postgresql" or not columns:
        return {c: scan_versions(conn, table, c) for c in columns}
    t = metadata.tables[table]
    names = pg.array([sa.literal(c, sa.Text) for c in columns])
    versions = pg.array([sa.func.substring(t.c[c], r"^vault:v([0-9]+):") for c in columns])
    x = (
        sa.func.unnest(names, versions)
        .table_valued(sa.column("col", sa.Text), sa.column("v", sa.Text))
        .render_derived(name="x")
        .lateral()
    )
    stmt = (
        sa.select(x.c.col, x.c.v, sa.func.count())
        .select_from(t)
        .join(x, sa.true())
        .where(x.c.v.is_not(None))
        .group_by(x.c.col, x.c.v)
    )
    out: dict[str, dict[int, int]] = {c: {} for c in columns}
    for col, v, n in conn.execute(stmt):
        if isinstance(v, str) and v.isdigit() and len(v) <= 9:
            out[col][int(v)] = out[col].get(int(v), 0) + int(n)
    return out


def scan_versions(conn: sa.Connection, table: str, column: str) -> dict[int, int]:
    """{key version: number of values} of ``table.column`` (values with a ``vault:v`` prefix).

    PostgreSQL: one grouped scan with a regular expression. SQLite: ``substr``/``instr``.
    Other databases: the first :data:`GENERIC_SAMPLE` values by primary key, parsed in Python.
    """
    t = metadata.tables[table]
    col = t.c[column]
    dialect = conn.dialect.name
    out: dict[int, int] = {}
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            ver: sa.ColumnElement[Any] = sa.func.substring(col, r"^vault:v([0-9]+):")
        else:
            rest = sa.func.substr(col, 8)
            ver = sa.func.substr(rest, 1, sa.func.instr(rest, ":") - 1)
        stmt = (
            sa.select(ver.label("v"), sa.func.count().label("n"))
            .where(col.like("vault:v%"))
            .group_by(ver)
        )
        for v, n in conn.execute(stmt):
            if isinstance(v, str) and v.isdigit() and len(v) <= 9:
                out[int(v)] = out.get(int(v), 0) + int(n)
        return out
    stmt2 = sa.select(col).where(col.like("vault:v%")).order_by(t.c.id).limit(GENERIC_SAMPLE)
    for (value,) in conn.execute(stmt2):
        m = _VERSION.match(value or "")
        if m:
            out[int(m.group(1))] = out.get(int(m.group(1)), 0) + 1
    return out


def _sample_ids(
    conn: sa.Connection, table: str, column: str, version: int, limit: int = 5
) -> list[str]:
    """Primary keys of a few values of ``version`` (to name rows; never their values)."""
    t = metadata.tables[table]
    col = t.c[column]
    stmt = sa.select(t.c.id).where(col.like(f"vault:v{version}:%")).order_by(t.c.id).limit(limit)
    return [str(pk) for (pk,) in conn.execute(stmt)]


def _sample_version(
    conn: sa.Connection, table: str, column: str, version: int
) -> list[tuple[str, str]]:
    """(primary key, value) of the first :data:`TRIAL_SAMPLE` values of ``version``."""
    t = metadata.tables[table]
    col = t.c[column]
    stmt = (
        sa.select(t.c.id, col)
        .where(col.like(f"vault:v{version}:%"))
        .order_by(t.c.id)
        .limit(TRIAL_SAMPLE)
    )
    return [(str(pk), v) for pk, v in conn.execute(stmt) if isinstance(v, str)]


def check_versions(
    report: PreflightReport,
    *,
    settings: Settings,
    engine: Bind,
    transit: TransitClient | None,
    direction: DirectionName,
    tables: Sequence[str],
    source: KeyInfo,
) -> None:
    """Every ciphertext version in scope is decryptable by the source key (or already migrated)."""
    upgrade = direction == "upgrade"
    target_key = settings.new_key if upgrade else settings.old_key
    lo, hi = source.min_decryption_version, source.latest_version
    problems: list[str] = []
    too_old: list[int] = []
    too_new = False
    missing = False
    with _connection(engine) as conn:
        disable_row_security(conn)
        inspector = sa.inspect(conn)
        for table in tables:
            if not inspector.has_table(table):
                missing = True
                report.add(
                    "data versions",
                    False,
                    f"table {table!r} does not exist in {_safe_url(engine.engine.url)}",
                    "the migration does not create the application's tables: check DATABASE_URL, "
                    "check DATABASE_URL: the chain migrates the tables the application already has",
                )
                continue
            scanned = scan_table_versions(conn, table, [c.name for c in ENCRYPTED_COLUMNS[table]])
            for col in ENCRYPTED_COLUMNS[table]:
                versions = scanned[col.name]
                report.versions[f"{table}.{col.name}"] = versions
                for v, n in sorted(versions.items()):
                    if lo <= max(v, 1) <= hi:  # Vault reads version 0 as version 1
                        continue
                    # a value a previous (interrupted) run already migrated is fine
                    if transit is not None:
                        sample = _sample_version(conn, table, col.name, v)
                        ctx = context_string(table, col.name) if upgrade else None
                        try:
                            results = transit.decrypt_batch(
                                target_key, [DecryptRequest(s, ctx) for _pk, s in sample]
                            )
                        except ContextEncryptionError:
                            results = []
                        unreadable = [
                            pk for (pk, _s), r in zip(sample, results, strict=True) if not r.ok
                        ]
                        if results and not unreadable:
                            continue
                        if results and len(unreadable) < len(results):
                            # The version is the target key's: these values are already
                            # migrated, but for a few that neither key reads (damaged). They
                            # are row errors of the run, not the column's.
                            report.warnings.append(
                                f"{table}.{col.name}: of {len(results)} sampled value(s) of "
                                f"version v{v} (already migrated), {len(unreadable)} cannot be "
                                f"decrypted by either key: id {', '.join(unreadable)}; the run "
                                "reports each such row as a failed row (-x on-error decides)"
                            )
                            continue
                    ids = ", ".join(_sample_ids(conn, table, col.name, v))
                    if v < lo:
                        too_old.append(v)
                        problems.append(
                            f"{table}.{col.name}: {n} value(s) of version v{v}, below "
                            f"min_decryption_version {lo} (id {ids})"
                        )
                    else:
                        too_new = True
                        problems.append(
                            f"{table}.{col.name}: {n} value(s) of version v{v}, above the key's "
                            f"latest version {hi} (id {ids})"
                        )
    which = "old" if upgrade else "new"
    if problems:
        fixes = []
        if too_old:
            fixes.append(
                f"lower the {which} key's min_decryption_version so Vault decrypts them again: "
                f"vault write {settings.transit_mount}/keys/{source.name}/config "
                f"min_decryption_version={min(too_old)}"
            )
        if too_new:
            fixes.append(
                f"values above the latest version were not made by the {which} key "
                f"{source.name!r} (another key, or the key was restored from an older backup): "
                "check VAULT_OLD_KEY / VAULT_NEW_KEY and VAULT_TRANSIT_MOUNT"
            )
        fix = "; ".join(fixes)
        if settings.on_error == "skip":
            # the operator chose to skip rows that cannot be migrated: they will be reported
            report.warnings.append(
                f"the {which} key {source.name!r} cannot decrypt some values; with "
                "on-error=skip their rows are left untouched and listed in the report: "
                + "; ".join(problems)
            )
            return
        report.add(
            "data versions",
            False,
            f"the {which} key {source.name!r} (versions {lo}..{hi} decryptable) cannot decrypt "
            "every value in scope: " + "; ".join(problems),
            fix,
        )
        return
    if missing:
        return
    seen = sorted({v for d in report.versions.values() for v in d})
    report.add(
        "data versions",
        True,
        f"ciphertext versions in scope {seen or 'none'}; the {which} key decrypts {lo}..{hi}",
    )


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def collect_preflight(
    settings: Settings,
    *,
    direction: DirectionName | Any,
    tables: Iterable[str],
    transit: TransitClient | None,
    engine: Bind | None,
    min_token_ttl: int = DEFAULT_MIN_TOKEN_TTL,
    scan_data: bool = True,
) -> PreflightReport:
    """Run every check and return the report, without raising for failures.

    ``transit`` is None when no client could be built (no address or no token): the Vault checks
    then fail with what to set. ``direction`` is ``"upgrade"``/``"downgrade"`` (or the engine's
    ``Direction``).
    """
    dname: DirectionName = (
        "downgrade" if str(getattr(direction, "value", direction)) == "downgrade" else "upgrade"
    )
    scope = tuple(t for t in TABLE_NAMES if t in set(tables))
    report = PreflightReport(dname, scope)

    db_ok = False
    if engine is None:
        report.add(
            "database",
            False,
            "no database URL",
            "set DATABASE_URL (or -x db=postgresql://user@host:5432/dbname)",
        )
    else:
        db_ok = check_database(report, engine)

    vault_ok = False
    if transit is None or not settings.vault_addr:
        report.add(
            "vault",
            False,
            "no Vault address or token",
            "set VAULT_ADDR and VAULT_TOKEN (or -x vault-addr=...)",
        )
    else:
        vault_ok = check_vault(report, transit, settings.vault_addr) and check_token(
            report, transit, min_token_ttl
        )

    old: KeyInfo | None = None
    new: KeyInfo | None = None
    if vault_ok and transit is not None:
        check_capabilities(report, settings, transit, dname)
        old, new = check_keys(report, settings, transit, dname)

    hidden: set[str] = set()
    if db_ok and engine is not None and scope:
        hidden = check_row_security(report, engine, scope)
    readable = tuple(t for t in scope if t not in hidden)

    source = old if dname == "upgrade" else new
    if scan_data and db_ok and engine is not None and readable and source is not None:
        check_versions(
            report,
            settings=settings,
            engine=engine,
            transit=transit,
            direction=dname,
            tables=readable,
            source=source,
        )

    check_hmac_secret(report, settings, scope)
    if (
        scan_data
        and db_ok
        and engine is not None
        and transit is not None
        and old is not None
        and new is not None
        and settings.hmac_secret is not None
    ):
        check_hmac_sample(
            report,
            settings=settings,
            engine=engine,
            transit=transit,
            direction=dname,
            tables=readable,
        )
    return report


def run_preflight(
    settings: Settings,
    *,
    direction: DirectionName | Any,
    tables: Sequence[str],
    transit: TransitClient | None,
    engine: Bind | None,
    min_token_ttl: int = DEFAULT_MIN_TOKEN_TTL,
) -> PreflightReport:
    """Check everything the run needs before its first row; raise :class:`PreflightError`.

    The error's message lists every failure with its fix. Returns the report when all pass
    (warnings, such as a short-lived renewable token, are logged).

    ``engine`` may be the migration's own Connection (then it is only read from, in whatever
    transaction it is in) or an Engine (a connection of its own is opened and closed).
    """
    report = collect_preflight(
        settings,
        direction=direction,
        tables=tables,
        transit=transit,
        engine=engine,
        min_token_ttl=min_token_ttl,
    )
    for w in report.warnings:
        log.warning("preflight: %s", w)
    if not report.ok:
        raise PreflightError(report.message())
    log.info(
        "preflight passed (%s of %s): %s",
        report.direction,
        ", ".join(report.tables) or "no table",
        "; ".join(f"{c.name}: {c.detail}" for c in report.checks),
    )
    return report


def require_database(engine: sa.Engine) -> None:
    """Raise :class:`PreflightError` (what is wrong, how to fix it) if ``engine`` cannot connect.

    For ``migrations/env.py`` to call before it opens its own connection, so an unreachable
    database gets the preflight's message instead of a driver traceback.
    """
    report = PreflightReport("upgrade", ())
    if not check_database(report, engine):
        raise PreflightError(report.message())
