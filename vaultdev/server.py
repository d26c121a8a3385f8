"""HTTP server, routing, authentication and the ``sys/`` and ``auth/token/`` endpoints.

The server is a :class:`http.server.ThreadingHTTPServer` (one daemon thread per connection,
HTTP/1.1 keep-alive). Every accepted socket gets ``TCP_NODELAY`` and every response (status line,
headers and body) is sent in a single write, so keep-alive clients never wait on delayed ACKs.

Request flow for ``/v1/<path>``: read and limit the body (32 MiB, else 413), parse JSON (JSON
limits: at most 10000 elements per array and 1048576 bytes per string, else 400), apply injected
faults (see :mod:`vaultdev.faults`), authenticate ``X-Vault-Token`` (403 ``permission denied``),
map the method to an operation (POST/PUT update, or create for ``encrypt`` on a missing key; GET
read, or list with ``?list=true``; LIST list; DELETE delete), check the ACL (403
``1 error occurred:\\n\\t* permission denied\\n\\n``), route to the mount's backend, and answer
with Vault's envelope. ``X-Vault-Namespace`` is accepted and ignored (no namespaces).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

from vaultdev.auth import AuthStore, Token
from vaultdev.errors import (
    NO_CONTENT,
    HTTPStatusError,
    Result,
    UserError,
    VaultError,
    multierror,
    not_found_empty,
    permission_denied_acl,
    permission_denied_token,
    unsupported_operation,
    unsupported_path,
)
from vaultdev.faults import FaultInjector, Stats, error_text, parse_config
from vaultdev.fields import Fields, parse_duration_seconds
from vaultdev.transit import TransitMount

VERSION = "1.15.0+vaultdev"
MAX_REQUEST_SIZE = 32 * 1024 * 1024
MAX_JSON_ARRAY = 10000
MAX_JSON_STRING = 1048576
ERR_ARRAY_LIMIT = f"JSON array exceeds the maximum of {MAX_JSON_ARRAY} elements"
ERR_STRING_LIMIT = f"JSON string value exceeds the maximum length of {MAX_JSON_STRING} bytes"

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    207: "Multi-Status",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_UNAUTHENTICATED = frozenset({"sys/health", "sys/seal-status", "sys/init", "sys/leader"})
_RESERVED_MOUNTS = ("sys", "auth", "cubbyhole", "identity")
_KIND_BY_HANDLER = {"encrypt": "encrypt", "decrypt": "decrypt", "rewrap": "rewrap", "hmac": "hmac"}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _check_limits(value: Any) -> None:
    """Walk decoded JSON for the listener's JSON limits (only for bodies above 1 MiB)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if len(v) > MAX_JSON_STRING and len(v.encode("utf-8")) > MAX_JSON_STRING:
                raise UserError(ERR_STRING_LIMIT)
        elif isinstance(v, list):
            if len(v) > MAX_JSON_ARRAY:
                raise UserError(ERR_ARRAY_LIMIT)
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())


class VaultState:
    """Everything the server keeps: tokens, policies, mounts, faults, stats."""

    def __init__(self, root_token: str, *, default_mount: bool = True, verbose: bool = False):
        self.root_token = root_token
        self.auth = AuthStore(root_token)
        self.mounts: dict[str, TransitMount] = {}
        self.mount_meta: dict[str, dict[str, Any]] = {}
        self.mounts_lock = threading.Lock()
        self.faults = FaultInjector()
        self.stats = Stats()
        self.verbose = verbose
        self.cluster_id = str(uuid.uuid4())
        if default_mount:
            self.enable_mount("transit", {"type": "transit"})

    # ----- mounts ---------------------------------------------------------------------------

    def enable_mount(self, path: str, body: dict[str, Any]) -> None:
        path = path.strip("/")
        if not path:
            raise UserError("missing mount path")
        mount_type = body.get("type")
        if mount_type in (None, ""):
            raise UserError("backend type must be specified as a string")
        if mount_type != "transit":
            raise UserError(f"plugin not found in the catalog: {mount_type}")
        with self.mounts_lock:
            for existing in (*_RESERVED_MOUNTS, *self.mounts):
                if (path + "/").startswith(existing + "/") or (existing + "/").startswith(
                    path + "/"
                ):
                    raise UserError(f"path is already in use at {existing}/")
            self.mounts[path] = TransitMount(path)
            description = body.get("description")
            self.mount_meta[path] = {
                "accessor": f"transit_{uuid.uuid4().hex[:8]}",
                "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
                "description": description if isinstance(description, str) else "",
                "external_entropy_access": False,
                "local": bool(body.get("local", False)),
                "options": body.get("options") if isinstance(body.get("options"), dict) else None,
                "plugin_version": "",
                "running_plugin_version": f"v{VERSION}",
                "running_sha256": "",
                "seal_wrap": bool(body.get("seal_wrap", False)),
                "type": "transit",
                "uuid": str(uuid.uuid4()),
            }

    def disable_mount(self, path: str) -> None:
        path = path.strip("/")
        with self.mounts_lock:
            self.mounts.pop(path, None)
            self.mount_meta.pop(path, None)

    def find_mount(self, rel: str) -> tuple[TransitMount, str] | None:
        mounts = self.mounts
        # Longest prefix first; mount paths may contain slashes.
        best: str | None = None
        for path in mounts:
            if (rel == path or rel.startswith(path + "/")) and (
                best is None or len(path) > len(best)
            ):
                best = path
        if best is None:
            return None
        return mounts[best], rel[len(best) + 1 :]


class _Request:
    """One parsed /v1/ request."""

    __slots__ = ("body", "method", "op", "path", "token")

    def __init__(self, method: str, path: str, body: dict[str, Any], op: str) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.op = op
        self.token: Token | None = None


class VaultHandler(BaseHTTPRequestHandler):
    """Request handler: one instance per connection, several requests with keep-alive."""

    protocol_version = "HTTP/1.1"
    server_version = "vaultdev"
    sys_version = ""
    server: VaultHTTPServer

    hdrs: dict[str, str]

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hdrs = {}

    def handle_one_request(self) -> None:
        """Parse one request with a lean header parser (the stdlib one goes through ``email``)."""
        try:
            line = self.rfile.readline(65537)
            if not line:
                self.close_connection = True
                return
            if len(line) > 65536:
                self._send_errors(414, ["request line too long"], close=True)
                return
            self.raw_requestline = line
            self.requestline = line.decode("latin-1").rstrip("\r\n")
            parts = self.requestline.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                self.command = ""
                self._send_errors(400, ["malformed request line"], close=True)
                return
            self.command, self.path, self.request_version = parts
            hdrs: dict[str, str] = {}
            while True:
                raw = self.rfile.readline(65537)
                if raw in (b"\r\n", b"\n", b""):
                    break
                if len(hdrs) >= 200 or len(raw) > 65536:
                    self._send_errors(431, ["request headers too large"], close=True)
                    return
                key, _, value = raw.decode("latin-1").partition(":")
                hdrs[key.strip().lower()] = value.strip()
            self.hdrs = hdrs
            conn = hdrs.get("connection", "").lower()
            if self.request_version == "HTTP/1.0":
                self.close_connection = conn != "keep-alive"
            else:
                self.close_connection = conn == "close"
            if hdrs.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._dispatch()
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        except Exception as exc:  # a vaultdev bug: answer 500 rather than dropping the request
            traceback.print_exc(file=sys.stderr)
            with contextlib.suppress(OSError):
                self._send_errors(
                    500, [multierror(f"vaultdev internal error: {exc!r}")], close=True
                )

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.state.verbose:
            super().log_message(format, *args)

    # ----- I/O ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes | None, *, close: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", "Cache-Control: no-store"]
        if status != 204:
            lines.append("Content-Type: application/json")
            lines.append(
                f"Content-Length: {0 if body is None or self.command == 'HEAD' else len(body)}"
            )
        if close:
            self.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is not None and status != 204 and self.command != "HEAD":
            head += body
        self.wfile.write(head)
        if self.server.state.verbose:
            self.log_request(status)

    def _send_errors(self, status: int, errors: list[str], *, close: bool = False) -> None:
        self._send(status, _json_bytes({"errors": errors}), close=close)

    def _read_body(self) -> bytes | None:
        """The request body, or ``None`` after answering 413."""
        if self.hdrs.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_REQUEST_SIZE:
                    self._send_errors(413, ["http: request body too large"], close=True)
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        try:
            length = int(self.hdrs.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._send_errors(400, ["invalid Content-Length header"], close=True)
            return None
        if length > MAX_REQUEST_SIZE:
            # Drain a moderately oversized body first so the client reads the 413 instead of
            # a connection reset, then close the connection.
            remaining = length if length <= 8 * MAX_REQUEST_SIZE else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            self._send_errors(413, ["http: request body too large"], close=True)
            return None
        return self.rfile.read(length) if length > 0 else b""

    # ----- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        state = self.server.state
        raw_path, _, query = self.path.partition("?")
        body_bytes = self._read_body()
        if body_bytes is None:
            return
        if raw_path.startswith("/_vaultdev/"):
            self._control(raw_path[len("/_vaultdev/") :], body_bytes)
            return
        if not raw_path.startswith("/v1/"):
            self._send_errors(404, [])
            return
        rel = unquote(raw_path[4:])
        action = state.faults.decide(rel)
        if action is not None:
            state.stats.record_fault(action)
            if action.delay:
                time.sleep(action.delay)
            if action.drop:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action.status is not None:
                state.stats.record_status(action.status)
                self._send_errors(action.status, [error_text(action.status)])
                return
        try:
            status, payload = self._handle_v1(rel, query, body_bytes)
        except VaultError as exc:
            status, payload = exc.status, _json_bytes({"errors": exc.errors()})
        state.stats.record_status(status)
        self._send(status, payload)

    def _handle_v1(self, rel: str, query: str, body_bytes: bytes) -> tuple[int, bytes | None]:
        state = self.server.state
        method = self.command
        params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        if method in ("GET", "HEAD"):
            op = "list" if params.get("list", "").lower() in ("true", "1") else "read"
        elif method == "LIST":
            op = "list"
        elif method in ("POST", "PUT"):
            op = "update"
        elif method == "DELETE":
            op = "delete"
        else:
            raise unsupported_operation()
        body: dict[str, Any] = {}
        if body_bytes and method in ("POST", "PUT", "DELETE", "LIST", "GET"):
            try:
                decoded = json.loads(body_bytes)
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(f"failed to parse JSON input: {exc}") from exc
            if decoded is None:
                decoded = {}
            if not isinstance(decoded, dict):
                raise UserError("failed to parse JSON input: body must be a JSON object")
            batch = decoded.get("batch_input")
            if isinstance(batch, list) and len(batch) > MAX_JSON_ARRAY:
                raise UserError(ERR_ARRAY_LIMIT)
            if len(body_bytes) > MAX_JSON_STRING:
                _check_limits(decoded)
            body = decoded
        if op in ("read", "list", "delete") and params:
            for k, v in params.items():
                if k != "list":
                    body.setdefault(k, v)
        if op == "update" and rel.endswith("/") and not rel.startswith("sys/"):
            raise UserError("cannot write to a path ending in '/'")
        if rel in _UNAUTHENTICATED:
            state.stats.record("other", 1, False)
            return self._sys_unauth(rel)
        token = state.auth.lookup(self.hdrs.get("x-vault-token"))
        if token is None:
            raise permission_denied_token()
        req = _Request(method, rel, body, op)
        req.token = token
        if rel.startswith("sys/") or rel == "sys":
            state.stats.record("other", 1, False)
            result = self._sys(req)
        elif rel.startswith("auth/"):
            state.stats.record("other", 1, False)
            result = self._token_endpoints(req)
        else:
            result = self._transit(req)
        return self._render(result)

    def _render(self, result: Result) -> tuple[int, bytes | None]:
        if result.status == 204 and not result.raw:
            return 204, None
        envelope: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": result.data,
            "wrap_info": None,
            "warnings": result.warnings or None,
            "auth": result.auth,
        }
        if result.mount_type is not None:
            envelope["mount_type"] = result.mount_type
        if result.top_level and result.data:
            for k, v in result.data.items():
                envelope.setdefault(k, v)
        return result.status, _json_bytes(envelope)

    def _authorize(self, req: _Request, path: str, capability: str) -> None:
        tok = req.token
        assert tok is not None
        if tok.is_root:
            return
        if req.op == "list" and not path.endswith("/"):
            path += "/"
        if not self.server.state.auth.acl_for(tok).allows(path, capability):
            raise permission_denied_acl()

    # ----- transit --------------------------------------------------------------------------

    def _transit(self, req: _Request) -> Result:
        state = self.server.state
        found = state.find_mount(req.path)
        if found is None:
            self._authorize(req, req.path, req.op)
            raise HTTPStatusError(
                404, [f'no handler for route "{req.path}". route entry not found.']
            )
        mount, sub = found
        matched = mount.match(sub)
        op = req.op
        if matched is not None:
            route, route_params = matched
            handler_name = next(iter(route.ops.values())).__name__
            kind = _KIND_BY_HANDLER.get(handler_name, "other")
            if kind == "encrypt" and op == "update" and not mount.key_exists(route_params["name"]):
                op = "create"
        else:
            kind = "other"
        batch = req.body.get("batch_input")
        state.stats.record(kind, len(batch) if isinstance(batch, list) else 1, batch is not None)
        self._authorize(req, req.path, op)
        if matched is None:
            raise unsupported_path()
        handler = route.ops.get(op)
        if handler is None:
            raise unsupported_operation()
        result = handler(mount, op, route_params, Fields(req.body))
        if op in ("update", "create") and result.status == 200 and not result.raw:
            unknown = sorted(k for k in req.body if k not in route.fields)
            if unknown:
                result.warnings = [
                    *result.warnings,
                    f"Endpoint ignored these unrecognized parameters: [{' '.join(unknown)}]",
                ]
        if result.status != 204:
            result.mount_type = "transit"
        return result

    # ----- sys ------------------------------------------------------------------------------

    def _sys_unauth(self, rel: str) -> tuple[int, bytes | None]:
        state = self.server.state
        now = int(time.time())
        if rel == "sys/health":
            return 200, _json_bytes(
                {
                    "initialized": True,
                    "sealed": False,
                    "standby": False,
                    "performance_standby": False,
                    "replication_performance_mode": "disabled",
                    "replication_dr_mode": "disabled",
                    "server_time_utc": now,
                    "version": VERSION,
                    "enterprise": False,
                    "cluster_name": "vaultdev",
                    "cluster_id": state.cluster_id,
                    "echo_duration_ms": 0,
                    "clock_skew_ms": 0,
                }
            )
        if rel == "sys/seal-status":
            return 200, _json_bytes(
                {
                    "type": "shamir",
                    "initialized": True,
                    "sealed": False,
                    "t": 1,
                    "n": 1,
                    "progress": 0,
                    "nonce": "",
                    "version": VERSION,
                    "build_date": "2026-01-01T00:00:00Z",
                    "migration": False,
                    "cluster_name": "vaultdev",
                    "cluster_id": state.cluster_id,
                    "recovery_seal": False,
                    "storage_type": "inmem",
                }
            )
        if rel == "sys/init":
            return 200, _json_bytes({"initialized": True})
        return 200, _json_bytes(
            {
                "ha_enabled": False,
                "is_self": False,
                "leader_address": "",
                "leader_cluster_address": "",
            }
        )

    def _sys(self, req: _Request) -> Result:
        state = self.server.state
        path = req.path
        op = req.op
        if path == "sys/mounts" and op == "read":
            self._authorize(req, path, "read")
            data = {"sys/": self._sys_mount_entry()}
            for mpath, meta in sorted(state.mount_meta.items()):
                data[mpath + "/"] = meta
            return Result(data, top_level=True, mount_type="system")
        if path.startswith("sys/mounts/"):
            mpath = path[len("sys/mounts/") :]
            self._authorize(req, path, op)
            if op == "update":
                state.enable_mount(mpath, req.body)
                return NO_CONTENT
            if op == "delete":
                state.disable_mount(mpath)
                return NO_CONTENT
            if op == "read":
                mount_meta = state.mount_meta.get(mpath.strip("/"))
                if mount_meta is None:
                    raise UserError(f"No secret engine mount at {mpath.strip('/')}/")
                return Result(dict(mount_meta), top_level=True, mount_type="system")
            raise unsupported_operation()
        if path in ("sys/capabilities-self", "sys/capabilities"):
            self._authorize(req, path, "update")
            return self._capabilities(req)
        if path in ("sys/policies/acl", "sys/policies/acl/") or path in (
            "sys/policy",
            "sys/policy/",
        ):
            self._authorize(req, path, op)
            if op not in ("list", "read"):
                raise unsupported_operation()
            names = state.auth.list_policies()
            if path.startswith("sys/policy"):
                return Result(
                    {"keys": names, "policies": names}, top_level=True, mount_type="system"
                )
            return Result({"keys": names}, mount_type="system")
        for prefix in ("sys/policies/acl/", "sys/policy/"):
            if path.startswith(prefix):
                name = path[len(prefix) :].lower()
                self._authorize(req, path, op)
                legacy = prefix == "sys/policy/"
                return self._policy(req, name, legacy)
        self._authorize(req, path, op)
        raise unsupported_path()

    @staticmethod
    def _sys_mount_entry() -> dict[str, Any]:
        return {
            "accessor": "system_vaultdev",
            "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
            "description": "system endpoints used for control, policy and debugging",
            "external_entropy_access": False,
            "local": False,
            "options": None,
            "plugin_version": "",
            "running_plugin_version": f"v{VERSION}",
            "running_sha256": "",
            "seal_wrap": True,
            "type": "system",
            "uuid": "00000000-0000-0000-0000-000000000000",
        }

    def _policy(self, req: _Request, name: str, legacy: bool) -> Result:
        auth = self.server.state.auth
        if req.op == "update":
            text = req.body.get("policy")
            if text in (None, "") and legacy:
                text = req.body.get("rules")
            if isinstance(text, dict):
                text = json.dumps(text)
            if not isinstance(text, str) or not text:
                raise UserError("'policy' parameter not supplied or empty")
            auth.put_policy(name, text)
            return NO_CONTENT
        if req.op == "read":
            if name == "root":
                text = ""
            else:
                found = auth.policy_text.get(name)
                if found is None:
                    raise not_found_empty()
                text = found
            if legacy:
                return Result({"name": name, "rules": text}, top_level=True, mount_type="system")
            return Result({"name": name, "policy": text}, mount_type="system")
        if req.op == "delete":
            auth.delete_policy(name)
            return NO_CONTENT
        raise unsupported_operation()

    def _capabilities(self, req: _Request) -> Result:
        tok = req.token
        assert tok is not None
        paths_raw = req.body.get("paths")
        if paths_raw is None:
            paths_raw = req.body.get("path")
        if isinstance(paths_raw, str):
            paths = [p.strip() for p in paths_raw.split(",") if p.strip()]
        elif isinstance(paths_raw, list):
            paths = [str(p) for p in paths_raw]
        else:
            paths = []
        if not paths:
            raise UserError("'paths' must be supplied")
        if req.path == "sys/capabilities":
            target = self.server.state.auth.lookup(str(req.body.get("token") or ""))
            if target is None:
                raise UserError("invalid token")
            tok = target
        data: dict[str, Any] = {}
        for raw_path in paths:
            p = raw_path.lstrip("/")
            if tok.is_root:
                caps = ["root"]
            else:
                granted = self.server.state.auth.acl_for(tok).capabilities(p)
                caps = ["deny"] if not granted or "deny" in granted else sorted(granted)
            data[p] = caps
        if len(paths) == 1:
            data["capabilities"] = data[paths[0].lstrip("/")]
        return Result(data, top_level=True, mount_type="system")

    # ----- auth/token -----------------------------------------------------------------------

    def _token_endpoints(self, req: _Request) -> Result:
        state = self.server.state
        tok = req.token
        assert tok is not None
        if not req.path.startswith("auth/token/"):
            self._authorize(req, req.path, req.op)
            raise HTTPStatusError(
                404, [f'no handler for route "{req.path}". route entry not found.']
            )
        sub = req.path[len("auth/token/") :]
        op = req.op
        now = time.time()
        f = Fields(req.body)
        self._authorize(req, req.path, op)
        if sub == "lookup-self" and op in ("read", "update"):
            return Result(tok.lookup_data(now), mount_type="token")
        if sub == "lookup" and op in ("read", "update"):
            other = state.auth.lookup(f.get_str("token"))
            if other is None:
                raise UserError("bad token")
            return Result(other.lookup_data(now), mount_type="token")
        if sub == "renew-self" and op == "update":
            increment = parse_duration_seconds("increment", req.body.get("increment"))
            lease = state.auth.renew(tok, increment)
            return Result(None, auth=tok.auth_block(lease), mount_type="token")
        if sub == "renew" and op == "update":
            other = state.auth.lookup(f.get_str("token"))
            if other is None:
                raise UserError("invalid token")
            increment = parse_duration_seconds("increment", req.body.get("increment"))
            lease = state.auth.renew(other, increment)
            return Result(None, auth=other.auth_block(lease), mount_type="token")
        if sub == "revoke-self" and op == "update":
            state.auth.revoke(tok)
            return NO_CONTENT
        if sub == "revoke" and op == "update":
            other = state.auth.lookup(f.get_str("token"))
            if other is not None:
                state.auth.revoke(other)
            return NO_CONTENT
        if sub in ("create", "create-orphan") and op == "update":
            ttl = parse_duration_seconds("ttl", req.body.get("ttl"))
            new = state.auth.create_token(
                tok,
                req.body,
                ttl,
                renewable=f.get_bool("renewable", True),
                no_parent=f.get_bool("no_parent") or sub == "create-orphan",
                no_default_policy=f.get_bool("no_default_policy"),
                explicit_max_ttl=parse_duration_seconds(
                    "explicit_max_ttl", req.body.get("explicit_max_ttl")
                ),
                period=parse_duration_seconds("period", req.body.get("period")),
            )
            return Result(None, auth=new.auth_block(new.ttl), mount_type="token")
        raise unsupported_path()

    # ----- /_vaultdev control ---------------------------------------------------------------

    def _control(self, sub: str, body_bytes: bytes) -> None:
        state = self.server.state
        if self.hdrs.get("x-vault-token") != state.root_token:
            self._send_errors(403, ["permission denied"])
            return
        method = self.command
        sub = sub.rstrip("/")
        if sub == "faults":
            if method == "GET":
                self._send(200, _json_bytes({"faults": state.faults.config()}))
                return
            if method in ("PUT", "POST"):
                try:
                    cfg = parse_config(json.loads(body_bytes or b"{}"))
                except (ValueError, AttributeError, TypeError) as exc:
                    self._send_errors(400, [f"invalid fault config: {exc}"])
                    return
                state.faults.set(cfg)
                self._send(200, _json_bytes({"faults": state.faults.config()}))
                return
            if method == "DELETE":
                state.faults.clear()
                self._send(204, None)
                return
            self._send_errors(405, ["unsupported operation"])
            return
        if sub == "stats" and method == "GET":
            self._send(200, _json_bytes(state.stats.snapshot()))
            return
        if sub == "stats/reset" and method in ("POST", "PUT"):
            state.stats.reset()
            self._send(204, None)
            return
        self._send_errors(404, ["unsupported path"])


class VaultHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server holding the :class:`VaultState`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: VaultState) -> None:
        self.state = state
        super().__init__(address, VaultHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is routine here, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def make_server(
    host: str = "127.0.0.1",
    port: int = 0,
    root_token: str = "root",  # noqa: S107 - dev server default
    *,
    default_mount: bool = True,
    verbose: bool = False,
) -> VaultHTTPServer:
    """Create (bind and listen) a server; call ``serve_forever()`` to run it."""
    state = VaultState(root_token, default_mount=default_mount, verbose=verbose)
    return VaultHTTPServer((host, port), state)
