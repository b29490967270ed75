"""A worker's batch of claimed runs, on its agent loop, in one process (issue 15):
the process's CPU a task for ``boards.agents.runtime.run_batch``, as a Celery
message of claims runs it: the batch begun, each run prepared, the cascades on
the agent loop (a zero-latency simulated model, the response cache on), each
finished run completed by the completer's batch, the cache settled.

bench/line_steps.py times the same services one after another on one thread;
this one times them as the worker runs them, across its threads (the Celery
thread, the agent loop, the run threads, the completer), so it shows what the
hops between them cost. The clock is the process's CPU time over the run step
alone; intake and pull are not timed. Left out, as in line_steps: the board's
live updates and the pull a completion asks for after commit (an escalated run's
update of the andon inbox is rendered, on the broadcaster's thread, and counted).

It needs Redis (``BENCH_REDIS_URL``, default the line bench's) for the response
cache (its own for each run) and the leases. A tree without this file is measured by running this file
with ``--tree`` set to it.

Usage: python bench/loop_runs.py [--rounds N] [--batch N] [--postgres URL] [--tree PATH]
Prints ``name=value`` lines; records nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.line_steps import in_process, in_process_parser, line_set_up  # noqa: E402  (after sys.path)


def main() -> None:
    args = in_process_parser(__doc__, rounds=200, warmup=20, batch="runs per batch").parse_args()
    os.environ["KAIZEN_AGENT_LOOP"] = "1"
    with in_process(args, name="loop_runs") as label:
        spent, tasks = _measure(args)
    print(f"loop_runs_{label}_cpu_ms_per_task={spent * 1000 / tasks:.3f}")
    print(f"loop_runs_tasks={tasks}")


def _measure(args: argparse.Namespace) -> tuple[float, int]:
    line_set_up()
    from bench.fixtures import line_board
    from boards import services
    from boards.agents import runtime
    from boards.models import Task
    from kaizen_web import live

    # As a Celery worker process: finished runs are completed in batches (its
    # heartbeat and pull threads are left out).
    services.mark_worker_process()
    board, _ = line_board("loop", wip=200)
    spent = 0.0
    tasks = 0
    for round_ in range(args.warmup + args.rounds):
        for i in range(args.batch):
            services.task_create(
                board=board, title=f"loop task {round_}.{i}", input=f"Summarise note {round_}.{i}."
            )
        claims = services.board_pull(board_id=board.pk)
        if len(claims) != args.batch:
            raise SystemExit(f"round {round_}: {len(claims)} claimed, not {args.batch}")
        pairs = [(claim.task_id, str(claim.lease_token)) for claim in claims]
        clock = time.process_time()
        outcomes = runtime.run_batch(pairs)
        if round_ >= args.warmup:
            spent += time.process_time() - clock
            tasks += len(pairs)
        if set(outcomes) != {"done"}:
            raise SystemExit(f"round {round_}: {outcomes}")
    left = Task.objects.filter(board=board, status__in=("backlog", "ready", "running")).count()
    if left:
        raise SystemExit(f"{left} tasks not finished")
    # The inbox's live updates of escalated runs, rendered on the broadcaster's
    # thread, before the scratch database goes.
    live.flush()
    return spent, tasks


if __name__ == "__main__":
    main()
