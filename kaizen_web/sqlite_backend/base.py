"""Django's SQLite backend, with closed connections kept for the next one to
open, as the psycopg pool does on PostgreSQL (settings.DATABASES names it for
the embedded default's SQLite file).

Opening a SQLite connection costs little; its first statement does not: SQLite
reads and parses the whole schema (a hundred tables and their indexes here),
and Django registers its functions and runs the pragmas, about 1.3 ms of CPU in
all, where a statement on an open connection takes a hundredth of that. Django
closes the connection at the end of every request, Celery before and after
every task, and the worker's run and completion threads and the live updates'
broadcaster after each of theirs (so that on PostgreSQL the connection goes
back to the pool): on the embedded line that was several new connections per
task. Here ``close()`` hands an idle connection (no transaction open) to a small
pool for this database file instead, and the next connection in the process,
whatever its thread, takes it from there.

A pooled connection is handed out only in the process that opened it (SQLite
connections must not cross a fork) and only while the file at the database's
path is the file it opened (tests delete and recreate theirs). It comes back
as Django and the settings made it (its functions, the pragmas of
settings.SQLITE_INIT_COMMAND, its busy timeout); foreign keys are turned back on
in case whoever closed it had turned them off (the schema editor does).
"""

from __future__ import annotations

import os
import sqlite3
import threading

from django.db.backends.sqlite3 import base

# Idle connections kept per database file; more are closed. The worker's pool
# threads (20 on SQLite by default) and the web server's request threads each
# hold at most one at a time.
POOL_SIZE = 32


class IdleConnections:
    """Closed connections to one database file, kept for reuse in this process."""

    def __init__(self, path: str, size: int = POOL_SIZE) -> None:
        self.path = path
        self.size = size
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._file: tuple[int, int] | None = None

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def take(self) -> sqlite3.Connection | None:
        identity = self._identity()
        with self._lock:
            if self._pid != os.getpid():
                # Forked: the parent's connections are the parent's. They are
                # dropped without closing (closing one here could checkpoint the
                # parent's write-ahead log beneath it).
                _forked_away.extend(self._idle)
                self._idle, self._pid, self._file = [], os.getpid(), None
                return None
            if identity is None or identity != self._file:
                stale, self._idle = self._idle, []
            else:
                return self._idle.pop() if self._idle else None
        for conn in stale:
            conn.close()
        return None

    def give(self, conn: sqlite3.Connection) -> bool:
        """Keep ``conn`` for reuse; False when it must be closed instead."""
        if conn.in_transaction or self._pid != os.getpid():
            return False
        identity = self._identity()
        if identity is None:
            return False
        try:
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error:
            return False
        with self._lock:
            if self._file != identity:
                stale, self._idle, self._file = self._idle, [], identity
            else:
                stale = []
            kept = len(self._idle) < self.size
            if kept:
                self._idle.append(conn)
        for old in stale:
            old.close()
        return kept


_forked_away: list[sqlite3.Connection] = []
_pools: dict[str, IdleConnections] = {}
_pools_lock = threading.Lock()


def idle_connections_for(database: str) -> IdleConnections:
    path = os.path.abspath(database)
    with _pools_lock:
        pool = _pools.get(path)
        if pool is None:
            pool = _pools[path] = IdleConnections(path)
        return pool


class DatabaseWrapper(base.DatabaseWrapper):
    def _idle_connections(self) -> IdleConnections | None:
        # An in-memory database lives and dies with its connection: never pooled.
        if self.is_in_memory_db():
            return None
        return idle_connections_for(self.settings_dict["NAME"])

    def get_new_connection(self, conn_params):
        pool = self._idle_connections()
        conn = pool.take() if pool is not None else None
        return conn if conn is not None else super().get_new_connection(conn_params)

    def _close(self) -> None:
        pool = self._idle_connections()
        if self.connection is not None and pool is not None and pool.give(self.connection):
            return
        super()._close()  # type: ignore[misc]  # not in django-stubs, in Django since 1.x
