"""Run settings: read once from the environment and ``alembic -x``, validated before any work.

Every ``-x`` name of DESIGN.md's configuration table is accepted; an unknown name or a value
that does not parse raises :class:`~context_encryption.errors.ConfigurationError` naming it, so a
typo
such as ``-x dry-rum=true`` or ``-x dry-run=maybe`` can never start a live run. Everything that
can be checked without the database or Vault is checked here, before the first row: the Vault
address's scheme, the CA bundle's path, the report path (a writable file in an existing
directory).

The settings are one table, :data:`OPTIONS`: name, environment variables, parser, default and
help, shared by ``alembic -x`` and the ``context-encryption`` flags. Messages name the option
the way the user gave it (:class:`Spelling`: ``-x batch-size`` or ``--batch-size``, or the
environment variable it came from).
Secrets are kept in :class:`Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Final, Literal

import sqlalchemy as sa

from context_encryption.catalog import load_catalog
from context_encryption.errors import ConfigurationError

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

log = logging.getLogger("context_encryption")


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

#: A value parser: ``(label, raw) -> value``. ``label`` is how the user gave the option
#: (``-x batch-size``, ``--batch-size`` or ``VAULT_ADDR``); every message starts with it.
Parser = Callable[[str, str], object]


def _parse_bool(label: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigurationError(f"{label}={raw!r} is not a boolean; use true or false")


def _int(lo: int, hi: int) -> Parser:
    def parse(label: str, raw: str) -> int:
        if not _INTEGER.match(raw):
            raise ConfigurationError(f"{label}={raw!r} is not a whole number")
        value = int(raw.strip())
        if not lo <= value <= hi:
            raise ConfigurationError(f"{label}={value} is out of range ({lo} to {hi})")
        return value

    return parse


def _parse_duration_ms(label: str, raw: str) -> int:
    m = _DURATION.match(raw)
    if not m or (m.group(2) is None and int(m.group(1)) != 0):
        raise ConfigurationError(
            f"{label}={raw!r} is not a duration with a unit; use e.g. 500ms, 5s, 2min, "
            "or 0 to disable"
        )
    return int(m.group(1)) * _DURATION_FACTOR[m.group(2)]


def _choice(*choices: str) -> Parser:
    def parse(label: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigurationError(f"{label}={raw!r} must be one of: {', '.join(choices)}")
        return value

    return parse


def _parse_tables(label: str, raw: str) -> tuple[str, ...] | None:
    names = [t.strip() for t in raw.split(",") if t.strip()]
    if not names:
        raise ConfigurationError(f"{label}= is empty; name tables or use {label}=all")
    if names == ["all"]:
        return None
    known = load_catalog().tables
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigurationError(
            f"{label} names unknown table(s) {', '.join(unknown)}; known tables: {', '.join(known)}"
        )
    return tuple(t for t in known if t in names)  # chain order, no duplicates


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


def parse_database_url(raw: str, label: str = "DATABASE_URL or -x db") -> sa.URL:
    """Parse a database URL; ``postgresql://`` and ``postgres://`` map to psycopg 3."""
    try:
        url = sa.make_url(raw.strip())
    except Exception:
        raise ConfigurationError(
            f"the database URL does not parse ({label}); "
            "expected e.g. postgresql://user@host:5432/dbname"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _parse_db(label: str, raw: str) -> sa.URL:
    return parse_database_url(raw, label)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@")


def _parse_vault_addr(label: str, raw: str) -> str:
    addr = raw.strip()
    shown = _USERINFO.sub(r"\1***@", addr)  # never echo a password put into the address
    scheme = _SCHEME.match(addr)
    if scheme is None:
        raise ConfigurationError(
            f"{label}={shown!r}: the address needs http:// or https://, "
            f"e.g. https://{shown} (or http://{shown} for a local dev server)"
        )
    if scheme.group(1).lower() not in ("http", "https"):
        raise ConfigurationError(
            f"{label}={shown!r}: the address needs http:// or https://, not {scheme.group(1)}://"
        )
    if not addr[scheme.end() :].split("/", 1)[0]:
        raise ConfigurationError(f"{label}={shown!r}: the address has no host")
    return addr.rstrip("/")


def _parse_text(_label: str, raw: str) -> str:
    return raw.strip()


def _parse_secret(_label: str, raw: str) -> Secret:
    return Secret(raw.strip())


def _parse_hmac_secret(_label: str, raw: str) -> Secret:
    return Secret(raw)  # used byte for byte: surrounding spaces are part of the secret


def _parse_existing_path(label: str, raw: str) -> str:
    path = raw.strip()
    if not os.path.exists(path):
        raise ConfigurationError(f"{label}={path!r}: no such file or directory")
    return path


def _parse_mount(label: str, raw: str) -> str:
    mount = raw.strip().strip("/")
    if not mount:
        raise ConfigurationError(f"{label} is empty")
    return mount


_KEY_NAME = re.compile(r"^\w(?:[\w.-]*\w)?$", re.ASCII)


def _parse_key_name(label: str, raw: str) -> str:
    value = raw.strip()
    if not _KEY_NAME.match(value):
        raise ConfigurationError(f"{label}={raw!r} is not a valid Transit key name")
    return value


#: Prefix of the temporary file a report is written to before it is renamed into place.
REPORT_TEMP_PREFIX: Final = ".report-"


def _parse_report_path(label: str, raw: str) -> str:
    """A file path the report can be written to, checked before any work.

    The path must not be a directory, its directory must exist (the report never creates one)
    and a file must be creatable there: the report is written to a temporary file in that
    directory and renamed into place, so the check creates and removes such a file.
    """
    path = raw.strip()
    if not path:
        raise ConfigurationError(f"{label}= needs a file path")
    example = f"e.g. {label}={os.path.join(path, 'context-encryption-report.json')}"
    if os.path.isdir(path):
        raise ConfigurationError(
            f"{label}={path!r} is a directory; the report needs a file path, {example}"
        )
    if path.endswith(("/", os.sep)):
        raise ConfigurationError(
            f"{label}={path!r} ends with a slash; the report needs a file path"
        )
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ConfigurationError(f"{label}={path!r} exists and is not a regular file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigurationError(
            f"{label}={path!r}: the directory {directory!r} does not exist; create it first "
            "(the report never creates directories)"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=REPORT_TEMP_PREFIX, suffix=".json", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigurationError(
            f"{label}={path!r}: cannot create a file in {directory!r} "
            f"({exc.strerror or type(exc).__name__}); choose a writable directory"
        ) from None
    return path


def _always(_value: object) -> bool:
    return True


def _has_password(value: object) -> bool:
    return isinstance(value, sa.URL) and value.password is not None


@dataclass(frozen=True)
class Option:
    """One setting: its ``-x`` name (also the ``--name`` flag), where else it comes from, and
    how its value is parsed into the :class:`Settings` field."""

    name: str
    field: str
    parse: Parser
    help: str
    #: Environment variables, in order of precedence (the first one set wins).
    env: tuple[str, ...] = ()
    #: The default, as shown in ``--help``.
    default: str = "none"
    #: Given on the command line, does this value expose a secret (process list, history)?
    exposes_secret: Callable[[object], bool] | None = None
    #: Where the secret belongs instead (the warning names it).
    instead: str = ""


#: Every setting, in DESIGN.md's order. ``-x`` names, environment variables and defaults are
#: the contract; OpenBao's ``BAO_*`` names are read when the ``VAULT_*`` one is not set.
OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        "db",
        "database_url",
        _parse_db,
        "database URL",
        ("DATABASE_URL",),
        exposes_secret=_has_password,
        instead="put the URL in DATABASE_URL, or the password in ~/.pgpass or PGPASSWORD",
    ),
    Option(
        "vault-addr",
        "vault_addr",
        _parse_vault_addr,
        "Vault address, http:// or https://host:port",
        ("VAULT_ADDR", "BAO_ADDR"),
    ),
    Option(
        "vault-token",
        "vault_token",
        _parse_secret,
        "Vault token; prefer the environment",
        ("VAULT_TOKEN", "BAO_TOKEN"),
        exposes_secret=_always,
        instead="set VAULT_TOKEN in the environment instead",
    ),
    Option(
        "vault-namespace",
        "vault_namespace",
        _parse_text,
        "Vault (or OpenBao) namespace",
        ("VAULT_NAMESPACE", "BAO_NAMESPACE"),
    ),
    Option(
        "vault-cacert",
        "vault_cacert",
        _parse_existing_path,
        "CA bundle (file or directory) for Vault's TLS certificate",
        ("VAULT_CACERT", "BAO_CACERT"),
        "the system's CAs",
    ),
    Option(
        "transit-mount",
        "transit_mount",
        _parse_mount,
        "Transit mount path",
        ("VAULT_TRANSIT_MOUNT",),
        "transit",
    ),
    Option(
        "vault-key",
        "old_key",
        _parse_key_name,
        "old key, no context",
        ("VAULT_OLD_KEY",),
        "pos-encryption-key",
    ),
    Option(
        "new-vault-key",
        "new_key",
        _parse_key_name,
        "new key, derived + convergent",
        ("VAULT_NEW_KEY",),
        "pos-context-key",
    ),
    Option(
        "hmac-secret",
        "hmac_secret",
        _parse_hmac_secret,
        "secret of the HMAC companions; prefer the environment",
        ("ENCRYPTION_HMAC_SECRET",),
        exposes_secret=_always,
        instead="set ENCRYPTION_HMAC_SECRET in the environment instead",
    ),
    Option("tables", "tables", _parse_tables, "comma-separated tables to work on", default="all"),
    Option(
        "batch-size",
        "batch_size",
        _int(1, MAX_BATCH_SIZE),
        "rows per batch, one database transaction each",
        default=str(DEFAULT_BATCH_SIZE),
    ),
    Option(
        "vault-batch-items",
        "vault_batch_items",
        _int(1, MAX_VAULT_BATCH_ITEMS),
        "most items in one Vault request",
        default=str(DEFAULT_VAULT_BATCH_ITEMS),
    ),
    Option("dry-run", "dry_run", _parse_bool, "preview only, write nothing", default="false"),
    Option(
        "plaintext",
        "plaintext",
        _choice("fail", "encrypt", "skip"),
        "values without a vault: prefix: fail, encrypt or skip",
        default="fail",
    ),
    Option(
        "on-error",
        "on_error",
        _choice("abort", "skip"),
        "a row that cannot be migrated: abort or skip",
        default="abort",
    ),
    Option("report", "report", _parse_report_path, "path of a JSON report of the run"),
    Option(
        "workers",
        "workers",
        _int(1, MAX_WORKERS),
        "batches in flight at once",
        default=str(DEFAULT_WORKERS),
    ),
    Option(
        "lock-timeout",
        "lock_timeout_ms",
        _parse_duration_ms,
        "PostgreSQL lock_timeout of each batch",
        default="5s",
    ),
    Option(
        "statement-timeout",
        "statement_timeout_ms",
        _parse_duration_ms,
        "PostgreSQL statement_timeout of each batch",
        default="120s",
    ),
)

OPTION_BY_NAME: Final[dict[str, Option]] = {o.name: o for o in OPTIONS}

#: -x name -> its (first) environment variable (None: -x only)
X_NAMES: Final[dict[str, str | None]] = {o.name: (o.env[0] if o.env else None) for o in OPTIONS}


def option_help(name: str) -> str:
    """One line for ``--help``: what the setting is, its environment variable and default."""
    o = OPTION_BY_NAME[name]
    env = f"env {' or '.join(o.env)}; " if o.env else ""
    return f"{o.help} ({env}default: {o.default})".replace("%", "%%")


@dataclass(frozen=True)
class Spelling:
    """How the user spells options: messages name them the way they were typed."""

    prefix: str
    #: What an unknown name is called in the message ("-x option", "option").
    kind: str

    def __call__(self, name: str) -> str:
        return f"{self.prefix}{name}"


#: ``alembic -x name=value``
X_SPELLING: Final = Spelling("-x ", "-x option")
#: ``context-encryption --name value``
FLAG_SPELLING: Final = Spelling("--", "option")


def load_settings(
    x_args: Mapping[str, str],
    environ: Mapping[str, str],
    *,
    spelling: Spelling = X_SPELLING,
) -> Settings:
    """Build :class:`Settings` from ``-x`` arguments (or command-line flags) over the environment.

    ``x_args`` maps option names (``batch-size``) to raw values; ``spelling`` says how the user
    typed them, so that a message names ``-x batch-size`` for ``alembic`` and ``--batch-size``
    for ``context-encryption``. A value taken from the environment is named by its variable.

    Environment: each option reads the variables listed in :data:`OPTIONS`, the first one set
    (non-empty) winning. OpenBao's names ``BAO_ADDR``, ``BAO_TOKEN``, ``BAO_NAMESPACE`` and
    ``BAO_CACERT`` are read when the corresponding ``VAULT_ADDR``, ``VAULT_TOKEN``,
    ``VAULT_NAMESPACE``, ``VAULT_CACERT`` is not set; when both are set, the ``VAULT_`` one wins.

    A secret given on the command line (``vault-token``, ``hmac-secret``, a database URL with a
    password) is accepted with a warning: command lines show in the process list and the shell
    history. The warning never contains the value.

    Raises :class:`ConfigurationError` for an unknown name or a value that does not parse.
    """
    unknown = sorted(set(x_args) - set(OPTION_BY_NAME))
    if unknown:
        raise ConfigurationError(
            f"unknown {spelling.kind}(s): {', '.join(unknown)}; "
            f"known: {', '.join(spelling(o.name) for o in OPTIONS)}"
        )

    kw: dict[str, object] = {}
    labels: dict[str, str] = {}
    for option in OPTIONS:
        source = _source(option, x_args, environ, spelling)
        if source is None:
            continue
        label, raw = source
        value = option.parse(label, raw)
        kw[option.field] = value
        labels[option.name] = label
        if (
            option.name in x_args
            and option.exposes_secret is not None
            and option.exposes_secret(value)
        ):
            log.warning(
                "%s was given on the command line, where other users see it in the process "
                "list and it stays in the shell history; %s",
                spelling(option.name),
                option.instead,
            )
    if kw.get("old_key", "pos-encryption-key") == kw.get("new_key", "pos-context-key"):
        old = labels.get("vault-key", spelling("vault-key"))
        new = labels.get("new-vault-key", spelling("new-vault-key"))
        raise ConfigurationError(
            f"{old} and {new} name the same key; they must differ (the old key has no "
            "context, the new one is derived + convergent)"
        )
    return Settings(**kw)  # type: ignore[arg-type]


def _source(
    option: Option, x_args: Mapping[str, str], environ: Mapping[str, str], spelling: Spelling
) -> tuple[str, str] | None:
    """(label, raw value) of an option: the command line first, then its variables in order."""
    if option.name in x_args:
        return spelling(option.name), x_args[option.name]
    for env in option.env:
        value = environ.get(env)
        if value is not None and value != "":
            return env, value
    return None
