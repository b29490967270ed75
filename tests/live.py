"""Real processes for tests: a Celery worker and the ASGI web server, started as
subprocesses against the test database and the real Redis.

Both fixtures need data the test commits, so they request ``transactional_db``;
they stop their processes before pytest-django flushes the database. Each
process writes its output to a file under KAIZEN_VAR_DIR/live/, and the files of
a failed test are added to its report.

A test sets a worker's environment with the ``worker`` marker::

    @pytest.mark.worker(env={"KAIZEN_LEASE_SECONDS": "2"}, concurrency=4)
    def test_...(celery_worker): ...
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from kaizen_web import processes
from kaizen_web.processes import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

_live_processes = pytest.StashKey[list["LiveProcess"]]()


def child_database_url() -> str:
    """A DATABASE_URL naming the database this test runs on (the test database
    once pytest-django has set it up), for processes we start."""
    from django.db import connection

    s = connection.settings_dict
    if connection.vendor == "postgresql":
        auth = quote(s.get("USER") or "", safe="")
        if s.get("PASSWORD"):
            auth += ":" + quote(s["PASSWORD"], safe="")
        host = s.get("HOST") or "localhost"
        # A socket directory goes in the host part, percent-encoded.
        host = quote(host, safe="") if host.startswith("/") else host
        port = f":{s['PORT']}" if s.get("PORT") else ""
        return f"postgres://{auth}{'@' if auth else ''}{host}{port}/{quote(s['NAME'], safe='')}"
    if connection.vendor == "sqlite":
        name = str(s["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            raise RuntimeError("the SQLite test database is in memory; other processes cannot open it")
        return f"sqlite:///{Path(name).resolve()}"
    raise RuntimeError(f"no live-process support for {connection.vendor}")


def wait_for(what: str, check: Callable[[], bool], *, timeout: float, process: LiveProcess | None = None):
    """Poll ``check`` until it holds; fail with the process's log if it dies or time runs out."""

    def watch() -> None:
        if process is not None and not process.alive:
            pytest.fail(
                f"{process.name} exited with code {process.returncode} while we waited for {what}:\n"
                f"{process.log_tail()}"
            )

    if not processes.wait_until(check, timeout=timeout, watch=watch):
        tail = f":\n{process.log_tail()}" if process is not None else ""
        pytest.fail(f"{what} did not happen within {timeout:.0f} s{tail}")


class LiveProcess:
    """A subprocess in its own process group, its output going to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Its own group, so kill() takes any grandchildren with it.
            self.proc = processes.start_in_group(argv, cwd=BASE_DIR, env=env, stdout=log)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        """kill -9, the way a machine dies: no shutdown code runs."""
        processes.signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        processes.stop_groups([self.proc], grace=STOP_TIMEOUT)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process we start: this test's database, Redis, queue
    and var dir, plus ``extra``. Settings a test changes with the ``settings``
    fixture stay in this process; pass what a child needs in ``extra``."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": child_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
            "KAIZEN_VAR_DIR": str(settings.VAR_DIR),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def log_path_for(request: pytest.FixtureRequest, name: str) -> Path:
    """A fresh log file under KAIZEN_VAR_DIR/live/ named after the test."""
    from django.conf import settings

    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    return Path(settings.VAR_DIR) / "live" / f"{test}-{name}-{uuid.uuid4().hex[:6]}.log"


def register(request: pytest.FixtureRequest, process: LiveProcess) -> None:
    """Attach ``process``'s log to the test's report if the test fails."""
    request.node.stash.setdefault(_live_processes, []).append(process)


def purge_queue(queue: str) -> int:
    """Drop every message waiting in ``queue``, and every pull asked of its
    workers (boards.services.enqueue), so a worker does not run tasks or pulls
    left over from another test."""
    import redis
    from django.conf import settings

    from boards.services.enqueue import pull_requests_key
    from kaizen_web.celery import app

    redis.Redis.from_url(settings.REDIS_URL).delete(pull_requests_key(queue))
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_purge(queue) or 0


def drop_queue(queue: str) -> None:
    """Remove a queue made for one test, messages and kombu's bookkeeping keys
    alike, so unique queue names do not pile up in Redis."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = [key for key in client.scan_iter(match=f"*{queue}*") if queue in key.decode(errors="replace")]
    if keys:
        client.delete(*keys)


class CeleryWorkerHandle:
    """The test's Celery worker: ``kill()`` it like a crash, ``start()`` another."""

    def __init__(self, request: pytest.FixtureRequest, *, concurrency: int, env: dict[str, str]) -> None:
        from django.conf import settings

        self._request = request
        self.queue: str = settings.CELERY_TASK_DEFAULT_QUEUE
        self.concurrency = concurrency
        self.env = env
        self.processes: list[LiveProcess] = []

    @property
    def current(self) -> LiveProcess | None:
        return self.processes[-1] if self.processes else None

    def start(self, *, env: dict[str, str] | None = None) -> LiveProcess:
        """Start a worker (after any earlier one has stopped) and wait until it consumes."""
        if self.current is not None and self.current.alive:
            raise RuntimeError("a worker is already running: kill() or stop() it first")
        self.env = {**self.env, **(env or {})}
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kaizen_web",
            "worker",
            "-P",
            "threads",
            "-c",
            str(self.concurrency),
            "-Q",
            self.queue,
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
        name = f"worker{len(self.processes) + 1}"
        process = LiveProcess(name, argv, child_env(self.env), log_path_for(self._request, name))
        self.processes.append(process)
        register(self._request, process)
        # Celery logs "<node> ready." once its consumer is attached to the queue.
        wait_for(
            f"{name} to be ready",
            lambda: re.search(r"@\S+ ready\.", process.log_text()) is not None,
            timeout=READY_TIMEOUT,
            process=process,
        )
        return process

    def kill(self) -> None:
        if self.current is not None:
            self.current.kill()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def celery_worker(request: pytest.FixtureRequest, transactional_db) -> Iterator[CeleryWorkerHandle]:
    """A real Celery worker (thread pool) on this run's queue and the test database."""
    marker = request.node.get_closest_marker("worker")
    options = dict(marker.kwargs) if marker else {}
    handle = CeleryWorkerHandle(
        request, concurrency=int(options.get("concurrency", 8)), env=dict(options.get("env", {}))
    )
    purge_queue(handle.queue)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
        # Runs the dead worker had claimed but not started would otherwise wait
        # for the next test's worker.
        purge_queue(handle.queue)


@pytest.fixture
def live_server_url(request: pytest.FixtureRequest, transactional_db) -> Iterator[str]:
    """The ASGI app served by uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "kaizen_web.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",
    ]
    process = LiveProcess("web", argv, child_env(), log_path_for(request, "web"))
    register(request, process)
    try:
        wait_for(
            "the web server to accept connections",
            lambda: processes.accepts_connections("127.0.0.1", port),
            timeout=READY_TIMEOUT,
            process=process,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for process in item.stash.get(_live_processes, []):
            report.sections.append((f"{process.name} log ({process.log_path})", process.log_tail(200)))
    return report
