"""Figures of the target-time batch size (issue 15): does ``-x batch-target`` converge?

For each Vault latency and each target, ``alembic -x batch-size=START -x batch-target=T
upgrade 0001_users`` runs as the CLI subprocess operators run, on the same fresh rows as
``bench/run.py``'s (a) (OpenBao dev server, the fault proxy in front for the latency). The
report's ``throttle.batch_size`` says how the sizes went: first, last, smallest and largest
size, and the mean rows and seconds of the last ten batches; their ratio to the target is the
convergence figure (1.0: on target). Nothing here is a pass/fail target.

    .venv/bin/python -m bench.throttle    # 20,000 rows; 0 and 20 ms; targets 0.25 s and 1 s
    .venv/bin/python -m bench.throttle --rows 5000 --targets 0.5 --latencies 0
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

if __package__ in (None, ""):  # python bench/throttle.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fixture import REVISION, TABLE, BenchDb, Vault, seed
from bench.measure import Bench, alembic_argv, tempdir
from bench.proxy import ProxyProcess
from context_encryption.openbao import start_dev_server

ROOT = Path(__file__).resolve().parents[1]


def _floats(raw: str) -> list[float]:
    return [float(x) for x in raw.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--targets", type=_floats, default=[0.25, 1.0], help="seconds, e.g. 0.25,1")
    p.add_argument("--latencies", type=_floats, default=[0.0, 20.0], help="ms per request")
    p.add_argument("--start", type=int, default=100, help="-x batch-size: the first size")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--min-batch-size", type=int, default=10)
    p.add_argument("--max-batch-size", type=int, default=10_000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "throttle-results.json")
    p.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    return p.parse_args(argv)


def one_run(b: Bench, args: argparse.Namespace, target: float, latency: float) -> dict[str, Any]:
    b.db.restore(args.rows)
    b.vault.latency(latency)
    report = b.workdir / f"report-{time.monotonic_ns()}.json"
    x = {
        "batch-size": args.start,
        "batch-target": f"{target:g}s",
        "min-batch-size": args.min_batch_size,
        "max-batch-size": args.max_batch_size,
        "workers": args.workers,
        "report": report,
    }
    argv = [*alembic_argv(), "-c", str(ROOT / "alembic.ini")]
    for k, v in x.items():
        argv += ["-x", f"{k}={v}"]
    argv += ["upgrade", REVISION]
    done = subprocess.run(argv, env=b.env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"alembic exited {done.returncode}:\n{done.stderr[-3000:]}")
    rep = json.loads(report.read_text())
    report.unlink()
    table = next(t for t in rep["tables"] if t["table"] == TABLE)
    sizing = table["throttle"]["batch_size"]
    mean_s = sizing["last10_mean_seconds"]
    return {
        "latency_ms": latency,
        "target_s": target,
        "rows": args.rows,
        "workers": args.workers,
        "seconds": table["seconds"],
        "rows_per_s": round(args.rows / table["seconds"], 1),
        **{k: sizing[k] for k in ("first", "last", "smallest", "largest", "batches")},
        "last10_mean_rows": sizing["last10_mean_rows"],
        "last10_mean_seconds": mean_s,
        "last10_vs_target": round(mean_s / target, 3) if mean_s else None,
    }


def line(r: dict[str, Any]) -> str:
    return (
        f"{r['latency_ms']:>6g} {r['target_s']:>7g} {r['first']:>6} {r['last']:>6} "
        f"{r['smallest']:>6} {r['largest']:>6} {r['batches']:>7} {r['last10_mean_rows']:>9} "
        f"{r['last10_mean_seconds']:>8} {r['last10_vs_target']:>7} {r['rows_per_s']:>8}"
    )


HEAD = (
    f"{'lat ms':>6} {'target':>7} {'first':>6} {'last':>6} {'min':>6} {'max':>6} "
    f"{'batches':>7} {'last10 rows':>9} {'last10 s':>8} {'s/tgt':>7} {'rows/s':>8}"
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    admin = sa.make_url(args.admin_url)
    if admin.drivername in ("postgresql", "postgres"):
        admin = admin.set(drivername="postgresql+psycopg")
    results: list[dict[str, Any]] = []
    with start_dev_server() as server, ProxyProcess(server.addr) as proxy:
        db = BenchDb.create(admin)
        try:
            vault = Vault.setup(server, proxy)
            b = Bench(db, vault, "hmac-" + secrets.token_hex(16), tempdir())
            print(f"seeding {args.rows} rows", flush=True)
            seed(db, vault, args.rows, b.hmac_secret, None)
            print(HEAD, flush=True)
            for latency in args.latencies:
                for target in args.targets:
                    r = one_run(b, args, target, latency)
                    results.append(r)
                    print(line(r), flush=True)
        finally:
            db.drop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"parameters": vars(args) | {"out": str(args.out)}} | {"runs": results},
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
