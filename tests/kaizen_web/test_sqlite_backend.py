"""The embedded default's SQLite backend (kaizen_web.sqlite_backend): closed
connections are kept and reused, with the settings' pragmas on every one."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections, transaction

from boards.models import Board
from kaizen_web.sqlite_backend.base import IdleConnections, idle_connections_for

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite backend only")


def in_new_thread(fn):
    """``fn`` run in a thread of its own, so on a Django connection of its own,
    closed at the end as Django closes it after a request."""

    def run():
        try:
            return fn()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=60)


def raw_connection() -> sqlite3.Connection:
    connection.ensure_connection()
    return connection.connection


def pragmas() -> tuple[str, int, int]:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        journal = cursor.fetchone()[0]
        cursor.execute("PRAGMA synchronous")
        synchronous = cursor.fetchone()[0]
        cursor.execute("PRAGMA foreign_keys")
        foreign_keys = cursor.fetchone()[0]
    return journal, synchronous, foreign_keys


@pytest.mark.django_db(transaction=True)
def test_every_connection_new_or_reused_has_the_settings_pragmas():
    # synchronous is not stored in the file: each connection needs it set. The
    # first thread opens a connection, the second is handed it back.
    assert in_new_thread(pragmas) == ("wal", 1, 1)
    assert in_new_thread(pragmas) == ("wal", 1, 1)
    # One opened with the pool passed by (another is in use) has them too.
    assert in_new_thread(lambda: (in_new_thread(pragmas), pragmas())) == (("wal", 1, 1), ("wal", 1, 1))


@pytest.mark.django_db(transaction=True)
def test_a_closed_connection_is_reused_by_the_next_thread():
    opened = in_new_thread(raw_connection)
    reused = in_new_thread(raw_connection)
    assert reused is opened
    # ...and it works: a write and a read through it.
    in_new_thread(lambda: Board.objects.create(name="Pooled", slug="pooled"))
    assert Board.objects.filter(slug="pooled").exists()


@pytest.mark.django_db(transaction=True)
def test_foreign_keys_are_back_on_when_a_connection_is_reused():
    def turn_off_and_close():
        connection.ensure_connection()
        connection.disable_constraint_checking()
        return connection.connection

    closed = in_new_thread(turn_off_and_close)

    reused, (_, _, foreign_keys) = in_new_thread(lambda: (raw_connection(), pragmas()))
    assert reused is closed
    assert foreign_keys == 1


@pytest.mark.django_db(transaction=True)
def test_a_connection_closed_in_a_transaction_is_not_kept():
    def close_inside_atomic():
        with transaction.atomic():
            Board.objects.create(name="Never committed", slug="never")
            raw = connection.connection
            connection.close()
        return raw

    raw = in_new_thread(close_inside_atomic)
    with pytest.raises(sqlite3.ProgrammingError):
        raw.execute("SELECT 1")  # closed, not pooled
    assert not Board.objects.filter(slug="never").exists()


def test_connections_to_a_replaced_file_are_not_handed_out(tmp_path):
    path = tmp_path / "db.sqlite3"
    pool = IdleConnections(str(path))
    conn = sqlite3.connect(path)
    assert pool.give(conn)
    assert pool.take() is conn
    assert pool.give(conn)
    # The file deleted and made again (a test database recreated): the old
    # connection would write to the deleted file.
    path.unlink()
    sqlite3.connect(path).close()
    assert pool.take() is None
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def test_the_pool_keeps_at_most_its_size(tmp_path):
    path = tmp_path / "db.sqlite3"
    pool = IdleConnections(str(path), size=2)
    conns = [sqlite3.connect(path) for _ in range(3)]
    assert [pool.give(c) for c in conns] == [True, True, False]


def test_one_pool_per_database_file(tmp_path):
    a = idle_connections_for(str(tmp_path / "a.sqlite3"))
    assert idle_connections_for(str(tmp_path / "a.sqlite3")) is a
    assert idle_connections_for(str(tmp_path / "b.sqlite3")) is not a
