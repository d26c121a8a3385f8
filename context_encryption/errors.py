"""One flat error family, in the spirit of ``hvac.exceptions``.

Every message names tables, columns and primary keys only: never a value, a plaintext, a token
or a secret. Messages end with what the operator can do about it where that is known.
"""

from __future__ import annotations


class ContextEncryptionError(Exception):
    """Base of every error this tool raises on purpose."""


class ConfigurationError(ContextEncryptionError):
    """A setting is missing, unknown or does not parse. Raised before any work starts."""


class PreflightError(ContextEncryptionError):
    """Something the run needs is not in place (database, Vault, token, keys, secret)."""


class VaultUnavailableError(ContextEncryptionError):
    """Vault could not be reached or kept failing after retries; the run stopped cleanly."""


class VaultRequestError(ContextEncryptionError):
    """Vault refused a whole request (permission denied, missing key, ...)."""


class MigrationAborted(ContextEncryptionError):
    """Rows could not be migrated and ``on-error=abort`` was in force.

    Committed batches stay committed; a re-run resumes after the last checkpoint.
    """


class VerifyError(ContextEncryptionError):
    """Verification could not run (unknown revision, missing version table rows, ...)."""


class RowError(ContextEncryptionError):
    """A single value that cannot be migrated. Carries table, column and primary key only."""

    def __init__(self, table: str, column: str, pk: object, reason: str) -> None:
        self.table = table
        self.column = column
        self.pk = pk
        self.reason = reason
        super().__init__(f"{table}.{column} id={pk}: {reason}")


def database_error_message(exc: BaseException, table: str | None = None) -> str:
    """A database error as an operator message: the driver's error class and SQLSTATE only.

    The driver's own text can quote row values (a constraint violation's DETAIL, for one), so
    it is left out; the class name and code say what happened.
    """
    orig = getattr(exc, "orig", None) or exc
    name = type(orig).__name__
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    what = f"{name}" + (f", SQLSTATE {code}" if code else "")
    if name == "LockNotAvailable":
        cause = "lock timeout: another transaction holds the rows; see -x lock-timeout"
    elif name == "QueryCanceled":
        cause = "statement timeout; see -x statement-timeout"
    elif name in ("AdminShutdown", "OperationalError", "InterfaceError", "ConnectionFailure"):
        cause = "the database connection was lost or refused"
    else:
        cause = "the database refused a statement"
    where = f"{table}: " if table else ""
    return (
        f"{where}{cause} ({what}). The run stopped; committed batches stay, and running the "
        "same command again resumes from the last checkpoint"
    )
