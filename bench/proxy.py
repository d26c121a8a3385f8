"""The test suite's fault proxy (``tests/support/fault_proxy.py``), hosted in a process of its own.

The benchmark puts :class:`tests.support.fault_proxy.FaultProxy` between every measured client and
OpenBao to add latency (``set(latency_ms=20)``), as a Vault across a network would, and to count
the requests and items each measurement sends. The proxy is Python and threaded: in the bench
process it would share one interpreter lock with the clients of (b) and (d) and slow them down
for reasons that have nothing to do with Vault. So it runs as ``python -m bench.proxy
UPSTREAM``, driven by one JSON line per call on its stdin (answers on its stdout), and its CPU
time is measured on its own pid like OpenBao's.

This module does not implement a proxy: every request goes through ``FaultProxy`` unchanged.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
#: Enough for the widest sweep point (8 workers, each sending up to 8 requests at once) with
#: room for the bench's own clients.
MAX_CONNECTIONS: Final = 256
#: The calls the parent may make (FaultProxy methods).
CALLS: Final = frozenset({"set", "clear", "stats", "reset_stats"})


def _reply(out: IO[str], ok: bool, value: Any) -> None:
    out.write(json.dumps([ok, value]) + "\n")
    out.flush()


def serve(upstream: str) -> int:
    """The child: start a FaultProxy to ``upstream``, print its address, then obey stdin."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support import fault_proxy  # noqa: PLC0415 - only in the child

    proxy = fault_proxy.FaultProxy(upstream, max_connections=MAX_CONNECTIONS, seed=0)
    _reply(sys.stdout, True, proxy.start())
    try:
        for line in sys.stdin:  # EOF: the parent went away
            op, kw = json.loads(line)
            if op == "stop":
                break
            if op not in CALLS:
                _reply(sys.stdout, False, f"unknown call {op!r}")
                continue
            try:
                _reply(sys.stdout, True, getattr(proxy, op)(**kw))
            except Exception as exc:  # handed to the parent
                _reply(sys.stdout, False, f"{type(exc).__name__}: {exc}")
    finally:
        proxy.stop()
    _reply(sys.stdout, True, None)
    return 0


class ProxyProcess:
    """A :class:`tests.support.fault_proxy.FaultProxy` to ``upstream`` in a child process."""

    def __init__(self, upstream: str) -> None:
        self._proc = subprocess.Popen(  # our own module, fixed argv
            [sys.executable, "-m", "bench.proxy", upstream],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        try:
            self.addr: str = self._read()
        except Exception:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> Any:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fault proxy process exited ({self._proc.poll()})")
        ok, value = json.loads(line)
        if not ok:
            raise RuntimeError(f"fault proxy: {value}")
        return value

    def _call(self, op: str, **kw: Any) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps([op, kw]) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def set(self, **cfg: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("set", **cfg)
        return result

    def clear(self) -> None:
        self._call("clear")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("stats")
        return result

    def reset_stats(self) -> None:
        self._call("reset_stats")

    def stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self._call("stop")
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.proxy http://127.0.0.1:PORT")
    sys.exit(serve(sys.argv[1]))
