"""A thread per model call against one asyncio loop, at WIP 1,000 (issue 15, target 5).

The worker keeps its model calls in flight on a thread each (boards.agents.runtime).
Issue 15 names an asyncio loop inside the worker as one way past "a thread per call";
this measures what that part alone would buy, in one process, with nothing else
running in it: ``--calls`` calls, ``--wip`` in flight at a time (a new call starts as
one ends, as the line's pull keeps the WIP full), each

- doing the simulated model's own work for a request like the cascade bench's
  (``boards.agents.simulated.simulate``: reading the prompt, drawing the answer), then
- waiting its latency (``--latency-ms``, drawn 0.75-1.25x as the simulated model
  draws it), then
- doing that work once more: the run's bookkeeping after the call, at about its cost.

``threads``: each call on a thread of a pool kept between calls, ``time.sleep`` for
the wait, its end handed back through a queue (the runtime's shape: a pool thread per
run, a future per outcome). ``asyncio``: ``--wip`` coroutines on one event loop,
each starting its next call as its last one ends, ``asyncio.sleep`` for the wait.
``hybrid``: the waits on one loop as in ``asyncio``, each piece of work handed to one
of ``--hybrid-threads`` threads and back (``run_in_executor``): what a loop around
the synchronous cascade, providers and custom agents would be, short of making them
asynchronous. The variants alternate ``--rounds`` times, and each round prints, per
variant:

- ``model_calls_<variant>_per_s``: calls finished a second;
- ``model_calls_<variant>_cpu_ms_per_call``: the process's CPU (user and system) a call;
- ``model_calls_<variant>_work_cpu_ms_per_call``: of which the simulated work itself
  (timed on its own thread's clock), so the rest is what keeping the calls in flight
  costs;

then the medians over the rounds and ``model_calls_asyncio_saves_cpu_ms_per_call`` (and
``_hybrid_``): the CPU a call each saves against the threads.

A real provider's call waits on a socket, not a sleep: its client (an HTTP library,
synchronous or asynchronous) costs CPU of its own in both variants, which this leaves out.

Usage: python bench/model_calls.py [--calls N] [--wip N] [--latency-ms MS] [--rounds N]
                                   [--hybrid-threads N]
Prints ``name=value`` lines; records nothing. Needs no database or Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import random
import resource
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Calls:
    """The calls' work and the measures shared by both variants."""

    def __init__(self, latency_ms: float) -> None:
        from boards.agents.providers import ModelRequest
        from boards.agents.simulated import simulate

        self._simulate = simulate
        self._request = ModelRequest
        self.latency_ms = latency_ms
        self.work_cpu = 0.0
        self._lock = threading.Lock()

    def work(self) -> float:
        """The simulated model's work for a new request; returns its latency (s)."""
        started = time.thread_time()
        text = f"Classify the defect report #{uuid.uuid4().hex[:12]}: scratch on housing."
        answer = self._simulate(
            self._request(
                model="sim-small",
                prompt=text,
                input=text,
                settings={"latency_ms": self.latency_ms, "error_rate": 0},
            )
        )
        spent = time.thread_time() - started
        with self._lock:
            self.work_cpu += spent
        return answer.latency_ms / 1000


def run_threads(calls: Calls, n: int, wip: int) -> float:
    """Returns the elapsed seconds."""
    ended: queue.SimpleQueue[int] = queue.SimpleQueue()

    def call(number: int) -> None:
        time.sleep(calls.work())
        calls.work()
        ended.put(number)

    with ThreadPoolExecutor(max_workers=wip, thread_name_prefix="call") as pool:
        # The pool's threads exist before the clock starts, as a worker's do: each
        # waits at the barrier until all have started (an idle one would be reused).
        barrier = threading.Barrier(wip)
        list(pool.map(lambda _: barrier.wait(), range(wip)))
        started = time.perf_counter()
        begun = min(wip, n)
        for number in range(begun):
            pool.submit(call, number)
        for _ in range(n):
            ended.get()
            if begun < n:
                pool.submit(call, begun)
                begun += 1
        return time.perf_counter() - started


def run_asyncio(calls: Calls, n: int, wip: int) -> float:
    # ``wip`` lanes on one loop, each starting its next call as its last one ends.
    remaining = iter(range(n))

    async def lane() -> None:
        for _ in remaining:
            await asyncio.sleep(calls.work())
            calls.work()

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(min(wip, n))))
        return time.perf_counter() - started

    return asyncio.run(main())


def run_hybrid(calls: Calls, n: int, wip: int, threads: int = 8) -> float:
    # ``wip`` lanes on one loop for the waits; each piece of work handed to one of a
    # few threads and back (what a loop around the synchronous cascade would do).
    remaining = iter(range(n))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="work")

    async def lane() -> None:
        loop = asyncio.get_running_loop()
        for _ in remaining:
            await asyncio.sleep(await loop.run_in_executor(pool, calls.work))
            await loop.run_in_executor(pool, calls.work)

    async def main() -> float:
        barrier = threading.Barrier(threads)
        list(pool.map(lambda _: barrier.wait(), range(threads)))
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(min(wip, n))))
        return time.perf_counter() - started

    try:
        return asyncio.run(main())
    finally:
        pool.shutdown()


VARIANTS = {"threads": run_threads, "asyncio": run_asyncio, "hybrid": run_hybrid}


def measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    calls = Calls(args.latency_ms)
    cpu_before = _process_cpu()
    extra = {"threads": args.hybrid_threads} if variant == "hybrid" else {}
    elapsed = VARIANTS[variant](calls, args.calls, args.wip, **extra)
    cpu = _process_cpu() - cpu_before
    return {
        f"model_calls_{variant}_per_s": args.calls / elapsed,
        f"model_calls_{variant}_cpu_ms_per_call": cpu * 1000 / args.calls,
        f"model_calls_{variant}_work_cpu_ms_per_call": calls.work_cpu * 1000 / args.calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000, help="calls a round and variant (5000)")
    parser.add_argument("--wip", type=int, default=1000, help="calls in flight (1000)")
    parser.add_argument("--latency-ms", type=float, default=1000, help="mean model latency (1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the variants alternated (3)")
    parser.add_argument("--hybrid-threads", type=int, default=8, help="the hybrid's threads for the work (8)")
    args = parser.parse_args()
    if args.calls < 1 or args.wip < 1 or args.rounds < 1 or args.latency_ms < 0 or args.hybrid_threads < 1:
        parser.error(
            "--calls, --wip, --rounds and --hybrid-threads must be at least 1, --latency-ms at least 0"
        )
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    import django

    django.setup()
    random.seed(0)
    Calls(args.latency_ms).work()  # imports and the simulated model's caches, before any clock
    rounds: dict[str, list[float]] = {}
    for number in range(1, args.rounds + 1):
        for variant in VARIANTS:
            for name, value in measure(variant, args).items():
                print(f"{name}_round{number}={value:.3f}", flush=True)
                rounds.setdefault(name, []).append(value)
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    for name, value in medians.items():
        print(f"{name}={value:.3f}")
    for variant in ("asyncio", "hybrid"):
        saved = (
            medians["model_calls_threads_cpu_ms_per_call"] - medians[f"model_calls_{variant}_cpu_ms_per_call"]
        )
        print(f"model_calls_{variant}_saves_cpu_ms_per_call={saved:.3f}")


if __name__ == "__main__":
    main()
