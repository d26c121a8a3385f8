"""Benchmark of the re-encryption engine, side by side with what bounds it (issues 6 and 9).

Run from the repository root::

    .venv/bin/python -m bench.run              # default: 100,000 rows and the sweep
    .venv/bin/python -m bench.run --quick      # smoke run: 2,000 rows, one point, < 30 s
    .venv/bin/python -m bench.run --memory     # peak RSS at 10,000 vs 1,000,000 rows

It starts its own OpenBao dev server (in memory) with the test suite's fault proxy in front of
it, creates a throwaway PostgreSQL database ``bench_<hex>`` (dropped at the end), seeds
old-scheme rows shaped like ``users``, measures, prints a table and writes
``bench/results.json`` (``--out``). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

if __package__ in (None, ""):  # python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fixture import (
    BenchDb,
    Vault,
    openbao_version,
    seed,
    verify_rewrap,
    verify_sample,
)
from bench.measure import (
    ROOT,
    Bench,
    Point,
    baseline_run,
    db_only_run,
    engine_run,
    profile_run,
    rewrap_run,
    summarize_profile,
    tempdir,
    vault_only_run,
)
from bench.proxy import ProxyProcess
from context_encryption.openbao import start_dev_server
from context_encryption.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_VAULT_BATCH_ITEMS,
    DEFAULT_WORKERS,
)

TARGETS: Final = {
    "engine_vs_baseline_at_0ms": 30.0,
    "engine_20ms_vs_0ms": 0.7,
    "engine_vs_serial_limit_at_0ms": 0.8,
    "memory_difference_mb": 50.0,
}


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def _floats(raw: str) -> list[float]:
    return [float(x) for x in raw.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows of the main points (100000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 rows, one point")
    p.add_argument("--memory", action="store_true", help="peak RSS at --memory-rows sizes only")
    p.add_argument("--memory-rows", type=_ints, default=[10_000, 1_000_000])
    p.add_argument("--latencies", type=_floats, default=[0.0, 20.0], help="ms, e.g. 0,20")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="main points")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="main points")
    p.add_argument(
        "--vault-batch-items",
        type=int,
        default=DEFAULT_VAULT_BATCH_ITEMS,
        help="most items per Vault request, main points (-x vault-batch-items)",
    )
    p.add_argument(
        "--no-direct",
        action="store_true",
        help="skip the reference run of (a) straight to OpenBao, without the proxy",
    )
    p.add_argument("--baseline-rows", type=int, default=2_000, help="(b) rows at latency 0")
    p.add_argument(
        "--baseline-rows-latency", type=int, default=200, help="(b) rows at a latency above 0"
    )
    p.add_argument("--sweep-rows", type=int, default=20_000, help="rows per sweep point")
    p.add_argument("--sweep-batch-sizes", type=_ints, default=[100, 250, 500, 1000, 2000])
    p.add_argument("--sweep-workers", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--sweep-latencies", type=_floats, default=[0.0, 20.0])
    p.add_argument(
        "--sweep-vault-batch-items",
        type=_ints,
        default=[DEFAULT_VAULT_BATCH_ITEMS],
        help="vault-batch-items of the sweep, e.g. 50,150,190",
    )
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each main (a), (r), (c), (d) point (best kept)",
    )
    p.add_argument("--sweep-repeat", type=int, default=1, help="runs of each sweep point")
    p.add_argument("--profile", type=Path, help="also profile one engine run with py-spy here")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a database URL on the server where bench_<hex> is created ($BENCH_ADMIN_URL)",
    )
    p.add_argument("--keep-db", action="store_true", help="do not drop the database (debugging)")
    args = p.parse_args(argv)
    if args.quick:
        args.rows = 2_000
        args.latencies = [0.0]
        args.baseline_rows = 200
        args.no_sweep = True
        args.no_direct = True
        args.repeat = 1
    return args


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------

_LABEL = {
    "engine": "(a) engine: alembic upgrade",
    "engine_direct": "(a) engine, no proxy",
    "rewrap": "(r) rewrap after rotation",
    "baseline": "(b) per-row baseline",
    "db_only": "(c) database alone",
    "vault_only": "(d) Vault alone, serial",
    "vault_only_parallel": "(d') Vault alone, W clients",
}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(points: Sequence[Point], title: str) -> str:
    head = (
        f"{'measurement':<28} {'lat ms':>6} {'batch':>5} {'W':>2} {'V':>4} {'rows':>8} "
        f"{'s':>7} {'rows/s':>7} {'req/1k':>7} {'RSS MB':>6} {'CPU s':>6} {'bao s':>6} "
        f"{'prx s':>6}"
    )
    lines = [title, head, "-" * len(head)]
    for pt in points:
        lines.append(
            f"{_LABEL.get(pt.kind, pt.kind):<28} {pt.latency_ms:>6.0f} "
            f"{_fmt(pt.batch_size, 'd'):>5} {_fmt(pt.workers, 'd'):>2} "
            f"{_fmt(pt.vault_batch_items, 'd'):>4} {pt.rows:>8d} "
            f"{pt.seconds:>7.2f} {pt.rows_per_s:>7.0f} {_fmt(pt.requests_per_1k, '.1f'):>7} "
            f"{_fmt(pt.peak_rss_mb, '.0f'):>6} {_fmt(pt.client_cpu_s, '.1f'):>6} "
            f"{_fmt(pt.vault_cpu_s, '.1f'):>6} {_fmt(pt.proxy_cpu_s, '.1f'):>6}"
        )
    return "\n".join(lines)


def _find(points: Sequence[Point], kind: str, latency: float) -> Point | None:
    return next((p for p in points if p.kind == kind and p.latency_ms == latency), None)


def ratios(main: Sequence[Point], latencies: Sequence[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a0 = _find(main, "engine", 0.0)
    b0 = _find(main, "baseline", 0.0)
    c = _find(main, "db_only", 0.0)
    if a0 and b0:
        out["engine_vs_baseline_at_0ms"] = a0.rows_per_s / b0.rows_per_s
    direct = _find(main, "engine_direct", 0.0)
    if a0 and direct:
        out["engine_through_proxy_vs_direct_at_0ms"] = a0.rows_per_s / direct.rows_per_s
    for lat in latencies:
        a = _find(main, "engine", lat)
        b = _find(main, "baseline", lat)
        d = _find(main, "vault_only", lat)
        tag = f"{lat:g}ms"
        if lat and a and a0:
            out[f"engine_{tag}_vs_0ms"] = a.rows_per_s / a0.rows_per_s
        if lat and a and b:
            out[f"engine_vs_baseline_at_{tag}"] = a.rows_per_s / b.rows_per_s
        rw = _find(main, "rewrap", lat)
        if a and rw:
            out[f"rewrap_vs_engine_at_{tag}"] = rw.rows_per_s / a.rows_per_s
        if a and c and d:
            limit = 1 / (1 / c.rows_per_s + 1 / d.rows_per_s)
            out[f"serial_limit_rows_per_s_at_{tag}"] = limit
            out[f"engine_vs_serial_limit_at_{tag}"] = a.rows_per_s / limit
    return {k: round(v, 3) for k, v in out.items()}


def verdicts(r: dict[str, Any]) -> list[str]:
    lines = []
    for name, target in TARGETS.items():
        if name not in r:
            continue
        v = r[name]
        ok = v <= target if name == "memory_difference_mb" else v >= target
        op = "<=" if name == "memory_difference_mb" else ">="
        lines.append(
            f"  {name:<34} {v:>9.2f}   target {op} {target:<5g} {'PASS' if ok else 'MISS'}"
        )
    for name in sorted(k for k in r if k.startswith("rewrap_vs_engine")):
        lines.append(f"  {name:<34} {r[name]:>9.2f}   (no target)")
    return lines


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_mb = int(first.split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "app_models", "context_encryption", "migrations"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mb": mem_mb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": commit,
        "engine_tree_dirty": bool(dirty),
        "vault_server": f"{openbao_version()} dev server (in memory)",
    }


# --------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------


def _step(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _timed(label: str, fn: Callable[[], Point], repeat: int = 1) -> Point:
    """Run ``fn`` ``repeat`` times; keep the fastest (the least disturbed by other load)."""
    runs: list[Point] = []
    for i in range(max(1, repeat)):
        _step(f"{label}{f' (run {i + 1}/{repeat})' if repeat > 1 else ''} ...")
        pt = fn()
        _step(
            f"  {pt.rows} rows in {pt.seconds:.2f}s = {pt.rows_per_s:.0f} rows/s"
            + (f", peak RSS {pt.peak_rss_mb:.0f} MB" if pt.peak_rss_mb else "")
        )
        runs.append(pt)
    best = max(runs, key=lambda p: p.rows_per_s)
    if len(runs) > 1:
        best.extra["runs_rows_per_s"] = [round(p.rows_per_s, 1) for p in runs]
        best.peak_rss_mb = max((p.peak_rss_mb or 0.0 for p in runs), default=None) or None
    return best


def _engine_point(
    b: Bench,
    label: str,
    run: Callable[..., Point],
    repeat: int,
    *,
    rows: int,
    batch_size: int,
    workers: int,
    vault_batch_items: int,
    latency_ms: float,
    **extra: Any,
) -> Point:
    """``run`` (:func:`engine_run` or :func:`rewrap_run`) with these settings, timed."""
    return _timed(
        f"{label}, {rows} rows, batch {batch_size}, {workers} workers, "
        f"{vault_batch_items} items/request, {latency_ms:g} ms",
        partial(
            run,
            b,
            rows=rows,
            batch_size=batch_size,
            workers=workers,
            latency_ms=latency_ms,
            vault_batch_items=vault_batch_items,
            **extra,
        ),
        repeat,
    )


def main_points(b: Bench, args: argparse.Namespace) -> list[Point]:
    n, bs, w, v = args.rows, args.batch_size, args.workers, args.vault_batch_items
    setting = {"rows": n, "batch_size": bs, "workers": w, "vault_batch_items": v}
    pts: list[Point] = []
    for i, lat in enumerate(args.latencies):
        pts.append(
            _engine_point(b, "(a) engine", engine_run, args.repeat, **setting, latency_ms=lat)
        )
        if i == 0:
            bad = verify_sample(b.db, b.vault, b.hmac_secret)
            if bad:
                raise RuntimeError(f"{bad} sampled rows are not correctly migrated")
            _step("  sample of migrated rows verified (new key + context, HMAC)")
            b.db.keep_migrated()
    if not args.no_direct:
        pts.append(
            _engine_point(
                b,
                "(a) engine straight to OpenBao (no proxy)",
                engine_run,
                args.repeat,
                **setting,
                latency_ms=0,
                direct=True,
            )
        )
    version = b.vault.rotate_new()
    _step(f"new key rotated: latest version {version}")
    for i, lat in enumerate(args.latencies):
        pts.append(
            _engine_point(b, "(r) rewrap", rewrap_run, args.repeat, **setting, latency_ms=lat)
        )
        if i == 0:
            bad = verify_rewrap(b.db, b.vault, b.hmac_secret, version)
            if bad:
                raise RuntimeError(f"{bad} rows are not correctly rewrapped")
            _step(f"  every value at v{version}; a sample decrypts to its plaintext (HMAC)")
    pts.append(
        _timed(
            f"(c) database alone, batch {bs}",
            partial(db_only_run, b, rows=n, batch_size=bs),
            args.repeat,
        )
    )
    for lat in args.latencies:
        vault_alone = partial(
            vault_only_run,
            b,
            rows=n,
            batch_size=bs,
            latency_ms=lat,
            parallel=w,
            vault_batch_items=v,
        )
        pts.append(
            _timed(
                f"(d) Vault alone, serial, batch {bs}, {v} items/request, {lat:g} ms",
                vault_alone,
                args.repeat,
            )
        )
        if w > 1:
            pts.append(
                _timed(
                    f"(d') Vault alone, {w} clients, batch {bs}, {lat:g} ms",
                    partial(vault_alone, workers=w),
                    args.repeat,
                )
            )
    for lat in args.latencies:
        rows = args.baseline_rows if lat == 0 else args.baseline_rows_latency
        rows = min(rows, n)
        pts.append(
            _timed(
                f"(b) per-row baseline, {rows} rows, {lat:g} ms",
                partial(baseline_run, b, rows=rows, latency_ms=lat),
            )
        )
    return pts


def sweep_points(b: Bench, args: argparse.Namespace) -> list[Point]:
    n = min(args.sweep_rows, args.rows)
    return [
        _engine_point(
            b,
            "sweep: engine",
            engine_run,
            args.sweep_repeat,
            rows=n,
            batch_size=bs,
            workers=w,
            vault_batch_items=v,
            latency_ms=lat,
        )
        for lat in args.sweep_latencies
        for v in args.sweep_vault_batch_items
        for bs in args.sweep_batch_sizes
        for w in args.sweep_workers
    ]


def sweep_table(pts: Sequence[Point]) -> str:
    """rows/s per batch size (lines) and workers (columns), a block per latency and items."""
    out = []
    for lat, v in sorted({(p.latency_ms, p.vault_batch_items or 0) for p in pts}):
        at = [p for p in pts if p.latency_ms == lat and (p.vault_batch_items or 0) == v]
        ws = sorted({p.workers or 0 for p in at})
        bss = sorted({p.batch_size or 0 for p in at})
        out.append(
            f"rows/s at {lat:g} ms, vault-batch-items {v} (lines: batch size, columns: workers)"
        )
        out.append(f"{'batch':>7} " + " ".join(f"{'W=' + str(w):>8}" for w in ws))
        for bs in bss:
            cells = []
            for w in ws:
                p = next((x for x in at if x.batch_size == bs and x.workers == w), None)
                cells.append(f"{p.rows_per_s:>8.0f}" if p else f"{'-':>8}")
            out.append(f"{bs:>7} " + " ".join(cells))
        best = max(at, key=lambda p: p.rows_per_s)
        out.append(f"best: batch {best.batch_size}, {best.workers} workers")
    return "\n".join(out)


def memory_points(b: Bench, args: argparse.Namespace) -> list[Point]:
    pts = []
    for n in args.memory_rows:
        pts.append(
            _timed(
                f"memory: engine, {n} rows, batch {args.batch_size}, {args.workers} workers",
                partial(
                    engine_run,
                    b,
                    rows=n,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    latency_ms=0,
                    vault_batch_items=args.vault_batch_items,
                ),
            )
        )
    return pts


def _memory_results(b: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The --memory run: the engine on each row count, and the spread of its peak memory."""
    pts = memory_points(b, args)
    result["memory"] = [p.as_dict() for p in pts]
    rss = [p.peak_rss_mb or 0.0 for p in pts]
    result["ratios"] = {"memory_difference_mb": round(max(rss) - min(rss), 1)}
    print()
    print(table(pts, "Peak resident memory of the migrating process"))


def _sweep_best(sweep: Sequence[Point], latencies: Sequence[float]) -> dict[str, Any]:
    """The best sweep point at each latency."""
    best_at: dict[str, Any] = {}
    for lat in latencies:
        at = [p for p in sweep if p.latency_ms == lat]
        if at:
            best = max(at, key=lambda p: p.rows_per_s)
            best_at[f"sweep_best_at_{lat:g}ms"] = {
                "batch_size": best.batch_size,
                "workers": best.workers,
                "rows_per_s": round(best.rows_per_s, 1),
            }
    return best_at


def _main_results(b: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The default run: the main points and their ratios, then the sweep unless --no-sweep."""
    main = main_points(b, args)
    result["main"] = [p.as_dict() for p in main]
    r = ratios(main, args.latencies)
    a_pts = [p for p in main if p.kind == "engine"]
    r["peak_rss_mb_engine"] = max(p.peak_rss_mb or 0.0 for p in a_pts)
    sweep: list[Point] = []
    if not args.no_sweep:
        sweep = sweep_points(b, args)
        result["sweep"] = [p.as_dict() for p in sweep]
        r.update(_sweep_best(sweep, args.sweep_latencies))
    result["ratios"] = r
    print()
    print(table(main, f"Main points ({args.rows} rows; (b) on a subset)"))
    if sweep:
        print()
        print(table(sweep, f"Sweep ({min(args.sweep_rows, args.rows)} rows)"))
        print()
        print(sweep_table(sweep))


def _profile_results(b: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """--profile: one engine run under py-spy, and the top functions of each profile."""
    _step(f"profiling one engine run with py-spy into {args.profile}")
    n = min(args.rows, max(args.memory_rows)) if args.memory else args.rows
    files = profile_run(
        b,
        rows=n,
        batch_size=args.batch_size,
        workers=args.workers,
        latency_ms=0,
        out=args.profile,
        vault_batch_items=args.vault_batch_items,
    )
    result["profile"] = {}
    for name, path in files.items():
        top = summarize_profile(Path(path))
        result["profile"][name] = [
            {"function": f, "self_pct": round(s, 1), "inclusive_pct": round(i, 1)}
            for f, s, i in top
        ]


def _measure(b: Bench, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Seed, then the measurements the options ask for, into ``result``."""
    if args.memory:
        seed_rows = max(args.memory_rows)
        distinct: int | None = 5_000
    else:
        seed_rows = max(args.rows, args.baseline_rows)
        distinct = None
    _step(f"seeding {seed_rows} old-scheme rows (not measured)")
    secs = seed(b.db, b.vault, seed_rows, b.hmac_secret, distinct)
    _step(f"  seeded in {secs:.1f}s")
    result["seed_seconds"] = round(secs, 1)
    if args.memory:
        _memory_results(b, args, result)
    else:
        _main_results(b, args, result)
    if args.profile:
        _profile_results(b, args, result)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("admin_url", "out")
        },
        "targets": TARGETS,
    }
    workdir = tempdir()
    admin = sa.make_url(args.admin_url)
    if admin.drivername in ("postgresql", "postgres"):
        admin = admin.set(drivername="postgresql+psycopg")
    _step("starting an OpenBao dev server, the fault proxy, and creating the database")
    with start_dev_server() as server, ProxyProcess(server.addr) as proxy:
        db = BenchDb.create(admin)
        try:
            vault = Vault.setup(server, proxy)
            _measure(Bench(db, vault, "hmac-" + secrets.token_hex(16), workdir), args, result)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if args.keep_db:
                _step(f"database {db.name} kept")
            else:
                db.drop()
    result["total_seconds"] = round(time.monotonic() - started, 1)
    print()
    print("Ratios against the targets of issue 6:")
    print("\n".join(verdicts(result["ratios"])))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults written to {args.out} ({result['total_seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
