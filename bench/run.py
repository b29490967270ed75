"""Throughput of the whole line against bare Celery baselines (`make bench`).

Starts its own web server and Celery worker against PostgreSQL and Redis
(BENCH_DATABASE_URL, BENCH_REDIS_URL), then measures, in one run:

- ``line_tasks_per_s``: tasks posted to the JSON API until every one is Done,
  with a zero-latency simulated model;
- ``celery_noop_tasks_per_s``: a bare Celery task that does nothing;
- ``celery_orm_tasks_per_s``: a bare Celery task doing one INSERT and one UPDATE;
- ``bulk_line_tasks_per_s`` and ``bulk_import_tasks_per_s``: 5,000 tasks put on a
  board by the bulk API (requests of 500) or by ``manage.py import_tasks``, until
  every one is Done (bench/bulk.py);

then, in a worker of 1,000 threads (bench/cascade.py), the cascade at a 1-second
model latency beside a bare Celery task that sleeps 1 s, Little's law at WIP 10,
100 and 1,000, and where the worker's CPU goes (bench/worker_hooks.py).

Prints one ``name=value`` line per figure and records the run in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fixtures import bench_user_and_token, line_board  # noqa: E402 (after sys.path)
from bench.procfs import cpu_seconds, pids_named, process_tree  # noqa: E402  (after sys.path)
from kaizen_web import processes  # noqa: E402 (after the path it is found on)

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/kaizen_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/10"


class BoardWatcher:
    """A browser's share of the work: one websocket on the board, logged in, so
    the line renders and publishes its live updates as it would when watched."""

    def __init__(self, port: int, slug: str, user) -> None:
        from django.test import Client

        client = Client()
        client.force_login(user)
        self.cookie = f"sessionid={client.cookies['sessionid'].value}"
        self.url = f"ws://127.0.0.1:{port}/ws/boards/{slug}/"
        self.origin = f"http://127.0.0.1:{port}"
        self.messages = 0
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)

    async def _watch(self) -> None:
        import websockets

        headers = {"Cookie": self.cookie}
        async with websockets.connect(self.url, origin=self.origin, additional_headers=headers) as ws:
            self.connected.set()
            while not self.stopping.is_set():
                try:
                    await asyncio.wait_for(ws.recv(), timeout=0.2)
                    self.messages += 1
                except TimeoutError:
                    continue

    def start(self) -> None:
        self.thread.start()
        if not self.connected.wait(10):
            raise SystemExit("the board watcher could not open its websocket: see var/bench/web.log")

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join(5)
        return self.messages


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.var = ROOT / "var" / "bench"
        self.var.mkdir(parents=True, exist_ok=True)
        self.queue = f"kaizen-bench-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "CELERY_QUEUE": self.queue,
            "KAIZEN_VAR_DIR": str(self.var),
            "KAIZEN_SIMULATED_LATENCY_SCALE": "0",
            "DB_POOL_MAX": str(args.db_pool),
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(self.env)
        self.procs: list[subprocess.Popen] = []
        self.named: dict[str, subprocess.Popen] = {}

    # --- processes ----------------------------------------------------------

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.var / f"{name}.log", "w") as log:
            proc = processes.start_in_group(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log)
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def stop_all(self) -> None:
        processes.stop_groups(self.procs, grace=10)
        self.procs.clear()

    def start_worker(
        self,
        name: str = "worker",
        concurrency: int | None = None,
        env: dict[str, str] | None = None,
        nodename: str = "",
    ) -> None:
        self.start(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "kaizen_web",
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency or self.args.concurrency),
                "-Q",
                self.queue,
                *(["-n", nodename] if nodename else []),
                "--include",
                "bench.celery_baselines",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            env,
        )
        from kaizen_web.celery import app

        def answers() -> bool:
            replies = app.control.ping(timeout=0.5)
            # Celery expands %h: compare the part before it.
            named = nodename.split("@")[0] + "@"
            return (
                any(node.startswith(named) for reply in replies for node in reply)
                if nodename
                else bool(replies)
            )

        if not processes.wait_until(answers, timeout=60, interval=0):
            raise SystemExit(f"the bench worker did not start: see var/bench/{name}.log")

    def start_web(self) -> int:
        port = processes.free_port()
        self.start(
            "web",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "kaizen_web.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--workers",
                str(self.args.web_workers),
                # As make run serves it (scripts/run.py).
                "--ws-per-message-deflate",
                "false",
            ],
        )
        if not processes.wait_until(
            lambda: processes.accepts_connections("127.0.0.1", port, timeout=0.2), timeout=30
        ):
            raise SystemExit("the bench web server did not start: see var/bench/web.log")
        return port

    # --- set-up ---------------------------------------------------------------

    def prepare_database(self) -> None:
        import dj_database_url
        import psycopg

        cfg = dj_database_url.parse(self.args.database_url)
        admin = f"host={cfg['HOST']} port={cfg['PORT'] or 5432} user={cfg['USER']} dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone()
            if exists:
                conn.execute(f'DROP DATABASE "{cfg["NAME"]}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{cfg["NAME"]}"')
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

    def purge(self) -> None:
        import redis

        redis.Redis.from_url(self.args.redis_url).delete(self.queue)

    # --- measurements -------------------------------------------------------

    def bench_noop(self, n: int) -> float:
        import redis

        from bench.celery_baselines import noop

        r = redis.Redis.from_url(self.args.redis_url)
        key = f"bench:noop:{uuid.uuid4().hex}"
        start = time.perf_counter()
        for _ in range(n):
            noop.delay(key)
        while int(r.get(key) or 0) < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        r.delete(key)
        return n / elapsed

    def bench_orm(self, n: int) -> float:
        from bench.celery_baselines import insert_update
        from boards.models import Board

        base = Board.objects.count()
        start = time.perf_counter()
        for i in range(n):
            insert_update.delay(i)
        while Board.objects.filter(description="done").count() < n:
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        Board.objects.filter(slug__startswith="bench-baseline-").delete()
        assert Board.objects.count() == base
        return n / elapsed

    def cpu_groups(self) -> dict[str, list[int]]:
        """The processes whose CPU time the line's figures count, by name."""
        return {
            "web": process_tree(self.named["web"].pid),
            "worker": process_tree(self.named["worker"].pid),
            "postgres": pids_named("postgres"),
            "redis": pids_named("redis-server"),
            "bench_client": [os.getpid()],
        }

    def bench_line(self, port: int, n: int, *, budgets: bool = False) -> dict[str, float]:
        """The whole line for ``n`` tasks; with ``budgets``, the board and its
        agent each have a budget (dollars a day, tokens a month) that every
        completion charges and never reaches."""
        from boards.models import Task

        board, agent = line_board("line", wip=self.args.wip)
        if budgets:
            from andon.models import Budget

            Budget.objects.create(name="bench board", board=board, unit="usd", period="day", limit=10**12)
            Budget.objects.create(
                name="bench agent", agent=agent, unit="tokens", period="month", limit=10**12
            )
            # Processes read budgets at most every 2 s (andon.budgets.budget_rules).
            time.sleep(2.5)
        user, key = bench_user_and_token()

        watcher = BoardWatcher(port, board.slug, user)
        watcher.start()

        body = json.dumps({"title": "bench task", "input": "Classify: scratch on housing, 2 mm."})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        clients = self.args.clients

        def post_many(count: int) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = 0
            for _ in range(count):
                if self.args.distinct_inputs:
                    # Each task its own input: no reused result, no cache hit, a model call each.
                    text = f"Classify: scratch on housing, {uuid.uuid4().hex[:8]} mm."
                    payload = json.dumps({"title": "bench task", "input": text})
                else:
                    payload = body
                conn.request("POST", f"/api/v1/boards/{board.slug}/tasks", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                ok += response.status == 201
            conn.close()
            return ok

        groups = self.cpu_groups()
        cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            created = sum(pool.map(post_many, [n // clients] * clients))
        intake = time.perf_counter() - start
        total = (n // clients) * clients
        if created != total:
            raise SystemExit(f"the API refused {total - created} of {total} tasks: see var/bench/web.log")
        deadline = time.monotonic() + 600
        # Finished: Done, or (distinct inputs: some outputs fail the bench's
        # checks) escalated to Review, where the line's part ends.
        finished = (Task.Status.DONE, Task.Status.REVIEW)
        while Task.objects.filter(board=board, status__in=finished).count() < total:
            if time.monotonic() > deadline:
                raise SystemExit("the line did not finish within 10 minutes")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        cpu_ms = {
            f"line_cpu_ms_per_task_{name}": (cpu_seconds(pids) - cpu_before[name]) * 1000 / total
            for name, pids in groups.items()
        }
        messages = watcher.stop()
        if messages == 0:
            raise SystemExit("the board watcher received no live update: see var/bench/web.log")
        return {
            "line_tasks_per_s": total / elapsed,
            "line_intake_tasks_per_s": total / intake,
            "line_live_updates_per_s": messages / elapsed,
            **cpu_ms,
        }

    def bench_budgets(self, port: int, n: int, rounds: int) -> dict[str, float | str]:
        """What budgets cost the line: rounds of the line without budgets and
        with them, alternated (so drift on a shared machine falls on both).
        Throughput moves with whatever else the machine runs; the CPU time per
        task of the worker and PostgreSQL, where budgets are charged, much less."""
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(rounds):
            for budgets in (False, True):
                runs[budgets].append(self.bench_line(port, n, budgets=budgets))

        def median(budgets: bool, key: str) -> float:
            return statistics.median(run[key] for run in runs[budgets])

        def cpu(budgets: bool) -> float:
            return median(budgets, "line_cpu_ms_per_task_worker") + median(
                budgets, "line_cpu_ms_per_task_postgres"
            )

        base, charged = median(False, "line_tasks_per_s"), median(True, "line_tasks_per_s")
        return {
            "line_budgets_off_tasks_per_s": base,
            "line_budgets_on_tasks_per_s": charged,
            "line_budgets_cost_percent": (base - charged) * 100 / base,
            "line_budgets_off_cpu_ms_per_task_worker_postgres": cpu(False),
            "line_budgets_on_cpu_ms_per_task_worker_postgres": cpu(True),
            "line_budgets_cpu_cost_percent": (cpu(True) - cpu(False)) * 100 / cpu(False),
            "line_budgets_rounds": rounds,
            "line_budgets_off_each": " ".join(f"{r['line_tasks_per_s']:.1f}" for r in runs[False]),
            "line_budgets_on_each": " ".join(f"{r['line_tasks_per_s']:.1f}" for r in runs[True]),
        }

    def run(self) -> dict[str, float | str]:
        self.prepare_database()
        self.purge()
        results: dict[str, float | str] = {}
        try:
            if not self.args.skip_line:
                port = self.start_web()
                self.start_worker()
                n = self.args.tasks
                # A short warm-up so imports and pools are not measured.
                self.bench_noop(200)
                results["celery_noop_tasks_per_s"] = self.bench_noop(n)
                results["celery_orm_tasks_per_s"] = self.bench_orm(n)
                self.bench_line(port, 200)
                results.update(self.bench_line(port, n))
                line, orm = results["line_tasks_per_s"], results["celery_orm_tasks_per_s"]
                assert isinstance(line, float) and isinstance(orm, float)
                results["line_vs_orm_baseline"] = line / orm
                if not self.args.skip_bulk:
                    from bench.bulk import BulkBench

                    results.update(BulkBench(self, BoardWatcher).run(port))
                if self.args.budget_rounds:
                    results.update(self.bench_budgets(port, self.args.budget_tasks, self.args.budget_rounds))
                self.stop_all()
            if not self.args.skip_cascade:
                from bench.cascade import CascadeBench

                results.update(CascadeBench(self).run())
            return results
        finally:
            self.stop_all()
            self.purge()


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB memory"
                break
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, {memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def record(results: dict[str, float | str], command: str) -> None:
    readme = ROOT / "bench" / "README.md"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### {stamp}", "", f"- command: `{command}`", f"- machine: {machine()}", "", "```"]
    lines += [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()]
    lines += ["```", ""]
    marker = "## Results\n"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n\n"
    if marker not in text:
        text = text.rstrip("\n") + "\n\n" + marker
    head, tail = text.split(marker, 1)
    # Newest first, right under the heading.
    readme.write_text(head + marker + "\n" + "\n".join(lines) + "\n" + tail.lstrip("\n"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per measurement (default 3000)")
    parser.add_argument("--wip", type=int, default=200, help="In progress WIP limit and agent concurrency")
    parser.add_argument("--concurrency", type=int, default=100, help="worker threads (default 100)")
    parser.add_argument("--web-workers", type=int, default=1, help="uvicorn processes (default 1)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients (default 8)")
    parser.add_argument("--db-pool", type=int, default=20, help="psycopg pool size per process")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument(
        "--skip-line", action="store_true", help="leave out the zero-latency line and its baselines"
    )
    parser.add_argument(
        "--skip-bulk", action="store_true", help="leave out bulk intake to Done (bench/bulk.py)"
    )
    parser.add_argument("--bulk-tasks", type=int, default=5000, help="tasks per bulk measurement (5000)")
    parser.add_argument("--bulk-batch", type=int, default=500, help="tasks per bulk API request (500)")
    parser.add_argument("--bulk-clients", type=int, default=4, help="concurrent bulk API clients (4)")
    parser.add_argument(
        "--skip-cascade", action="store_true", help="leave out the 1 s cascade (bench/cascade.py)"
    )
    parser.add_argument("--skip-profile", action="store_true", help="leave out the cascade's profile runs")
    parser.add_argument("--cascade-tasks", type=int, default=1000, help="tasks in the WIP 1000 batch (1000)")
    parser.add_argument(
        "--cascade-latency-ms", type=float, default=1000, help="the model's mean latency (1000)"
    )
    parser.add_argument("--cascade-concurrency", type=int, default=1000, help="cascade worker threads (1000)")
    parser.add_argument(
        "--cascade-processes",
        type=int,
        default=2,
        help="worker processes for the *_procsN figures, sharing the cascade's threads (2; 0: none)",
    )
    parser.add_argument("--cascade-db-pool", type=int, default=20, help="cascade worker's psycopg pool (20)")
    parser.add_argument(
        "--cascade-timeout", type=float, default=120, help="give up on a cascade run after (s)"
    )
    parser.add_argument(
        "--little-wips",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[10, 100, 1000],
        help="WIP limits measured against Little's law (10,100,1000)",
    )
    parser.add_argument(
        "--little-max-tasks", type=int, default=3000, help="tasks per Little run: 10 x WIP, at most this"
    )
    parser.add_argument(
        "--profile-tasks", type=int, default=1000, help="tasks in the sections profile run (1000)"
    )
    parser.add_argument("--cprofile-tasks", type=int, default=300, help="tasks in the cProfile run (300)")
    parser.add_argument(
        "--budget-rounds",
        type=int,
        default=0,
        help="line runs without and with budgets, alternated (0: none)",
    )
    parser.add_argument("--budget-tasks", type=int, default=600, help="tasks in each budgets round (600)")
    parser.add_argument(
        "--distinct-inputs",
        action="store_true",
        help="give every task of the line its own input, so that each calls the model "
        "(by default they are identical and all but the first reuse its result)",
    )
    args = parser.parse_args()
    results = Bench(args).run()
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if not args.no_record:
        record(results, "make bench  # " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench")


if __name__ == "__main__":
    main()
