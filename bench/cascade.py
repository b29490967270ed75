"""The cascade at a 1-second model latency, beside a bare Celery task that sleeps
(the second half of `make bench`; see bench/README.md for what each figure means).

A worker with the thread pool at ``--cascade-concurrency`` threads (1,000) runs, in
one session:

- ``celery_sleep1s_*``: 1,000 bare Celery tasks that sleep 1 s, published at once;
- ``celery_sleep_jitter_*``: the same with the simulated model's spread of latencies
  (uniform 0.75-1.25 s, mean 1 s), the fair baseline for a batch: a batch ends with
  its slowest call;
- ``cascade_wip1000_*``: 1,000 tasks put in Ready of a paused board (In progress
  WIP 1,000, one agent of concurrency 1,000 with one simulated tier at 1 s, no
  errors, no reuse, no response cache, every input distinct), then the board is
  resumed and the clock runs until the last one is Done;
- ``littles_law_*_wip{10,100,1000}``: the same line kept busy at WIP 10, 100 and
  1,000 with more tasks than the WIP, its steady-state throughput against WIP /
  mean model latency;
- ``*_procs2``: the sleeping baseline, the WIP 1,000 batch and Little's law at
  WIP 1,000 again with the same 1,000 threads shared by two worker processes
  (``--cascade-processes``), as `make run` starts them on PostgreSQL.

Then, unless ``--skip-profile``, the WIP 1,000 line once more in a worker with
``bench.worker_hooks`` (``profile_*`` figures: CPU per task by step, SQL statements
and commits per task) and once under cProfile (a text report in var/bench/).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.fixtures import line_board, postgres_backends
from bench.procfs import cpu_seconds, memory_kb, pids_named, process_tree


def main_thread_cpu(pid: int) -> float:
    """CPU seconds used so far by the main thread of ``pid`` (Linux /proc): in a
    Celery worker with the thread pool, the consumer (receiving, dispatching)."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class CascadeBench:
    def __init__(self, bench) -> None:
        self.bench = bench
        self.args = bench.args

    # --- processes ------------------------------------------------------------

    def worker_env(self, profile: str = "", threads: int = 0) -> dict[str, str]:
        env = {
            # The model sleeps its latency (the line bench runs it at zero).
            "KAIZEN_SIMULATED_LATENCY_SCALE": "1",
            "KAIZEN_RESPONSE_CACHE_SECONDS": "0",
            "DB_POOL_MAX": str(self.args.cascade_db_pool),
            "KAIZEN_WORKER_CONCURRENCY": str(threads or self.args.cascade_concurrency),
        }
        if profile:
            env["KAIZEN_BENCH_PROFILE"] = profile
        return env

    def start_worker(self, name: str, profile: str = "", processes: int = 1) -> int:
        """Start ``processes`` workers (named name, name-2...) sharing the cascade's
        threads; returns the first one's pid (all of them are ``self.worker_pids``)."""
        self.bench.purge()
        threads = self.args.cascade_concurrency // processes
        self.worker_pids = []
        for number in range(1, processes + 1):
            named = name if number == 1 else f"{name}-{number}"
            self.bench.start_worker(
                name=named,
                concurrency=threads,
                env=self.worker_env(profile, threads),
                nodename=f"{named}@%h" if processes > 1 else "",
            )
            self.worker_pids.append(self.bench.named[named].pid)
        return self.worker_pids[0]

    def stop_workers(self) -> None:
        from kaizen_web import processes

        workers = [p for p in self.bench.procs if p.pid in self.worker_pids]
        processes.stop_groups(workers, grace=10)
        self.bench.procs[:] = [p for p in self.bench.procs if p not in workers]

    def groups(self, worker_pid: int) -> dict[str, list[int]]:
        return {
            "worker": [*self.worker_pids],
            "postgres": self.postgres_pids(),
            "redis": pids_named("redis-server"),
            "bench": [os.getpid()],
        }

    def postgres_pids(self) -> list[int]:
        """The server processes working for this database, and the cluster's own
        (WAL writer, checkpointer): not other databases' backends on the same server."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "OR backend_type <> 'client backend'"
            )
            return [row[0] for row in cursor.fetchall()]

    # --- the bare baseline -------------------------------------------------------

    def bench_sleep(self, worker_pid: int, n: int, seconds: list[float], label: str) -> dict[str, float]:
        import redis

        from bench.celery_baselines import sleep
        from kaizen_web.celery import app

        r = redis.Redis.from_url(self.args.redis_url)
        key = f"bench:sleep:{uuid.uuid4().hex}"
        # The queue is filled while the worker does not consume it, then the clock
        # starts as it resumes: the pool is measured, not this process publishing
        # (as the line's tasks wait in Ready before its board is resumed).
        queue = self.bench.queue
        # limit: every worker answers; without it a broadcast waits out its timeout.
        limit = len(self.worker_pids)
        if len(app.control.cancel_consumer(queue, reply=True, timeout=5, limit=limit) or []) < limit:
            raise SystemExit("the cascade worker did not answer cancel_consumer")
        started_publishing = time.perf_counter()
        for i in range(n):
            sleep.delay(key, seconds[i % len(seconds)])
        published = time.perf_counter() - started_publishing
        cpu_before = cpu_seconds(self.worker_pids)
        start = time.perf_counter()
        if len(app.control.add_consumer(queue, reply=True, timeout=5, limit=limit) or []) < limit:
            raise SystemExit("the cascade worker did not answer add_consumer")
        deadline = time.monotonic() + 120
        while int(r.get(key) or 0) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: the sleeping tasks did not finish in 2 minutes")
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(self.worker_pids) - cpu_before
        r.delete(key)
        return {
            f"{label}_tasks_per_s": n / elapsed,
            f"{label}_overhead_ms": (elapsed - max(seconds[:n])) * 1000,
            f"{label}_publish_ms": published * 1000,
            f"{label}_cpu_ms_per_task_worker": cpu * 1000 / n,
        }

    # --- the line -------------------------------------------------------------------

    def make_board(self, wip: int, label: str):
        # Paused while it is filled, so the clock starts when it is resumed; every
        # input distinct and no answer reused or cached, so each task calls the model.
        board, _ = line_board(
            label,
            wip=wip,
            paused=True,
            latency_ms=self.args.cascade_latency_ms,
            reuse_results=False,
            cache_responses=False,
            max_attempts=1,
        )
        return board

    def fill(self, board, n: int) -> None:
        from django.db import transaction

        from boards import broadcast, services

        # Distinct inputs: no two calls alike, so nothing is served without the model.
        # In chunks of one transaction each: one live update and one pull request per chunk.
        for first in range(0, n, 250):
            with transaction.atomic():
                for i in range(first, min(n, first + 250)):
                    services.task_create(
                        board=board,
                        title=f"bench task {i}",
                        input=f"Classify the defect report #{i}-{uuid.uuid4().hex[:8]}: scratch on housing.",
                    )
        broadcast.flush(30)

    def wait_idle(self, board) -> None:
        """Until the worker has answered the pull requests intake sent (the paused
        board claims nothing), so the resume's own request is not swallowed."""
        import redis

        r = redis.Redis.from_url(self.args.redis_url)
        deadline = time.monotonic() + 30
        while r.exists(f"kaizen:pull-requested:{board.pk}"):
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not answer the intake's pull request in 30 s")
            time.sleep(0.05)
        time.sleep(0.3)

    def run_line(self, worker_pid: int, wip: int, n: int, label: str, timeout: float | None = None) -> dict:
        """Fill a paused board with ``n`` tasks, resume it, wait until all are Done.
        Returns the raw timings (per task) and the CPU used by each process."""
        from boards import services
        from boards.models import ModelCall, Task

        board = self.make_board(wip, label)
        started_fill = time.perf_counter()
        self.fill(board, n)
        fill_s = time.perf_counter() - started_fill
        self.wait_idle(board)

        groups = self.groups(worker_pid)
        main_before = main_thread_cpu(worker_pid)
        cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        busy_before = machine_busy_seconds()
        xacts_before = self.pg_xacts()
        t0 = time.time()
        services.board_set_paused(board=board, paused=False)
        timeout = timeout or self.args.cascade_timeout
        deadline = time.monotonic() + timeout
        done = 0
        # The worker's resident memory, its whole process tree, at its peak
        # during the run (polled with the progress) and at the end.
        rss_peak: dict[str, int] = memory_kb(process_tree(worker_pid))
        while done < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: {done} of {n} tasks Done after {timeout} s")
            time.sleep(0.1)
            done = Task.objects.filter(
                board=board, status__in=[Task.Status.DONE, Task.Status.REVIEW, Task.Status.FAILED]
            ).count()
            memory = memory_kb(process_tree(worker_pid))
            if memory["rss"] > rss_peak["rss"]:
                rss_peak = memory
        wall = time.time() - t0
        rss_end = memory_kb(process_tree(worker_pid))
        cpu = {name: cpu_seconds(pids) - cpu_before[name] for name, pids in groups.items()}
        # This database's backends that started during the run (connections the
        # workers opened meanwhile, as a second worker does): all their CPU is the
        # run's. Left out, it was counted as other processes' load. (Not the
        # cluster's own processes started meanwhile: an autovacuum worker may be
        # another database's.)
        started = set(postgres_backends()) - set(groups["postgres"])
        cpu["postgres"] += cpu_seconds(sorted(started))
        busy = machine_busy_seconds() - busy_before
        xacts = self.pg_xacts() - xacts_before
        main_cpu = main_thread_cpu(worker_pid) - main_before

        failed = Task.objects.filter(board=board, status=Task.Status.FAILED).count()
        if failed:
            raise SystemExit(f"{label}: {failed} tasks failed: see var/bench/ worker logs")
        rows = list(
            Task.objects.filter(board=board).values_list(
                "pk", "started_at", "finished_at", "attempts", "updated_at"
            )
        )
        latency: dict[int, float] = {}
        for task_id, ms in ModelCall.objects.filter(board=board).values_list("task_id", "latency_ms"):
            latency[task_id] = latency.get(task_id, 0.0) + ms / 1000
        if len(latency) != n or any(r[3] != 1 for r in rows):
            raise SystemExit(f"{label}: expected one model call per task, got {len(latency)} for {n} tasks")
        tasks = [
            {
                "started": r[1].timestamp(),
                # A task stopped in Review has no finished_at: it finished when it moved there.
                "finished": (r[2] or r[4]).timestamp(),
                "latency": latency[r[0]],
            }
            for r in rows
        ]
        return {
            "t0": t0,
            "wall_polled": wall,
            "fill_s": fill_s,
            "tasks": tasks,
            "cpu": cpu,
            "busy": busy,
            "xacts": xacts,
            "worker_main_thread_cpu": main_cpu,
            "rss_peak": rss_peak,
            "rss_end": rss_end,
        }

    def run_processes(self, count: int, n: int, latency_s: float) -> dict[str, float]:
        """The WIP 1,000 batch, its sleeping baseline and Little's law at WIP 1,000
        again with the same threads shared by ``count`` worker processes (figures
        ending in ``_procs<count>``): one process runs its Python behind one GIL."""
        pid = self.start_worker("cascade-worker", processes=count)
        suffix = f"procs{count}"
        self.run_line(pid, 100, 200, f"warmup-{suffix}")
        results = {
            f"{key}_{suffix}": value
            for key, value in self.bench_sleep(pid, n, [latency_s], "celery_sleep1s").items()
        }
        batch = self.run_line(pid, 1000, n, f"wip1000-{suffix}")
        results.update(self.batch_figures(batch, f"cascade_wip1000_{suffix}"))
        run = self.run_line(pid, 1000, min(10_000, self.args.little_max_tasks), f"little1000-{suffix}")
        results.update(self.steady_figures(run, 1000, f"wip1000_{suffix}"))
        return results

    @staticmethod
    def memory_figures(run: dict) -> dict[str, float]:
        """The worker's resident memory in the WIP 1,000 batch (issue 15: < 500 MB):
        at its peak and at the end, and where the peak's pages are: anonymous
        (Python's heap, the threads' stacks) or mapped files (the interpreter and
        the extension modules' libraries)."""
        peak, end = run["rss_peak"], run["rss_end"]
        return {
            "worker_rss_mb_wip1000": peak["rss"] / 1024,
            "worker_rss_mb_wip1000_end": end["rss"] / 1024,
            "worker_rss_anon_mb_wip1000": peak["anon"] / 1024,
            "worker_rss_file_mb_wip1000": peak["file"] / 1024,
            "worker_rss_hwm_mb_wip1000": end["hwm"] / 1024,
            "worker_threads_wip1000": float(peak["threads"]),
        }

    def pg_xacts(self) -> int:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
            return cursor.fetchone()[0]

    @staticmethod
    def batch_figures(run: dict, prefix: str) -> dict[str, float]:
        tasks = run["tasks"]
        n = len(tasks)
        end = max(t["finished"] for t in tasks)
        elapsed = end - run["t0"]
        overhead = [(t["finished"] - t["started"] - t["latency"]) * 1000 for t in tasks]
        latencies = [t["latency"] for t in tasks]
        first_claim = min(t["started"] for t in tasks) - run["t0"]
        last_claim = max(t["started"] for t in tasks) - run["t0"]
        figures = {
            f"{prefix}_tasks_per_s": n / elapsed,
            f"{prefix}_elapsed_s": elapsed,
            f"{prefix}_wall_overhead_ms": (elapsed - statistics.fmean(latencies)) * 1000,
            f"{prefix}_wall_overhead_vs_slowest_call_ms": (elapsed - max(latencies)) * 1000,
            f"{prefix}_overhead_ms_mean": statistics.fmean(overhead),
            f"{prefix}_overhead_ms_p50": percentile(overhead, 0.5),
            f"{prefix}_overhead_ms_p99": percentile(overhead, 0.99),
            f"{prefix}_model_latency_ms_mean": statistics.fmean(latencies) * 1000,
            f"{prefix}_model_latency_ms_max": max(latencies) * 1000,
            f"{prefix}_first_claim_ms": first_claim * 1000,
            f"{prefix}_last_claim_ms": last_claim * 1000,
        }
        figures.update(CascadeBench.cpu_figures(run, prefix))
        return figures

    @staticmethod
    def cpu_figures(run: dict, prefix: str) -> dict[str, float]:
        n = len(run["tasks"])
        figures = {f"{prefix}_cpu_ms_per_task_{name}": s * 1000 / n for name, s in run["cpu"].items()}
        ours = sum(run["cpu"].values())
        figures[f"{prefix}_cpu_ms_per_task_other_processes"] = max(0.0, run["busy"] - ours) * 1000 / n
        figures[f"{prefix}_cpu_ms_per_task_worker_celery_main_thread"] = (
            run["worker_main_thread_cpu"] * 1000 / n
        )
        figures[f"{prefix}_pg_transactions_per_task"] = run["xacts"] / n
        return figures

    @staticmethod
    def steady_figures(run: dict, wip: int, suffix: str) -> dict[str, float]:
        """Throughput between the WIP-th completion and the WIP-th from the end (the
        ramp-up and the drain left out), against Little's law, WIP / mean latency."""
        tasks = run["tasks"]
        n = len(tasks)
        finished = sorted(t["finished"] for t in tasks)
        if n >= 3 * wip:
            lo, hi = finished[wip - 1], finished[n - wip - 1]
            count = n - 2 * wip
        else:
            lo, hi = run["t0"], finished[-1]
            count = n
        throughput = count / (hi - lo)
        latency = statistics.fmean(t["latency"] for t in tasks)
        ideal = wip / latency
        # Little's law on what was measured: L (tasks In progress, averaged over the
        # window) = throughput x W (time In progress). L / WIP says whether the line
        # kept its WIP full; latency / W how much of the time In progress the model took.
        held = sum(max(0.0, min(t["finished"], hi) - max(t["started"], lo)) for t in tasks) / (hi - lo)
        in_window = [t for t in tasks if lo < t["finished"] <= hi] or tasks
        time_in_progress = statistics.fmean(t["finished"] - t["started"] for t in in_window)
        overhead = [(t["finished"] - t["started"] - t["latency"]) * 1000 for t in in_window]
        return {
            f"littles_law_tasks_per_s_{suffix}": throughput,
            f"littles_law_ideal_tasks_per_s_{suffix}": ideal,
            f"littles_law_ratio_{suffix}": throughput / ideal,
            f"littles_law_wip_held_{suffix}": held / wip,
            f"littles_law_time_in_progress_ms_{suffix}": time_in_progress * 1000,
            f"littles_law_overhead_ms_mean_{suffix}": statistics.fmean(overhead),
            f"littles_law_tasks_{suffix}": n,
        }

    # --- profile ---------------------------------------------------------------------

    def profile_report(self, name: str) -> dict:
        from bench.celery_baselines import profile_report

        path = self.bench.var / f"profile-{name}-{uuid.uuid4().hex[:6]}.json"
        profile_report.delay(str(path))
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not write its profile report ({path})")
            time.sleep(0.05)
        data = json.loads(path.read_text())
        path.unlink()
        prof = Path(f"{path}.prof")
        if prof.exists():
            if name == "cprofile":
                prof.replace(self.bench.var / "profile-cprofile.prof")
            else:
                prof.unlink()
        return data

    def profile_sections(self, n: int) -> dict[str, float]:
        wip = self.args.cascade_concurrency
        pid = self.start_worker("cascade-worker-sections", profile="sections")
        try:
            self.run_line(pid, wip, 200, "profile-warmup")
            self.profile_report("warmup")
            run = self.run_line(pid, wip, n, "profile-sections")
            data = self.profile_report("sections")
        finally:
            self.bench.stop_all()
        figures = {
            "profile_tasks": n,
            "profile_tasks_per_s": n / (max(t["finished"] for t in run["tasks"]) - run["t0"]),
        }
        figures.update(self.cpu_figures(run, "profile"))
        for name, entry in sorted(data["sections"].items()):
            figures[f"profile_cpu_ms_per_task_excl_{name}"] = entry["excl_s"] * 1000 / n
            figures[f"profile_cpu_ms_per_task_incl_{name}"] = entry["incl_s"] * 1000 / n
            figures[f"profile_calls_per_task_{name}"] = entry["calls"] / n
        for key, value in sorted(data["counters"].items()):
            figures[f"profile_{key}_per_task"] = value / n
        by_kind: dict[str, int] = {}
        by_section: dict[str, int] = {}
        for section, kind, count in data["sql"]:
            by_kind[kind] = by_kind.get(kind, 0) + count
            by_section[section] = by_section.get(section, 0) + count
        figures["profile_sql_statements_per_task"] = sum(by_kind.values()) / n
        for kind, count in sorted(by_kind.items()):
            figures[f"profile_sql_per_task_{kind.lower().replace(' ', '_')}"] = count / n
        for section, count in sorted(by_section.items()):
            figures[f"profile_sql_per_task_in_{section.strip('()')}"] = count / n
        (self.bench.var / "profile-sections.json").write_text(json.dumps(data, indent=1))
        return figures

    def profile_cprofile(self, n: int) -> Path:
        wip = self.args.cascade_concurrency
        pid = self.start_worker("cascade-worker-cprofile", profile="cprofile")
        try:
            # The profiler slows the worker down several times: more time allowed.
            self.run_line(pid, wip, 100, "cprofile-warmup", timeout=600)
            self.profile_report("warmup")
            self.run_line(pid, wip, n, "cprofile", timeout=600)
            data = self.profile_report("cprofile")
        finally:
            self.bench.stop_all()
        out = self.bench.var / "profile-cprofile.txt"
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        out.write_text(
            f"cProfile (clock: thread CPU time) of a worker, {n} tasks at WIP {wip}, {stamp}.\n"
            "Pool threads (each message: ack, trace, the run) and the live renders: "
            f"{data.get('total_s', 0):.2f} s; the Celery consumer (main thread): "
            f"{data.get('consumer_total_s', 0):.2f} s (both inflated by the profiler).\n"
            "Whole stats: var/bench/profile-cprofile.prof (python -m pstats).\n\n"
            "== pool threads and renders, by own time ==\n"
            + data.get("top_tottime", "")
            + "\n== pool threads and renders, by cumulative time ==\n"
            + data.get("top_cumulative", "")
            + "\n== Celery consumer thread, by own time ==\n"
            + data.get("consumer_top_tottime", "")
        )
        return out

    # --- the whole session ----------------------------------------------------------

    def run(self) -> dict[str, float]:
        args = self.args
        results: dict[str, float] = {}
        pid = self.start_worker("cascade-worker")
        try:
            n = args.cascade_tasks
            latency_s = args.cascade_latency_ms / 1000
            # Warm-up: the pool's threads, the database pool, imports.
            self.bench_sleep(pid, n, [0.2], "warmup")
            self.run_line(pid, 100, 200, "warmup")
            results.update(self.bench_sleep(pid, n, [latency_s], "celery_sleep1s"))
            rng = random.Random(0)
            jitter = [latency_s * (0.75 + 0.5 * rng.random()) for _ in range(n)]
            results.update(self.bench_sleep(pid, n, jitter, "celery_sleep_jitter"))
            batch = self.run_line(pid, 1000, n, "wip1000")
            results.update(self.batch_figures(batch, "cascade_wip1000"))
            results.update(self.memory_figures(batch))
            results["cascade_vs_sleep_baseline"] = (
                results["cascade_wip1000_tasks_per_s"] / results["celery_sleep1s_tasks_per_s"]
            )
            results["cascade_vs_sleep_jitter_baseline"] = (
                results["cascade_wip1000_tasks_per_s"] / results["celery_sleep_jitter_tasks_per_s"]
            )
            for wip in args.little_wips:
                tasks = min(10 * wip, args.little_max_tasks)
                run = self.run_line(pid, wip, tasks, f"little{wip}")
                results.update(self.steady_figures(run, wip, f"wip{wip}"))
            if args.cascade_processes > 1:
                self.stop_workers()
                results.update(self.run_processes(args.cascade_processes, n, latency_s))
        finally:
            self.bench.stop_all()
        if not args.skip_profile:
            results.update(self.profile_sections(args.profile_tasks))
            self.profile_cprofile(args.cprofile_tasks)
        return results
