"""The resources of a table run's threads: a database connection and a Vault client per thread.

Batches run on a thread pool (``-x workers``); each thread opens its own connection and its own
Transit client on first use (neither is shared between threads), and :meth:`Workers.close`
closes them all at the end of the table. The calling thread, which pins the key and decides
where to resume, only opens a Transit client: it has no use for a connection of its own.
"""

from __future__ import annotations

import contextlib
import threading

import sqlalchemy as sa

from context_encryption.engine.rows import TransitFactory
from context_encryption.transit import TransitClient


class Workers:
    """Per-thread database connection and Vault client, each opened on first use."""

    def __init__(self, engine: sa.Engine, factory: TransitFactory) -> None:
        self._engine = engine
        self._factory = factory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sa.Connection] = []
        self._clients: list[TransitClient] = []

    def connection(self) -> sa.Connection:
        """This thread's database connection."""
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._engine.connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def transit(self) -> TransitClient:
        """This thread's Transit client."""
        client: TransitClient | None = getattr(self._local, "transit", None)
        if client is None:
            client = self._factory()
            self._local.transit = client
            with self._lock:
                self._clients.append(client)
        return client

    def vault_requests(self) -> int:
        """Requests sent by every client opened so far."""
        with self._lock:
            return sum(t.requests for t in self._clients)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(Exception):
                    conn.close()
            for client in self._clients:
                with contextlib.suppress(Exception):
                    client.close()
            self._connections.clear()
            self._clients.clear()
