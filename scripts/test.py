#!/usr/bin/env python3
"""Run the whole test suite twice, on SQLite and on PostgreSQL. ``make test`` calls this.

The two passes run side by side (each line they print starts with its name),
and each pass in two pytest-xdist workers (``--workers``), whole test files
handed out as workers free up: much of a test waits on the processes it starts
(a Celery worker, a web server, a browser), so four processes keep the two
cores busier than two did. ``--serial`` runs the passes one after the other.
Each worker has a Redis database of its own (tests/settings.py): the pass's,
then on by the number of passes per worker. Both passes use a real Redis and their
own Celery queue, so a run never takes messages meant for another. It exits
non-zero if either pass fails, including when a pass collects no tests at all
(pytest's exit code 5).

Environment:
  TEST_DATABASE_URL  PostgreSQL for the second pass (default
                     postgres://postgres@127.0.0.1:5432/test; pytest-django
                     creates and drops test_<name> beside it)
  TEST_REDIS_URL     Redis for the SQLite pass (default redis://127.0.0.1:6379/1);
                     the PostgreSQL pass uses the next database number, and their
                     second workers the two after (1 to 4 by default), so no two
                     workers share a key (pull flags, heartbeats, the cache) or a
                     live-update channel (its prefix names the database)
  KAIZEN_VAR_DIR     where test files go (default var/test, apart from the demo's var/)

Usage: scripts/test.py [--only sqlite|postgres] [--serial] [--workers N] [pytest arguments...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/1"
NO_TESTS_COLLECTED = 5
PASSES = ("sqlite", "postgres")
DEFAULT_WORKERS = 2


def banner(text: str) -> None:
    rule = "=" * 72
    print(f"\n{rule}\n  {text}\n{rule}", flush=True)


def redis_problem(url: str) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {url} (TEST_REDIS_URL) does not answer: {exc}"
    return None


def postgres_problem(url: str) -> str | None:
    import psycopg

    parts = urlsplit(url)
    # The maintenance database: the test database need not exist before the run.
    admin_url = parts._replace(path="/postgres").geturl()
    try:
        psycopg.connect(admin_url, connect_timeout=3).close()
    except Exception as exc:
        return (
            f"PostgreSQL at {parts.hostname}:{parts.port or 5432} (TEST_DATABASE_URL) does not answer: {exc}"
        )
    return None


def pass_redis_url(url: str, offset: int) -> str:
    """``url`` with its database number moved on by ``offset``."""
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 0) + offset
    return parts._replace(path=f"/{number}").geturl()


def drop_queues(url: str, prefix: str) -> None:
    """Remove this run's queues (messages and kombu's bookkeeping keys): their
    names are unique, so nothing else uses them, and they would pile up."""
    import redis

    client = redis.Redis.from_url(url)
    keys = [k for k in client.scan_iter(match=f"*{prefix}*") if prefix in k.decode(errors="replace")]
    if keys:
        client.delete(*keys)


def report(name: str, code: int, took: float) -> None:
    if code == NO_TESTS_COLLECTED:
        print(f"\n{name}: pytest collected no tests: that is a failure, not a pass.", flush=True)
    print(f"\n{name}: exit code {code} after {took:.0f} s", flush=True)


def run_pass(name: str, env: dict[str, str], pytest_args: list[str]) -> int:
    banner(f"Test pass: {name}  (CELERY_QUEUE={env['CELERY_QUEUE']})")
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR, env=env)
    report(name, code, time.monotonic() - started)
    return code


def run_passes_side_by_side(envs: dict[str, dict[str, str]], pytest_args: list[str]) -> dict[str, int]:
    """Start every pass at once and copy their output here line by line, each
    line prefixed with its pass's name so the two can be told apart."""
    banner(
        "Test passes, side by side: "
        + ", ".join(f"{n} (CELERY_QUEUE={e['CELERY_QUEUE']})" for n, e in envs.items())
    )
    width = max(len(name) for name in envs)
    lock = threading.Lock()
    started = time.monotonic()
    results: dict[str, int] = {}

    def run(name: str, env: dict[str, str]) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *pytest_args],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert process.stdout is not None
        for line in process.stdout:
            with lock:
                print(f"{name:<{width}} | {line}", end="", flush=True)
        results[name] = process.wait()
        with lock:
            report(name, results[name], time.monotonic() - started)

    threads = [threading.Thread(target=run, args=item) for item in envs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: results[name] for name in envs}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["sqlite", "postgres"], help="run one pass only")
    parser.add_argument("--serial", action="store_true", help="run the passes one after the other")
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"pytest-xdist workers per pass (default {DEFAULT_WORKERS}; 1: none, tests in one process)",
    )
    args, pytest_args = parser.parse_known_args()

    var_root = Path(os.environ.get("KAIZEN_VAR_DIR") or BASE_DIR / "var" / "test").resolve()
    redis_url = os.environ.get("TEST_REDIS_URL") or DEFAULT_REDIS
    postgres_url = os.environ.get("TEST_DATABASE_URL") or DEFAULT_POSTGRES
    run_id = uuid.uuid4().hex[:8]

    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    passes = [p for p in PASSES if args.only in (None, p)]
    redis_urls = {name: pass_redis_url(redis_url, PASSES.index(name)) for name in passes}
    # Every Redis database a worker uses: its pass's, on by len(PASSES) per worker.
    worker_redis_urls = [
        pass_redis_url(url, len(PASSES) * worker)
        for url in redis_urls.values()
        for worker in range(args.workers)
    ]
    if args.workers > 1:
        pytest_args = ["-n", str(args.workers), "--dist", "loadfile", *pytest_args]
    problems = [redis_problem(url) for url in worker_redis_urls]
    if "postgres" in passes:
        problems.append(postgres_problem(postgres_url))
    problems = [p for p in problems if p]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(
            "Start the service, or point the variable at one that runs (.ci/run starts both).",
            file=sys.stderr,
        )
        return 2

    envs: dict[str, dict[str, str]] = {}
    for name in passes:
        var_dir = var_root / name
        # A fresh directory per pass: old worker logs and SQLite files must not
        # leak into this run's results.
        shutil.rmtree(var_dir, ignore_errors=True)
        var_dir.mkdir(parents=True)
        env = dict(os.environ)
        env.update(
            {
                "KAIZEN_VAR_DIR": str(var_dir),
                "REDIS_URL": redis_urls[name],
                "CELERY_QUEUE": f"kaizen-test-{run_id}-{name}",
                # The response cache's keys, apart from other runs' and dropped with the queues.
                "KAIZEN_CACHE_PREFIX": f"kaizen-test-{run_id}-{name}-cache",
                "KAIZEN_TEST_REDIS_STRIDE": str(len(PASSES)),
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if name == "sqlite":
            # The settings' default: a SQLite file in KAIZEN_VAR_DIR, whatever
            # DATABASE_URL the shell had for `make run`.
            env.pop("DATABASE_URL", None)
        else:
            env["DATABASE_URL"] = postgres_url
        envs[name] = env

    if args.serial or len(envs) == 1:
        results = {name: run_pass(name, env, pytest_args) for name, env in envs.items()}
    else:
        results = run_passes_side_by_side(envs, pytest_args)

    for url in worker_redis_urls:
        drop_queues(url, f"kaizen-test-{run_id}-")
    banner("Summary")
    for name, code in results.items():
        verdict = "passed" if code == 0 else f"FAILED (exit code {code})"
        print(f"  {name:<9} {verdict}")
    print(flush=True)
    return 0 if all(code == 0 for code in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
