"""A fault-injecting HTTP proxy in front of a real Vault or OpenBao server.

The tests (and the benchmark) put it between the tool and the server to add latency, answer
with error statuses, drop connections or cut Vault off altogether, and to count what the tool
sends. The server behind it is real: every request that is not faulted is forwarded unchanged
and its answer returned unchanged. Token expiry, revocation and missing capabilities are not
faked here: they come from the server itself.

Example::

    with FaultProxy(server.addr, seed=7) as proxy:          # proxy.addr: http://127.0.0.1:PORT
        proxy.set(error_rate=0.05, error_statuses=[503], paths="transit/")
        ...                                                  # point VAULT_ADDR at proxy.addr
        print(proxy.stats()["faults_injected"])

Configuration (:meth:`FaultProxy.set` replaces it; :meth:`FaultProxy.clear` empties it), the
same keys and meaning as the retired emulator's fault injection::

    latency_ms         sleep this long before handling each matching request
    latency_jitter_ms  plus a uniform random 0..jitter ms
    error_rate         probability of answering with an error status (not forwarded)
    error_statuses     chosen uniformly for error_rate faults (default [503])
    drop_rate          probability of closing the connection without an answer (not forwarded)
    next               faults for the next matching requests, in order, before any random one:
                       [{"status": 503, "count": 2}, {"drop": True, "count": 1}]
    paths              only requests whose path after /v1/ starts with this prefix (a string or
                       a list of prefixes; absent: every /v1/ request)
    max_batch_items    HashiCorp Vault's JSON limit (1.20.3+, ``max_json_array_element_count``)
                       at a test's size: a request with more ``batch_input`` items is answered
                       HTTP 500 ``JSON array exceeds allowed element count``, as Vault does
                       (OpenBao has no such limit; it counts strings, which its own listener
                       setting max_request_json_strings tests). 0: off

An injected error answers like Vault: ``{"errors": ["..."]}`` with ``Content-Type:
application/json``. A dropped request never reaches the server. Random faults draw from one
``random.Random(seed)``: the k-th matching request meets the same fault for a given seed,
whatever the thread interleaving.

When the server cannot be reached (stopped, restarting), the proxy closes the client's
connection without an answer, which the client sees as a connection failure, as it would
without the proxy; :meth:`FaultProxy.stats` counts these under ``upstream_failures``.

:meth:`FaultProxy.hold` makes matching requests wait, before their fault decision and
unforwarded, until :meth:`FaultProxy.allow` lets some through or :meth:`FaultProxy.release`
lifts the hold. A test steps the client through Vault one request at a time with it, or freezes
the client while it changes the world (stops the server, revokes a token, turns on an outage),
without racing the client's speed.

Statistics (:meth:`FaultProxy.stats`), over every request the proxy received::

    total_requests     every request received (any path)
    requests           per kind: encrypt, decrypt, rewrap, hmac, other (from the path)
    batch_requests     per kind, requests with a batch_input list
    items              per kind, batch_input items (1 for a request without batch_input)
    statuses           status codes answered to the client (forwarded or injected), as strings
    faults_injected    {"errors": n, "drops": n, "delayed": n}
    forwarded          requests forwarded to the server
    upstream_failures  requests whose forwarding failed (the client's connection was closed)

The proxy is bounded: at most ``max_connections`` client connections are served at once (the
next waits to be accepted), request bodies above ``max_body`` bytes are refused with 413, and
:meth:`FaultProxy.stop` closes every connection and joins every thread it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any, Final

from tests.support.fault_config import (
    KINDS,
    FaultAction,
    FaultConfig,
    Stats,
    batch_items,
    kind_of,
    parse_config,
)

__all__ = ["KINDS", "FaultAction", "FaultProxy", "kind_of"]

#: Vault's texts for the statuses a test injects (503 is what a sealed Vault answers).
_ERROR_TEXTS: Final = {
    400: "invalid request (injected by the test's fault proxy)",
    412: "required index state not present (injected by the test's fault proxy)",
    429: "request rate limit exceeded",
    500: "1 error occurred:\n\t* internal error (injected by the test's fault proxy)\n\n",
    502: "bad gateway (injected by the test's fault proxy)",
    503: "Vault is sealed",
    504: "gateway timeout (injected by the test's fault proxy)",
}

_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

#: How long a held request waits for :meth:`FaultProxy.release` before going on anyway.
HOLD_LIMIT_SECONDS: Final = 120.0


class _Server(HTTPServer):
    """One thread per client connection, at most ``max_connections`` at once."""

    allow_reuse_address = True
    request_queue_size = 64
    proxy: FaultProxy

    def process_request(self, request: Any, client_address: Any) -> None:
        # bounded: wait for a free slot before starting another connection thread
        proxy = self.proxy
        while not proxy._slots.acquire(timeout=0.2):
            if proxy._stopping.is_set():
                self.shutdown_request(request)
                return
        t = threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True)
        with proxy._lock:
            proxy._threads.add(t)
            proxy._conns.add(request)
        t.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        proxy = self.proxy
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass  # a client that went away is not the test's failure
        finally:
            self.shutdown_request(request)
            with proxy._lock:
                proxy._conns.discard(request)
                proxy._threads.discard(threading.current_thread())
            proxy._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a dropped or reset client connection is expected here."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so hvac's connection pool is exercised
    # An answer goes out in two writes (headers, then body); with Nagle's algorithm the body
    # would wait for the client's delayed ACK of the headers, about 40 ms a request on Linux.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 300  # an idle keep-alive client connection is closed after this

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: paths and statuses only, but a test's output has no use for them."""

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_LIST = do_GET

    # -- request ----------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        proxy = self.server.proxy
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(1024)
                n = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                size += n
                if size > proxy.max_body:
                    self._send_errors(413, ["http: request body too large"], close=True)
                    return None
                parts.append(self.rfile.read(n))
                self.rfile.readline(1024)
            return b"".join(parts)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send_errors(400, ["invalid Content-Length"], close=True)
            return None
        if length > proxy.max_body:
            self._send_errors(413, ["http: request body too large"], close=True)
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        if body is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        rel = urllib.parse.unquote(path[4:]) if path.startswith("/v1/") else None
        kind = kind_of(rel) if rel is not None else "other"
        items = batch_items(body)
        with proxy._stats.lock:
            st = proxy._stats
            st.total += 1
            st.requests[kind] += 1
            st.items[kind] += items if items is not None else 1
            if items is not None:
                st.batch_requests[kind] += 1
        if rel is not None:
            proxy._wait_if_held(rel)
        limit = proxy.get()["max_batch_items"]
        if limit and items is not None and items > limit:
            with proxy._stats.lock:
                proxy._stats.faults["errors"] += 1
            self._count_status(500)
            self._send_errors(500, ["JSON array exceeds allowed element count"])
            return
        action = proxy.decide(rel) if rel is not None else None
        if action is not None:
            if action.delay:
                time.sleep(action.delay)
            if action.drop:
                self._drop()
                return
            if action.status is not None:
                self._count_status(action.status)
                self._send_errors(
                    action.status, [_ERROR_TEXTS.get(action.status, "injected fault")]
                )
                return
        self._forward(body)

    # -- answers ----------------------------------------------------------------------------

    def _count_status(self, status: int) -> None:
        st = self.server.proxy._stats
        with st.lock:
            st.statuses[str(status)] = st.statuses.get(str(status), 0) + 1

    def _send_errors(self, status: int, errors: list[str], *, close: bool = False) -> None:
        payload = json.dumps({"errors": errors}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the client connection without an answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        proxy = self.server.proxy
        if fresh and self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(
                proxy._upstream_host, proxy._upstream_port, timeout=proxy.upstream_timeout
            )
        return self._upstream

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() not in ("host", "content-length")
        }
        headers["Host"] = proxy._upstream_netloc
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        resp: http.client.HTTPResponse | None = None
        for attempt in range(2):
            # a kept-alive upstream connection the server closed while idle fails on first use
            # without the server having seen the request: that one case is tried once more
            reused = self._upstream is not None and attempt == 0
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._upstream = None
                if reused:
                    continue
                resp = None
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._upstream = None
                resp = None
                break
        if resp is None:
            with proxy._stats.lock:
                proxy._stats.upstream_failures += 1
            self._drop()
            return
        with proxy._stats.lock:
            proxy._stats.forwarded += 1
        self._count_status(resp.status)
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if resp.will_close:
            self.send_header("Connection", "close")
            self.close_connection = True
            conn.close()
            self._upstream = None
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()


class FaultProxy:
    """A fault-injecting HTTP/1.1 proxy to ``upstream`` (``http://host:port``) on 127.0.0.1."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int | None = None,
        port: int = 0,
        max_connections: int = 64,
        max_body: int = 64 * 1024 * 1024,
        upstream_timeout: float = 120.0,
    ) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the fault proxy forwards to a plain http://host:port upstream")
        self.upstream = upstream.rstrip("/")
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_netloc = parts.netloc
        self.max_connections = max_connections
        self.max_body = max_body
        self.upstream_timeout = upstream_timeout
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cfg = FaultConfig()
        self._stats = Stats()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._threads: set[threading.Thread] = set()
        self._conns: set[Any] = set()
        self._stopping = threading.Event()
        self._hold = threading.Condition()
        self._holding = False
        self._allowance = 0
        self._hold_paths: list[str] | None = None
        self._held = 0
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self.addr = ""

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on 127.0.0.1 (a free port unless one was given); returns :attr:`addr`."""
        if self._server is not None:
            return self.addr
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.proxy = self
        self._server = server
        self._stopping.clear()
        self.addr = f"http://127.0.0.1:{server.server_address[1]}"
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()
        return self.addr

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every client connection, join every thread."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        self.release()
        server.shutdown()
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout)
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._server = None
        self._serve_thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults -----------------------------------------------------------------------------

    def set(self, **cfg: Any) -> dict[str, Any]:
        """Replace the fault configuration (see the module docstring); returns it."""
        parsed = parse_config(cfg)
        with self._lock:
            self._cfg = parsed
            return parsed.as_dict()

    def get(self) -> dict[str, Any]:
        """The current configuration, with the remaining ``next`` counts."""
        with self._lock:
            return self._cfg.as_dict()

    def clear(self) -> None:
        """No faults any more (statistics are kept; a hold is lifted)."""
        with self._lock:
            self._cfg = FaultConfig()
        self.release()

    def seed(self, seed: int) -> None:
        """Restart the random fault sequence from ``seed``."""
        with self._lock:
            self._rng.seed(seed)

    def hold(self, paths: str | list[str] | None = None, *, after: int = 0) -> None:
        """Hold matching requests (every /v1/ request by default) before their fault decision.

        ``after`` requests still pass first; then each matching request waits, unforwarded,
        until :meth:`allow` lets some through or :meth:`release` lifts the hold (or
        :data:`HOLD_LIMIT_SECONDS` pass). A test steps the client through it one request at a
        time, or freezes it while it changes the world (stops the server, revokes a token).
        """
        with self._hold:
            self._hold_paths = [paths] if isinstance(paths, str) else paths
            self._allowance = after
            self._holding = True
            self._hold.notify_all()

    def allow(self, n: int = 1) -> None:
        """Let ``n`` more held (or future) matching requests through."""
        with self._hold:
            self._allowance += n
            self._hold.notify_all()

    def release(self) -> None:
        """Lift the hold: every waiting request goes on."""
        with self._hold:
            self._holding = False
            self._hold.notify_all()

    @property
    def allowance(self) -> int:
        """Requests :meth:`allow` let through that have not come yet."""
        with self._hold:
            return self._allowance

    @property
    def held(self) -> int:
        """Requests waiting in :meth:`hold` right now."""
        with self._hold:
            return self._held

    def _wait_if_held(self, rel: str) -> None:
        with self._hold:
            if not self._holding:
                return
            paths = self._hold_paths
            if paths is not None and not any(rel.startswith(p) for p in paths):
                return
            self._held += 1
            deadline = time.monotonic() + HOLD_LIMIT_SECONDS
            try:
                while self._holding and self._allowance <= 0 and not self._stopping.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._hold.wait(left)
                if self._holding and self._allowance > 0:
                    self._allowance -= 1
            finally:
                self._held -= 1

    def decide(self, rel: str) -> FaultAction | None:
        """The fault for the next request on ``rel`` (the path after /v1/), counted in the stats.

        The proxy calls it once per request; a test may call it on an unstarted twin (same
        seed, same :meth:`set`) to know the fault sequence a seed gives.
        """
        with self._lock:
            cfg = self._cfg
            if (
                not (cfg.latency_ms or cfg.latency_jitter_ms or cfg.error_rate or cfg.drop_rate)
                and not cfg.next
            ):
                return None
            if cfg.paths is not None and not any(rel.startswith(p) for p in cfg.paths):
                return None
            action = FaultAction()
            if cfg.latency_ms or cfg.latency_jitter_ms:
                action.delay = (cfg.latency_ms + self._rng.uniform(0, cfg.latency_jitter_ms)) / 1e3
            if cfg.next:
                head = cfg.next[0]
                head.count -= 1
                if head.count <= 0:
                    cfg.next.pop(0)
                action.drop, action.status = head.drop, head.status
            elif cfg.drop_rate and self._rng.random() < cfg.drop_rate:
                action.drop = True
            elif cfg.error_rate and self._rng.random() < cfg.error_rate:
                action.status = self._rng.choice(cfg.error_statuses)
        with self._stats.lock:
            if action.delay:
                self._stats.faults["delayed"] += 1
            if action.drop:
                self._stats.faults["drops"] += 1
            elif action.status is not None:
                self._stats.faults["errors"] += 1
        return action

    # -- statistics -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()
