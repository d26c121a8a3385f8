"""Run settings: read once from the environment and ``alembic -x``, validated before any work.

Every ``-x`` name of DESIGN.md's configuration table is accepted; an unknown name or a value
that does not parse raises :class:`~context_encryption.errors.ConfigurationError` naming it, so
a typo such as ``-x dry-rum=true`` or ``-x dry-run=maybe`` can never start a live run.
Everything that can be checked without the database or Vault is checked here, before the first
row: the Vault address's scheme, the CA bundle's path, the report path (a writable file in an
existing directory), the tables (the chain's own).

The settings are one table, :data:`OPTIONS`: name, environment variables, parser, default and
help, shared by ``alembic -x`` and the ``context-encryption`` flags. The parsers, and
:class:`Secret` (whose ``repr`` and ``str`` never show the value), live in
:mod:`context_encryption.setting_values`. Messages name the option the way the user gave it
(:class:`Spelling`: ``-x batch-size`` or ``--batch-size``, or the environment variable it came
from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Final, Literal

import sqlalchemy as sa

from context_encryption.errors import ConfigurationError
from context_encryption.setting_values import (
    REPORT_TEMP_PREFIX,
    Parser,
    Secret,
    choice,
    int_between,
    parse_bool,
    parse_database_url,
    parse_db,
    parse_duration_ms,
    parse_existing_path,
    parse_hmac_secret,
    parse_key_name,
    parse_mount,
    parse_report_path,
    parse_secret,
    parse_tables,
    parse_text,
    parse_vault_addr,
    safe_url,
)
from context_encryption.throttle_config import (
    THROTTLE_OPTIONS,
    THROTTLE_X_NAMES,
    ThrottleConfig,
    parse_throttle_options,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_VAULT_BATCH_ITEMS",
    "DEFAULT_WORKERS",
    "FLAG_SPELLING",
    "MAX_BATCH_SIZE",
    "MAX_VAULT_BATCH_ITEMS",
    "MAX_WORKERS",
    "OPTIONS",
    "OPTION_BY_NAME",
    "REPORT_TEMP_PREFIX",
    "X_NAMES",
    "X_SPELLING",
    "OnErrorPolicy",
    "Option",
    "Parser",
    "PlaintextPolicy",
    "Secret",
    "Settings",
    "Spelling",
    "load_settings",
    "option_help",
    "parse_database_url",
    "safe_url",
]

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
    #: the throttle's -x options (context_encryption.throttle_config)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)

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
            elif isinstance(value, ThrottleConfig):
                value = value.public_dict()
            out[f.name] = value
        return out


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
        parse_db,
        "database URL",
        ("DATABASE_URL",),
        exposes_secret=_has_password,
        instead="put the URL in DATABASE_URL, or the password in ~/.pgpass or PGPASSWORD",
    ),
    Option(
        "vault-addr",
        "vault_addr",
        parse_vault_addr,
        "Vault address, http:// or https://host:port",
        ("VAULT_ADDR", "BAO_ADDR"),
    ),
    Option(
        "vault-token",
        "vault_token",
        parse_secret,
        "Vault token; prefer the environment",
        ("VAULT_TOKEN", "BAO_TOKEN"),
        exposes_secret=_always,
        instead="set VAULT_TOKEN in the environment instead",
    ),
    Option(
        "vault-namespace",
        "vault_namespace",
        parse_text,
        "Vault (or OpenBao) namespace",
        ("VAULT_NAMESPACE", "BAO_NAMESPACE"),
    ),
    Option(
        "vault-cacert",
        "vault_cacert",
        parse_existing_path,
        "CA bundle (file or directory) for Vault's TLS certificate",
        ("VAULT_CACERT", "BAO_CACERT"),
        "the system's CAs",
    ),
    Option(
        "transit-mount",
        "transit_mount",
        parse_mount,
        "Transit mount path",
        ("VAULT_TRANSIT_MOUNT",),
        "transit",
    ),
    Option(
        "vault-key",
        "old_key",
        parse_key_name,
        "old key, no context",
        ("VAULT_OLD_KEY",),
        "pos-encryption-key",
    ),
    Option(
        "new-vault-key",
        "new_key",
        parse_key_name,
        "new key, derived + convergent",
        ("VAULT_NEW_KEY",),
        "pos-context-key",
    ),
    Option(
        "hmac-secret",
        "hmac_secret",
        parse_hmac_secret,
        "secret of the HMAC companions; prefer the environment",
        ("ENCRYPTION_HMAC_SECRET",),
        exposes_secret=_always,
        instead="set ENCRYPTION_HMAC_SECRET in the environment instead",
    ),
    Option("tables", "tables", parse_tables, "comma-separated tables to work on", default="all"),
    Option(
        "batch-size",
        "batch_size",
        int_between(1, MAX_BATCH_SIZE),
        "rows per batch, one database transaction each",
        default=str(DEFAULT_BATCH_SIZE),
    ),
    Option(
        "vault-batch-items",
        "vault_batch_items",
        int_between(1, MAX_VAULT_BATCH_ITEMS),
        "most items in one Vault request",
        default=str(DEFAULT_VAULT_BATCH_ITEMS),
    ),
    Option("dry-run", "dry_run", parse_bool, "preview only, write nothing", default="false"),
    Option(
        "plaintext",
        "plaintext",
        choice("fail", "encrypt", "skip"),
        "values without a vault: prefix: fail, encrypt or skip",
        default="fail",
    ),
    Option(
        "on-error",
        "on_error",
        choice("abort", "skip"),
        "a row that cannot be migrated: abort or skip",
        default="abort",
    ),
    Option("report", "report", parse_report_path, "path of a JSON report of the run"),
    Option(
        "workers",
        "workers",
        int_between(1, MAX_WORKERS),
        "batches in flight at once",
        default=str(DEFAULT_WORKERS),
    ),
    Option(
        "lock-timeout",
        "lock_timeout_ms",
        parse_duration_ms,
        "PostgreSQL lock_timeout of each batch",
        default="5s",
    ),
    Option(
        "statement-timeout",
        "statement_timeout_ms",
        parse_duration_ms,
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
    unknown = sorted(set(x_args) - set(OPTION_BY_NAME) - THROTTLE_X_NAMES)
    if unknown:
        known = [o.name for o in OPTIONS] + [o.name for o in THROTTLE_OPTIONS]
        raise ConfigurationError(
            f"unknown {spelling.kind}(s): {', '.join(unknown)}; "
            f"known: {', '.join(spelling(n) for n in known)}"
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
    kw["throttle"] = parse_throttle_options(x_args, label=spelling)
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
