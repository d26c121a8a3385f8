"""Error and result types shared by the HTTP layer and the backends.

Vault distinguishes two kinds of backend failures, and vaultdev mirrors them:

* :class:`UserError` is a ``logical.ErrorResponse``: status 400 (or another explicit status),
  body ``{"errors": ["<text>"]}`` with the text unchanged;
* :class:`InternalError` is a plain Go error: status 500, and the core wraps the text with
  ``go-multierror`` as ``1 error occurred:\\n\\t* <text>\\n\\n``.

Handlers return a :class:`Result`; the server turns it into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def multierror(message: str) -> str:
    """Format one error the way Go's ``multierror`` does (as Vault's core wraps plain errors)."""
    return f"1 error occurred:\n\t* {message}\n\n"


class VaultError(Exception):
    """An error answered as ``{"errors": [...]}`` with ``status``."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def errors(self) -> list[str]:
        """The ``errors`` list of the response body."""
        return [self.message]


class UserError(VaultError):
    """A ``logical.ErrorResponse`` / ``errutil.UserError``: 400 with the text unchanged."""

    status = 400


class InternalError(VaultError):
    """A plain Go error: 500, wrapped by the core's multierror."""

    status = 500

    def errors(self) -> list[str]:
        return [multierror(self.message)]


class HTTPStatusError(VaultError):
    """An explicit status with a list of already-formatted error strings (may be empty)."""

    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__("; ".join(errors), status)
        self._errors = errors

    def errors(self) -> list[str]:
        return self._errors


def permission_denied_acl() -> HTTPStatusError:
    """ACL denial for a valid token (the core builds a multierror)."""
    return HTTPStatusError(403, [multierror("permission denied")])


def permission_denied_token() -> HTTPStatusError:
    """Missing, unknown or expired token."""
    return HTTPStatusError(403, ["permission denied"])


def unsupported_path() -> HTTPStatusError:
    return HTTPStatusError(404, [multierror("unsupported path")])


def unsupported_operation() -> HTTPStatusError:
    return HTTPStatusError(405, [multierror("unsupported operation")])


def not_found_empty() -> HTTPStatusError:
    """A read that returned nothing: 404 ``{"errors":[]}``."""
    return HTTPStatusError(404, [])


@dataclass(slots=True)
class Result:
    """A successful handler result.

    ``status`` 204 means no body. ``raw`` means a batch response sent through
    ``logical.RespondWithStatusCode``: the full envelope with the given status. ``top_level``
    entries are copied next to ``data`` (``sys/mounts``, ``sys/capabilities-self``).
    """

    data: dict[str, Any] | None = None
    status: int = 200
    warnings: list[str] = field(default_factory=list)
    auth: dict[str, Any] | None = None
    raw: bool = False
    top_level: bool = False
    mount_type: str | None = None


NO_CONTENT = Result(status=204)
