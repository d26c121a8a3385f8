"""Command line entry point: ``python -m vaultdev --port PORT --root-token TOKEN``.

Once the server accepts connections it prints exactly one line to stdout, flushed::

    vaultdev listening on http://127.0.0.1:<port>

Options: ``--host`` (default 127.0.0.1), ``--port`` (0 picks a free port), ``--root-token``,
``--no-default-mount`` (do not mount transit at ``transit/``), ``--verbose`` (log requests to
stderr), ``--exit-on-stdin-eof`` (stop when stdin closes; :mod:`vaultdev.process` uses it so a
server never outlives the process that started it). Fault injection and statistics are
vaultdev extras, see :mod:`vaultdev.faults`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from vaultdev.server import make_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vaultdev",
        description="Vault-Transit-compatible development server (in memory, never production)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8200, help="port (0 picks a free port)")
    parser.add_argument("--root-token", default="root", help="root token (default 'root')")
    parser.add_argument(
        "--no-default-mount", action="store_true", help="do not mount transit at transit/"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="stop when standard input closes (so a parent's death stops the server)",
    )
    args = parser.parse_args(argv)

    server = make_server(
        args.host,
        args.port,
        args.root_token,
        default_mount=not args.no_default_mount,
        verbose=args.verbose,
    )
    host, port = server.server_address[:2]
    shown = host if isinstance(host, str) else args.host

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    if args.exit_on_stdin_eof:

        def _watch_stdin() -> None:
            while os.read(0, 4096):
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=_watch_stdin, name="stdin-watch", daemon=True).start()
    sys.stdout.write(f"vaultdev listening on http://{shown}:{port}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
