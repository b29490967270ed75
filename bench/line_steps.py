"""The line's services one after another in one process, and the CPU each step
takes per task (issue 15): what a change to one step buys, measured without the
HTTP server, Celery, the browsers' updates or the other processes' noise.

Each round adds ``--batch`` tasks as the JSON API does (``task_create``), pulls
(``board_pull``: the batch is claimed), begins the runs as a worker does
(``tasks_run_begin`` and ``tasks_reusable_get``), runs the simulated model on
each (zero latency), and completes them in one batch (``tasks_complete``, as the
worker's completer does). The board is the line bench's (bench/fixtures.py):
In progress WIP 200, every output inspected.

What is left out, on purpose: the pull a completion asks for after commit (the
next round's pull stands for it), the claims' Celery message, and the live
updates (bench/cards.py measures drawing them). The clock is this thread's CPU
time, so nothing another thread or process does counts.

The whole-line benches (bench/run.py, bench/sqlite_line.py) swing by a third
with the machine's speed from one run to the next; this one runs in seconds, so
two trees can be alternated several times within one such swing. A tree without
this file is measured by running this file with ``--tree`` set to it.

Usage: python bench/line_steps.py [--rounds N] [--batch N] [--postgres URL] [--tree PATH]
Prints ``name=value`` lines; records nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

STEPS = ("intake", "pull", "begin", "model", "complete")


@contextlib.contextmanager
def scratch_postgres(url: str, name: str = "kaizen_line_steps") -> Iterator[str]:
    """A fresh database ``name`` beside the one ``url`` names (dropped first if left
    over, and dropped again when done); yields its URL."""
    import psycopg

    base, _, _ = url.rpartition("/")

    def recreate(create: bool) -> None:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            if create:
                conn.execute(f"CREATE DATABASE {name}")

    recreate(create=True)
    try:
        yield f"{base}/{name}"
    finally:
        recreate(create=False)


def in_process_parser(doc: str | None, *, rounds: int, warmup: int, batch: str) -> argparse.ArgumentParser:
    """The arguments of an in-process bench of the line's services (this one,
    bench/loop_runs.py): rounds, warm-up, batch, database and tree."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds measured (default {rounds})")
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"rounds first, not measured (default {warmup})"
    )
    parser.add_argument("--batch", type=int, default=8, help=f"{batch} (default 8)")
    parser.add_argument(
        "--postgres", metavar="URL", help="a PostgreSQL server (a scratch database beside URL's)"
    )
    parser.add_argument("--tree", type=Path, help="the checkout to measure (default: this file's)")
    return parser


@contextlib.contextmanager
def in_process(args: argparse.Namespace, *, name: str) -> Iterator[str]:
    """The tree's code (``--tree``, else this checkout) set up to run in this
    process, against a scratch database (PostgreSQL beside ``--postgres``, else
    SQLite) and a scratch var directory, both removed after, and the benches'
    Redis (``BENCH_REDIS_URL``) with a response cache of this run's own, kept an
    hour; yields the database's label (postgres or sqlite). Django is not set up yet."""
    root = (args.tree or Path(__file__).resolve().parent.parent).resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)
    from bench.run import DEFAULT_REDIS

    scratch = Path(tempfile.mkdtemp(prefix=f"kaizen-bench-{name}-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "kaizen_web.settings"
    os.environ["KAIZEN_VAR_DIR"] = str(scratch / "var")
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    os.environ["KAIZEN_CACHE_PREFIX"] = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    os.environ["KAIZEN_RESPONSE_CACHE_SECONDS"] = "3600"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        if args.postgres:
            os.environ["DATABASE_URL"] = stack.enter_context(
                scratch_postgres(args.postgres, f"kaizen_{name}")
            )
        else:
            os.environ["DATABASE_URL"] = f"sqlite:///{scratch / f'{name}.sqlite3'}"
        yield "postgres" if args.postgres else "sqlite"


def main() -> None:
    args = in_process_parser(__doc__, rounds=300, warmup=30, batch="tasks per round").parse_args()
    with in_process(args, name="line_steps") as label:
        figures = _measure(args)
    total = 0.0
    for step in STEPS:
        total += figures[step]
        print(f"line_steps_{label}_cpu_ms_per_task_{step}={figures[step]:.3f}")
    print(f"line_steps_{label}_cpu_ms_per_task={total:.3f}")
    for step in STEPS:
        print(f"line_steps_{label}_statements_per_task_{step}={figures[f'statements_{step}']:.2f}")
    print(f"line_steps_tasks={figures['tasks']:.0f}")


def line_set_up() -> None:
    """Django set up and the scratch database migrated (``in_process``), with what
    the in-process benches leave out: the board's live updates, the pull a
    completion asks for after commit, and the claims' Celery message."""
    import django

    django.setup()
    from django.core.management import call_command

    from boards import broadcast
    from boards.services import enqueue
    from boards.services import pull as pull_module

    call_command("migrate", verbosity=0)
    broadcast.columns_changed = lambda *args, **kwargs: None
    pull_module.request_pull = lambda **kwargs: None
    enqueue.runs_enqueue = lambda claims: None


def _measure(args: argparse.Namespace) -> dict[str, float]:
    line_set_up()
    from django.db import connections

    from bench.fixtures import line_board
    from boards import selectors, services
    from boards.agents.cascade import implementation_for
    from boards.models import Task
    from experiments import line as experiment_line
    from kaizen_web import live

    board, _ = line_board("steps", wip=200)
    spent = dict.fromkeys(STEPS, 0.0)
    statements = dict.fromkeys(STEPS, 0)
    tasks_done = 0
    # Each statement sent to the database (round trips: an executemany counts once).
    sent = [0]

    def counted(execute, sql, params, many, context):
        sent[0] += 1
        return execute(sql, params, many, context)

    stack = contextlib.ExitStack()
    for alias in connections:
        stack.enter_context(connections[alias].execute_wrapper(counted))
    for round_ in range(args.warmup + args.rounds):
        measured = round_ >= args.warmup
        clock = time.thread_time()
        marks = {}
        counts = {}
        sent[0] = 0
        for i in range(args.batch):
            services.task_create(
                board=board, title=f"step task {round_}.{i}", input=f"Summarise note {round_}.{i}."
            )
        marks["intake"] = time.thread_time()
        counts["intake"] = sent[0]
        claims = services.board_pull(board_id=board.pk)
        marks["pull"] = time.thread_time()
        counts["pull"] = sent[0]
        # As a Celery message carries them (boards.tasks.run_tasks).
        pairs = [(claim.task_id, str(claim.lease_token)) for claim in claims]
        current = services.tasks_run_begin(claims=pairs, worker="bench-steps")
        selectors.tasks_reusable_get(tasks=list(current.values()))
        marks["begin"] = time.thread_time()
        counts["begin"] = sent[0]
        results = []
        for claim in claims:
            task = current[claim.task_id]
            output = implementation_for(experiment_line.agent_for_run(task)).process(task)
            results.append(
                services.RunResult(task_id=claim.task_id, lease_token=claim.lease_token, output=output)
            )
        marks["model"] = time.thread_time()
        counts["model"] = sent[0]
        services.tasks_complete(results=results)
        marks["complete"] = time.thread_time()
        counts["complete"] = sent[0]
        if len(claims) != args.batch:
            raise SystemExit(f"round {round_}: {len(claims)} claimed, not {args.batch}")
        if measured:
            before = 0
            for step in STEPS:
                spent[step] += marks[step] - clock
                clock = marks[step]
                statements[step] += counts[step] - before
                before = counts[step]
            tasks_done += len(claims)
    stack.close()
    left = Task.objects.filter(board=board, status__in=("backlog", "ready", "running")).count()
    if left:
        raise SystemExit(f"{left} tasks not finished")
    # The inbox's live updates of escalated runs, rendered on the broadcaster's
    # thread, before the scratch database goes.
    live.flush()
    figures = {step: spent[step] * 1000 / tasks_done for step in STEPS}
    figures.update({f"statements_{step}": statements[step] / tasks_done for step in STEPS})
    figures["tasks"] = tasks_done
    return figures


if __name__ == "__main__":
    main()
