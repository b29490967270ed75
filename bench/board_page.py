"""The board page under load (`make bench`; issue 15, target 4).

Starts its own web server and Celery worker against PostgreSQL and Redis
(BENCH_DATABASE_URL, BENCH_REDIS_URL), as bench/run.py does and with its
helpers, and a board served by a zero-latency simulated agent. Then, in one run:

- ``board_page_p50_ms_alone`` / ``board_page_p99_ms_alone``: PAGE_CLIENTS
  logged-in clients load the board page in a loop for DURATION seconds, and
  nothing else happens (the baseline);
- ``board_page_p50_ms_under_load`` / ``board_page_p99_ms_under_load``: the same
  clients while POST_CLIENTS clients post tasks to the JSON API (one task a
  request, a write token) and the worker runs them through the line, for
  DURATION seconds; ``board_page_posted_tasks_per_s`` is the posting rate
  meanwhile, and ``board_page_done_tasks_per_s`` the rate they reached Done;
- ``board_page_queries``: the queries one load of the page makes when it
  shares the live part rendered a moment before (the usual case under load),
  and ``board_page_queries_rendered`` when it renders it (Django's test client,
  in this process, on the board as the run left it);
- CPU milliseconds per page load (alone) and per posted task (under load) of
  the web server, the worker and PostgreSQL (bench/procfs.py).

Prints one ``name=value`` line per figure and records the run in bench/README.md
unless --no-record.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fixtures import bench_user_and_token, line_board  # noqa: E402
from bench.procfs import cpu_seconds, pids_named, process_tree  # noqa: E402  (after sys.path)
from bench.run import DEFAULT_DB, DEFAULT_REDIS, Bench, record  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Loop:
    """Threads that each repeat one request until told to stop, keeping the
    latency of every answer (ms) and counting the ones that were not as expected."""

    def __init__(self, port: int, count: int, request: Callable[[http.client.HTTPConnection], bool]) -> None:
        self.port = port
        self.request = request
        self.stopping = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        mine: list[float] = []
        failures = 0
        while not self.stopping.is_set():
            start = time.perf_counter()
            try:
                ok = self.request(conn)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                ok = False
            mine.append((time.perf_counter() - start) * 1000)
            failures += not ok
        conn.close()
        with self.lock:
            self.latencies += mine
            self.failures += failures

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)


class BoardPageBench(Bench):
    def setup_board(self) -> None:
        from django.test import Client

        self.board, _ = line_board("page", wip=self.args.wip, backlog=True)
        user, self.token = bench_user_and_token()
        client = Client()
        client.force_login(user)
        self.cookie = f"sessionid={client.cookies['sessionid'].value}"
        self.user = user

    def page_loop(self, port: int) -> Loop:
        path = self.board.get_absolute_url()
        headers = {"Cookie": self.cookie}

        def load(conn: http.client.HTTPConnection) -> bool:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            return response.status == 200 and b'id="board-body"' in body

        return Loop(port, self.args.page_clients, load)

    def post_loop(self, port: int) -> Loop:
        path = f"/api/v1/boards/{self.board.slug}/tasks"
        body = json.dumps({"title": "bench task", "input": "Classify: scratch on housing, 2 mm."})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

        def post(conn: http.client.HTTPConnection) -> bool:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status == 201

        return Loop(port, self.args.post_clients, post)

    def groups(self) -> dict[str, list[int]]:
        return {
            "web": process_tree(self.named["web"].pid),
            "worker": process_tree(self.named["worker"].pid),
            "postgres": pids_named("postgres"),
        }

    def phase(self, port: int, *, posting: bool, duration: float) -> dict[str, float]:
        from boards.models import Task

        groups = self.groups()
        cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        done_before = Task.objects.filter(board=self.board, status=Task.Status.DONE).count()
        pages = self.page_loop(port)
        posts = self.post_loop(port) if posting else None
        start = time.perf_counter()
        pages.start()
        if posts is not None:
            posts.start()
        time.sleep(duration)
        if posts is not None:
            posts.stop()
        pages.stop()
        elapsed = time.perf_counter() - start
        done = Task.objects.filter(board=self.board, status=Task.Status.DONE).count() - done_before
        cpu = {name: (cpu_seconds(pids) - cpu_before[name]) * 1000 for name, pids in groups.items()}
        if pages.failures or (posts is not None and posts.failures):
            raise SystemExit(
                f"{pages.failures} page loads and {posts.failures if posts else 0} posts failed: "
                "see var/bench/web.log"
            )
        load = os.getloadavg()[0]
        if posts is None:
            n = len(pages.latencies)
            return {
                "board_page_p50_ms_alone": statistics.median(pages.latencies),
                "board_page_p99_ms_alone": percentile(pages.latencies, 99),
                "board_page_loads_per_s_alone": n / elapsed,
                **{f"board_page_cpu_ms_per_load_alone_{k}": v / n for k, v in cpu.items()},
                "board_page_loadavg_alone": load,
            }
        posted = len(posts.latencies)
        return {
            "board_page_p50_ms_under_load": statistics.median(pages.latencies),
            "board_page_p99_ms_under_load": percentile(pages.latencies, 99),
            "board_page_loads_per_s_under_load": len(pages.latencies) / elapsed,
            "board_page_posted_tasks_per_s": posted / elapsed,
            "board_page_post_p99_ms": percentile(posts.latencies, 99),
            "board_page_done_tasks_per_s": done / elapsed,
            **{f"board_page_cpu_ms_per_posted_task_{k}": v / max(posted, 1) for k, v in cpu.items()},
            "board_page_loadavg_under_load": load,
        }

    def page_queries(self) -> dict[str, float]:
        """The queries of one load that renders the live part (this process has
        none kept yet) and of one that shares it (right after)."""
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        client = Client()
        client.force_login(self.user)
        counts = []
        for _ in range(2):
            with CaptureQueriesContext(connection) as captured:
                assert client.get(self.board.get_absolute_url()).status_code == 200
            counts.append(float(len(captured)))
        return {"board_page_queries_rendered": counts[0], "board_page_queries": counts[1]}

    def wait_drained(self, timeout: float = 300) -> None:
        from boards.models import Task

        def drained() -> bool:
            return not Task.objects.filter(board=self.board).exclude(status=Task.Status.DONE).exists()

        if not drained():
            from kaizen_web import processes

            processes.wait_until(drained, timeout=timeout, interval=0.2)

    def run(self) -> dict[str, float | str]:
        self.prepare_database()
        self.purge()
        rounds: dict[str, list[float]] = {}
        try:
            port = self.start_web()
            self.start_worker()
            self.setup_board()
            # Warm-up: imports, pools, template caches, and a Done column with cards.
            self.phase(port, posting=True, duration=self.args.warmup)
            self.wait_drained()
            for _ in range(self.args.rounds):
                # Alternated, so drift on a shared machine falls on both.
                alone = self.phase(port, posting=False, duration=self.args.duration)
                loaded = self.phase(port, posting=True, duration=self.args.duration)
                self.wait_drained()
                for key, value in {**alone, **loaded}.items():
                    rounds.setdefault(key, []).append(value)
            # The median of the rounds' figures.
            results: dict[str, float | str] = {key: statistics.median(v) for key, v in rounds.items()}
            results.update(self.page_queries())
            results["board_page_rounds"] = self.args.rounds
            return results
        finally:
            self.stop_all()
            self.purge()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20, help="seconds each phase lasts (default 20)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alone/under-load pairs, alternated (default 1)"
    )
    parser.add_argument("--page-clients", type=int, default=20, help="clients loading the page (default 20)")
    parser.add_argument("--post-clients", type=int, default=20, help="clients posting tasks (default 20)")
    parser.add_argument("--wip", type=int, default=200, help="In progress WIP limit and agent concurrency")
    parser.add_argument("--concurrency", type=int, default=100, help="worker threads (default 100)")
    parser.add_argument("--web-workers", type=int, default=1, help="uvicorn processes (default 1)")
    parser.add_argument("--db-pool", type=int, default=20, help="psycopg pool size per process")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    results = BoardPageBench(args).run()
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if not args.no_record:
        command = "make bench  # bench/board_page.py"
        record(results, command + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""))


if __name__ == "__main__":
    main()
