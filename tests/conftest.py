"""Shared fixtures. The suite runs against whatever DATABASE_URL names (SQLite by
default, PostgreSQL in `make test`'s second pass) and a real Redis (REDIS_URL)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.factories import make_agent, make_board, make_user


def pytest_collection_modifyitems(config, items):
    # Tests marked postgres need what only PostgreSQL has (row locks, SKIP LOCKED
    # across processes); the SQLite pass skips them and says so.
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (runs in make test's PostgreSQL pass)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _empty_response_cache():
    """Each test starts with an empty response cache. Only this installation's keys
    are deleted (not FLUSHDB: the Redis database also holds the Celery queues)."""
    from django.core.cache import caches

    cache = caches["responses"]
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=cache.make_key("*")))
    if keys:
        client.delete(*keys)


@pytest.fixture
def board(db):
    return make_board()


@pytest.fixture
def agent(board):
    return make_agent(boards=[board])


@pytest.fixture
def user(db):
    return make_user()


@pytest.fixture
def logged_in(client, user):
    """The test client, logged in as ``user`` (who may do nothing in particular)."""
    client.force_login(user)
    return client


@pytest.fixture
def no_open_breakers():
    """No model breaker left open by an earlier test (jidoka keeps the open ones
    in memory, apart from the database that is rolled back)."""
    from andon import jidoka

    jidoka.open_models.clear()
    yield
    jidoka.open_models.clear()


@pytest.fixture
def is_postgres() -> bool:
    return connection.vendor == "postgresql"


# Real processes (a Celery worker, the ASGI server) for the integration tests,
# and the hook that adds their logs to a failed test's report.
from tests.live import celery_worker, live_server_url, pytest_runtest_makereport  # noqa: E402, F401
