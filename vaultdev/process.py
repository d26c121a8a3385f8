"""Start vaultdev as a subprocess (used by the tests, the demo and the benchmark).

Example::

    with start_vaultdev() as vd:
        client = hvac.Client(url=vd.addr, token=vd.token)
        ...

:func:`start_vaultdev` launches ``sys.executable -m vaultdev``, waits (with a timeout) for the
``vaultdev listening on http://...`` line and returns a :class:`VaultdevProcess`.
"""

from __future__ import annotations

import os
import re
import secrets
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["VaultdevError", "VaultdevProcess", "start_vaultdev"]

_LISTENING_RE = re.compile(r"vaultdev listening on (http://\S+)")
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)


class VaultdevError(RuntimeError):
    """vaultdev did not start (exited early or never printed its listening line)."""


class VaultdevProcess:
    """A running vaultdev subprocess: ``addr`` (``http://127.0.0.1:PORT``) and root ``token``."""

    def __init__(self, proc: subprocess.Popen[bytes], addr: str, token: str) -> None:
        self.proc = proc
        self.addr = addr
        self.token = token

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process; kill it if it has not exited after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> VaultdevProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_vaultdev(
    port: int = 0,
    root_token: str | None = None,
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
) -> VaultdevProcess:
    """Launch ``python -m vaultdev`` and wait until it listens.

    ``root_token`` defaults to a random ``root-<hex>`` value. ``extra_args`` are appended to the
    command line (e.g. ``["--no-default-mount"]``). Raises :class:`VaultdevError` when the
    process exits or stays silent for ``timeout`` seconds.
    """
    token = root_token or f"root-{secrets.token_hex(8)}"
    cmd = [
        sys.executable,
        "-m",
        "vaultdev",
        "--host",
        host,
        "--port",
        str(port),
        "--root-token",
        token,
        "--exit-on-stdin-eof",
        *extra_args,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                proc.wait()
                raise VaultdevError(f"vaultdev did not start within {timeout} s")
            if not sel.select(timeout=min(remaining, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    m = _LISTENING_RE.search(buf.decode("utf-8", "replace"))
    if m is None:
        code = proc.poll()
        if code is None:
            proc.kill()
            proc.wait()
        raise VaultdevError(f"vaultdev failed to start (exit code {code}): {buf!r}")
    return VaultdevProcess(proc, m.group(1), token)
