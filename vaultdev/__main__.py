"""Command line entry point: ``python -m vaultdev --port PORT --root-token TOKEN``.

Once the server accepts connections it prints exactly one line to stdout, flushed::

    vaultdev listening on http://127.0.0.1:<port>

Options: ``--host`` (default 127.0.0.1), ``--port`` (0 picks a free port), ``--root-token``,
``--no-default-mount`` (do not mount transit at ``transit/``), ``--verbose`` (log requests to
stderr). Fault injection and statistics are vaultdev extras, see :mod:`vaultdev.faults`.
"""

from __future__ import annotations

import argparse
import signal
import sys
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
