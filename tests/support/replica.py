"""A real streaming replica on this machine, for the throttle's tests.

``streaming_pair`` (session) starts a standby with ``pg_basebackup -R`` from the local
PostgreSQL binaries (``pg_config --bindir``, else ``/usr/lib/postgresql/*/bin``), streaming
through a physical replication slot. Its primary is, in order:

1. ``TEST_REPLICA_PRIMARY_URL`` when set (a server that can stream: ``wal_level=replica``,
   ``max_wal_senders``, a ``replication`` entry in ``pg_hba.conf``);
2. with ``TEST_REPLICA_PRIMARY=suite``, the suite's primary (``DATABASE_URL`` or
   127.0.0.1:5432) when it can stream;
3. otherwise a throwaway primary of its own, started from the same binaries (``initdb`` with
   ``wal_level=replica`` and ``trust`` for replication).

The throwaway primary is the default on purpose: pausing a replica's replay makes *every* run
on its primary hold (replication lag is server-wide), so a replica of the shared server would
hold other tests' runs too. Everything lives in temporary directories on free ports and is
stopped (``pg_ctl stop -m fast``) and removed at the end of the session; the slot is dropped.
As root, the servers run as the ``postgres`` (else ``nobody``) user, since ``initdb`` and
``postgres`` refuse to run as root. Without the binaries the tests skip, saying so.

``replica_db`` (function) gives a test a fresh database on that primary (visible on the
standby), and leaves the standby replaying and caught up afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
import sqlalchemy as sa

from tests.support.db_fixtures import LOCAL_URL, create_database, drop_database

#: Bound of every wait in this module (server start, catch-up, a database showing up).
WAIT_S = 60.0


_BINARIES = ("postgres", "initdb", "pg_ctl", "pg_basebackup")


def find_bindir() -> str | None:
    """The directory of the local server binaries, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            candidates.append(out)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in _BINARIES):
            return d
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _libpq(url: sa.URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class _RunAs:
    """The OS user the servers run as (None: the current one)."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def choose(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam(name)
                return cls(pw.pw_uid, pw.pw_gid)
        pytest.skip("running as root and no unprivileged user (postgres, nobody) to run a server")

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        user: dict[str, Any] = {}
        if self.uid is not None:
            user = {"user": self.uid, "group": self.gid, "extra_groups": []}
        return subprocess.run(
            args, capture_output=True, text=True, check=False, timeout=WAIT_S, **user, **kw
        )


@dataclass
class LocalServer:
    """One PostgreSQL server in a temporary directory, run with ``pg_ctl``."""

    bindir: str
    datadir: Path
    port: int
    run_as: _RunAs

    @property
    def url(self) -> sa.URL:
        return sa.URL.create(
            "postgresql+psycopg",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database="postgres",
        )

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1"
        log = self.datadir.parent / f"{self.datadir.name}.log"
        args = [self._bin("pg_ctl"), "-D", str(self.datadir), "-l", str(log), "-o", opts]
        args += ["-w", "-t", str(int(WAIT_S)), "start"]
        done = self.run_as.run(args)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stderr}\n{tail}")

    def stop(self) -> None:
        self.run_as.run([self._bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop"])


def _initdb(bindir: str, datadir: Path, run_as: _RunAs) -> None:
    args = [os.path.join(bindir, "initdb"), "-D", str(datadir), "-U", "postgres"]
    args += ["--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]
    done = run_as.run(args)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr}")
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# throwaway primary of the throttle tests\n"
            "wal_level = replica\nmax_wal_senders = 5\nmax_replication_slots = 5\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "shared_buffers = 32MB\nmax_connections = 50\n"
            "autovacuum_naptime = 1s\n"  # the autovacuum test waits for a worker
        )
    with (datadir / "pg_hba.conf").open("a") as hba:
        hba.write("host replication all 127.0.0.1/32 trust\n")


def can_stream(url: sa.URL) -> str | None:
    """None when ``url``'s server can feed a standby, else why not."""
    try:
        with psycopg.connect(_libpq(url), connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('wal_level'), current_setting('max_wal_senders')::int, "
                "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)"
            ).fetchone()
    except psycopg.Error as exc:
        return f"cannot connect ({type(exc).__name__})"
    assert row is not None
    wal_level, senders, may = row
    if wal_level not in ("replica", "logical"):
        return f"wal_level={wal_level}"
    if senders < 1:
        return "max_wal_senders=0"
    if not may:
        return "the role has no REPLICATION attribute"
    try:
        with psycopg.connect(_libpq(url) + " replication=true", connect_timeout=5):
            return None
    except psycopg.Error:
        return "pg_hba.conf has no replication entry for this client"


@dataclass
class StreamingPair:
    """A primary and its streaming standby; URLs of their ``postgres`` databases."""

    primary_url: sa.URL
    replica_url: sa.URL
    slot: str
    #: Where the primary came from ("throwaway", "TEST_REPLICA_PRIMARY_URL", "suite").
    origin: str

    def primary(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(_libpq(self.primary_url), autocommit=True, **kw)

    def replica(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(_libpq(self.replica_url), autocommit=True, **kw)

    def pause_replay(self) -> None:
        with self.replica() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with self.replica() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def replay_paused(self) -> bool:
        with self.replica() as conn:
            row = conn.execute("SELECT pg_get_wal_replay_pause_state() <> 'not paused'").fetchone()
        return bool(row and row[0])

    def wait_caught_up(self, timeout: float = WAIT_S) -> None:
        """Until the standby has replayed everything the primary has written (bounded)."""
        with self.primary() as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        with self.replica() as rconn:
            _poll(
                rconn,
                "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0",
                (target,),
                timeout,
                f"the standby did not replay up to {target} in {timeout}s",
            )

    def wait_streaming(self, timeout: float = WAIT_S) -> None:
        """Until the primary lists the standby as streaming with a reply (bounded)."""
        with self.primary() as conn:
            _poll(
                conn,
                "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s "
                "ON s.active_pid = r.pid WHERE s.slot_name = %s AND r.state = 'streaming' "
                "AND r.replay_lsn IS NOT NULL",
                (self.slot,),
                timeout,
                f"the standby did not start streaming in {timeout}s",
            )


def _poll(
    conn: psycopg.Connection[Any],
    query: LiteralString,
    params: tuple[object, ...],
    timeout: float,
    failure: str,
) -> None:
    """Until ``query``'s one value is true (or not zero) on ``conn``; TimeoutError(``failure``)
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query, params).fetchone()
        if row and row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(failure)
        time.sleep(0.05)


def _choose_primary(
    bindir: str, tmp: Path, run_as: _RunAs, servers: list[LocalServer]
) -> tuple[sa.URL, str]:
    explicit = os.environ.get("TEST_REPLICA_PRIMARY_URL")
    if explicit:
        url = sa.make_url(explicit).set(drivername="postgresql+psycopg")
        why = can_stream(url)
        if why:
            pytest.fail(f"TEST_REPLICA_PRIMARY_URL cannot feed a standby: {why}")
        return url, "TEST_REPLICA_PRIMARY_URL"
    if os.environ.get("TEST_REPLICA_PRIMARY") == "suite":
        suite = sa.make_url(os.environ.get("DATABASE_URL") or LOCAL_URL).set(
            drivername="postgresql+psycopg"
        )
        if can_stream(suite) is None:
            return suite, "suite"
    datadir = tmp / "primary"
    _initdb(bindir, datadir, run_as)
    server = LocalServer(bindir, datadir, free_port(), run_as)
    server.start()
    servers.append(server)
    return server.url, "throwaway"


def start_pair(bindir: str, tmp: Path, run_as: _RunAs, servers: list[LocalServer]) -> StreamingPair:
    """Start (a primary and) a standby streaming from it; ``servers`` collects what to stop."""
    primary_url, origin = _choose_primary(bindir, tmp, run_as, servers)
    slot = f"cem_test_replica_{uuid.uuid4().hex[:8]}"
    datadir = tmp / "replica"
    args = [os.path.join(bindir, "pg_basebackup"), "-d", _libpq(primary_url), "-D", str(datadir)]
    args += ["-R", "-C", "-S", slot, "-X", "stream", "-c", "fast", "--no-sync"]
    done = run_as.run(args)
    if done.returncode != 0:
        raise RuntimeError(f"pg_basebackup failed ({done.returncode}): {done.stderr}")
    with (datadir / "postgresql.conf").open("a") as conf:
        # replies every second, so the primary's view of the replay position stays fresh
        conf.write("\nhot_standby = on\nwal_receiver_status_interval = 1s\n")
    replica = LocalServer(bindir, datadir, free_port(), run_as)
    replica.start()
    servers.append(replica)
    pair = StreamingPair(primary_url, replica.url, slot, origin)
    pair.wait_streaming()
    return pair


@pytest.fixture(scope="session")
def streaming_pair() -> Iterator[StreamingPair]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "no local PostgreSQL server binaries (postgres, initdb, pg_basebackup; looked at "
            "pg_config --bindir and /usr/lib/postgresql/*/bin): no streaming replica"
        )
    run_as = _RunAs.choose()
    tmp = Path(tempfile.mkdtemp(prefix="cem-replica-"))
    run_as.own(tmp)
    servers: list[LocalServer] = []
    pair: StreamingPair | None = None
    try:
        pair = start_pair(bindir, tmp, run_as, servers)
        yield pair
    finally:
        for server in reversed(servers):  # the standby first, then its primary
            server.stop()
        if pair is not None and pair.origin != "throwaway":
            with contextlib.suppress(psycopg.Error), pair.primary() as conn:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (pair.slot,))
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ReplicaDb:
    """A fresh database on the pair's primary, and the same database on its standby."""

    pair: StreamingPair
    url: sa.URL
    replica_url: sa.URL

    def write_wal(self, mb: int = 4) -> None:
        """Commit about ``mb`` MB of WAL on the primary, in this database (a new filler table)."""
        with psycopg.connect(_libpq(self.url), autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE filler_{uuid.uuid4().hex[:8]} AS "
                f"SELECT g, repeat('x', 200) AS pad FROM generate_series(1, {mb * 4000}) g"
            )

    def lag(self) -> None:
        """Make the standby fall behind: replay paused on it, WAL written on the primary."""
        self.pair.pause_replay()
        self.write_wal()


@pytest.fixture
def replica_db(streaming_pair: StreamingPair) -> Iterator[ReplicaDb]:
    url = create_database(streaming_pair.primary_url, prefix="cem_replica")
    streaming_pair.wait_caught_up()
    try:
        yield ReplicaDb(streaming_pair, url, streaming_pair.replica_url.set(database=url.database))
    finally:
        streaming_pair.resume_replay()
        drop_database(streaming_pair.primary_url, url)
        streaming_pair.wait_caught_up()
