"""The knowledge base's figures (`make bench`, issue 14).

- ``line_knowledge_off_tasks_per_s`` and ``line_knowledge_on_tasks_per_s``: the
  whole line (bench/run.py's measure, one HTTP request per task, PostgreSQL,
  every task its own input so each must be embedded), without the knowledge base
  (KAIZEN_KNOWLEDGE=0: no pattern rows) and with it (a pattern row per attempt
  in the completion's transaction, and the embedder worker at the lowest CPU priority (SCHED_IDLE, nice 19) beside
  the line, fed every 2 s as beat feeds it), alternated over ``--rounds``
  (medians), and ``line_knowledge_cost_percent`` (the target: under 5%);
- ``embedder_pending_at_line_end`` and ``embedder_catch_up_seconds``: how far
  the embedder was behind when the line finished a round, and how long it took
  to catch up once the line was idle;

The embedder's own speed and its retrieval quality against word overlap are
bench/embeddings.py's; nearest-neighbour search over 100,000 patterns (numpy on
SQLite, pgvector's HNSW index) bench/knowledge_search.py's; what ``{examples}``
costs a task bench/few_shot.py's.

Prints one ``name=value`` line per figure and records the run in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import DEFAULT_DB, DEFAULT_REDIS, Bench, record  # noqa: E402  (after sys.path)
from kaizen_web import processes  # noqa: E402


class KnowledgeLine:
    """bench/run.py's line with the knowledge base off or on."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.feeding = threading.Event()

    def worker(self, knowledge: bool) -> None:
        for name in ("worker", "knowledge"):
            proc = self.bench.named.pop(name, None)
            if proc is not None:
                processes.stop_groups([proc], grace=10)
                self.bench.procs.remove(proc)
        self.bench.start_worker(env={"KAIZEN_KNOWLEDGE": "1" if knowledge else "0"})
        if knowledge:
            self.bench.start(
                "knowledge",
                [
                    *processes.lowest_priority(),
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "kaizen_web",
                    "worker",
                    "-P",
                    "solo",
                    "-Q",
                    f"{self.bench.queue}.knowledge",
                    "-n",
                    "knowledge@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "WARNING",
                ],
            )

    def feed(self) -> threading.Thread:
        """What beat does: an embed task every 2 s (expiring, as beat's do)."""
        from experiments.tasks import embed_patterns

        def loop() -> None:
            while self.feeding.is_set():
                embed_patterns.apply_async(expires=30)
                time.sleep(2.0)

        self.feeding.set()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def pending(self) -> int:
        from experiments.models import Pattern

        return Pattern.objects.filter(vector__isnull=True).count()

    def run(self, port: int, tasks: int, rounds: int) -> dict[str, float | str]:
        off: list[float] = []
        on: list[float] = []
        cpu: dict[str, list[float]] = {}
        behind: list[int] = []
        catch_up: list[float] = []
        written: list[int] = []
        from experiments.models import Pattern

        for _ in range(rounds):
            self.worker(knowledge=False)
            self.bench.bench_line(port, 100)  # warm-up
            before = Pattern.objects.count()
            run = self.bench.bench_line(port, tasks)
            off.append(run["line_tasks_per_s"])
            for part in ("web", "worker", "postgres"):
                cpu.setdefault(f"off_{part}", []).append(run[f"line_cpu_ms_per_task_{part}"])
            if Pattern.objects.count() != before:
                raise SystemExit("KAIZEN_KNOWLEDGE=0 still wrote patterns")
            self.worker(knowledge=True)
            feeder = self.feed()
            self.bench.bench_line(port, 100)
            while self.pending():  # start level: nothing left from the warm-up
                time.sleep(0.2)
            before = Pattern.objects.count()
            run = self.bench.bench_line(port, tasks)
            on.append(run["line_tasks_per_s"])
            for part in ("web", "worker", "postgres"):
                cpu.setdefault(f"on_{part}", []).append(run[f"line_cpu_ms_per_task_{part}"])
            written.append(Pattern.objects.count() - before)
            behind.append(self.pending())
            start = time.monotonic()
            while self.pending():
                if time.monotonic() - start > 600:
                    raise SystemExit(
                        "the embedder did not catch up within 10 minutes: see var/bench/knowledge.log"
                    )
                time.sleep(0.2)
            catch_up.append(time.monotonic() - start)
            self.feeding.clear()
            feeder.join()
        base, with_kb = statistics.median(off), statistics.median(on)
        return {
            "line_knowledge_off_tasks_per_s": base,
            "line_knowledge_on_tasks_per_s": with_kb,
            "line_knowledge_cost_percent": (base - with_kb) * 100 / base,
            "line_knowledge_patterns_per_round": statistics.median(written),
            "embedder_pending_at_line_end": statistics.median(behind),
            "embedder_catch_up_seconds": statistics.median(catch_up),
            # CPU per task of the line's processes (the embedder's own is not counted:
            # it is a separate process at nice 19, working on what the line leaves).
            **{
                f"line_knowledge_{key}_cpu_ms_per_task": statistics.median(values)
                for key, values in cpu.items()
            },
            "line_knowledge_off_each": " ".join(f"{v:.1f}" for v in off),
            "line_knowledge_on_each": " ".join(f"{v:.1f}" for v in on),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="line runs without and with it, alternated (3)")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per line measurement (2000)")
    parser.add_argument("--skip-line", action="store_true", help="leave out the line's measure")
    parser.add_argument("--wip", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100, help="worker threads (100)")
    parser.add_argument("--web-workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--db-pool", type=int, default=20)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    # Every task its own input: each pattern needs its own embedding (the worst case).
    args.distinct_inputs = True
    bench = Bench(args)
    bench.prepare_database()
    bench.purge()
    results: dict[str, float | str] = {}
    try:
        if not args.skip_line:
            port = bench.start_web()
            results.update(KnowledgeLine(bench).run(port, args.tasks, args.rounds))
    finally:
        bench.stop_all()
        bench.purge()
        import redis

        redis.Redis.from_url(args.redis_url).delete(f"{bench.queue}.knowledge")
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if not args.no_record:
        record(results, "python bench/knowledge.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
