"""Live updates: commit-to-browser latency with 50 logged-in watchers (issue 15).

Starts a web server (uvicorn, one process) and a Celery worker against
PostgreSQL and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL), as bench/run.py
does, and connects 50 real websocket clients to one board, each logged in with
its own session cookie as a browser is. They run in a process of their own and
note when each message arrived (time.monotonic(): one clock for every process
on Linux).

The bench process makes the changes: it re-blocks a card pinned at the top of
Ready with a new note, ``mark-<n>``, through the service (``task_block``), so the
committing process's broadcaster sends the update. A change's latency, for one
watcher, runs from the moment its transaction committed (an on_commit hook
registered first) to the arrival of the first message showing ``mark-<n>`` or a
later mark (a later state shows it too: updates merge). A change no watcher
saw is lost; there must be none.

- ``ws_latency_*``: changes spread out (about 7 a second), the line idle;
- ``ws_burst_changes``/``ws_burst_messages``: changes in a tight loop, and the
  messages a watcher received until it showed the last one (the median watcher);
  ``ws_burst_final_complete`` says every watcher ended on the last state;
- ``ws_latency_*_saturated``: the same spread-out changes while the line runs
  at full speed on the same board (tasks POSTed to the API by HTTP clients in a
  process of their own, the worker running them).

With ``--baseline REF`` (default: main before issue 15, BEFORE_ISSUE_15) each
round also runs on the code of REF, checked out in a temporary git worktree,
alternated with this tree's, so drift on a shared machine falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
MARK = re.compile(r"mark-(\d+)\b")
# main before issue 15: every live update gathered for the whole window, each
# burst held back by its own rendering's cost. The baseline the figures stand beside.
BEFORE_ISSUE_15 = "e0b987c"


def _code_root() -> Path:
    """The tree whose code a round runs (--code-root), this one by default."""
    if "--code-root" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code-root") + 1]).resolve()
    return HERE


ROOT = _code_root()
sys.path.insert(0, str(ROOT))


# --- the watchers' process ------------------------------------------------------


def watch(url: str, origin: str, cookies: list[str], ready, stop, results) -> None:
    """Open one websocket per cookie and note (arrival, mark) for every message
    until ``stop`` is set; then hand the notes back through ``results``."""
    import websockets

    notes: list[list[tuple[float, int]]] = [[] for _ in cookies]
    opened = 0

    async def one(index: int, cookie: str) -> None:
        nonlocal opened
        async with websockets.connect(
            url, origin=origin, additional_headers={"Cookie": cookie}, max_size=None
        ) as ws:
            opened += 1
            if opened == len(cookies):
                ready.set()
            mine = notes[index]
            while True:
                text = await ws.recv()
                now = time.monotonic()
                found = MARK.search(text)
                mine.append((now, int(found.group(1)) if found else -1))

    async def main() -> None:
        tasks = [asyncio.create_task(one(i, c)) for i, c in enumerate(cookies)]
        while not stop.is_set():
            await asyncio.sleep(0.05)
            failed = [t for t in tasks if t.done()]
            if failed:
                results.put({"error": repr(failed[0].exception())})
                return
        for t in tasks:
            t.cancel()
        results.put({"notes": notes})

    asyncio.run(main())


def post_tasks(port: int, slug: str, key: str, clients: int, stop, posted) -> None:
    """The line's intake: ``clients`` HTTP clients POSTing tasks until ``stop``."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps({"title": "bench task", "input": "Classify: scratch on housing, 2 mm."})

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            conn.request("POST", f"/api/v1/boards/{slug}/tasks", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 201:
                with posted.get_lock():
                    posted.value += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- one round ------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LiveBench:
    def __init__(self, args: argparse.Namespace) -> None:
        from bench.run import Bench

        self.args = args
        self.bench = Bench(
            argparse.Namespace(
                database_url=args.database_url,
                redis_url=args.redis_url,
                db_pool=args.db_pool,
                concurrency=args.concurrency,
                web_workers=1,
            )
        )
        self.mp = multiprocessing.get_context("spawn")
        self.commits: dict[int, float] = {}
        self.sent: list[tuple[float, int]] = []
        self.mark = 0

    def setup_board(self):

        from django.db import transaction

        from bench.fixtures import bench_user_and_token, line_board
        from boards import services
        from boards.text import MAX_PRIORITY

        board, _ = line_board("live", wip=self.args.wip)
        user, key = bench_user_and_token()
        # The card the changes show on: first in Ready (the highest priority),
        # blocked so that no agent pulls it, and drawn in every update.
        # In one transaction: the pull its creation asks for comes after the commit,
        # when it is blocked already (a worker took it In progress in between once).
        with transaction.atomic():
            marker = services.task_create(board=board, title="live marker", priority=MAX_PRIORITY)
            services.task_block(task=marker, user=None, note="mark-0")
        return board, user, key, marker

    def time_sends(self) -> None:
        """Note when this process's broadcaster hands each update to the channel
        layer, and which mark it shows: where a change's time goes, before the
        web server or after."""
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        original = layer.group_send

        async def group_send(group: str, message: dict) -> None:
            await original(group, message)
            found = MARK.search(message.get("html", ""))
            self.sent.append((time.monotonic(), int(found.group(1)) if found else -1))

        layer.group_send = group_send

    def change(self, marker) -> int:
        from django.db import transaction

        from boards import services

        self.mark += 1
        n = self.mark
        with transaction.atomic():
            # Registered first, so it runs first after COMMIT: before the
            # broadcast is even queued.
            transaction.on_commit(lambda: self.commits.__setitem__(n, time.monotonic()))
            services.task_block(task=marker, user=None, note=f"mark-{n}")
        return n

    def spread(self, marker, count: int) -> range:
        import random

        first = self.mark + 1
        for _ in range(count):
            self.change(marker)
            time.sleep(random.uniform(0.5, 1.5) / self.args.rate)
        return range(first, self.mark + 1)

    def run(self) -> dict[str, float | str]:
        from bench.procfs import cpu_seconds, process_tree
        from bench.run import BoardWatcher

        bench = self.bench
        bench.prepare_database()
        from boards.models import Task  # once Django is set up

        bench.purge()
        results: dict[str, float | str] = {}
        stop = self.mp.Event()
        try:
            port = bench.start_web()
            bench.start_worker()
            # Hooked before any change: the first change starts this process's
            # broadcaster, whose thread takes the channel layer at once, and two
            # threads asking Channels for a layer not yet made at the same moment
            # each get a new one (its ChannelLayerManager has no lock); the hook
            # was then on a layer the broadcaster did not use, and saw nothing.
            self.time_sends()
            board, user, key, marker = self.setup_board()
            cookies = [BoardWatcher(port, board.slug, user).cookie for _ in range(self.args.watchers)]
            ready = self.mp.Event()
            notes_queue = self.mp.Queue()
            url = f"ws://127.0.0.1:{port}/ws/boards/{board.slug}/"
            watchers = self.mp.Process(
                target=watch, args=(url, f"http://127.0.0.1:{port}", cookies, ready, stop, notes_queue)
            )
            watchers.start()
            if not ready.wait(60):
                raise SystemExit("the watchers could not open their websockets: see var/bench/web.log")
            groups = {
                "web": process_tree(bench.named["web"].pid),
                "worker": process_tree(bench.named["worker"].pid),
                "bench": [os.getpid()],
                "watchers": [watchers.pid],
            }
            # Warm up: templates compiled, connections open.
            self.spread(marker, 10)

            cpu = {name: cpu_seconds(pids) for name, pids in groups.items()}
            idle = self.spread(marker, self.args.changes)
            results["ws_load_idle"] = os.getloadavg()[0]
            for name, pids in groups.items():
                results[f"ws_cpu_ms_per_change_{name}"] = (cpu_seconds(pids) - cpu[name]) * 1000 / len(idle)

            time.sleep(1)
            burst_start = time.monotonic()
            first = self.mark + 1
            for _ in range(self.args.burst):
                self.change(marker)
            burst = range(first, self.mark + 1)
            time.sleep(2)
            burst_end = time.monotonic()

            posted = self.mp.Value("l", 0)
            stop_posting = self.mp.Event()
            posters = self.mp.Process(
                target=post_tasks, args=(port, board.slug, key, self.args.clients, stop_posting, posted)
            )
            posters.start()
            done = Task.objects.filter(board=board, status=Task.Status.DONE)
            before_done = done.count()
            time.sleep(3)  # the line gets going
            started, done_at_start, posted_at_start = time.monotonic(), done.count(), posted.value
            cpu = {name: cpu_seconds(pids) for name, pids in groups.items()}
            saturated = self.spread(marker, self.args.changes)
            elapsed = time.monotonic() - started
            results["ws_load_saturated"] = os.getloadavg()[0]
            results["ws_saturated_line_tasks_per_s"] = (done.count() - done_at_start) / elapsed
            results["ws_saturated_intake_tasks_per_s"] = (posted.value - posted_at_start) / elapsed
            for name, pids in groups.items():
                share = (cpu_seconds(pids) - cpu[name]) * 100 / elapsed
                results[f"ws_saturated_cpu_percent_{name}"] = share
            stop_posting.set()
            posters.join(30)
            if done.count() == before_done:
                raise SystemExit("the line finished nothing while saturated: see var/bench/worker.log")
            time.sleep(3)  # the last updates arrive
            stop.set()
            got = notes_queue.get(timeout=60)
            watchers.join(30)
            if "error" in got:
                raise SystemExit(f"a watcher failed: {got['error']}")
            notes = got["notes"]
            if self.args.dump:
                dump = {"commits": self.commits, "sent": self.sent, "notes": notes}
                Path(self.args.dump).write_text(json.dumps(dump))
            results.update(self.latencies("", idle, notes))
            results.update(self.latencies("_saturated", saturated, notes))
            results.update(self.bursts(burst, burst_start, burst_end, notes))
            return results
        finally:
            stop.set()
            bench.stop_all()
            bench.purge()

    @staticmethod
    def first_seen(mine: list[tuple[float, int]]) -> dict[int, float]:
        """When a watcher first saw each mark: a message showing mark n shows
        every change before it too (the card is rendered at its latest state)."""
        seen: dict[int, float] = {}
        shown = 0
        for t, m in mine:
            for n in range(shown + 1, m + 1):
                seen[n] = t
            shown = max(shown, m)
        return seen

    def latencies(self, suffix: str, marks: range, notes) -> dict[str, float]:
        """Commit to each watcher's first message showing the change, and its
        two legs: commit to the channel layer (this process's broadcaster: the
        window, the budget, rendering) and from there to the first watcher (the
        web server's fan-out)."""
        samples: list[float] = []
        lost = 0
        first_watcher: dict[int, float] = {}
        for mine in notes:
            seen = self.first_seen(mine)
            for n in marks:
                if n in seen:
                    samples.append((seen[n] - self.commits[n]) * 1000)
                    first_watcher[n] = min(first_watcher.get(n, seen[n]), seen[n])
                else:
                    lost += 1
        sent = self.first_seen(self.sent)
        to_layer = [(sent[n] - self.commits[n]) * 1000 for n in marks if n in sent]
        fan_out = [(first_watcher[n] - sent[n]) * 1000 for n in marks if n in sent and n in first_watcher]
        return {
            f"ws_latency_p50_ms{suffix}": percentile(samples, 0.5),
            f"ws_latency_p99_ms{suffix}": percentile(samples, 0.99),
            f"ws_latency_max_ms{suffix}": max(samples),
            f"ws_commit_to_layer_p50_ms{suffix}": percentile(to_layer, 0.5),
            f"ws_commit_to_layer_p99_ms{suffix}": percentile(to_layer, 0.99),
            f"ws_layer_to_first_watcher_p50_ms{suffix}": percentile(fan_out, 0.5),
            f"ws_samples{suffix}": float(len(samples)),
            f"ws_lost{suffix}": float(lost),
        }

    def bursts(self, marks: range, start: float, end: float, notes) -> dict[str, float]:
        """Messages a watcher received from the burst's first commit until it
        showed the last change, and whether every watcher ended on it."""
        last = marks[-1]
        counts, complete = [], True
        for mine in notes:
            during = [m for t, m in mine if start <= t < end]
            until = next((i for i, m in enumerate(during) if m >= last), None)
            if until is None:
                complete = False
                continue
            counts.append(until + 1)
            complete &= during[-1] == last
        return {
            "ws_burst_changes": float(len(marks)),
            "ws_burst_messages": float(statistics.median(counts)) if counts else 0.0,
            "ws_burst_final_complete": float(complete),
        }


# --- rounds -----------------------------------------------------------------------


def one_round(args: argparse.Namespace) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    results = LiveBench(args).run()
    print("RESULT " + json.dumps(results), flush=True)


def run_round(args: argparse.Namespace, code_root: Path) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--round", "--code-root", str(code_root)]
    for name in ("changes", "rate", "burst", "watchers", "clients", "wip", "concurrency", "db_pool"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.dump:
        cmd += ["--dump", f"{args.dump}.{code_root.name}"]
    cmd += ["--database-url", args.database_url, "--redis-url", args.redis_url]
    out = subprocess.run(cmd, cwd=code_root, stdout=subprocess.PIPE, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"a round on {code_root} failed (exit {out.returncode}):\n{out.stdout[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=300, help="spread-out changes per phase (300)")
    parser.add_argument("--rate", type=float, default=7.0, help="spread-out changes a second, on average (7)")
    parser.add_argument("--burst", type=int, default=200, help="changes in the tight loop (200)")
    parser.add_argument("--watchers", type=int, default=50, help="logged-in websocket clients (50)")
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients feeding the line (8)")
    parser.add_argument("--wip", type=int, default=200, help="In progress WIP limit and agent concurrency")
    parser.add_argument("--concurrency", type=int, default=100, help="worker threads (100)")
    parser.add_argument("--db-pool", type=int, default=20, help="psycopg pool size per process")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each code, alternated (1)")
    parser.add_argument(
        "--baseline",
        default=BEFORE_ISSUE_15,
        help="git ref measured beside this tree ('' for none); by default main as it was before "
        "issue 15 changed how live updates are sent",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/kaizen_bench"),
    )
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"))
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument("--dump", help="write each message's arrival per watcher, as JSON, to this file")
    parser.add_argument("--round", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round:
        one_round(args)
        return

    trees = {"": HERE}
    tmp = None
    if args.baseline:
        tmp = tempfile.mkdtemp(prefix="kaizen-live-baseline-")
        subprocess.run(["git", "worktree", "add", "--detach", tmp, args.baseline], cwd=HERE, check=True)
        # The same bench on both: the baseline's product code under this tree's harness.
        shutil.copytree(HERE / "bench", Path(tmp) / "bench", dirs_exist_ok=True)
        trees["baseline_"] = Path(tmp)
    runs: dict[str, list[dict[str, float]]] = {prefix: [] for prefix in trees}
    try:
        for _ in range(args.rounds):
            for prefix, tree in trees.items():
                runs[prefix].append(run_round(args, tree))
                print(prefix or "this tree", json.dumps(runs[prefix][-1]), file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=HERE, check=False)
    results: dict[str, float | str] = {}
    for prefix, each in runs.items():
        for key in each[0]:
            values = [r[key] for r in each]
            worst = max if key.startswith(("ws_lost", "ws_latency_max")) else statistics.median
            results[prefix + key] = worst(values)
        results[prefix + "ws_latency_p99_ms_each"] = " ".join(f"{r['ws_latency_p99_ms']:.1f}" for r in each)
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if not args.no_record:
        from bench.run import record

        record(results, "python bench/live.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
