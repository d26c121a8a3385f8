"""How each setting's raw text becomes a value: one parser per kind of setting, and :class:`Secret`.

A parser is ``(label, raw) -> value``; ``label`` is how the user gave the option (``-x
batch-size``, ``--batch-size`` or ``VAULT_ADDR``), and every message starts with it, so an
operator sees exactly which option to fix. A value that does not parse raises
:class:`~context_encryption.errors.ConfigurationError`; nothing here reads the database or
Vault. Messages never echo a secret: a password put into a Vault address is masked, database
URLs are shown through :func:`safe_url`, and secrets are kept in :class:`Secret`, whose
``repr`` and ``str`` never show the value. ``-x tables`` is checked against the chain's own
tables (:func:`~context_encryption.catalog.load_catalog`).

The table that names every option and its parser is :data:`context_encryption.settings.OPTIONS`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa

from context_encryption.catalog import load_catalog
from context_encryption.errors import ConfigurationError


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


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min|m|h)?\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_DURATION_FACTOR = {None: 1, "ms": 1, "s": 1000, "min": 60_000, "m": 60_000, "h": 3_600_000}

#: A value parser: ``(label, raw) -> value``. ``label`` is how the user gave the option
#: (``-x batch-size``, ``--batch-size`` or ``VAULT_ADDR``); every message starts with it.
Parser = Callable[[str, str], object]


def parse_bool(label: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigurationError(f"{label}={raw!r} is not a boolean; use true or false")


def int_between(lo: int, hi: int) -> Parser:
    def parse(label: str, raw: str) -> int:
        if not _INTEGER.match(raw):
            raise ConfigurationError(f"{label}={raw!r} is not a whole number")
        value = int(raw.strip())
        if not lo <= value <= hi:
            raise ConfigurationError(f"{label}={value} is out of range ({lo} to {hi})")
        return value

    return parse


def parse_duration_ms(label: str, raw: str) -> int:
    m = _DURATION.match(raw)
    if not m or (m.group(2) is None and int(m.group(1)) != 0):
        raise ConfigurationError(
            f"{label}={raw!r} is not a duration with a unit; use e.g. 500ms, 5s, 2min, "
            "or 0 to disable"
        )
    return int(m.group(1)) * _DURATION_FACTOR[m.group(2)]


def choice(*choices: str) -> Parser:
    def parse(label: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigurationError(f"{label}={raw!r} must be one of: {', '.join(choices)}")
        return value

    return parse


def parse_tables(label: str, raw: str) -> tuple[str, ...] | None:
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


def parse_db(label: str, raw: str) -> sa.URL:
    return parse_database_url(raw, label)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^/@]*@")


def parse_vault_addr(label: str, raw: str) -> str:
    """An ``http://`` or ``https://`` address with a host and no user or password in it.

    The address is shown in the preflight's messages and written to reports, so one that
    carries a password would leak it; Vault authenticates with the token, never with a user
    in the address.
    """
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
    authority = addr[scheme.end() :].split("/", 1)[0]
    if "@" in authority:
        raise ConfigurationError(
            f"{label}={shown!r}: the address must not hold a user or password (the '***@' "
            "part): Vault authenticates with the token (VAULT_TOKEN), and the address is shown "
            "in messages and reports"
        )
    if not authority:
        raise ConfigurationError(f"{label}={shown!r}: the address has no host")
    return addr.rstrip("/")


def parse_text(_label: str, raw: str) -> str:
    return raw.strip()


def parse_secret(_label: str, raw: str) -> Secret:
    return Secret(raw.strip())


def parse_hmac_secret(_label: str, raw: str) -> Secret:
    return Secret(raw)  # used byte for byte: surrounding spaces are part of the secret


def parse_existing_path(label: str, raw: str) -> str:
    path = raw.strip()
    if not os.path.exists(path):
        raise ConfigurationError(f"{label}={path!r}: no such file or directory")
    return path


def parse_mount(label: str, raw: str) -> str:
    mount = raw.strip().strip("/")
    if not mount:
        raise ConfigurationError(f"{label} is empty")
    return mount


_KEY_NAME = re.compile(r"^\w(?:[\w.-]*\w)?$", re.ASCII)


def parse_key_name(label: str, raw: str) -> str:
    value = raw.strip()
    if not _KEY_NAME.match(value):
        raise ConfigurationError(f"{label}={raw!r} is not a valid Transit key name")
    return value


#: Prefix of the temporary file a report is written to before it is renamed into place.
REPORT_TEMP_PREFIX: Final = ".report-"


def parse_report_path(label: str, raw: str) -> str:
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
