"""Reading Vault's answers: error texts out of hvac exceptions and bodies, batch results out of
a refused batch. Pure: no request is made here.

Vault joins several errors under go-multierror's heading
(:data:`~context_encryption.vault_texts.MULTIERROR_HEADING`); the texts the tool shows drop it.
A batch that partly fails makes Vault answer 400 (or 500) with the per-item results in the body
and no ``errors`` key; hvac raises ``InvalidRequest`` (or ``InternalServerError``) for it, and
:func:`batch_results_of` gives those results back, so a failed item is that row's error, not the
batch's. Vault's error texts never carry plaintext or tokens.
"""

from __future__ import annotations

import json
from typing import Any, Final

import requests

from context_encryption.vault_texts import MULTIERROR_HEADING

#: What an item of ``batch_results`` that is not a JSON object is taken for.
MALFORMED_ITEM: Final = "malformed item"
#: The most characters of a non-JSON body shown in a message.
BODY_SHOWN: Final = 200


def _joined(errors: list[Any]) -> str:
    return "; ".join(str(e).replace(MULTIERROR_HEADING, "").strip() for e in errors)


def error_texts(exc: Exception) -> str:
    """Vault's error texts of an hvac exception (they never carry plaintext or tokens)."""
    errs = getattr(exc, "errors", None)
    if errs:
        return _joined(list(errs))
    return f"{type(exc).__name__} (HTTP status without error text)"


def body_text(body: str) -> str:
    """The ``errors`` of a Vault JSON error body, else the body itself (shortened)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()[:BODY_SHOWN]
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errs, list) and errs:
        return _joined(errs)
    return body.strip()[:BODY_SHOWN]


def _body_of(exc: Exception) -> dict[str, Any] | None:
    """The JSON body of an hvac exception (hvac parses it only for exactly application/json)."""
    body = getattr(exc, "json", None)
    if isinstance(body, dict):
        return body
    try:
        parsed = json.loads(getattr(exc, "text", None) or "null")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def batch_results_of(exc: Exception, expected: int) -> list[dict[str, Any]] | None:
    """The per-item results a refused batch carries, or None when it is a whole-request error.

    Results are given only when there is exactly one per item sent; an item that is not a JSON
    object becomes an error item.
    """
    data = (_body_of(exc) or {}).get("data") or {}
    results = data.get("batch_results") if isinstance(data, dict) else None
    if not isinstance(results, list) or len(results) != expected:
        return None
    return [r if isinstance(r, dict) else {"error": MALFORMED_ITEM} for r in results]


def answer_results(resp: Any) -> list[Any] | None:
    """The ``batch_results`` list of a successful answer: hvac's dict, or its Response for a 2xx
    other than 200. None when the answer has no such list."""
    if isinstance(resp, requests.Response):
        resp = resp.json()
    data = resp.get("data") if isinstance(resp, dict) else None
    results = data.get("batch_results") if isinstance(data, dict) else None
    return results if isinstance(results, list) else None
