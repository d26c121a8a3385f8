"""The four measurements of issue 6, each on rows restored from the pristine copy.

Every measured client reaches OpenBao through the fault proxy (:mod:`bench.proxy`), which adds
the latency of the measurement and counts requests and items; ``direct=True`` on (a) skips it.

(a) :func:`engine_run`    ``alembic upgrade 0001_users`` as a subprocess (the CLI operators
                          run), timed, with its peak RSS (``VmHWM``).
(b) :func:`baseline_run`  the original tool's shape: per value one decrypt and one encrypt
                          request (hvac, no batch), one UPDATE (and commit) per row.
(c) :func:`db_only_run`   the engine's keyset SELECT and compare-and-swap UPDATE (``TableSql``) with
                          its checkpoint, per batch, fed precomputed ciphertexts: no Vault.
(d) :func:`vault_only_run` the engine's batch requests (``TransitClient.decrypt_batch`` then
                          ``encrypt_batch`` per batch), back to back: no database.
(r) :func:`rewrap_run`    ``context-encryption rewrap`` of the rows (a) migrated, after a
                          rotation of the new key, timed as (a) is.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import hvac
import sqlalchemy as sa

from app_models.specs import Direction
from app_models.tables import context_string
from bench.fixture import (
    COLUMNS,
    MOUNT,
    NEW_KEY,
    OLD_KEY,
    REVISION,
    TABLE,
    USERS_SPEC,
    BenchDb,
    Vault,
    b64,
    hmac_hex,
)
from context_encryption.engine import Checkpointer, Row, TableSql, ensure_checkpoint_table
from context_encryption.settings import DEFAULT_VAULT_BATCH_ITEMS, Secret, Settings
from context_encryption.transit import DecryptRequest, EncryptRequest, RequestLimits, TransitClient

ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass
class Point:
    """One measured figure. ``rows_per_s`` is what the ratios use."""

    #: engine | engine_direct | rewrap | baseline | db_only | vault_only | vault_only_parallel
    kind: str
    latency_ms: float
    rows: int
    seconds: float
    batch_size: int | None = None
    workers: int | None = None
    #: most items per Vault request (``-x vault-batch-items``)
    vault_batch_items: int | None = None
    wall_seconds: float | None = None  # engine: the whole process, interpreter start included
    vault_requests: int | None = None
    vault_items: int | None = None
    peak_rss_mb: float | None = None
    #: CPU seconds of the measured client (the alembic process; the bench process for b, c, d)
    client_cpu_s: float | None = None
    #: CPU seconds the OpenBao server (the bao process) spent meanwhile
    vault_cpu_s: float | None = None
    #: CPU seconds the fault proxy's process spent meanwhile
    proxy_cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_1k(self) -> float | None:
        if self.vault_requests is None or not self.rows:
            return None
        return self.vault_requests * 1000 / self.rows

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_per_s"] = round(self.rows_per_s, 1)
        rq = self.requests_per_1k
        d["vault_requests_per_1k_rows"] = None if rq is None else round(rq, 2)
        d["seconds"] = round(self.seconds, 3)
        if self.wall_seconds is not None:
            d["wall_seconds"] = round(self.wall_seconds, 3)
        return d


@dataclass
class Bench:
    """Everything the measurements share."""

    db: BenchDb
    vault: Vault
    hmac_secret: str
    workdir: Path
    verbose: bool = False

    def env(self, *, direct: bool = False) -> dict[str, str]:
        """Environment of the alembic subprocess (secrets travel here, never on argv)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        return {
            **env,
            "DATABASE_URL": self.db.url.render_as_string(hide_password=False),
            "VAULT_ADDR": self.vault.direct_addr if direct else self.vault.addr,
            "VAULT_TOKEN": self.vault.token,
            "VAULT_TRANSIT_MOUNT": MOUNT,
            "VAULT_OLD_KEY": OLD_KEY,
            "VAULT_NEW_KEY": NEW_KEY,
            "ENCRYPTION_HMAC_SECRET": self.hmac_secret,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }

    def settings(
        self, *, workers: int = 1, vault_batch_items: int = DEFAULT_VAULT_BATCH_ITEMS
    ) -> Settings:
        """Settings of an in-process client through the proxy; ``workers`` is also how many
        requests of one batch a ``TransitClient`` sends at once, as in the engine."""
        return Settings(
            vault_addr=self.vault.addr,
            vault_token=Secret(self.vault.token),
            transit_mount=MOUNT,
            old_key=OLD_KEY,
            new_key=NEW_KEY,
            hmac_secret=Secret(self.hmac_secret),
            workers=workers,
            vault_batch_items=vault_batch_items,
        )


def _cli_argv(script: str, module: str) -> list[str]:
    exe = Path(sys.executable).with_name(script)
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", module]


def alembic_argv() -> list[str]:
    return _cli_argv("alembic", "alembic")


class EngineRunError(RuntimeError):
    pass


def engine_run(
    b: Bench,
    *,
    rows: int,
    batch_size: int,
    workers: int,
    latency_ms: float,
    vault_batch_items: int = DEFAULT_VAULT_BATCH_ITEMS,
    direct: bool = False,
    wrap: list[str] | None = None,
) -> Point:
    """(a): ``alembic -x batch-size=B -x workers=W -x vault-batch-items=V upgrade 0001_users``.

    On ``rows`` fresh rows. ``seconds`` is the engine's own time for the table (the report's
    ``seconds``); ``wall_seconds`` the whole process. ``direct``: straight to OpenBao, not
    through the proxy (no latency, no request counts from the proxy). ``wrap`` prefixes the
    command (a profiler).
    """
    if direct and latency_ms:
        raise ValueError("a direct run has no injected latency")
    b.db.restore(rows)
    b.vault.latency(latency_ms)
    b.vault.reset_stats()
    report = b.workdir / f"report-{time.monotonic_ns()}.json"
    argv = [
        *(wrap or []),
        *alembic_argv(),
        "-c",
        str(ROOT / "alembic.ini"),
        "-x",
        f"batch-size={batch_size}",
        "-x",
        f"workers={workers}",
        "-x",
        f"vault-batch-items={vault_batch_items}",
        "-x",
        f"report={report}",
        "upgrade",
        REVISION,
    ]
    ran = _run_measured(b, argv, direct=direct, what="alembic")
    rep = json.loads(report.read_text())
    report.unlink()
    table = next(t for t in rep["tables"] if t["table"] == TABLE)
    migrated = sum(c["migrated"] for c in table["columns"].values())
    failed = sum(c["failed"] for c in table["columns"].values())
    if table["rows_scanned"] != rows or migrated != rows * len(COLUMNS) or failed:
        raise EngineRunError(
            f"engine run incomplete: {table['rows_scanned']} rows scanned, {migrated} values "
            f"migrated, {failed} failed (expected {rows} rows, {rows * len(COLUMNS)} values)"
        )
    return _cli_point(
        "engine_direct" if direct else "engine",
        ran,
        table,
        latency_ms=latency_ms,
        rows=rows,
        batch_size=batch_size,
        workers=workers,
        vault_batch_items=vault_batch_items,
        proxied=not direct,
        # With a wrapper (profiler) this would be the wrapper's peak, not alembic's.
        rss=not wrap,
    )


@dataclass
class _Ran:
    """What :func:`_run_measured` measured of one CLI process."""

    wall: float
    peak_rss_mb: float | None
    cpu_s: float
    vault_cpu_s: float
    proxy_cpu_s: float
    load: list[float]
    stats: dict[str, Any]


def _run_measured(b: Bench, argv: list[str], *, direct: bool, what: str) -> _Ran:
    """Run ``argv`` (an alembic or context-encryption command) with the bench's environment:
    its wall time, peak RSS and CPU, OpenBao's and the proxy's CPU, the proxy's statistics.
    Sets the latency back to 0; raises :class:`EngineRunError` when the command fails."""
    log_path = b.workdir / "cli.log"
    others = _OtherCpu(b)
    load_before = os.getloadavg()[0]
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=b.env(direct=direct), stdout=log, stderr=subprocess.STDOUT
        )
        watcher = PeakRss(proc.pid)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        peak_kib = watcher.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    vault_cpu, proxy_cpu = others.stop()
    load_after = os.getloadavg()[0]
    stats = b.vault.stats()
    b.vault.latency(0)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise EngineRunError(f"{what} exited {proc.returncode}:\n{tail}")
    return _Ran(
        wall=wall,
        peak_rss_mb=round(peak_kib / 1024, 1) if peak_kib else None,
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        vault_cpu_s=vault_cpu,
        proxy_cpu_s=proxy_cpu,
        load=[round(load_before, 2), round(load_after, 2)],
        stats=stats,
    )


def rewrap_run(
    b: Bench,
    *,
    rows: int,
    batch_size: int,
    workers: int,
    latency_ms: float,
    vault_batch_items: int = DEFAULT_VAULT_BATCH_ITEMS,
) -> Point:
    """(r): ``context-encryption rewrap --tables users`` of the rows the first (a) migrated.

    Run after a rotation of the new key (:meth:`bench.fixture.Vault.rotate_new`): every value
    moves to the latest version through ``transit/rewrap`` batches. As (a): a subprocess
    through the proxy, on ``rows`` rows restored to (a)'s output and stamp, ``seconds`` the
    command's own time for the table (its report's; the preflight's version scan is in
    ``wall_seconds``), requests from the proxy's statistics.
    """
    b.db.restore(rows, migrated=True)
    b.vault.latency(latency_ms)
    b.vault.reset_stats()
    report = b.workdir / f"rewrap-{time.monotonic_ns()}.json"
    argv = [
        *_cli_argv("context-encryption", "context_encryption.cli"),
        "rewrap",
        "--tables",
        TABLE,
        "--batch-size",
        str(batch_size),
        "--workers",
        str(workers),
        "--vault-batch-items",
        str(vault_batch_items),
        "--report",
        str(report),
    ]
    ran = _run_measured(b, argv, direct=False, what="context-encryption rewrap")
    rep = json.loads(report.read_text())
    report.unlink()
    table = next(t for t in rep["tables"] if t["table"] == TABLE)
    moved = sum(c["rewrapped"] for c in table["columns"].values())
    if (
        rep["outcome"] != "completed"
        or rep["values_left_unchanged"]
        or table["rows_failed"]
        or table["rows_scanned"] != rows
        or moved != rows * len(COLUMNS)
    ):
        raise EngineRunError(
            f"rewrap incomplete: outcome {rep['outcome']}, {table['rows_scanned']} rows "
            f"scanned, {moved} values rewrapped, {table['rows_failed']} rows failed, "
            f"{rep['values_left_unchanged']} values left (expected {rows} rows, "
            f"{rows * len(COLUMNS)} values)"
        )
    return _cli_point(
        "rewrap",
        ran,
        table,
        latency_ms=latency_ms,
        rows=rows,
        batch_size=batch_size,
        workers=workers,
        vault_batch_items=vault_batch_items,
        extra={"target_key_version": rep["target_key_version"]},
    )


def _cli_point(
    kind: str,
    ran: _Ran,
    table: dict[str, Any],
    *,
    latency_ms: float,
    rows: int,
    batch_size: int,
    workers: int,
    vault_batch_items: int,
    proxied: bool = True,
    rss: bool = True,
    extra: dict[str, Any] | None = None,
) -> Point:
    """The Point of a measured CLI run (the migration or the rewrap) from its report's table.

    Through the proxy, requests and items are the proxy's counts (preflight and key reads
    included); straight to OpenBao, the engine's own count.
    """
    return Point(
        kind=kind,
        latency_ms=latency_ms,
        rows=rows,
        seconds=float(table["seconds"]),
        batch_size=batch_size,
        workers=workers,
        vault_batch_items=vault_batch_items,
        wall_seconds=ran.wall,
        vault_requests=int(ran.stats["total_requests"] if proxied else table["vault_requests"]),
        vault_items=_items(ran.stats) if proxied else None,
        peak_rss_mb=ran.peak_rss_mb if rss else None,
        client_cpu_s=ran.cpu_s,
        vault_cpu_s=ran.vault_cpu_s,
        proxy_cpu_s=ran.proxy_cpu_s if proxied else None,
        extra={
            **(extra or {}),
            "engine_vault_requests": table["vault_requests"],
            "batches": table["batches"],
            "changed_concurrently": table["changed_concurrently"],
            "loadavg_1min_before_after": ran.load,
        },
    )


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``); 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class PeakRss:
    """Polls ``VmHWM`` (the peak resident set of the process's own address space) of ``pid``.

    ``ru_maxrss`` from ``wait4`` is not used: Linux folds the parent's peak at fork/exec time
    into it, so a child of a large parent reports the parent's size. ``VmHWM`` belongs to the
    address space ``exec`` created and only grows, so the last reading before exit is the peak
    (short of growth in the last ``interval``).
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self._cmdline = Path(f"/proc/{pid}/cmdline")
        self._parent_cmdline = Path("/proc/self/cmdline").read_bytes()
        self._exec_seen = False
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kib = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            if not self._exec_seen:
                # Until exec, the child runs in (a copy of) our address space: not its own peak.
                if self._cmdline.read_bytes() == self._parent_cmdline:
                    return
                self._exec_seen = True
            for line in self._path.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                    return
        except (OSError, ValueError):
            pass

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


class _OtherCpu:
    """CPU seconds of the bao process and of the proxy's process from now to :meth:`stop`."""

    def __init__(self, b: Bench) -> None:
        self._pids = (b.vault.pid, b.vault.proxy.pid)
        self._start = [proc_cpu_seconds(p) for p in self._pids]

    def stop(self) -> tuple[float, float]:
        vault, proxy = (
            round(proc_cpu_seconds(p) - s, 3) for p, s in zip(self._pids, self._start, strict=True)
        )
        return vault, proxy


class _Cpu:
    """Wall time, this process's CPU time, OpenBao's and the proxy's from now to :meth:`stop`."""

    def __init__(self, b: Bench) -> None:
        self._others = _OtherCpu(b)
        self._own = time.process_time()
        self._wall = time.monotonic()

    def stop(self) -> tuple[float, float, float, float]:
        wall = time.monotonic() - self._wall
        own = time.process_time() - self._own
        vault, proxy = self._others.stop()
        return wall, round(own, 3), vault, proxy


def _in_process_point(
    b: Bench, cpu: _Cpu, *, kind: str, latency_ms: float, rows: int, **fields: Any
) -> Point:
    """The point of a run in this process (b, d): ``cpu`` stopped, the proxy's counts (its
    latency back to 0) and the CPU seconds of this process, OpenBao and the proxy."""
    seconds, client_cpu, vault_cpu, proxy_cpu = cpu.stop()
    stats = b.vault.stats()
    b.vault.latency(0)
    return Point(
        kind=kind,
        latency_ms=latency_ms,
        rows=rows,
        seconds=seconds,
        vault_requests=int(stats["total_requests"]),
        vault_items=_items(stats),
        client_cpu_s=client_cpu,
        vault_cpu_s=vault_cpu,
        proxy_cpu_s=proxy_cpu,
        **fields,
    )


def _items(stats: dict[str, Any]) -> int:
    """Transit items the proxy saw (``batch_input`` items; 1 for a single-value request)."""
    items = stats.get("items", {})
    if not isinstance(items, dict):
        return 0
    return sum(int(v) for k, v in items.items() if k != "other")


def baseline_run(b: Bench, *, rows: int, latency_ms: float) -> Point:
    """(b): the original tool: per value one decrypt and one encrypt request, per row one UPDATE.

    One hvac client (keep-alive session, no batch_input), one database connection, each row's
    UPDATE committed on its own.
    """
    b.db.restore(rows)
    client = hvac.Client(url=b.vault.addr, token=b.vault.token, timeout=60)
    contexts = {c: b64(context_string(TABLE, c)) for c in COLUMNS}
    update = sa.text(
        "UPDATE users SET email = :email, first_name = :first_name, last_name = :last_name "
        "WHERE id = :id"
    )
    transit = client.secrets.transit
    b.vault.latency(latency_ms)
    b.vault.reset_stats()
    vault_s = db_s = 0.0
    cpu = _Cpu(b)
    with b.db.engine.connect() as conn:
        with conn.begin():
            result = conn.execute(
                sa.text("SELECT id, email, email_hmac, first_name, last_name FROM users")
            ).all()
        for pk, email, email_hmac, first, last in result:
            t0 = time.monotonic()
            new: dict[str, Any] = {"id": pk}
            for col, ct in (("email", email), ("first_name", first), ("last_name", last)):
                if ct is None:
                    new[col] = None
                    continue
                pt = transit.decrypt_data(name=OLD_KEY, ciphertext=ct, mount_point=MOUNT)
                pt_b64 = pt["data"]["plaintext"]
                if col == "email" and email_hmac is not None:
                    text = base64.b64decode(pt_b64).decode("utf-8")
                    if hmac_hex(b.hmac_secret, text) != email_hmac:
                        raise RuntimeError("baseline: HMAC verification failed")
                enc = transit.encrypt_data(
                    name=NEW_KEY, plaintext=pt_b64, context=contexts[col], mount_point=MOUNT
                )
                new[col] = enc["data"]["ciphertext"]
            t1 = time.monotonic()
            vault_s += t1 - t0
            with conn.begin():
                conn.execute(update, new)
            db_s += time.monotonic() - t1
    point = _in_process_point(
        b,
        cpu,
        kind="baseline",
        latency_ms=latency_ms,
        rows=rows,
        extra={"vault_seconds": round(vault_s, 3), "update_commit_seconds": round(db_s, 3)},
    )
    client.adapter.close()
    return point


def db_only_run(b: Bench, *, rows: int, batch_size: int) -> Point:
    """(c): the engine's read and write path with precomputed ciphertexts, no Vault.

    Keyset SELECT on a reader connection, then per batch, on a writer connection and in one
    transaction: the engine's timeouts, its compare-and-swap ``UPDATE ... FROM unnest(...)``, and
    its checkpoint advance, as ``BatchWriter.process`` does them. Serial: one batch at a
    time. The precomputed values are the engine's own output (kept after the first run (a)).
    """
    new_values = b.db.migrated_values()
    b.db.restore(rows)
    settings = b.settings()
    engine = b.db.engine
    db = TableSql(USERS_SPEC, engine.dialect.name)
    ensure_checkpoint_table(engine)
    checkpointer = Checkpointer("bench_db_only", Direction.UPGRADE, TABLE)
    with engine.begin() as conn:
        checkpointer.start(conn, None)
    written_total = 0
    cpu = _Cpu(b)
    with engine.connect() as reader, engine.connect() as writer:
        last_pk: Any = None
        seq = 0
        while True:
            with reader.begin():
                db.set_timeouts(reader, settings)
                result = reader.execute(db.select_after(last_pk, batch_size)).all()
            if not result:
                break
            batch: list[Row] = db.to_rows(result)
            last_pk = batch[-1].pk
            for r in batch:
                vals = new_values[r.pk]
                r.new = {c: v for c, v in zip(COLUMNS, vals, strict=True) if v is not None}
            checkpointer.register(seq, last_pk)
            with writer.begin():
                db.set_timeouts(writer, settings)
                written = db.write(writer, batch)
                checkpointer.advance_in(writer, seq)
            checkpointer.committed(seq)
            written_total += len(written)
            seq += 1
    seconds, client_cpu, _, _ = cpu.stop()
    if written_total != rows:
        raise RuntimeError(f"db-only run wrote {written_total} of {rows} rows")
    return Point(
        kind="db_only",
        latency_ms=0,
        rows=rows,
        seconds=seconds,
        batch_size=batch_size,
        workers=1,
        vault_requests=0,
        client_cpu_s=client_cpu,
    )


def _vault_batches(b: Bench, rows: int, batch_size: int) -> list[list[DecryptRequest]]:
    cts = b.db.pristine_ciphertexts(rows)
    return [
        [DecryptRequest(ct, None) for row in cts[lo : lo + batch_size] for ct in row]
        for lo in range(0, len(cts), batch_size)
    ]


def _vault_batch(
    transit: TransitClient, reqs: list[DecryptRequest], version: int, contexts: list[str]
) -> int:
    """One batch as the engine sends it: a decrypt request, then an encrypt request."""
    dec = transit.decrypt_batch(OLD_KEY, reqs)
    enc = transit.encrypt_batch(
        NEW_KEY,
        [EncryptRequest(r.value or "", contexts[i % len(contexts)]) for i, r in enumerate(dec)],
        key_version=version,
    )
    bad = sum(1 for r in dec if r.error) + sum(1 for r in enc if r.error)
    if bad:
        raise RuntimeError(f"vault-only run: {bad} items failed")
    return len(reqs)


def vault_only_run(
    b: Bench,
    *,
    rows: int,
    batch_size: int,
    latency_ms: float,
    workers: int = 1,
    parallel: int = 1,
    vault_batch_items: int = DEFAULT_VAULT_BATCH_ITEMS,
) -> Point:
    """(d): the engine's Vault requests for ``rows`` rows with no database.

    Per batch of ``batch_size`` rows: one ``decrypt_batch`` (old key, every value of the batch)
    then one ``encrypt_batch`` (new key, each value with its column's context, version pinned),
    through :class:`TransitClient` as the engine uses it: each call split into requests of at
    most ``vault_batch_items`` items, ``parallel`` of them in flight at once (the engine's
    ``-x workers``; the clients share one ``RequestLimits``). ``workers=1``: batches back to
    back on one client (the serial Vault cost); more: that many clients, a batch each.
    """
    batches = _vault_batches(b, rows, batch_size)
    contexts = [context_string(TABLE, c) for c in COLUMNS]
    settings = b.settings(workers=parallel, vault_batch_items=vault_batch_items)
    limits = RequestLimits(vault_batch_items)
    clients = [TransitClient.from_settings(settings, limits=limits) for _ in range(workers)]
    info = clients[0].read_key(NEW_KEY)
    assert info is not None
    version = info.latest_version
    b.vault.latency(latency_ms)
    b.vault.reset_stats()
    cpu = _Cpu(b)
    if workers == 1:
        for reqs in batches:
            _vault_batch(clients[0], reqs, version, contexts)
    else:
        local = threading.local()
        pool_clients = list(clients)
        lock = threading.Lock()

        def work(reqs: list[DecryptRequest]) -> int:
            client = getattr(local, "client", None)
            if client is None:
                with lock:
                    client = pool_clients.pop()
                local.client = client
            return _vault_batch(client, reqs, version, contexts)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, batches))
    point = _in_process_point(
        b,
        cpu,
        kind="vault_only" if workers == 1 else "vault_only_parallel",
        latency_ms=latency_ms,
        rows=rows,
        batch_size=batch_size,
        workers=workers,
        vault_batch_items=vault_batch_items,
        extra={"requests_in_flight_per_client": parallel},
    )
    for c in clients:
        c.close()
    if limits.max_items != vault_batch_items:
        raise RuntimeError(
            f"vault-only run: OpenBao refused requests of {vault_batch_items} items; "
            f"they were halved to {limits.max_items}"
        )
    return point


def py_spy() -> str | None:
    """A py-spy executable: ``$PY_SPY``, next to this interpreter, or on PATH."""
    env = os.environ.get("PY_SPY")
    if env and Path(env).exists():
        return env
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def profile_run(
    b: Bench,
    *,
    rows: int,
    batch_size: int,
    workers: int,
    latency_ms: float,
    out: Path,
    vault_batch_items: int = DEFAULT_VAULT_BATCH_ITEMS,
) -> dict[str, str]:
    """One engine run under py-spy (the engine and the proxy's process); stacks in ``out``.

    Only samples where a thread holds the GIL are kept (``--gil``): both processes are bound by
    one interpreter each, so that is where their time goes. OpenBao is a Go program, which
    py-spy cannot sample; its CPU seconds are in every point.
    """
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy not found (set PY_SPY=/path/to/py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    engine_out = out / "engine.txt"
    proxy_out = out / "proxy.txt"

    def record(to: Path, *target: str) -> list[str]:
        return [
            spy,
            "record",
            "--format",
            "raw",
            "--threads",
            "--gil",
            "-r",
            "200",
            "-o",
            str(to),
            *target,
        ]

    spied = subprocess.Popen(
        record(proxy_out, "--pid", str(b.vault.proxy.pid)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        engine_run(
            b,
            rows=rows,
            batch_size=batch_size,
            workers=workers,
            latency_ms=latency_ms,
            vault_batch_items=vault_batch_items,
            wrap=record(engine_out, "--subprocesses", "--"),
        )
    finally:
        spied.send_signal(2)  # SIGINT: py-spy writes its file and exits
        try:
            spied.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spied.kill()
    return {"engine": str(engine_out), "proxy": str(proxy_out)}


def summarize_profile(path: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) from py-spy's collapsed stacks, idle frames excluded."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_t[leaf] = self_t.get(leaf, 0) + count
        for f in set(frames[1:]):
            incl[f] = incl.get(f, 0) + count
    if not total:
        return []
    ranked = sorted(self_t.items(), key=lambda kv: -kv[1])[:top]
    return [(f, 100 * c / total, 100 * incl.get(f, c) / total) for f, c in ranked]


def tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-"))
