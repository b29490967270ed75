"""Shared fixtures and the suite's rules. The suite runs against whatever
DATABASE_URL names (SQLite by default, PostgreSQL in `make test`'s second pass).

Redis is for the tests marked ``@pytest.mark.redis`` only: those of the channel
layer and the broadcaster, the Celery queues, pull flags and worker heartbeats,
and every test that starts a worker, the web server or a browser. So
``pytest -m "not redis"`` runs the rest with no Redis at all (the response
cache, the one use of Redis wherever a run ends, is then a cache in memory). A
test that is not marked and uses Redis anyway fails, saying where from: the
product treats Redis errors as an outage and carries on, so a refused
connection alone could let such a test pass."""

from __future__ import annotations

import inspect
import re
import threading
import traceback
from pathlib import Path

import pytest
import redis
import redis.asyncio.connection
import redis.connection
from django.db import connection

from tests.factories import make_agent, make_board, make_user

pytest_plugins = ["tests.scheduling"]
BASE_DIR = Path(__file__).resolve().parent.parent

# Fixtures that need Redis whatever the test does: a test using one is marked redis.
REDIS_FIXTURES = {"celery_worker", "live_server_url", "empty_queue"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(config, items):
    for item in items:
        if REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)

    # Tests marked postgres need what only PostgreSQL has (row locks, SKIP LOCKED
    # across processes); the SQLite pass skips them and says so.
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (runs in make test's PostgreSQL pass)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


# --- Redis for marked tests only ----------------------------------------------------


class RedisNotMarked(redis.exceptions.ConnectionError):
    """A Redis command from a test not marked redis. A ConnectionError, so the
    code that sent it takes the path it takes when Redis is down; the test fails
    at teardown all the same (see pytest_runtest_teardown)."""


class _RedisGuard:
    allowed = True  # between tests (collection, session fixtures) anything goes
    uses: list[str] = []

    @classmethod
    def check(cls, what: str) -> None:
        if cls.allowed:
            return
        use = f"{what} (thread {threading.current_thread().name}, from {_caller()})"
        cls.uses.append(use)
        raise RedisNotMarked(f"Redis is for tests marked @pytest.mark.redis: {use}")


def _command_name(command) -> str:
    first = command[0] if isinstance(command, list | tuple) and command else command
    if isinstance(first, str):
        first = first.encode()
    match = re.match(rb"\*\d+\r\n\$\d+\r\n([A-Za-z_ -]+)\r\n", first or b"")
    return match.group(1).decode().upper() if match else "a command"


def _caller() -> str:
    """The innermost frame of this project's code (tests or the product)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = Path(frame.filename)
        if path.is_relative_to(BASE_DIR) and ".venv" not in path.parts and path.name != "conftest.py":
            return f"{path.relative_to(BASE_DIR)}:{frame.lineno}"
    return "outside this project's code"


def _guarded(method, what):
    """``method`` of a redis-py connection, refused to a test not marked redis."""
    if inspect.iscoroutinefunction(method):

        async def guarded_async(self, *args, **kwargs):
            _RedisGuard.check(what(args))
            return await method(self, *args, **kwargs)

        return guarded_async

    def guarded(self, *args, **kwargs):
        _RedisGuard.check(what(args))
        return method(self, *args, **kwargs)

    return guarded


# Every command of redis-py goes through send_packed_command, and every
# connection through connect_check_health (Django's cache, Celery's broker,
# channels_redis, our own clients): a connection is refused before it is tried,
# so the message is the same whether Redis runs or not.
for _module in (redis.connection, redis.asyncio.connection):
    _cls = _module.AbstractConnection
    _cls.send_packed_command = _guarded(
        _cls.send_packed_command, lambda args: _command_name(args[0]) if args else "a command"
    )
    _cls.connect_check_health = _guarded(_cls.connect_check_health, lambda args: "a connection")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    _RedisGuard.uses.clear()
    _RedisGuard.allowed = item.get_closest_marker("redis") is not None
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        result = yield
    finally:
        uses, _RedisGuard.uses = _RedisGuard.uses, []
        _RedisGuard.allowed = True
    if uses:
        pytest.fail(
            "this test is not marked @pytest.mark.redis but used Redis: "
            + "; ".join(dict.fromkeys(uses))
            + ". Mark it (or its module's pytestmark) if it needs Redis.",
            pytrace=False,
        )
    return result


@pytest.fixture(autouse=True, scope="session")
def _no_watchers_asked_without_redis():
    """Before rendering a board, the broadcaster asks Redis who watches it
    (kaizen_web.live.watched_groups). While a test not marked redis runs, to the
    end of its teardown, there is no Redis to ask: the broadcaster cannot tell, and
    renders as it did before it asked. Decided by the guard's state, not by a
    stand-in undone at teardown: the broadcaster's thread asks when it gets to it,
    and on a busy machine that was after such a stand-in was gone, but before the
    guard lets Redis be used again."""
    from kaizen_web import live

    asked = live.watched_groups

    async def watched_groups(layer, groups):
        if not _RedisGuard.allowed:
            return None
        return await asked(layer, groups)

    live.watched_groups = watched_groups
    yield
    live.watched_groups = asked


@pytest.fixture(autouse=True)
def _genchi_still(monkeypatch):
    """The line's view of running shadows and holdouts (experiments.line.genchi)
    is re-read at most every 2 s in a process: at a moment a test cannot choose,
    which would make a count of the line's queries depend on how fast the test
    ran. Here it is read once per test, when first asked; a test that starts or
    ends a shadow or a holdout in this process has it read again (the services
    clear it, as they do in production)."""
    from experiments import line as experiment_line

    experiment_line.genchi.clear()
    monkeypatch.setattr(experiment_line.genchi, "TTL", 1e9)
    yield
    experiment_line.genchi.clear()


@pytest.fixture(autouse=True)
def _metric_label_names():
    """The metrics' names of boards and agents by id (boards.metrics) are kept for
    the process's life; on SQLite a rolled-back test's ids are handed out again,
    so a later test's board would be counted under an earlier one's slug."""
    from boards import metrics

    metrics._board_slugs.clear()
    metrics._agent_names.clear()
    yield


@pytest.fixture(autouse=True)
def _fresh_budget_rules():
    """The line keeps the budgets in memory for two seconds (andon.budgets.budget_rules);
    each test's are its own. On SQLite a rolled-back test's ids are handed out
    again, so an earlier test's budget would be charged under a later test's id."""
    from andon import budgets

    budgets.budget_rules.clear()
    yield
    budgets.budget_rules.clear()


@pytest.fixture(autouse=True)
def _board_page_fresh():
    """The board page's live part is rendered for every load, as the tests read
    it right after changing the board (the page may otherwise show it as it was
    up to KAIZEN_BOARD_PAGE_MAX_AGE_MS before: boards.fragments.board_live_html_get;
    tests/boards/test_views_board_page_cache.py turns it on). What a process
    kept (that part, the SLE) is forgotten: on SQLite a rolled-back test's board ids are
    handed out again."""
    from django.test import override_settings

    from boards.fragments import board_live_html_clear
    from boards.selectors import board_sle_recent

    # override_settings, not the settings fixture: some tests take a parameter of that name.
    with override_settings(KAIZEN_BOARD_PAGE_MAX_AGE_MS=0):
        board_live_html_clear()
        board_sle_recent.clear()
        yield
        board_live_html_clear()
        board_sle_recent.clear()


@pytest.fixture(autouse=True)
def _knowledge_fresh():
    """What a process remembers of the knowledge base (whether rows of another
    embedding model are left, the in-memory vector indexes, versions' parameters) starts empty in each
    test: a rolled-back test's rows must not be remembered by the next."""
    from experiments import knowledge, patterns, vectors

    knowledge._stale_looked.clear()
    vectors.indexes_clear()
    # Versions by (agent id, number): SQLite hands a rolled-back test's ids out again.
    patterns._version_parameters.cache_clear()
    yield
    knowledge._stale_looked.clear()


@pytest.fixture(autouse=True)
def _redis_state(request):
    """A test marked redis starts with an empty response cache and ends with every
    live update it caused sent, so none reaches a later test's listeners. Any
    other test has a response cache of its own in memory: the cache is the one
    use of Redis the line makes wherever a run ends, and the product asks of it
    only get, set and delete, which any Django cache does alike."""
    from django.conf import settings
    from django.core.cache import caches
    from django.test import override_settings

    if request.node.get_closest_marker("redis") is None:
        in_memory = {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "kaizen-test-responses",
            "TIMEOUT": settings.CACHES["responses"].get("TIMEOUT"),
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
        with override_settings(CACHES={**settings.CACHES, "responses": in_memory}):
            caches["responses"].clear()
            yield
        return

    # Only this installation's keys are deleted (not FLUSHDB: the Redis database
    # also holds the Celery queues).
    cache = caches["responses"]
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=cache.make_key("*")))
    if keys:
        client.delete(*keys)
    yield
    from boards import broadcast

    broadcast.flush(timeout=60)


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
