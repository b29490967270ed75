"""Settings for the test suite: the product's settings, with one change.

Django hashes passwords with PBKDF2 at 1,000,000 rounds, about a quarter of a
second of CPU each time. The suite creates a user in most of its 1,400 tests and
logs many of them in, so that cost alone was a third of the suite's time. A test
user's password protects nothing, so the tests hash with MD5; every other
setting is the product's own (the processes the tests start use this module too,
so a password set here can be checked there).
"""

import os
import sys
from pathlib import Path

# The suite's own process counts its metrics in memory (prometheus_client's
# single-process mode): an inherited PROMETHEUS_MULTIPROC_DIR would add every
# earlier run's files to the values the tests check. Removed here, before
# anything imports prometheus_client (which reads it at import), and only in the
# pytest process: the web servers and workers the tests start use this module
# too, and tests/kaizen_web/test_metrics_live.py gives them a directory of their own.
if "pytest" in sys.modules:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _xdist_worker_apart(worker: str) -> None:
    """A pytest-xdist worker (``scripts/test.py`` runs each pass in two) gets a
    Redis database, Celery queue, cache prefix and var dir (its SQLite database,
    its processes' logs) of its own. Its own Redis database keeps its
    live-update groups, pull flags, heartbeats and cache apart from the other
    workers', whose boards have the same ids; pytest-django gives it its own
    test database. Set in the environment, so the processes its tests start
    (web servers, Celery workers, ``make run``) inherit them."""
    from urllib.parse import urlsplit

    number = int(worker.removeprefix("gw"))
    if number:
        url = os.environ.get("REDIS_URL")
        if not url:
            raise RuntimeError(
                f"pytest-xdist worker {worker} needs REDIS_URL to pick a Redis database of its own "
                "(scripts/test.py sets it)"
            )
        parts = urlsplit(url)
        stride = int(os.environ.get("KAIZEN_TEST_REDIS_STRIDE", "1"))
        database = int(parts.path.strip("/") or 0) + stride * number
        os.environ["REDIS_URL"] = parts._replace(path=f"/{database}").geturl()
    base = Path(os.environ.get("KAIZEN_VAR_DIR") or Path(__file__).resolve().parent.parent / "var" / "test")
    os.environ["KAIZEN_VAR_DIR"] = str(base / worker)
    os.environ["CELERY_QUEUE"] = f"{os.environ.get('CELERY_QUEUE', 'kaizen-test')}-{worker}"
    os.environ["KAIZEN_CACHE_PREFIX"] = f"{os.environ.get('KAIZEN_CACHE_PREFIX', 'cache')}-{worker}"


# Only in the worker itself, once: the processes it starts inherit what it set
# (and the mark, should one of them import pytest).
if (
    "pytest" in sys.modules
    and os.environ.get("PYTEST_XDIST_WORKER")
    and not os.environ.get("KAIZEN_TEST_WORKER_APART")
):
    _xdist_worker_apart(os.environ["PYTEST_XDIST_WORKER"])
    os.environ["KAIZEN_TEST_WORKER_APART"] = os.environ["PYTEST_XDIST_WORKER"]

from kaizen_web.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
