"""A replay of past work beside the live line (`make bench`, issue 13).

With the bench's own web server and Celery worker (bench/run.py's set-up:
PostgreSQL, Redis, a zero-latency simulated model), an agent with 1,000 finished
tasks is replayed against a candidate version:

- ``replay_1000_seconds``: the replay alone, queued to done (paced by
  KAIZEN_REPLAY_RATE, 25 items a second by default, so that it never takes more
  than a small share of the workers);
- ``line_tasks_per_s_alone`` and ``line_tasks_per_s_during_replay``: the whole
  line (bench/run.py's measure, one HTTP request per task) without and with a
  replay of 1,000 tasks running, alternated over ``--rounds`` (medians), and
  ``line_slowdown_during_replay_percent``;
- ``replay_1000_seconds_during_line``: the replays that ran beside the line.

Prints one ``name=value`` line per figure and records the run in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import DEFAULT_DB, DEFAULT_REDIS, Bench, record  # noqa: E402  (after sys.path)

SUBJECTS = (
    "I was charged twice for my subscription this month",
    "The parcel with order {n} never arrived and tracking shows nothing",
    "I cannot log in: the password reset link has expired",
    "The app crashes when I open the invoices page",
    "Can you tell me your opening hours during the holidays?",
    "My refund for order {n} has not reached my card",
)
PLAIN = "Classify the support ticket. Classes: billing, shipping, account_access, bug, other.\n\n{input}"
BETTER = (
    "Classify the support ticket.\nClasses: billing (charges, refunds, invoices), shipping (deliveries, "
    "parcels, tracking), account_access (logins, passwords), bug (errors, crashes), other.\n\n{input}"
)


def history_agent(size: int):
    """An agent on a board of its own with ``size`` finished tasks."""
    from boards.agents.spec import cascade_json, parse_cascade
    from boards.models import Agent, Board, Column, Task
    from experiments.line import ensure_version

    board = Board.objects.create(name="Replay history", slug=f"replay-history-{random.randrange(10**6)}")
    for position, role in enumerate(("ready", "in_progress", "review", "done")):
        Column.objects.create(board=board, name=role, role=role, position=position)
    agent = Agent.objects.create(
        name=f"replayed-{board.slug}",
        capabilities=["triage"],
        prompt_template=PLAIN,
        cascade=cascade_json(
            parse_cascade(
                [
                    {
                        "provider": "simulated",
                        "model": "sim-small",
                        "parameters": {"latency_ms": 0, "error_rate": 0},
                        "price_in": "0.0005",
                        "price_out": "0.0015",
                    }
                ]
            )
        ),
    )
    agent.boards.add(board)
    ensure_version(agent)
    done = board.columns.get(role="done")
    rng = random.Random(1)
    Task.objects.bulk_create(
        Task(
            board=board,
            column=done,
            agent=agent,
            title=f"ticket {i}",
            input=rng.choice(SUBJECTS).format(n=rng.randint(10000, 99999)),
            capability="triage",
            status=Task.Status.DONE,
            prompt_version=agent.prompt_version,
            attempts=1,
        )
        for i in range(size)
    )
    return agent


def candidate(agent, number: int):
    from experiments.line import ensure_version, next_version_number
    from experiments.models import PromptVersion

    base = ensure_version(agent)
    return PromptVersion.objects.create(
        agent=agent,
        number=next_version_number(agent),
        parent=base,
        source=PromptVersion.Source.PERSON,
        prompt_template=BETTER + "\n" * number,  # a new version each round
        prompt_variables=base.prompt_variables,
        parameters=base.parameters,
        cascade=base.cascade,
    )


def replay_started(agent, size: int, number: int):
    from experiments import genchi

    return genchi.replay_start(agent=agent, candidate=candidate(agent, number), sample=size, seed=number)


def wait_done(replay, timeout: float = 600) -> float:
    """Seconds from the replay's creation to its end."""
    deadline = time.monotonic() + timeout
    while True:
        replay.refresh_from_db()
        if not replay.is_open:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the replay did not finish within {timeout:.0f} s: see var/bench/worker.log")
        time.sleep(0.1)
    if replay.state != "done" or replay.done != replay.total:
        raise SystemExit(
            f"the replay ended {replay.state} after {replay.done} of {replay.total}: {replay.reason}"
        )
    return (replay.finished_at - replay.created_at).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1000, help="past tasks replayed (1000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="line runs alone and beside a replay, alternated (3)"
    )
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per line measurement (3000)")
    parser.add_argument("--wip", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100, help="worker threads (100)")
    parser.add_argument("--web-workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--db-pool", type=int, default=20)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    args.distinct_inputs = False
    bench = Bench(args)
    bench.prepare_database()
    bench.purge()
    results: dict[str, float | str] = {}
    try:
        port = bench.start_web()
        bench.start_worker()
        agent = history_agent(args.size)
        bench.bench_line(port, 200)  # warm-up: imports and pools are not measured
        results["replay_1000_seconds"] = wait_done(replay_started(agent, args.size, 0))
        alone: list[float] = []
        during: list[float] = []
        replays: list[float] = []
        for number in range(1, args.rounds + 1):
            alone.append(bench.bench_line(port, args.tasks)["line_tasks_per_s"])
            replay = replay_started(agent, args.size, number)
            while replay.done == 0:  # the line is measured once the replay is under way
                time.sleep(0.05)
                replay.refresh_from_db()
            during.append(bench.bench_line(port, args.tasks)["line_tasks_per_s"])
            replays.append(wait_done(replay))
        base, beside = statistics.median(alone), statistics.median(during)
        results["line_tasks_per_s_alone"] = base
        results["line_tasks_per_s_during_replay"] = beside
        results["line_slowdown_during_replay_percent"] = (base - beside) * 100 / base
        results["replay_1000_seconds_during_line"] = statistics.median(replays)
        results["line_alone_each"] = " ".join(f"{v:.1f}" for v in alone)
        results["line_during_replay_each"] = " ".join(f"{v:.1f}" for v in during)
    finally:
        bench.stop_all()
        bench.purge()
    for key, value in results.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    if not args.no_record:
        record(results, "python bench/replay.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
