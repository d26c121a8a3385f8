"""Run settings: read once from the environment and ``alembic -x``, validated before any work.

Every ``-x`` name of DESIGN.md's configuration table is accepted; an unknown name or a value
that does not parse raises :class:`~app_models.errors.ConfigurationError` naming it, so a typo
such as ``-x dry-rum=true`` or ``-x dry-run=maybe`` can never start a live run.
Secrets are kept in :class:`Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Final, Literal

import sqlalchemy as sa

from app_models.errors import ConfigurationError
from app_models.tables import TABLE_NAMES

PlaintextPolicy = Literal["fail", "encrypt", "skip"]
OnErrorPolicy = Literal["abort", "skip"]

DEFAULT_BATCH_SIZE: Final = 1000
DEFAULT_WORKERS: Final = 4
MAX_BATCH_SIZE: Final = 10_000
MAX_WORKERS: Final = 64
#: Items per Transit request by default: OpenBao's default ``max_request_json_strings`` (1,000)
#: allows 199 items of 5 strings (value and context with their keys, ``key_version``'s key);
#: HashiCorp Vault's ``max_json_array_element_count`` (10,000) is far above. 150 leaves a margin
#: for both (see ../shared/vault-transit.md §10).
DEFAULT_VAULT_BATCH_ITEMS: Final = 150
#: Vault's ``max_json_array_element_count``: no setting may go above it.
MAX_VAULT_BATCH_ITEMS: Final = 10_000


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or reports."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, already validated."""

    database_url: sa.URL | None = None
    vault_addr: str | None = None
    vault_token: Secret | None = field(default=None, repr=False)
    vault_namespace: str | None = None
    vault_cacert: str | None = None
    transit_mount: str = "transit"
    old_key: str = "pos-encryption-key"
    new_key: str = "pos-context-key"
    hmac_secret: Secret | None = field(default=None, repr=False)
    tables: tuple[str, ...] | None = None  # None: all tables
    batch_size: int = DEFAULT_BATCH_SIZE
    vault_batch_items: int = DEFAULT_VAULT_BATCH_ITEMS
    dry_run: bool = False
    plaintext: PlaintextPolicy = "fail"
    on_error: OnErrorPolicy = "abort"
    report: str | None = None
    workers: int = DEFAULT_WORKERS
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 120_000

    def table_selected(self, table: str) -> bool:
        return self.tables is None or table in self.tables

    def public_dict(self) -> dict[str, object]:
        """Settings safe to print or put into a report (no secret, no password)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = "set"
            elif isinstance(value, sa.URL):
                value = safe_url(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min|m|h)?\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_DURATION_FACTOR = {None: 1, "ms": 1, "s": 1000, "min": 60_000, "m": 60_000, "h": 3_600_000}


def _parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigurationError(f"-x {name}={raw!r} is not a boolean; use true or false")


def _parse_int(name: str, raw: str, lo: int, hi: int) -> int:
    if not _INTEGER.match(raw):
        raise ConfigurationError(f"-x {name}={raw!r} is not a whole number")
    value = int(raw.strip())
    if not lo <= value <= hi:
        raise ConfigurationError(f"-x {name}={value} is out of range ({lo} to {hi})")
    return value


def _parse_duration_ms(name: str, raw: str) -> int:
    m = _DURATION.match(raw)
    if not m or (m.group(2) is None and int(m.group(1)) != 0):
        raise ConfigurationError(
            f"-x {name}={raw!r} is not a duration with a unit; use e.g. 500ms, 5s, 2min, "
            "or 0 to disable"
        )
    return int(m.group(1)) * _DURATION_FACTOR[m.group(2)]


def _parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigurationError(f"-x {name}={raw!r} must be one of: {', '.join(choices)}")
    return value


def _parse_tables(raw: str) -> tuple[str, ...] | None:
    names = [t.strip() for t in raw.split(",") if t.strip()]
    if not names:
        raise ConfigurationError("-x tables= is empty; name tables or use tables=all")
    if names == ["all"]:
        return None
    unknown = [n for n in names if n not in TABLE_NAMES]
    if unknown:
        raise ConfigurationError(
            f"-x tables names unknown table(s) {', '.join(unknown)}; "
            f"known tables: {', '.join(TABLE_NAMES)}"
        )
    return tuple(t for t in TABLE_NAMES if t in names)  # chain order, no duplicates


_SECRET_QUERY_KEYS: Final = ("password", "secret", "token", "key")


def safe_url(url: sa.URL) -> str:
    """The URL as text for logs and reports: the password and secret-looking query values masked.

    ``hide_password`` only masks the password part; libpq also takes ``?password=`` (and
    ``sslpassword``, ``sslkey``...) in the query string.
    """
    masked = {
        k: ("***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v)
        for k, v in url.query.items()
    }
    return url.set(query=masked).render_as_string(hide_password=True)


def parse_database_url(raw: str) -> sa.URL:
    """Parse a database URL; ``postgresql://`` and ``postgres://`` map to psycopg 3."""
    try:
        url = sa.make_url(raw.strip())
    except Exception:
        raise ConfigurationError(
            "the database URL does not parse (DATABASE_URL or -x db); "
            "expected e.g. postgresql://user@host:5432/dbname"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


#: -x name -> environment variable (None: -x only)
X_NAMES: Final[dict[str, str | None]] = {
    "db": "DATABASE_URL",
    "vault-addr": "VAULT_ADDR",
    "vault-token": "VAULT_TOKEN",
    "vault-namespace": "VAULT_NAMESPACE",
    "vault-cacert": "VAULT_CACERT",
    "transit-mount": "VAULT_TRANSIT_MOUNT",
    "vault-key": "VAULT_OLD_KEY",
    "new-vault-key": "VAULT_NEW_KEY",
    "hmac-secret": "ENCRYPTION_HMAC_SECRET",
    "tables": None,
    "batch-size": None,
    "vault-batch-items": None,
    "dry-run": None,
    "plaintext": None,
    "on-error": None,
    "report": None,
    "workers": None,
    "lock-timeout": None,
    "statement-timeout": None,
}

_KEY_NAME = re.compile(r"^\w(?:[\w.-]*\w)?$", re.ASCII)


def _key_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not _KEY_NAME.match(value):
        raise ConfigurationError(f"-x {name}={raw!r} is not a valid Transit key name")
    return value


def load_settings(x_args: Mapping[str, str], environ: Mapping[str, str]) -> Settings:
    """Build :class:`Settings` from ``-x`` arguments over environment variables.

    Raises :class:`ConfigurationError` for an unknown ``-x`` name or a value that does not parse.
    """
    unknown = sorted(set(x_args) - set(X_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown -x option(s): {', '.join(unknown)}; known: {', '.join(X_NAMES)}"
        )

    def raw(name: str) -> str | None:
        if name in x_args:
            return x_args[name]
        env = X_NAMES[name]
        if env is not None:
            value = environ.get(env)
            if value is not None and value != "":
                return value
        return None

    kw: dict[str, object] = {}
    if (v := raw("db")) is not None:
        kw["database_url"] = parse_database_url(v)
    if (v := raw("vault-addr")) is not None:
        kw["vault_addr"] = v.strip().rstrip("/")
    if (v := raw("vault-token")) is not None:
        kw["vault_token"] = Secret(v.strip())
    if (v := raw("vault-namespace")) is not None:
        kw["vault_namespace"] = v.strip()
    if (v := raw("vault-cacert")) is not None:
        kw["vault_cacert"] = v.strip()
    if (v := raw("transit-mount")) is not None:
        mount = v.strip().strip("/")
        if not mount:
            raise ConfigurationError("-x transit-mount is empty")
        kw["transit_mount"] = mount
    if (v := raw("vault-key")) is not None:
        kw["old_key"] = _key_name("vault-key", v)
    if (v := raw("new-vault-key")) is not None:
        kw["new_key"] = _key_name("new-vault-key", v)
    if (v := raw("hmac-secret")) is not None:
        kw["hmac_secret"] = Secret(v)
    if (v := raw("tables")) is not None:
        kw["tables"] = _parse_tables(v)
    if (v := raw("batch-size")) is not None:
        kw["batch_size"] = _parse_int("batch-size", v, 1, MAX_BATCH_SIZE)
    if (v := raw("vault-batch-items")) is not None:
        kw["vault_batch_items"] = _parse_int("vault-batch-items", v, 1, MAX_VAULT_BATCH_ITEMS)
    if (v := raw("dry-run")) is not None:
        kw["dry_run"] = _parse_bool("dry-run", v)
    if (v := raw("plaintext")) is not None:
        kw["plaintext"] = _parse_choice("plaintext", v, ("fail", "encrypt", "skip"))
    if (v := raw("on-error")) is not None:
        kw["on_error"] = _parse_choice("on-error", v, ("abort", "skip"))
    if (v := raw("report")) is not None:
        if not v.strip():
            raise ConfigurationError("-x report= needs a file path")
        kw["report"] = v.strip()
    if (v := raw("workers")) is not None:
        kw["workers"] = _parse_int("workers", v, 1, MAX_WORKERS)
    if (v := raw("lock-timeout")) is not None:
        kw["lock_timeout_ms"] = _parse_duration_ms("lock-timeout", v)
    if (v := raw("statement-timeout")) is not None:
        kw["statement_timeout_ms"] = _parse_duration_ms("statement-timeout", v)
    if kw.get("old_key", "pos-encryption-key") == kw.get("new_key", "pos-context-key"):
        raise ConfigurationError("vault-key and new-vault-key name the same key; they must differ")
    return Settings(**kw)  # type: ignore[arg-type]
