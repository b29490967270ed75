"""What writing a completion batch's rows costs, both ways of each choice in
kaizen_web.rows, interleaved in one process (issue 15).

A batch of ``--batch`` tasks is written as the completer writes it: their ledger rows
(``ModelCall``), inspections, events, Muda finishes and knowledge patterns
(``rows_insert``), and the tasks' own row (``task_rows_update``), in a transaction
rolled back after each round. Each round alternates two variants of one choice:

- ``json``: on PostgreSQL, the rows as one JSON document (``json_to_recordset``, as
  ``rows_insert`` writes them) against an array a column (``unnest``, as it wrote
  them before and still does for a NaN);
- ``ready``: values Django would hand over unchanged (a finite Decimal, an aware
  datetime, a UUID) written as they are, against each through its field's
  ``get_db_prep_save``.

Alternating round by round in one process keeps the machine's swings (a third, from
one minute to the next, on the shared 2-core machines) out of the comparison. Prints,
per choice and variant, this thread's CPU a task (``rows_<choice>_<variant>_cpu_ms_per_task``)
and its PostgreSQL backend's (``..._postgres_cpu_ms_per_task``; /proc, 10 ms ticks
summed over the rounds).

Usage: python bench/rows.py [--batch N] [--rounds N] [--postgres URL]
Needs PostgreSQL (a scratch database beside BENCH_DATABASE_URL's, dropped after;
bench.line_steps.scratch_postgres).
Prints ``name=value`` lines; records nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Rounds first, not measured (an even number: each variant gets the same count after).
WARMUP = 10

from bench.line_steps import scratch_postgres  # noqa: E402 (after the path)
from bench.run import DEFAULT_DB  # noqa: E402


def _backend_cpu(connection) -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=125, help="tasks a batch (125)")
    parser.add_argument("--rounds", type=int, default=240, help="rounds a choice, both variants (240)")
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    args = parser.parse_args()
    if args.batch < 2 or args.rounds < WARMUP + 2 or args.rounds % 2:
        parser.error(
            f"--batch must be at least 2 (one row goes by VALUES); --rounds even and at least {WARMUP + 2}"
        )
    with scratch_postgres(args.postgres, "kaizen_bench_rows") as url:
        os.environ["DATABASE_URL"] = url
        _measure(args)


def _measure(args: argparse.Namespace) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    import kaizen_web.rows as rows
    from andon.models import Inspection, MudaFinish
    from bench.fixtures import line_board
    from boards.models import Column, ModelCall, Task, TaskEvent
    from boards.services.primitives import task_rows_update
    from experiments.models import Pattern

    call_command("migrate", verbosity=0)
    board, agent = line_board("rows", wip=args.batch)
    ready = Column.objects.get(board=board, role="ready")
    tasks = [
        Task.objects.create(board=board, column=ready, title=f"t{i}", agent=agent) for i in range(args.batch)
    ]
    now = timezone.now()
    for task in tasks:
        task.cost, task.confidence, task.output = Decimal("0.0000123"), 0.83, "defect: scratch"
        task.status, task.finished_at, task.updated_at = Task.Status.DONE, now, now

    def batch() -> None:
        calls = [
            ModelCall(
                task_id=t.pk,
                board_id=board.pk,
                agent_id=agent.pk,
                attempt=1,
                tier=1,
                provider="simulated",
                model="sim-small",
                tokens_in=30,
                tokens_out=12,
                cost=Decimal("0.0000123"),
                latency_ms=812.5,
                confidence=0.83,
                accepted=True,
            )
            for t in tasks
        ]
        inspections = [
            Inspection(task_id=t.pk, board_id=board.pk, attempt=1, passed=True, notes=["ok"], tokens_out=12)
            for t in tasks
        ]
        rows.rows_insert(ModelCall, calls, returning=True)
        rows.rows_insert(Inspection, inspections, returning=True)
        rows.rows_insert(
            TaskEvent, [TaskEvent(task_id=t.pk, board_id=board.pk, kind="completed") for t in tasks]
        )
        rows.rows_insert(
            MudaFinish,
            [
                MudaFinish(task_id=t.pk, board_id=board.pk, finished_at=now, lead_s=1.5, ready_s=0.5)
                for t in tasks
            ],
        )
        rows.rows_insert(
            Pattern,
            [
                Pattern(task_id=t.pk, board_id=board.pk, attempt=1, verdict="passed", text_hash=f"h{t.pk}")
                for t in tasks
            ],
            ignore_conflicts=True,
        )
        task_rows_update(tasks, ["output", "confidence", "cost", "status", "finished_at", "updated_at"])

    document, ready_check = rows._json_document, rows._ready

    def ready_as(check) -> None:
        rows._ready = check
        # The statements are built again with this variant's columns (in the
        # round's clock, for both variants alike: a few statements a round).
        rows._statements.clear()

    variants = {
        "json": {
            "json": lambda: setattr(rows, "_json_document", document),
            "arrays": lambda: setattr(rows, "_json_document", lambda keys, columns: None),
        },
        "ready": {
            "ready": lambda: ready_as(ready_check),
            "field": lambda: ready_as(lambda internal, vendor: None),
        },
    }
    for choice, pair in variants.items():
        totals = {name: [0.0, 0.0] for name in pair}
        for number in range(args.rounds):
            name = list(pair)[number % 2]
            pair[name]()
            postgres, started = _backend_cpu(connection), time.thread_time()
            with transaction.atomic():
                batch()
                transaction.set_rollback(True)
            if number >= WARMUP:
                totals[name][0] += time.thread_time() - started
                totals[name][1] += _backend_cpu(connection) - postgres
        pair[list(pair)[0]]()  # the product's own way back in place
        measured = (args.rounds - WARMUP) / 2 * args.batch
        for name, (cpu, postgres) in totals.items():
            print(f"rows_{choice}_{name}_cpu_ms_per_task={cpu * 1000 / measured:.4f}")
            print(f"rows_{choice}_{name}_postgres_cpu_ms_per_task={postgres * 1000 / measured:.4f}")
    connection.close()


if __name__ == "__main__":
    main()
