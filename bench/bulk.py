"""Bulk intake to Done (part of `make bench`'s line bench; bench/README.md).

In the web server and worker bench/run.py has started:

- ``bulk_line_*``: ``--bulk-tasks`` tasks (5,000) POSTed to
  ``/api/v1/boards/{slug}/tasks/bulk`` in requests of ``--bulk-batch`` (500) by
  ``--bulk-clients`` (4) HTTP clients at once; the clock runs from the first
  request to the last task Done (or stopped in Review by the checks);
- ``bulk_import_*``: as many tasks in a JSON Lines file, put on a board by
  ``manage.py import_tasks`` (a process of its own, started when the clock
  starts), to the last task Done.

Each with the CPU time per task of every process (web, worker, the import
command, PostgreSQL, Redis, the bench's own clients), so a loaded machine's
rates can be read against what the line itself spent.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.fixtures import postgres_backends
from bench.procfs import cpu_seconds, pids_named, process_tree

ROOT = Path(__file__).resolve().parent.parent
INPUT = "Classify: scratch on housing, 2 mm."


class BulkBench:
    def __init__(self, bench, watcher: type) -> None:
        # bench.run's Bench and BoardWatcher, handed in: bench.run imports this module.
        self.bench = bench
        self.args = bench.args
        self.watcher = watcher

    def _board(self) -> tuple[Any, str, Any]:
        """A board like the line bench's (Ready, In progress at --wip, Review, Done; one
        zero-latency simulated agent whose outputs are inspected), a write token's key
        and its user."""

        from bench.fixtures import bench_user_and_token, line_board

        board, _ = line_board("bulk", wip=self.args.wip)
        user, key = bench_user_and_token("bench bulk")
        return board, key, user

    def _groups(self) -> dict[str, list[int]]:
        return {
            "web": process_tree(self.bench.named["web"].pid),
            "worker": process_tree(self.bench.named["worker"].pid),
            # Only the bench database's backends: other databases' work on a shared
            # machine is not the line's (a backend that ends mid-run takes its share with it).
            "postgres": postgres_backends(),
            "redis": pids_named("redis-server"),
            "bench_client": [os.getpid()],
        }

    def _cpu(self, groups: dict[str, list[int]]) -> dict[str, float]:
        # Backends opened since the start are counted too (from their start).
        groups["postgres"] = sorted(set(groups["postgres"]) | set(postgres_backends()))
        return {name: cpu_seconds(pids) for name, pids in groups.items()}

    def _finish(self, board, total: int, start: float, deadline_s: float = 600) -> float:
        """Seconds from ``start`` until every task of ``board`` is Done or in Review."""
        from boards.models import Task

        finished = (Task.Status.DONE, Task.Status.REVIEW)
        deadline = time.monotonic() + deadline_s
        while Task.objects.filter(board=board, status__in=finished).count() < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"the bulk line did not finish within {deadline_s:.0f} s")
            time.sleep(0.02)
        return time.perf_counter() - start

    def line(self, port: int, n: int) -> dict[str, float]:
        board, key, user = self._board()
        watcher = self.watcher(port, board.slug, user)
        watcher.start()
        size = self.args.bulk_batch
        batches = [min(size, n - first) for first in range(0, n, size)]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        path = f"/api/v1/boards/{board.slug}/tasks/bulk"

        def post(count: int) -> int:
            body = json.dumps({"tasks": [{"title": f"bench task {i}", "input": INPUT} for i in range(count)]})
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if response.status != 201:
                raise SystemExit(f"the bulk API answered {response.status}: {data[:300]!r}")
            return len(json.loads(data)["tasks"])

        groups = self._groups()
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        start = time.perf_counter()
        with ThreadPoolExecutor(self.args.bulk_clients) as pool:
            created = sum(pool.map(post, batches))
        intake = time.perf_counter() - start
        assert created == n, (created, n)
        elapsed = self._finish(board, n, start)
        after = self._cpu(groups)
        cpu = {
            f"bulk_line_cpu_ms_per_task_{name}": (after[name] - before.get(name, 0.0)) * 1000 / n
            for name in groups
        }
        if watcher.stop() == 0:
            raise SystemExit("the bulk line's board watcher received no live update: see var/bench/web.log")
        return {
            "bulk_line_tasks_per_s": n / elapsed,
            "bulk_line_intake_tasks_per_s": n / intake,
            **cpu,
        }

    def import_(self, port: int, n: int) -> dict[str, float]:
        board, _, user = self._board()
        watcher = self.watcher(port, board.slug, user)
        watcher.start()
        path = self.bench.var / "bulk-import.jsonl"
        with open(path, "w") as out:
            for i in range(n):
                out.write(json.dumps({"title": f"bench task {i}", "input": INPUT}) + "\n")
        groups = self._groups()
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        start = time.perf_counter()
        command = subprocess.Popen(
            [sys.executable, "manage.py", "import_tasks", board.slug, str(path)],
            cwd=ROOT,
            env=self.bench.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Its CPU is read from the wait4 usage: the process has gone by the time it is counted.
        _, status, usage = os.wait4(command.pid, 0)
        command.returncode = os.waitstatus_to_exitcode(status)
        imported = time.perf_counter() - start
        if command.returncode != 0:
            assert command.stderr is not None
            raise SystemExit(f"import_tasks failed: {command.stderr.read()[-500:]!r}")
        elapsed = self._finish(board, n, start)
        after = self._cpu(groups)
        cpu = {
            f"bulk_import_cpu_ms_per_task_{name}": (after[name] - before.get(name, 0.0)) * 1000 / n
            for name in groups
            if name != "bench_client"
        }
        cpu["bulk_import_cpu_ms_per_task_command"] = (usage.ru_utime + usage.ru_stime) * 1000 / n
        watcher.stop()
        return {
            "bulk_import_tasks_per_s": n / elapsed,
            "bulk_import_command_tasks_per_s": n / imported,
            **cpu,
        }

    def run(self, port: int) -> dict[str, float]:
        n = self.args.bulk_tasks
        # A short warm-up: the first bulk request imports and compiles what the later ones reuse.
        self.line(port, min(n, self.args.bulk_batch))
        results = self.line(port, n)
        results.update(self.import_(port, n))
        return results
