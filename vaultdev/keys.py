"""Transit key policies and their cryptography, byte-compatible with Vault's ``keysutil``.

A :class:`KeyPolicy` holds every version of one named key (``KeyEntry``: raw key, independent
``hmac_key``, creation time, convergent version) and the policy settings (derived, KDF, min
decryption/encryption/available versions, exportable, ...). It implements:

* ciphertext formatting and parsing exactly as ``Policy.EncryptWithFactory`` /
  ``DecryptWithFactory`` (``vault:v<N>:`` + standard base64 of ``nonce || ct || tag``);
* key derivation: HKDF-SHA256 (KDF 1, every key Vault creates today) and the legacy
  NIST SP 800-108 HMAC-SHA256 counter mode (KDF 0, only from restored keys);
* convergent encryption versions 3 (nonce = HMAC(derived hmac key, plaintext)[:12]) and 2
  (nonce = HMAC(context, plaintext)[:12], restored keys only);
* Vault's backup JSON (``{"policy": ..., "archived_keys": {"keys": [...]}}``).

Derived AEAD objects are cached per (version, context) on the policy object itself, so deleting
or restoring a key (which replaces the object) invalidates its cache.

Error classes follow Go: :class:`~vaultdev.errors.UserError` (``errutil.UserError``),
:class:`~vaultdev.errors.InternalError` (``errutil.InternalError``) and :class:`PlainError`
(any other Go error: a user error in encrypt/decrypt batches, but a 500 in rewrap).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultdev import gobase64
from vaultdev.errors import InternalError, UserError, VaultError, multierror

AEAD = AESGCM | ChaCha20Poly1305

# Key types: name -> Vault's KeyType integer (the backup JSON "type" field).
KEY_TYPE_IDS: dict[str, int] = {
    "aes256-gcm96": 0,
    "ecdsa-p256": 1,
    "ed25519": 2,
    "rsa-2048": 3,
    "rsa-4096": 4,
    "chacha20-poly1305": 5,
    "ecdsa-p384": 6,
    "ecdsa-p521": 7,
    "aes128-gcm96": 8,
    "rsa-3072": 9,
    "managed_key": 10,
    "hmac": 11,
}
KEY_TYPE_NAMES: dict[int, str] = {v: k for k, v in KEY_TYPE_IDS.items()}
SYMMETRIC_TYPES = frozenset({"aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"})
SUPPORTED_TYPES = SYMMETRIC_TYPES | {"hmac"}

KDF_COUNTER = 0
KDF_HKDF = 1
CURRENT_CONVERGENT_VERSION = 3
NONCE_SIZE = 12
TAG_SIZE = 16

ERR_TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
ERR_MISSING_CONTEXT = (
    "missing 'context' for key derivation; the key was created using a derived key, which means "
    "additional, per-request information must be included in order to perform operations with "
    "the key"
)
_ATOI_RE = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_CACHE_LIMIT = 65536

HASH_ALGORITHMS: dict[str, str] = {
    "sha2-224": "sha224",
    "sha2-256": "sha256",
    "sha2-384": "sha384",
    "sha2-512": "sha512",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}


class PlainError(VaultError):
    """A plain Go error (neither UserError nor InternalError). Alone it is a 500."""

    status = 500

    def errors(self) -> list[str]:
        return [multierror(self.message)]


def go_atoi(text: str) -> int | None:
    """Go's ``strconv.Atoi`` on a 64-bit platform: sign + ASCII digits, int64 range."""
    if not _ATOI_RE.fullmatch(text):
        return None
    value = int(text)
    if value > _INT64_MAX or value < _INT64_MIN:
        return None
    return value


def rfc3339nano(ts: float) -> str:
    """Go's ``time.RFC3339Nano`` in UTC (trailing zeros of the fraction dropped)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def rfc3339_to_unix(text: str) -> int:
    """Parse an RFC3339 time string to unix seconds (0 when unparseable)."""
    try:
        t = text
        if t.endswith("Z"):
            t = t[:-1] + "+00:00"
        m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", t)
        if m:
            t = m.group(1) + (m.group(2)[:7] if m.group(2) else "") + m.group(3)
        return int(datetime.fromisoformat(t).timestamp())
    except ValueError:
        return 0


def hkdf_sha256(key: bytes, context: bytes, length: int) -> bytes:
    """Go ``hkdf.New(sha256.New, key, nil, context)`` read ``length`` bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=context).derive(key)


def counter_kdf(key: bytes, context: bytes, bits: int = 256) -> bytes:
    """Vault's ``kdf.CounterMode(HMACSHA256PRF, 256, key, context, bits)`` (counter from 0)."""
    out = b""
    rounds = -(-bits // 256)
    suffix = struct.pack(">I", bits)
    for i in range(rounds):
        out += hmac.digest(key, struct.pack(">I", i) + context + suffix, "sha256")
    return out[: bits // 8]


def _new_aead(key_type: str, key: bytes) -> AEAD:
    if key_type == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    return AESGCM(key)


@dataclass(slots=True)
class KeyEntry:
    """One key version (Go ``KeyEntry``)."""

    key: bytes | None
    hmac_key: bytes | None
    time: str
    creation_time: int
    convergent_version: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": None if self.key is None else gobase64.encode(self.key),
            "hmac_key": None if self.hmac_key is None else gobase64.encode(self.hmac_key),
            "time": self.time,
            "creation_time": self.creation_time,
        }
        if self.convergent_version:
            out["convergent_version"] = self.convergent_version
        return out

    @classmethod
    def from_json(cls, raw: Any) -> KeyEntry:
        if not isinstance(raw, dict):
            raise InternalError("json: cannot unmarshal key entry")

        def b64(v: Any) -> bytes | None:
            if v is None:
                return None
            if not isinstance(v, str):
                raise InternalError(
                    "json: cannot unmarshal key material into Go value of type []uint8"
                )
            try:
                return gobase64.decode(v)
            except gobase64.CorruptInputError as exc:
                raise InternalError(str(exc)) from exc

        t = raw.get("time") or "0001-01-01T00:00:00Z"
        ct = raw.get("creation_time")
        creation = int(ct) if isinstance(ct, int | float) and ct else rfc3339_to_unix(str(t))
        cv = raw.get("convergent_version") or 0
        return cls(b64(raw.get("key")), b64(raw.get("hmac_key")), str(t), creation, int(cv))


def new_entry(key_type: str, key_size: int) -> KeyEntry:
    now = time.time()
    size = 16 if key_type == "aes128-gcm96" else (key_size or 32) if key_type == "hmac" else 32
    return KeyEntry(os.urandom(size), os.urandom(32), rfc3339nano(now), int(now))


@dataclass(slots=True)
class _Derived:
    aead: AEAD
    nonce_key: bytes | None  # convergent v3 HMAC key (derived bytes after the encryption key)


class KeyPolicy:
    """One named Transit key with all its versions (Go ``keysutil.Policy``)."""

    def __init__(
        self,
        name: str,
        key_type: str = "aes256-gcm96",
        *,
        derived: bool = False,
        convergent: bool = False,
        exportable: bool = False,
        allow_plaintext_backup: bool = False,
        auto_rotate_period: int = 0,
        key_size: int = 0,
    ) -> None:
        self.name = name
        self.type = key_type
        self.derived = derived
        self.kdf = KDF_HKDF if derived else KDF_COUNTER
        self.convergent = convergent
        self.convergent_version = -1 if convergent else 0
        self.exportable = exportable
        self.allow_plaintext_backup = allow_plaintext_backup
        self.deletion_allowed = False
        self.auto_rotate_period = auto_rotate_period  # seconds
        self.key_size = key_size
        self.min_decryption_version = 0
        self.min_encryption_version = 0
        self.min_available_version = 0
        self.latest_version = 0
        self.entries: dict[int, KeyEntry] = {}
        self.backup_info: dict[str, Any] | None = None
        self.restore_info: dict[str, Any] | None = None
        self.imported = False
        self.lock = threading.Lock()
        self._cache: dict[tuple[int, bytes | None], _Derived] = {}

    # ----- versions -------------------------------------------------------------------------

    def rotate(self) -> None:
        """Add version ``latest_version + 1`` (``RotateInMemory``). Caller holds ``lock``."""
        entry = new_entry(self.type, self.key_size)
        if self.convergent and (self.convergent_version == -1 or self.convergent_version > 1):
            entry.convergent_version = CURRENT_CONVERGENT_VERSION
        ver = self.latest_version + 1
        self.entries[ver] = entry
        self.latest_version = ver
        if self.min_decryption_version == 0:
            self.min_decryption_version = 1

    def visible_versions(self) -> list[int]:
        """Versions not archived (``p.Keys``): from min_decryption_version to latest."""
        low = max(self.min_decryption_version, self.min_available_version, 1)
        return [v for v in range(low, self.latest_version + 1) if v in self.entries]

    def clear_cache(self) -> None:
        self._cache = {}

    def _entry(self, ver: int) -> KeyEntry:
        if ver < self.min_decryption_version:
            raise PlainError("no such key version")
        entry = self.entries.get(ver)
        if entry is None or entry.key is None:
            raise PlainError("no such key version")
        return entry

    def convergent_version_for(self, ver: int) -> int:
        if not self.convergent:
            return 0
        cv = self.convergent_version or 1
        entry = self.entries.get(ver)
        if entry is not None and entry.convergent_version:
            cv = entry.convergent_version
        return cv

    @property
    def enc_bytes(self) -> int:
        return 16 if self.type == "aes128-gcm96" else 32

    def _derive(self, ver: int, context: bytes, want_nonce_key: bool) -> _Derived:
        """Key material for (version, context), cached. Mirrors ``GetKey``/``DeriveKey``."""
        cache_key = (ver, context if self.derived else None)
        cached = self._cache.get(cache_key)
        if cached is not None and (cached.nonce_key is not None or not want_nonce_key):
            return cached
        entry = self._entry(ver)
        assert entry.key is not None
        enc = self.enc_bytes
        nonce_key: bytes | None = None
        if not self.derived:
            key = entry.key
        else:
            if ver <= 0 or ver > self.latest_version:
                raise UserError("invalid key version")
            if not context:
                raise UserError(ERR_MISSING_CONTEXT)
            if self.kdf == KDF_HKDF:
                key = hkdf_sha256(entry.key, context, enc + 32)
                nonce_key = key[enc : enc + 32]
            elif self.kdf == KDF_COUNTER:
                key = counter_kdf(entry.key, context)
            else:
                raise InternalError("unsupported key derivation mode")
        if want_nonce_key and nonce_key is None:
            raise InternalError("could not derive key, length too small")
        if not self.derived and len(key) != enc:
            raise InternalError("could not derive enc key, length not correct")
        derived = _Derived(_new_aead(self.type, key[:enc]), nonce_key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {}
        self._cache[cache_key] = derived
        return derived

    # ----- encrypt / decrypt ----------------------------------------------------------------

    def encrypt(
        self,
        key_version: int,
        context: bytes,
        nonce: bytes,
        plaintext: bytes,
        aad: bytes | None = None,
    ) -> tuple[str, int]:
        """``EncryptWithFactory``: return ``(ciphertext, version used)``."""
        if self.type not in SYMMETRIC_TYPES:
            raise UserError(f"message encryption not supported for key type {self.type}")
        latest = self.latest_version
        ver = key_version
        if ver == 0:
            ver = latest
        elif ver < 0:
            raise UserError("requested version for encryption is negative")
        elif ver > latest:
            raise UserError(
                "requested version for encryption is higher than the latest key version"
            )
        elif ver < self.min_encryption_version:
            raise UserError(
                "requested version for encryption is less than the minimum encryption key version"
            )
        cv = self.convergent_version_for(ver)
        if cv > 2:
            if nonce:
                raise UserError("nonce provided when not allowed")
        elif nonce and (not self.convergent or cv != 1):
            raise UserError("nonce provided when not allowed")
        if self.derived and self.kdf == KDF_COUNTER and cv > 2:
            self._entry(ver)
            if not context:
                raise UserError(ERR_MISSING_CONTEXT)
            raise InternalError("could not derive key, length too small")
        d = self._derive(ver, context, cv > 2)
        if cv == 3:
            assert d.nonce_key is not None
            nonce = hmac.digest(d.nonce_key, plaintext, "sha256")[:NONCE_SIZE]
        elif cv == 2:
            nonce = hmac.digest(context, plaintext, "sha256")[:NONCE_SIZE]
        elif cv == 1:
            if len(nonce) != NONCE_SIZE:
                raise UserError(
                    "base64-decoded nonce must be 12 bytes long when using convergent "
                    "encryption with this key"
                )
        else:
            nonce = os.urandom(NONCE_SIZE)
        sealed = d.aead.encrypt(nonce, plaintext, aad or None)
        blob = sealed if cv == 1 else nonce + sealed
        return f"vault:v{ver}:{gobase64.encode(blob)}", ver

    def parse_ciphertext(self, value: str) -> tuple[int, str]:
        """Steps 1-7 of ``DecryptWithFactory``: return ``(version, base64 payload)``."""
        if not value.startswith("vault:v"):
            raise UserError("invalid ciphertext: no prefix")
        parts = value[7:].split(":", 1)
        if len(parts) != 2:
            raise UserError("invalid ciphertext: wrong number of fields")
        ver = go_atoi(parts[0])
        if ver is None:
            raise UserError("invalid ciphertext: version number could not be decoded")
        if ver == 0:
            ver = 1
        if ver > self.latest_version:
            raise UserError("invalid ciphertext: version is too new")
        if self.min_decryption_version > 0 and ver < self.min_decryption_version:
            raise UserError(ERR_TOO_OLD)
        return ver, parts[1]

    def decrypt(
        self, context: bytes, nonce: bytes, ciphertext: str, aad: bytes | None = None
    ) -> bytes:
        """``DecryptWithFactory``: return the plaintext bytes."""
        if self.type not in SYMMETRIC_TYPES:
            raise UserError(f"message decryption not supported for key type {self.type}")
        ver, payload = self.parse_ciphertext(ciphertext)
        try:
            blob = gobase64.decode(payload)
        except gobase64.CorruptInputError as exc:
            raise UserError("invalid ciphertext: could not decode base64") from exc
        if self.derived and self.kdf == KDF_COUNTER and self.type == "aes128-gcm96":
            self._entry(ver)
            if not context:
                raise UserError(ERR_MISSING_CONTEXT)
            raise InternalError("could not derive enc key, length not correct")
        d = self._derive(ver, context, False)
        if self.convergent and self.convergent_version == 1:
            if not nonce:
                raise UserError("invalid convergent nonce supplied")
            use_nonce, body = nonce, blob
        else:
            if len(blob) < NONCE_SIZE:
                raise UserError("invalid ciphertext length")
            use_nonce, body = blob[:NONCE_SIZE], blob[NONCE_SIZE:]
        try:
            return d.aead.decrypt(use_nonce, body, aad or None)
        except (InvalidTag, ValueError) as exc:
            if self.type == "chacha20-poly1305":
                raise PlainError("chacha20poly1305: message authentication failed") from exc
            raise PlainError("cipher: message authentication failed") from exc

    # ----- hmac -----------------------------------------------------------------------------

    def hmac_key(self, ver: int) -> bytes:
        """``Policy.HMACKey`` (plain errors)."""
        if ver < 0:
            raise PlainError("key version does not exist (cannot be negative)")
        if ver > self.latest_version:
            raise PlainError(
                f"key version does not exist; latest key version is {self.latest_version}"
            )
        entry = self._entry(ver)
        if self.type == "hmac":
            assert entry.key is not None
            return entry.key
        if entry.hmac_key is None:
            raise PlainError("no HMAC key exists for that key version")
        return entry.hmac_key

    # ----- read / backup --------------------------------------------------------------------

    def read_data(self) -> dict[str, Any]:
        """``formatKeyPolicy``: the ``data`` of a key read."""
        symmetric = self.type in SYMMETRIC_TYPES
        data: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "derived": self.derived,
            "deletion_allowed": self.deletion_allowed,
            "min_available_version": self.min_available_version,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "latest_version": self.latest_version,
            "exportable": self.exportable,
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "supports_encryption": symmetric,
            "supports_decryption": symmetric,
            "supports_signing": False,
            "supports_derivation": symmetric,
            "auto_rotate_period": self.auto_rotate_period,
            "imported_key": self.imported,
            "keys": {str(v): self.entries[v].creation_time for v in self.visible_versions()},
        }
        if self.key_size:
            data["key_size"] = self.key_size
        if self.backup_info is not None:
            data["backup_info"] = self.backup_info
        if self.restore_info is not None:
            data["restore_info"] = self.restore_info
        if self.derived:
            if self.kdf == KDF_HKDF:
                data["kdf"] = "hkdf_sha256"
            else:
                data["kdf"] = "hmac-sha256-counter"
                data["kdf_mode"] = "hmac-sha256-counter"
            data["convergent_encryption"] = self.convergent
            if self.convergent:
                data["convergent_encryption_version"] = self.convergent_version
        return data

    def backup_json(self) -> str:
        """Vault's backup: base64 of ``{"policy": ..., "archived_keys": ...}`` + newline."""
        now = time.time()
        self.backup_info = {"time": rfc3339nano(now), "version": self.latest_version}
        visible = self.visible_versions()
        archive: list[dict[str, Any]] = []
        placeholder = KeyEntry(None, None, "0001-01-01T00:00:00Z", 0).to_json()
        for ver in range(self.min_available_version, self.latest_version + 1):
            entry = self.entries.get(ver)
            archive.append(placeholder if entry is None else entry.to_json())
        policy: dict[str, Any] = {"name": self.name}
        if self.key_size:
            policy["key_size"] = self.key_size
        policy.update(
            {
                "keys": {str(v): self.entries[v].to_json() for v in sorted(visible, key=str)},
                "derived": self.derived,
                "kdf": self.kdf,
                "convergent_encryption": self.convergent,
                "exportable": self.exportable,
                "min_decryption_version": self.min_decryption_version,
                "min_encryption_version": self.min_encryption_version,
                "latest_version": self.latest_version,
                "archive_version": self.latest_version,
                "archive_min_version": self.min_available_version,
                "min_available_version": self.min_available_version,
                "deletion_allowed": self.deletion_allowed,
                "convergent_version": self.convergent_version,
                "type": KEY_TYPE_IDS[self.type],
                "backup_info": self.backup_info,
                "restore_info": self.restore_info,
                "allow_plaintext_backup": self.allow_plaintext_backup,
                "version_template": "",
                "storage_prefix": "",
                "auto_rotate_period": self.auto_rotate_period * 1_000_000_000,
                "Imported": self.imported,
                "AllowImportedKeyRotation": False,
            }
        )
        doc = {"policy": policy, "archived_keys": {"keys": archive}}
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n"
        return gobase64.encode(text.encode("utf-8"))

    @classmethod
    def from_backup(cls, backup_b64: str, name: str) -> KeyPolicy:
        """Parse a backup (``LockManager.RestorePolicy``); errors are plain (500)."""
        try:
            raw = gobase64.decode(backup_b64)
        except gobase64.CorruptInputError as exc:
            raise InternalError(str(exc)) from exc
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InternalError(f"invalid character in backup JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("policy"), dict):
            raise InternalError("backup does not contain a key policy")
        pol: dict[str, Any] = doc["policy"]
        key_name = name or str(pol.get("name") or "")
        if not key_name:
            raise InternalError("backup does not name the key")
        type_id = pol.get("type", 0)
        key_type = KEY_TYPE_NAMES.get(int(type_id)) if isinstance(type_id, int) else None
        if key_type not in SUPPORTED_TYPES:
            raise InternalError(f"vaultdev cannot restore keys of type {type_id}")
        p = cls(key_name, key_type)
        p.derived = bool(pol.get("derived", False))
        p.kdf = int(pol.get("kdf", 0) or 0)
        p.convergent = bool(pol.get("convergent_encryption", False))
        p.convergent_version = int(pol.get("convergent_version", 0) or 0)
        p.exportable = bool(pol.get("exportable", False))
        p.allow_plaintext_backup = bool(pol.get("allow_plaintext_backup", False))
        p.deletion_allowed = bool(pol.get("deletion_allowed", False))
        p.key_size = int(pol.get("key_size", 0) or 0)
        p.min_decryption_version = int(pol.get("min_decryption_version", 0) or 0)
        p.min_encryption_version = int(pol.get("min_encryption_version", 0) or 0)
        p.min_available_version = int(pol.get("min_available_version", 0) or 0)
        p.latest_version = int(pol.get("latest_version", 0) or 0)
        p.auto_rotate_period = int(pol.get("auto_rotate_period", 0) or 0) // 1_000_000_000
        p.backup_info = pol.get("backup_info")
        p.imported = bool(pol.get("Imported", False))
        archived = doc.get("archived_keys")
        if isinstance(archived, dict) and isinstance(archived.get("keys"), list):
            for idx, raw_entry in enumerate(archived["keys"]):
                ver = idx + p.min_available_version
                entry = KeyEntry.from_json(raw_entry)
                if ver > 0 and entry.key is not None:
                    p.entries[ver] = entry
        keys = pol.get("keys")
        if isinstance(keys, dict):
            for ver_s, raw_entry in keys.items():
                key_ver = go_atoi(str(ver_s))
                if key_ver is not None and key_ver > 0:
                    p.entries[key_ver] = KeyEntry.from_json(raw_entry)
        if p.latest_version == 0 and p.entries:
            p.latest_version = max(p.entries)
        if p.min_decryption_version == 0 and p.latest_version:
            p.min_decryption_version = 1
        p.restore_info = {"time": rfc3339nano(time.time()), "version": p.latest_version}
        return p


def hmac_digest(algorithm: str, key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, HASH_ALGORITHMS[algorithm])


def hash_digest(algorithm: str, data: bytes) -> bytes:
    return hashlib.new(HASH_ALGORITHMS[algorithm], data).digest()
