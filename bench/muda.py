"""The Muda dashboard on a large history (`python bench/muda.py`).

Seeds the board of bench/flow.py (100,000 tasks over 30 days, 1,000,000 ledger
rows, events, inspections; PostgreSQL generate_series) with what the seven wastes
read filled in: tiers 1 and 2 (the last call of a task taken), passed-over answers
with a would-pass verdict, a cache hit in one task of seven, an in-task repeat in
one of thirteen, a provider error in one call of 97, request keys, context
windows and varied prompt sizes, token waste on inspections, and an escalation
for each failed inspection (one in four rejected). Then, if the rollups exist,
back-fills them (``muda_backfill_s``), and times, for the default window (the
last 7 days), the median of REPEAT runs after a warm-up:

- ``muda_report_7d_ms`` and ``muda_queries_7d``: andon.muda.muda_report_get;
- ``muda_page_7d_ms`` and ``muda_page_queries_7d``: /boards/{slug}/muda/;
- ``muda_api_7d_ms`` and ``muda_api_queries_7d``: GET /api/v1/boards/{slug}/muda;
- ``muda_agent_api_7d_ms``: the same for one agent;
- ``muda_threshold_24h_ms`` and ``muda_threshold_200_ms``: waste_value over the
  last 24 hours and over the last 200 outputs, as a waste threshold reads it.

With ``--sqlite PATH``, then copies what the page reads (the board, its tasks, the
rollups, the last two days of ledger rows, inspections and escalations) into a
SQLite database and times the same there (``sqlite_muda_*``): the seeding needs
PostgreSQL's generate_series.

Prints one ``name=value`` line a figure. Needs PostgreSQL: BENCH_MUDA_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/kaizen_bench_muda), dropped and re-created.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.flow import _defaults, _setup, _time, seed  # noqa: E402
from bench.sqlite_copy import copy_to_sqlite  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/kaizen_bench_muda"


def ledger_columns(*, tasks: int, days: int, calls_per_task: int) -> dict[str, str]:
    """SQL over n (the ledger row's number; its task is n / calls_per_task)."""
    cpt = calls_per_task
    span = days * 86400
    task = f"(n / {cpt})"
    k = f"(n % {cpt})"
    last = f"({k} = {cpt - 1})"
    return {
        # One task in ten fails once: the second half of its calls are attempt 2.
        "attempt": f"(CASE WHEN {task} % 10 = 3 AND {k} >= {cpt // 2} THEN 2 ELSE 1 END)",
        "tier": f"(CASE WHEN {last} THEN 2 ELSE 1 + {k} % 2 END)",
        "source": f"(CASE WHEN {k} = 0 AND {task} % 7 = 0 THEN 'cache' ELSE 'model' END)",
        "model": f"(CASE WHEN {last} OR {k} % 2 = 1 THEN 'sim-large' ELSE 'sim-small' END)",
        "accepted": last,
        "tokens_in": "(100 + (n * 37) % 3000)",
        "tokens_out": f"(CASE WHEN {k} = 0 AND {task} % 7 = 0 THEN 0 ELSE 20 + (n * 13) % 200 END)",
        "cost": "(0.00001 * (1 + n % 7))",
        "error": "(CASE WHEN n % 97 = 5 THEN 'boom' ELSE '' END)",
        "request_key": f"(CASE WHEN {task} % 13 = 0 AND {k} = 1 THEN 'key-' || (n - 1) ELSE 'key-' || n END)",
        "context_window": f"(CASE WHEN {last} OR {k} % 2 = 1 THEN 32000 ELSE 8000 END)",
        "would_pass": f"(CASE WHEN {last} THEN NULL WHEN n % 3 = 0 THEN TRUE WHEN n % 3 = 1 THEN FALSE END)",
        # A task's calls a second apart.
        "created_at": (
            f"(now() - interval '{span} seconds' + ({task} * {span}.0 / {tasks} + 130 + {k}) "
            "* interval '1 second')"
        ),
    }


INSPECTION_COLUMNS = {"waste_tokens": "((n * 7) % 30)", "tokens_out": "(20 + n % 200)"}


def escalations_seed(board: Any) -> None:
    """An escalation for each failed inspection, decided an hour later; one in four rejected."""
    from django.db import connection

    from andon.models import Escalation

    cols, vals = _defaults(
        Escalation,
        {
            "task_id": "i.task_id",
            "board_id": "i.board_id",
            "agent_id": "i.agent_id",
            "inspection_id": "i.id",
            "attempt": "i.attempt",
            "status": "(CASE WHEN i.task_id % 4 = 0 THEN 'rejected' ELSE 'approved' END)",
            "created_at": "i.created_at",
            "decided_at": "i.created_at + interval '1 hour'",
        },
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO andon_escalation ({', '.join(cols)}) SELECT {', '.join(vals)} "
            f"FROM andon_inspection i WHERE i.board_id = {int(board.pk)} AND NOT i.passed"
        )
        cursor.execute("ANALYZE")


def measure(board: Any, repeat: int, prefix: str = "muda") -> None:
    """Time the report, the page, the API and the thresholds for the default window."""
    from datetime import timedelta

    from django.test import Client
    from django.utils import timezone

    from andon import muda
    from boards.models import Agent
    from boards.services import api_token_create
    from tests.factories import make_user

    user = make_user(username=f"bench-{prefix}-{os.getpid()}")
    _, key = api_token_create(user=user, name="bench", access="read", boards=None)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    page = Client()
    page.force_login(user)
    agent = Agent.objects.filter(name="agent-1").get()

    ms, queries = _time(lambda: muda.muda_report_get(board=board), repeat)
    print(f"{prefix}_report_7d_ms={ms:.0f}")
    print(f"{prefix}_queries_7d={queries}")

    def get_page() -> None:
        response = page.get(f"/boards/{board.slug}/muda/")
        assert response.status_code == 200, response.content[:300]

    ms, queries = _time(get_page, repeat)
    print(f"{prefix}_page_7d_ms={ms:.0f}")
    print(f"{prefix}_page_queries_7d={queries}")

    def get_api(params: dict[str, str] | None = None) -> None:
        response = api.get(f"/api/v1/boards/{board.slug}/muda", params or {})
        assert response.status_code == 200, response.content[:300]

    ms, queries = _time(get_api, repeat)
    print(f"{prefix}_api_7d_ms={ms:.0f}")
    print(f"{prefix}_api_queries_7d={queries}")
    ms, _ = _time(lambda: get_api({"agent": agent.name}), repeat)
    print(f"{prefix}_agent_api_7d_ms={ms:.0f}")

    ms, _ = _time(
        lambda: muda.waste_value("escalation_rate", board=board, since=timezone.now() - timedelta(hours=24)),
        repeat,
    )
    print(f"{prefix}_threshold_24h_ms={ms:.0f}")
    ms, _ = _time(lambda: muda.waste_value("defects", agent=agent, last_outputs=200), repeat)
    print(f"{prefix}_threshold_200_ms={ms:.0f}")


def sqlite_copy(board: Any, path: str, *, days: int) -> None:
    """Copy what the Muda page reads into a new SQLite database at ``path``: the
    board, its columns, agents and tasks, the rollups, and the last ``days`` days
    of ledger rows, inspections and escalations (the window's edges and the
    last-outputs thresholds read those; the rest of the history is in the rollups)."""
    from datetime import timedelta

    from django.utils import timezone

    from andon.models import Escalation, Inspection, MudaContextHour, MudaFinish, MudaHour, MudaRepeat
    from boards.models import ModelCall

    since = timezone.now() - timedelta(days=days)
    copy_to_sqlite(
        board,
        path,
        [
            ModelCall.objects.filter(board=board, created_at__gte=since),
            Inspection.objects.filter(board=board, created_at__gte=since),
            Escalation.objects.filter(board=board, created_at__gte=since),
            MudaHour.objects.filter(board=board),
            MudaContextHour.objects.filter(board=board),
            MudaFinish.objects.filter(board=board),
            MudaRepeat.objects.filter(board=board, call__created_at__gte=since),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--calls-per-task", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--sqlite",
        metavar="PATH",
        help="also copy what the page reads into a SQLite database at PATH and time it there",
    )
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep", action="store_true", help="time the database the last run left (no seeding, no back-fill)"
    )
    args = parser.parse_args()
    os.environ.setdefault("KAIZEN_VAR_DIR", "/tmp/kaizen-bench-muda")
    if args.measure_only:
        # In a process of its own, with DATABASE_URL naming the SQLite copy.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
        import django

        django.setup()
        from django.conf import settings

        from boards.models import Board

        settings.DEBUG = True
        settings.ALLOWED_HOSTS = ["*"]
        measure(Board.objects.get(name="Bench flow"), args.repeat, prefix="sqlite_muda")
        return
    url = os.environ.get("BENCH_MUDA_DATABASE_URL", DEFAULT_DB)
    if args.keep:
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
        import django

        django.setup()
    else:
        _setup(url)

    from datetime import timedelta

    from django.conf import settings
    from django.core.management import call_command, get_commands
    from django.utils import timezone

    from andon.models import Escalation
    from boards.models import Board, ModelCall, TaskEvent

    settings.DEBUG = True  # counts the queries (connection.queries)
    start = time.perf_counter()
    sum(i * i for i in range(3_000_000))
    print(f"calibration_loop_s={time.perf_counter() - start:.2f}")
    print(f"load_average_1m={os.getloadavg()[0]:.1f}")
    settings.ALLOWED_HOSTS = ["*"]
    if args.keep:
        board = Board.objects.get(name="Bench flow")
        measure(board, args.repeat)
        _sqlite(args, board)
        return
    start = time.perf_counter()
    board = seed(
        tasks=args.tasks,
        days=args.days,
        calls_per_task=args.calls_per_task,
        ledger=ledger_columns(tasks=args.tasks, days=args.days, calls_per_task=args.calls_per_task),
        inspection=INSPECTION_COLUMNS,
    )
    escalations_seed(board)
    # The board was made before its history (the default window starts no earlier
    # than the board: see andon.muda.muda_window_get).
    Board.objects.filter(pk=board.pk).update(created_at=timezone.now() - timedelta(days=args.days + 1))
    board.refresh_from_db()
    print(f"seed_s={time.perf_counter() - start:.1f}")
    print(f"tasks={args.tasks}")
    print(f"events={TaskEvent.objects.filter(board=board).count()}")
    print(f"ledger_rows={ModelCall.objects.filter(board=board).count()}")
    print(f"escalations={Escalation.objects.filter(board=board).count()}")
    if "muda_rollups_rebuild" in get_commands():
        start = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            call_command("muda_rollups_rebuild", progress=False, stdout=devnull)
        print(f"muda_backfill_s={time.perf_counter() - start:.1f}")
    measure(board, args.repeat)
    _sqlite(args, board)


def _sqlite(args: argparse.Namespace, board: Any) -> None:
    if args.sqlite:
        start = time.perf_counter()
        sqlite_copy(board, args.sqlite, days=2)
        print(f"sqlite_copy_s={time.perf_counter() - start:.1f}")
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{args.sqlite}"}
        subprocess.run(
            [sys.executable, __file__, "--measure-only", "--repeat", str(args.repeat)], env=env, check=True
        )


if __name__ == "__main__":
    main()
