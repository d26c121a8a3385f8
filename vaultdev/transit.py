"""The Transit secrets engine: one :class:`TransitMount` per mount path.

Routes (relative to the mount) follow ``builtin/logical/transit``: ``keys``, ``keys/:name``
(+ ``/config``, ``/rotate``, ``/trim``), ``export/:type/:name(/:version)``, ``backup/:name``,
``restore(/:name)``, ``encrypt``, ``decrypt``, ``rewrap``, ``hmac(/:algorithm)``,
``verify(/:algorithm)`` (HMAC only), ``datakey/:type/:name``, ``hash(/:algorithm)``,
``random(/:bytes)`` and ``config/keys``. Request flows, error texts and status codes follow
``/work/shared/vault-transit.md`` (sections 2 to 5), including the batch status rules of
``logical.RespondWithStatusCode``.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaultdev import gobase64
from vaultdev.errors import (
    NO_CONTENT,
    HTTPStatusError,
    InternalError,
    Result,
    UserError,
    VaultError,
    not_found_empty,
)
from vaultdev.fields import Fields
from vaultdev.keys import (
    HASH_ALGORITHMS,
    KEY_TYPE_IDS,
    SUPPORTED_TYPES,
    SYMMETRIC_TYPES,
    KeyPolicy,
    go_atoi,
    hash_digest,
    hmac_digest,
)

NAME = r"(?P<name>[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?)"
SEG = r"[^/]+"

Handler = Callable[["TransitMount", str, dict[str, str], Fields], Result]


@dataclass(slots=True)
class Route:
    pattern: re.Pattern[str]
    ops: dict[str, Handler]
    fields: frozenset[str]


def _go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "json.Number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _parse_batch(
    raw: Any, spec: dict[str, str], required: tuple[str, str] | None
) -> list[dict[str, Any]]:
    """Decode ``batch_input`` like ``decodeBatchRequestItems``/mapstructure; errors are 500."""
    if not isinstance(raw, list):
        raise InternalError(
            "failed to parse batch input: source data must be an array or slice, got "
            + _go_type(raw)
        )
    errs: list[str] = []
    items: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InternalError(
                f"failed to parse batch input: [{i}] expected a map, got '{_go_type(item)}'"
            )
        out: dict[str, Any] = {}
        for key, kind in spec.items():
            if key not in item:
                continue
            v = item[key]
            if kind == "str":
                if v is None:
                    out[key] = ""
                elif isinstance(v, str):
                    out[key] = v
                else:
                    errs.append(
                        f"'[{i}].{key}' expected type 'string', got unconvertible type "
                        f"'{_go_type(v)}'"
                    )
            elif v is None:
                out[key] = 0
            elif isinstance(v, int) and not isinstance(v, bool):
                out[key] = v
            elif (isinstance(v, float) and v.is_integer()) or (
                isinstance(v, str) and go_atoi(v) is not None
            ):
                out[key] = int(v)
            else:
                errs.append(
                    f"'[{i}].{key}' expected type 'int', got unconvertible type '{_go_type(v)}'"
                )
        if required is not None and required[0] not in item:
            errs.append(f"'[{i}].{required[0]}' {required[1]}")
        items.append(out)
    if errs:
        points = sorted(f"* {e}" for e in errs)
        raise InternalError(
            f"failed to parse batch input: {len(errs)} error(s) decoding:\n\n" + "\n".join(points)
        )
    return items


def _decode_context(value: str, seen: dict[str, bytes]) -> bytes:
    """Decode a context once per request (batches usually repeat one context)."""
    if not value:
        return b""
    decoded = seen.get(value)
    if decoded is None:
        decoded = seen[value] = gobase64.decode(value)
    return decoded


def _decode_ciphertext_items(
    items: list[dict[str, Any]],
) -> tuple[list[str | None], list[tuple[bytes, bytes]]]:
    """Decrypt's and rewrap's per-item checks, made before the key is loaded.

    The context rule (all items or none, else the whole request fails), a non-empty
    ``ciphertext``, then the base64 of ``context`` and ``nonce``. Returns each item's error
    (None when fine) and its decoded (context, nonce).
    """
    n = len(items)
    errors: list[str | None] = [None] * n
    decoded: list[tuple[bytes, bytes]] = [(b"", b"")] * n
    context_set = bool(items[0].get("context"))
    contexts: dict[str, bytes] = {}
    for i, item in enumerate(items):
        ctx_s = item.get("context", "")
        if bool(ctx_s) != context_set:
            raise UserError("context should be set either in all the request blocks or in none")
        if not item.get("ciphertext"):
            errors[i] = "missing ciphertext to decrypt"
            continue
        try:
            ctx = _decode_context(ctx_s, contexts)
            nonce_s = item.get("nonce", "")
            nonce = _b64(nonce_s) if nonce_s else b""
        except gobase64.CorruptInputError as exc:
            errors[i] = str(exc)
            continue
        decoded[i] = (ctx, nonce)
    return errors, decoded


def _b64(value: str) -> bytes:
    """Decode a request field; the Go error text becomes a user error."""
    return gobase64.decode(value)


class TransitMount:
    """In-memory state of one transit mount: key policies and ``config/keys``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.policies: dict[str, KeyPolicy] = {}
        self.lock = threading.RLock()
        self.disable_upsert = False

    # ----- routing --------------------------------------------------------------------------

    def match(self, rel: str) -> tuple[Route, dict[str, str]] | None:
        for route in ROUTES:
            m = route.pattern.fullmatch(rel)
            if m is not None:
                return route, {k: v for k, v in m.groupdict().items() if v is not None}
        return None

    def key_exists(self, name: str) -> bool:
        return name in self.policies

    def get(self, name: str) -> KeyPolicy | None:
        return self.policies.get(name)

    # ----- keys -----------------------------------------------------------------------------

    def keys_list(self, _op: str, _params: dict[str, str], _f: Fields) -> Result:
        names = sorted(self.policies)
        if not names:
            raise not_found_empty()
        return Result({"keys": names})

    def key_write(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        name = params["name"]
        derived = f.get_bool("derived")
        convergent = f.get_bool("convergent_encryption")
        key_type = f.get_str("type", "aes256-gcm96") or "aes256-gcm96"
        key_size = f.get_int("key_size")
        exportable = f.get_bool("exportable")
        allow_backup = f.get_bool("allow_plaintext_backup")
        period = f.get_duration("auto_rotate_period")
        if period != 0 and period < 3600:
            raise UserError("auto rotate period must be 0 to disable or at least an hour")
        if not derived and convergent:
            raise UserError("convergent encryption requires derivation to be enabled")
        if key_type not in KEY_TYPE_IDS:
            raise UserError(f"unknown key type {key_type}")
        if key_size != 0:
            if key_type != "hmac":
                raise UserError(f"key_size is not valid for algorithm {key_type}")
            if key_size < 32 or key_size > 512:
                raise UserError(f"invalid key_size {key_size}")
        with self.lock:
            existing = self.policies.get(name)
            if existing is not None:
                return Result(existing.read_data())
            if key_type not in SUPPORTED_TYPES:
                raise UserError(f"key type {key_type} is not supported by vaultdev")
            if key_type == "hmac" and (derived or convergent):
                raise InternalError(
                    f"key derivation and convergent encryption not supported for keys of type "
                    f"{key_type}"
                )
            p = KeyPolicy(
                name,
                key_type,
                derived=derived,
                convergent=convergent,
                exportable=exportable,
                allow_plaintext_backup=allow_backup,
                auto_rotate_period=period,
                key_size=(key_size or 32) if key_type == "hmac" else 0,
            )
            p.rotate()
            self.policies[name] = p
        return Result(p.read_data())

    def key_read(self, _op: str, params: dict[str, str], _f: Fields) -> Result:
        p = self.policies.get(params["name"])
        if p is None:
            raise not_found_empty()
        return Result(p.read_data())

    def key_delete(self, _op: str, params: dict[str, str], _f: Fields) -> Result:
        name = params["name"]
        with self.lock:
            p = self.policies.get(name)
            if p is None:
                raise UserError(f"error deleting policy {name}: could not delete key; not found")
            if not p.deletion_allowed:
                raise UserError(
                    f"error deleting policy {name}: deletion is not allowed for this key"
                )
            del self.policies[name]
            p.clear_cache()
        return NO_CONTENT

    def key_config(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        name = params["name"]
        p = self.policies.get(name)
        if p is None:
            raise UserError(f"no existing key named {name} could be found")
        warnings: list[str] = []
        with p.lock:
            min_dec = p.min_decryption_version
            min_enc = p.min_encryption_version
            if f.has("min_decryption_version"):
                v = f.get_int("min_decryption_version")
                if v < 0:
                    raise UserError("min decryption version cannot be negative")
                if v == 0:
                    v = 1
                    warnings.append(
                        "since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1"
                    )
                if v > p.latest_version:
                    raise UserError(
                        f"cannot set min decryption version of {v}, latest key version is "
                        f"{p.latest_version}"
                    )
                min_dec = v
            if f.has("min_encryption_version"):
                v = f.get_int("min_encryption_version")
                if v < 0:
                    raise UserError("min encryption version cannot be negative")
                if v > p.latest_version:
                    raise UserError(
                        f"cannot set min encryption version of {v}, latest key version is "
                        f"{p.latest_version}"
                    )
                min_enc = v
            if min_enc > 0 and min_enc < min_dec:
                raise UserError(
                    "cannot set min encryption/decryption values; min encryption version of "
                    f"{min_enc} must be greater than or equal to min decryption version of "
                    f"{min_dec}"
                )
            deletion_allowed = p.deletion_allowed
            if f.has("deletion_allowed"):
                deletion_allowed = f.get_bool("deletion_allowed")
            exportable = p.exportable or f.get_bool("exportable")
            allow_backup = p.allow_plaintext_backup or f.get_bool("allow_plaintext_backup")
            period = p.auto_rotate_period
            if f.has("auto_rotate_period"):
                period = f.get_duration("auto_rotate_period")
                if period != 0 and period < 3600:
                    raise UserError("auto rotate period must be 0 to disable or at least an hour")
            if min_enc > 0 and min_enc < p.min_available_version:
                raise UserError(
                    "min encryption version should not be less than min available version"
                )
            if min_dec < p.min_available_version:
                raise UserError(
                    "min decryption version should not be less then min available version"
                )
            p.min_decryption_version = min_dec
            p.min_encryption_version = min_enc
            p.deletion_allowed = deletion_allowed
            p.exportable = exportable
            p.allow_plaintext_backup = allow_backup
            p.auto_rotate_period = period
        return Result(p.read_data(), warnings=warnings)

    def key_rotate(self, _op: str, params: dict[str, str], _f: Fields) -> Result:
        p = self.policies.get(params["name"])
        if p is None:
            raise UserError("key not found")
        with p.lock:
            p.rotate()
        return Result(p.read_data())

    def key_trim(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        p = self.policies.get(params["name"])
        if p is None:
            raise UserError("invalid key name")
        if not f.has("min_available_version"):
            raise UserError("missing min_available_version")
        v = f.get_int("min_available_version")
        with p.lock:
            if v < 0:
                raise UserError("minimum available version cannot be negative")
            if v == 0:
                raise UserError("minimum available version should be positive")
            if v < p.min_available_version:
                raise UserError("minimum available version cannot be decremented")
            if p.min_encryption_version == 0:
                raise UserError(
                    "minimum available version cannot be set when minimum encryption version "
                    "is not set"
                )
            if p.min_decryption_version == 0:
                raise UserError(
                    "minimum available version cannot be set when minimum decryption version "
                    "is not set"
                )
            if v > p.min_encryption_version:
                raise UserError(
                    "cannot set minimum available version to be greater than minimum encryption "
                    "version"
                )
            if v > p.min_decryption_version:
                raise UserError(
                    "cannot set minimum available version to be greater than minimum decryption "
                    "version"
                )
            p.min_available_version = v
            for ver in [ver for ver in p.entries if ver < v]:
                del p.entries[ver]
            p.clear_cache()
        return Result(p.read_data())

    def export(self, _op: str, params: dict[str, str], _f: Fields) -> Result:
        export_type = params["type"]
        if export_type not in (
            "encryption-key",
            "signing-key",
            "hmac-key",
            "public-key",
            "certificate-chain",
        ):
            raise UserError(f"invalid export type: {export_type}")
        p = self.policies.get(params["name"])
        if p is None:
            raise not_found_empty()
        if not p.exportable and export_type not in ("public-key", "certificate-chain"):
            raise UserError("private key material is not exportable")
        if export_type == "encryption-key" and p.type not in SYMMETRIC_TYPES:
            raise UserError("encryption not supported for the key")
        if export_type in ("signing-key", "public-key", "certificate-chain"):
            raise UserError("signing not supported for the key")

        def material(ver: int) -> str:
            e = p.entries[ver]
            if export_type == "hmac-key":
                raw = e.key if p.type == "hmac" else e.hmac_key
            else:
                raw = e.key
            return gobase64.encode(raw or b"")

        version = params.get("version", "")
        keys: dict[str, str] = {}
        if version == "":
            for ver in p.visible_versions():
                keys[str(ver)] = material(ver)
        else:
            parsed = p.latest_version if version == "latest" else go_atoi(version.removeprefix("v"))
            if parsed is None:
                raise UserError("invalid key version")
            ver_n = parsed
            if ver_n < p.min_decryption_version:
                raise UserError("version for export is below minimum decryption version")
            if ver_n not in p.visible_versions():
                raise UserError("version does not exist or cannot be found")
            keys[str(ver_n)] = material(ver_n)
        return Result({"name": p.name, "type": p.type, "keys": keys})

    def backup(self, _op: str, params: dict[str, str], _f: Fields) -> Result:
        name = params["name"]
        p = self.policies.get(name)
        if p is None:
            raise InternalError(f'key "{name}" not found')
        with p.lock:
            if not p.exportable:
                raise InternalError("exporting is disallowed on the policy")
            if not p.allow_plaintext_backup:
                raise InternalError("plaintext backup is disallowed on the policy")
            blob = p.backup_json()
        return Result({"backup": blob})

    def restore(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        backup = f.get_str("backup")
        if backup == "":
            raise UserError("'backup' must be supplied")
        name = params.get("name") or f.get_str("name")
        if "/" in name:
            raise UserError("key names cannot be paths")
        force = f.get_bool("force")
        p = KeyPolicy.from_backup(backup, name)
        with self.lock:
            if p.name in self.policies and not force:
                raise InternalError(f'key "{p.name}" already exists')
            old = self.policies.get(p.name)
            self.policies[p.name] = p
            if old is not None:
                old.clear_cache()
        return NO_CONTENT

    def config_keys(self, op: str, _params: dict[str, str], f: Fields) -> Result:
        if op in ("update", "create") and f.has("disable_upsert"):
            self.disable_upsert = f.get_bool("disable_upsert")
        return Result({"disable_upsert": self.disable_upsert})

    # ----- encrypt / decrypt / rewrap -------------------------------------------------------

    def _context_rule(self, items: list[dict[str, Any]]) -> None:
        context_set = bool(items[0].get("context"))
        for item in items:
            if bool(item.get("context")) != context_set:
                raise UserError("context should be set either in all the request blocks or in none")

    @staticmethod
    def _batch_result(
        results: list[dict[str, Any]], user_err: bool, internal_err: bool, f: Fields
    ) -> Result:
        if not (user_err or internal_err):
            return Result({"batch_results": results})
        code = 400 if user_err else 500
        warnings: list[str] = []
        successes = any("error" not in r for r in results)
        if f.has("partial_failure_response_code") and successes:
            value = f.get_int("partial_failure_response_code")
            if 1 <= value <= 599:
                code = value
            else:
                warnings.append(
                    "invalid HTTP response code override from partial_failure_response_code, "
                    f"reverting to {code}"
                )
        return Result({"batch_results": results}, status=code, warnings=warnings, raw=True)

    def encrypt(self, op: str, params: dict[str, str], f: Fields) -> Result:
        name = params["name"]
        batch_raw = f.raw("batch_input")
        is_batch = batch_raw is not None
        if is_batch:
            items = _parse_batch(
                batch_raw,
                {
                    "plaintext": "str",
                    "context": "str",
                    "nonce": "str",
                    "key_version": "int",
                    "associated_data": "str",
                    "padding_scheme": "str",
                    "reference": "str",
                },
                ("plaintext", "missing plaintext to encrypt"),
            )
            if not items:
                raise UserError("missing batch input to process")
        else:
            if not f.has("plaintext"):
                raise UserError("missing plaintext to encrypt")
            items = [
                {
                    "plaintext": f.get_str("plaintext"),
                    "context": f.get_str("context"),
                    "nonce": f.get_str("nonce"),
                    "key_version": f.get_int("key_version"),
                    "associated_data": f.get_str("associated_data"),
                }
            ]
        n = len(items)
        errors: list[str | None] = [None] * n
        decoded: list[tuple[bytes, bytes, bytes]] = [(b"", b"", b"")] * n
        user_err = False
        internal_err = False
        context_set = bool(items[0].get("context"))
        contexts: dict[str, bytes] = {}
        for i, item in enumerate(items):
            ctx_s = item.get("context", "")
            if bool(ctx_s) != context_set:
                raise UserError("context should be set either in all the request blocks or in none")
            try:
                pt = _b64(item.get("plaintext", ""))
                ctx = _decode_context(ctx_s, contexts)
                nonce_s = item.get("nonce", "")
                nonce = _b64(nonce_s) if nonce_s else b""
            except gobase64.CorruptInputError as exc:
                user_err = True
                errors[i] = str(exc)
                continue
            decoded[i] = (pt, ctx, nonce)

        p = self.policies.get(name)
        if p is None and op == "create":
            convergent = f.get_bool("convergent_encryption")
            if convergent and not context_set:
                raise UserError(
                    "convergent encryption requires derivation to be enabled, so context is "
                    "required"
                )
            key_type = f.get_str("type", "aes256-gcm96") or "aes256-gcm96"
            if key_type in ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521"):
                raise UserError(f"key type {key_type} not supported for this operation")
            if key_type not in (
                "aes128-gcm96",
                "aes256-gcm96",
                "chacha20-poly1305",
                "rsa-2048",
                "rsa-3072",
                "rsa-4096",
                "managed_key",
            ):
                raise UserError(f"unknown key type {key_type}")
            if not self.disable_upsert:
                if key_type not in SYMMETRIC_TYPES:
                    raise UserError(f"key type {key_type} is not supported by vaultdev")
                with self.lock:
                    p = self.policies.get(name)
                    if p is None:
                        p = KeyPolicy(name, key_type, derived=context_set, convergent=convergent)
                        p.rotate()
                        self.policies[name] = p
        if p is None:
            raise UserError("encryption key not found")

        results: list[dict[str, Any]] = []
        nonce_ok = p.type in SYMMETRIC_TYPES and p.convergent and p.convergent_version == 1
        for i, item in enumerate(items):
            ref = item.get("reference", "")
            err = errors[i]
            if err is None:
                pt, ctx, nonce = decoded[i]
                try:
                    if item.get("nonce") and not nonce_ok:
                        raise UserError("provided nonce not allowed for this key")
                    aad: bytes | None = None
                    aad_s = item.get("associated_data", "")
                    if aad_s:
                        if p.type not in SYMMETRIC_TYPES:
                            err = (
                                f"'[{i}].associated_data' provided for non-AEAD cipher suite "
                                f"{p.type}"
                            )
                        else:
                            try:
                                aad = _b64(aad_s)
                            except gobase64.CorruptInputError as exc:
                                err = str(exc)
                    if err is None:
                        ct, ver = p.encrypt(item.get("key_version", 0), ctx, nonce, pt, aad)
                        results.append({"ciphertext": ct, "key_version": ver, "reference": ref})
                        continue
                except InternalError as exc:
                    internal_err = True
                    err = exc.message
                except VaultError as exc:
                    user_err = True
                    err = exc.message
            results.append({"reference": ref, "error": err})
        if is_batch:
            return self._batch_result(results, user_err, internal_err, f)
        first = results[0]
        if "error" in first:
            if internal_err:
                raise InternalError(first["error"])
            raise UserError(first["error"])
        return Result({"ciphertext": first["ciphertext"], "key_version": first["key_version"]})

    def decrypt(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        batch_raw = f.raw("batch_input")
        is_batch = batch_raw is not None
        if is_batch:
            items = _parse_batch(
                batch_raw,
                {
                    "ciphertext": "str",
                    "context": "str",
                    "nonce": "str",
                    "associated_data": "str",
                    "padding_scheme": "str",
                    "reference": "str",
                },
                ("ciphertext", "missing ciphertext to decrypt"),
            )
            if not items:
                raise UserError("missing batch input to process")
        else:
            ciphertext = f.get_str("ciphertext")
            if not ciphertext:
                raise UserError("missing ciphertext to decrypt")
            items = [
                {
                    "ciphertext": ciphertext,
                    "context": f.get_str("context"),
                    "nonce": f.get_str("nonce"),
                    "associated_data": f.get_str("associated_data"),
                }
            ]
        errors, decoded = _decode_ciphertext_items(items)
        user_err = any(e is not None for e in errors)
        internal_err = False
        p = self.policies.get(params["name"])
        if p is None:
            raise UserError("encryption key not found")
        results: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            ref = item.get("reference", "")
            err = errors[i]
            if err is None:
                ctx, nonce = decoded[i]
                aad: bytes | None = None
                aad_s = item.get("associated_data", "")
                if aad_s:
                    if p.type not in SYMMETRIC_TYPES:
                        err = f"'[{i}].associated_data' provided for non-AEAD cipher suite {p.type}"
                    else:
                        try:
                            aad = _b64(aad_s)
                        except gobase64.CorruptInputError as exc:
                            err = str(exc)
                if err is None:
                    try:
                        pt = p.decrypt(ctx, nonce, item["ciphertext"], aad)
                        results.append({"plaintext": gobase64.encode(pt), "reference": ref})
                        continue
                    except InternalError as exc:
                        internal_err = True
                        err = exc.message
                    except VaultError as exc:
                        user_err = True
                        err = exc.message
            results.append({"plaintext": "", "reference": ref, "error": err})
        if is_batch:
            return self._batch_result(results, user_err, internal_err, f)
        first = results[0]
        if "error" in first:
            if internal_err:
                raise InternalError(first["error"])
            raise UserError(first["error"])
        return Result({"plaintext": first["plaintext"]})

    def rewrap(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        batch_raw = f.raw("batch_input")
        is_batch = batch_raw is not None
        if is_batch:
            items = _parse_batch(
                batch_raw,
                {
                    "ciphertext": "str",
                    "context": "str",
                    "nonce": "str",
                    "key_version": "int",
                    "reference": "str",
                    "encrypt_padding_scheme": "str",
                    "decrypt_padding_scheme": "str",
                },
                None,
            )
            if not items:
                raise UserError("missing batch input to process")
        else:
            ciphertext = f.get_str("ciphertext")
            if not ciphertext:
                raise UserError("missing ciphertext to decrypt")
            items = [
                {
                    "ciphertext": ciphertext,
                    "context": f.get_str("context"),
                    "nonce": f.get_str("nonce"),
                    "key_version": f.get_int("key_version"),
                }
            ]
        errors, decoded = _decode_ciphertext_items(items)
        p = self.policies.get(params["name"])
        if p is None:
            raise UserError("encryption key not found")
        nonce_ok = p.type in SYMMETRIC_TYPES and p.convergent and p.convergent_version == 1
        results: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            ref = item.get("reference", "")
            err = errors[i]
            if err is None:
                ctx, nonce = decoded[i]
                if item.get("nonce") and not nonce_ok:
                    err = "provided nonce not allowed for this key"
                else:
                    try:
                        pt = p.decrypt(ctx, nonce, item["ciphertext"])
                        ct, ver = p.encrypt(item.get("key_version", 0), ctx, nonce, pt)
                        results.append({"ciphertext": ct, "key_version": ver, "reference": ref})
                        continue
                    except UserError as exc:
                        err = exc.message
            results.append({"reference": ref, "error": err})
        if is_batch:
            return Result({"batch_results": results})
        first = results[0]
        if "error" in first:
            raise UserError(first["error"])
        return Result({"ciphertext": first["ciphertext"], "key_version": first["key_version"]})

    # ----- hmac / verify / hash / random / datakey ------------------------------------------

    def _hmac_setup(self, params: dict[str, str], f: Fields) -> tuple[KeyPolicy, str]:
        p = self.policies.get(params["name"])
        if p is None:
            raise UserError("encryption key not found")
        algorithm = (
            params.get("urlalgorithm")
            or f.get_str("hash_algorithm")
            or f.get_str("algorithm")
            or "sha2-256"
        )
        return p, algorithm

    def hmac(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        p, algorithm = self._hmac_setup(params, f)
        ver = f.get_int("key_version")
        if ver == 0:
            ver = p.latest_version
        elif (
            ver != p.latest_version
            and p.min_encryption_version > 0
            and ver < (p.min_encryption_version)
        ):
            raise UserError("cannot generate HMAC: version is too old (disallowed by policy)")
        try:
            key = p.hmac_key(ver)
        except VaultError as exc:
            raise UserError(exc.message) from exc
        if algorithm not in HASH_ALGORITHMS:
            raise UserError("unsupported algorithm '\\x00'")
        batch_raw = f.raw("batch_input")
        if batch_raw is not None:
            items = _parse_batch(batch_raw, {"input": "str", "reference": "str"}, None)
            if not items:
                raise UserError("missing batch input to process")
        else:
            if not f.has("input"):
                raise UserError("missing input for HMAC")
            items = [{"input": f.get_str("input")}]
        results: list[dict[str, Any]] = []
        for item in items:
            out: dict[str, Any] = {}
            if "input" not in item:
                out["error"] = "missing input for HMAC"
            else:
                try:
                    data = _b64(item["input"])
                    digest = hmac_digest(algorithm, key, data)
                    out["hmac"] = f"vault:v{ver}:{gobase64.encode(digest)}"
                except gobase64.CorruptInputError as exc:
                    out["error"] = f"unable to decode input as base64: {exc}"
            out["reference"] = item.get("reference", "")
            results.append(out)
        if batch_raw is not None:
            return Result({"batch_results": results})
        if "error" in results[0]:
            raise UserError(results[0]["error"])
        return Result({"hmac": results[0]["hmac"]})

    def verify(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        p, algorithm = self._hmac_setup(params, f)
        batch_raw = f.raw("batch_input")
        if batch_raw is None and not f.has("hmac") and f.has("signature"):
            raise UserError(f"key type {p.type} does not support verification")
        if algorithm not in HASH_ALGORITHMS:
            raise UserError("unsupported algorithm '\\x00'")
        if batch_raw is not None:
            items = _parse_batch(
                batch_raw, {"input": "str", "hmac": "str", "reference": "str"}, None
            )
            if not items:
                raise UserError("missing batch input to process")
        else:
            items = [{"input": f.get_str("input"), "hmac": f.get_str("hmac")}]
        results: list[dict[str, Any]] = []
        for item in items:
            out: dict[str, Any] = {}
            try:
                out["valid"] = self._verify_one(p, algorithm, item)
            except UserError as exc:
                out["valid"] = False
                out["error"] = exc.message
            out["reference"] = item.get("reference", "")
            results.append(out)
        if batch_raw is not None:
            return Result({"batch_results": results})
        if "error" in results[0]:
            raise UserError(results[0]["error"])
        return Result({"valid": results[0]["valid"]})

    @staticmethod
    def _verify_one(p: KeyPolicy, algorithm: str, item: dict[str, Any]) -> bool:
        if "input" not in item:
            raise UserError("missing input")
        try:
            data = _b64(item["input"])
        except gobase64.CorruptInputError as exc:
            raise UserError(f"unable to decode input as base64: {exc}") from exc
        mac = item.get("hmac")
        if mac is None:
            raise UserError("missing hmac")
        if not mac.startswith("vault:v"):
            raise UserError("invalid HMAC to verify: no prefix")
        parts = mac[7:].split(":", 1)
        if len(parts) != 2:
            raise UserError("invalid HMAC: wrong number of fields")
        ver = go_atoi(parts[0])
        if ver is None:
            raise UserError("invalid HMAC: version number could not be decoded")
        try:
            expected = gobase64.decode(parts[1])
        except gobase64.CorruptInputError as exc:
            raise UserError(f"unable to decode verification HMAC as base64: {exc}") from exc
        if ver > p.latest_version:
            raise UserError("invalid HMAC: version is too new")
        if p.min_decryption_version > 0 and ver < p.min_decryption_version:
            raise UserError("cannot verify HMAC: version is too old (disallowed by policy)")
        try:
            key = p.hmac_key(ver)
        except VaultError as exc:
            raise UserError(exc.message) from exc
        return hmac.compare_digest(hmac_digest(algorithm, key, data), expected)

    def hash(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        algorithm = params.get("urlalgorithm") or f.get_str("algorithm", "sha2-256") or "sha2-256"
        fmt = f.get_str("format", "hex") or "hex"
        if fmt not in ("hex", "base64"):
            raise UserError(f'unsupported encoding format {fmt}; must be "hex" or "base64"')
        if not f.has("input"):
            raise UserError("missing input to hash")
        try:
            data = _b64(f.get_str("input"))
        except gobase64.CorruptInputError as exc:
            raise UserError(f"unable to decode input as base64: {exc}") from exc
        if algorithm not in HASH_ALGORITHMS:
            raise UserError(f"unsupported algorithm {algorithm}")
        digest = hash_digest(algorithm, data)
        return Result({"sum": digest.hex() if fmt == "hex" else gobase64.encode(digest)})

    def random(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        url_bytes = params.get("urlbytes", "")
        if url_bytes:
            n = go_atoi(url_bytes)
            if n is None:
                raise UserError(
                    "error parsing url-set byte count: strconv.Atoi: parsing "
                    f"{url_bytes!r}: invalid syntax"
                )
        else:
            n = f.get_int("bytes", 32)
        fmt = f.get_str("format", "base64") or "base64"
        if n < 1:
            raise UserError("missing bytes for random generation")
        if n > 128 * 1024:
            raise UserError(f"exceeded maximum number of bytes of {128 * 1024}")
        if fmt not in ("hex", "base64"):
            raise UserError(f'unsupported encoding format {fmt}; must be "hex" or "base64"')
        raw = os.urandom(n)
        return Result({"random_bytes": raw.hex() if fmt == "hex" else gobase64.encode(raw)})

    def datakey(self, _op: str, params: dict[str, str], f: Fields) -> Result:
        kind = params["plaintext"]
        if kind not in ("plaintext", "wrapped"):
            raise UserError("Invalid path, must be 'plaintext' or 'wrapped'")
        p = self.policies.get(params["name"])
        if p is None:
            raise UserError("encryption key not found")
        try:
            ctx = _b64(f.get_str("context")) if f.get_str("context") else b""
            nonce = _b64(f.get_str("nonce")) if f.get_str("nonce") else b""
        except gobase64.CorruptInputError as exc:
            raise UserError(str(exc)) from exc
        bits = f.get_int("bits", 256)
        if bits not in (128, 256, 512):
            raise UserError("invalid bit length")
        if nonce and not (p.convergent and p.convergent_version == 1):
            raise UserError("provided nonce not allowed for this key")
        secret = os.urandom(bits // 8)
        ct, ver = p.encrypt(f.get_int("key_version"), ctx, nonce, secret)
        data: dict[str, Any] = {"ciphertext": ct, "key_version": ver}
        if kind == "plaintext":
            data["plaintext"] = gobase64.encode(secret)
        return Result(data)


def _route(pattern: str, fields: set[str], **ops: Handler) -> Route:
    return Route(re.compile(pattern), dict(ops), frozenset(fields))


_ENC_FIELDS = {
    "plaintext",
    "context",
    "key_version",
    "nonce",
    "associated_data",
    "padding_scheme",
    "type",
    "convergent_encryption",
    "partial_failure_response_code",
    "batch_input",
}
_DEC_FIELDS = {
    "ciphertext",
    "context",
    "nonce",
    "associated_data",
    "padding_scheme",
    "partial_failure_response_code",
    "batch_input",
}
_KEY_FIELDS = {
    "type",
    "derived",
    "convergent_encryption",
    "exportable",
    "allow_plaintext_backup",
    "auto_rotate_period",
    "key_size",
    "context",
    "managed_key_name",
    "managed_key_id",
    "parameter_set",
    "hybrid_key_type_pqc",
    "hybrid_key_type_ec",
}

M = TransitMount
ROUTES: list[Route] = [
    _route(r"keys/?", set(), list=M.keys_list),
    _route(
        rf"keys/{NAME}",
        _KEY_FIELDS,
        update=M.key_write,
        create=M.key_write,
        read=M.key_read,
        delete=M.key_delete,
    ),
    _route(
        rf"keys/{NAME}/config",
        {
            "min_decryption_version",
            "min_encryption_version",
            "deletion_allowed",
            "exportable",
            "allow_plaintext_backup",
            "auto_rotate_period",
        },
        update=M.key_config,
    ),
    _route(rf"keys/{NAME}/rotate", {"managed_key_name", "managed_key_id"}, update=M.key_rotate),
    _route(rf"keys/{NAME}/trim", {"min_available_version"}, update=M.key_trim),
    _route(rf"export/(?P<type>{SEG})/{NAME}(?:/(?P<version>{SEG}))?", set(), read=M.export),
    _route(rf"backup/{NAME}", set(), read=M.backup),
    _route(rf"restore(?:/{NAME})?", {"backup", "name", "force"}, update=M.restore),
    _route(rf"encrypt/{NAME}", _ENC_FIELDS, update=M.encrypt, create=M.encrypt),
    _route(rf"decrypt/{NAME}", _DEC_FIELDS, update=M.decrypt),
    _route(
        rf"rewrap/{NAME}",
        {
            "ciphertext",
            "context",
            "nonce",
            "key_version",
            "batch_input",
            "encrypt_padding_scheme",
            "decrypt_padding_scheme",
        },
        update=M.rewrap,
    ),
    _route(
        rf"hmac/{NAME}(?:/(?P<urlalgorithm>{SEG}))?",
        {"input", "algorithm", "hash_algorithm", "key_version", "batch_input"},
        update=M.hmac,
    ),
    _route(
        rf"verify/{NAME}(?:/(?P<urlalgorithm>{SEG}))?",
        {
            "input",
            "hmac",
            "signature",
            "algorithm",
            "context",
            "hash_algorithm",
            "signature_algorithm",
            "batch_input",
            "prehashed",
            "marshaling_algorithm",
            "salt_length",
        },
        update=M.verify,
    ),
    _route(
        rf"datakey/(?P<plaintext>{SEG})/{NAME}",
        {"context", "nonce", "bits", "key_version"},
        update=M.datakey,
    ),
    _route(rf"hash(?:/(?P<urlalgorithm>{SEG}))?", {"input", "algorithm", "format"}, update=M.hash),
    _route(
        rf"random(?:/(?P<source>platform|seal|all))?(?:/(?P<urlbytes>{SEG}))?",
        {"bytes", "format", "source"},
        update=M.random,
    ),
    _route(r"config/keys", {"disable_upsert"}, read=M.config_keys, update=M.config_keys),
]

__all__ = ["ROUTES", "HTTPStatusError", "Route", "TransitMount"]
