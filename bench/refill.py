"""What a pull costs to refill Ready from the Backlog (issue 15): the CPU of
``board_pull`` for each task it moves, in process.

A board of the bench's shape with a Backlog, its agent paused (so a pull only
refills Ready, and Ready has no limit); each round adds 1 to 3 tasks of one
priority to the Backlog (they go last in Ready, as tasks arriving mostly do)
and times one pull on this thread's CPU clock (``time.thread_time``). Left out,
as bench/line_steps.py leaves them out: the live updates (rendered by another
thread) and the pull asked of the workers after each change. The first 100
rounds warm up (compiling, preparing) and are not counted. On PostgreSQL
(BENCH_DATABASE_URL, the database bench/run.py uses, migrated here) or, with
--sqlite, on a scratch SQLite file. Prints only; nothing is recorded.

Usage: python bench/refill.py [--rounds N] [--sqlite]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARM_UP = 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=600, help="pulls timed, warm-up included (600)")
    parser.add_argument("--sqlite", action="store_true", help="a scratch SQLite file, not PostgreSQL")
    args = parser.parse_args()
    if args.rounds <= WARM_UP:
        parser.error(f"--rounds must be more than the {WARM_UP} warm-up rounds")
    scratch = Path(tempfile.mkdtemp(prefix="kaizen-bench-refill-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "kaizen_web.settings"
    if args.sqlite:
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'refill.sqlite3'}"
    else:
        from bench.run import DEFAULT_DB

        os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    os.environ["KAIZEN_VAR_DIR"] = str(scratch / "var")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    from bench.fixtures import line_board
    from boards import broadcast, services
    from boards.models import Agent, Task
    from boards.services import pull as pull_module

    call_command("migrate", verbosity=0)
    broadcast.columns_changed = lambda *args, **kwargs: None
    pull_module.request_pull = lambda **kwargs: None
    board, agent = line_board("refill", wip=3, backlog=True)
    Agent.objects.filter(pk=agent.pk).update(paused=True)
    backlog = Task.objects.filter(board=board, status=Task.Status.BACKLOG)
    per_task = []
    for round_ in range(args.rounds):
        n = 1 + round_ % 3
        for _ in range(n):
            services.task_create(board=board, title="bench task", input="x")
        start = time.thread_time()
        services.board_pull(board_id=board.pk)
        per_task.append((time.thread_time() - start) * 1000 / n)
        if backlog.exists():
            raise SystemExit(f"round {round_}: the pull left tasks in the Backlog")
    timed = per_task[WARM_UP:]
    print(f"refill_cpu_ms_per_task_median={statistics.median(timed):.3f}")
    print(f"refill_cpu_ms_per_task_mean={statistics.mean(timed):.3f}")
    print(f"refill_tasks_moved={Task.objects.filter(board=board, status=Task.Status.READY).count()}")


if __name__ == "__main__":
    main()
