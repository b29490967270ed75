"""The flow measures on a large history (`python bench/flow.py`).

Seeds one board with TASKS tasks over DAYS days (each created, pulled into
Ready, claimed, some failing once and returned, some escalated and decided in
Review, most finished), CALLS_PER_TASK ledger rows a task, an inspection a run,
straight into the database with INSERT ... SELECT (PostgreSQL generate_series;
seconds, not the minutes the ORM would take), then times what the Flow page
and the API do:

- ``flow_data_<window>_ms``: the selectors (boards.flow_selectors.flow_data_get);
- ``flow_report_<window>_ms``: the measures from them (boards.flow_report);
- ``flow_api_<window>_ms``: GET /api/v1/boards/{slug}/flow through Django's
  test client (token auth, validation, JSON), with a forecast;
- ``flow_page_<window>_ms``: the Flow page with its Plotly figures;
- ``board_page_ms``, ``board_page_p99_ms``: the board page, its live part rendered
  for every load (cards with their age and the SLE query), median and p99 of
  BOARD_PAGE_LOADS loads; ``board_page_shared_ms`` and ``_p99_ms``: the page as
  loads find it under load, the live part rendered a moment before
  (boards.fragments.board_live_html_get); ``board_page_vacuumed_ms`` and
  ``_p99_ms``: rendered for every load again, once the history is vacuumed as
  autovacuum would have done it on a live database;
- ``flow_queries_<window>``: the number of queries.

With ``--sqlite PATH``, what the page reads (the board, its rollups and the last
two days of rows) is copied into SQLite and timed there too (``sqlite_flow_...``).

for the default window (the last 7 days) and, with --whole, the whole history. The
median of REPEAT runs each, after a warm-up. Prints one ``name=value`` line a
figure. Needs PostgreSQL: BENCH_FLOW_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/kaizen_bench_flow), dropped and re-created.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/kaizen_bench_flow"


def _setup(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    os.environ.setdefault("KAIZEN_VAR_DIR", "/tmp/kaizen-bench-flow")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _defaults(model: Any, given: dict[str, str]) -> tuple[list[str], list[str]]:
    """Columns and SQL expressions for an INSERT ... SELECT into ``model``: the
    given expressions, and each other column's Python default as a literal
    (Django's defaults are not the database's)."""
    from django.db import connection

    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        column = field.column
        columns.append(column)
        if column in given:
            values.append(given[column])
            continue
        if field.null:
            values.append("NULL")
            continue
        default = field.get_default()
        if isinstance(default, list | dict):
            values.append(_literal(json.dumps(default)))
            continue
        values.append(_literal(field.get_db_prep_save(default, connection)))
    return columns, values


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def seed(
    *,
    tasks: int,
    days: int,
    calls_per_task: int,
    ledger: dict[str, str] | None = None,
    inspection: dict[str, str] | None = None,
) -> Any:
    """The board and its history. ``ledger`` and ``inspection``: SQL expressions
    (over ``n``, the row's number) for more of the ledger's and the inspections'
    columns than the flow measures need (bench/muda.py gives them)."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from andon.models import Inspection
    from boards.models import ModelCall, Task, TaskEvent
    from tests.factories import make_agent, make_board

    board = make_board(name="Bench flow", ready_limit=None, doing_limit=None)
    # The board is as old as its history: the default window (the last 7 days, or
    # since the board was made) must hold a week of it.
    board.created_at = timezone.now() - timedelta(days=days)
    board.save(update_fields=["created_at"])
    agents = [make_agent(boards=[board], name=f"agent-{i}", capabilities=[f"cap-{i}"]) for i in range(4)]
    cols = {c.role: c.pk for c in board.columns.all()}
    span = days * 86400
    a0 = agents[0].pk
    # Task n: created at now - span + n * span / tasks; cycle 60..3600 s; 97% done.
    created = f"(now() - interval '{span} seconds' + (n * {span}.0 / {tasks}) * interval '1 second')"
    status = "(CASE WHEN n % 100 < 97 THEN 'done' WHEN n % 100 < 99 THEN 'running' ELSE 'ready' END)"
    column = (
        f"(CASE WHEN n % 100 < 97 THEN {cols['done']} WHEN n % 100 < 99 THEN {cols['in_progress']} "
        f"ELSE {cols['ready']} END)"
    )
    task_cols, task_vals = _defaults(
        Task,
        {
            "board_id": str(board.pk),
            "column_id": column,
            "title": "'bench task ' || n",
            "status": status,
            "agent_id": f"({a0} + n % 4)",
            "capability": "'cap-' || (n % 4)",
            "created_at": created,
            "updated_at": created,
            "started_at": f"{created} + interval '120 seconds'",
            "finished_at": f"(CASE WHEN n % 100 < 97 THEN {created} + ((120 + 60 + (n * 7919) % 3540) * interval '1 second') END)",
            "cost": "0.0001 * (1 + n % 5)",
        },
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO boards_task ({', '.join(task_cols)}) SELECT {', '.join(task_vals)} "
            f"FROM generate_series(0, {tasks - 1}) AS n"
        )
        first = Task.objects.filter(board=board).order_by("pk").values_list("pk", flat=True).first()
        # Events: (offset seconds, kind, from, to, actor, condition) per task.
        cycle = "(60 + (n * 7919) % 3540)"
        steps = [
            ("0", "created", "", "backlog", "system", "TRUE"),
            ("60", "moved", "backlog", "ready", "system", "TRUE"),
            ("120", "claimed", "ready", "running", "agent", "n % 100 < 99"),
            # one in ten fails once and is claimed again
            ("150", "attempt_failed", "running", "ready", "agent", "n % 10 = 3 AND n % 100 < 99"),
            ("170", "claimed", "ready", "running", "agent", "n % 10 = 3 AND n % 100 < 99"),
            # one in twenty is escalated and approved
            (
                f"(120 + {cycle} / 2)",
                "escalated",
                "running",
                "review",
                "agent",
                "n % 20 = 7 AND n % 100 < 97",
            ),
            (f"(120 + {cycle})", "approved", "review", "done", "user", "n % 20 = 7 AND n % 100 < 97"),
            (f"(120 + {cycle})", "completed", "running", "done", "agent", "n % 20 <> 7 AND n % 100 < 97"),
        ]
        for offset, kind, from_status, to_status, actor, condition in steps:
            event_cols, event_vals = _defaults(
                TaskEvent,
                {
                    "task_id": f"({first} + n)",
                    "board_id": str(board.pk),
                    "kind": f"'{kind}'",
                    "from_status": f"'{from_status}'",
                    "to_status": f"'{to_status}'",
                    "actor": f"'{actor}'",
                    "agent_id": f"({a0} + n % 4)" if actor == "agent" else "NULL",
                    "created_at": f"{created} + ({offset} * interval '1 second')",
                },
            )
            cursor.execute(
                f"INSERT INTO boards_taskevent ({', '.join(event_cols)}) SELECT {', '.join(event_vals)} "
                f"FROM generate_series(0, {tasks - 1}) AS n WHERE {condition}"
            )
        call_cols, call_vals = _defaults(
            ModelCall,
            {
                "task_id": f"({first} + n / {calls_per_task})",
                "board_id": str(board.pk),
                "agent_id": f"({a0} + (n / {calls_per_task}) % 4)",
                "provider": "'simulated'",
                "model": "'sim-small'",
                "tokens_in": "100",
                "tokens_out": "50",
                "cost": "0.00002",
                "created_at": f"(now() - interval '{span} seconds' + ((n / {calls_per_task}) * {span}.0 / {tasks} + 130) * interval '1 second')",
                **(ledger or {}),
            },
        )
        cursor.execute(
            f"INSERT INTO boards_modelcall ({', '.join(call_cols)}) SELECT {', '.join(call_vals)} "
            f"FROM generate_series(0, {tasks * calls_per_task - 1}) AS n"
        )
        inspection_cols, inspection_vals = _defaults(
            Inspection,
            {
                "task_id": f"({first} + n)",
                "board_id": str(board.pk),
                "agent_id": f"({a0} + n % 4)",
                "passed": "(n % 20 <> 7)",
                "created_at": f"{created} + interval '200 seconds'",
                **(inspection or {}),
            },
        )
        cursor.execute(
            f"INSERT INTO andon_inspection ({', '.join(inspection_cols)}) SELECT {', '.join(inspection_vals)} "
            f"FROM generate_series(0, {tasks - 1}) AS n WHERE n % 100 < 97"
        )
        cursor.execute("ANALYZE")
    return board


def _time(fn: Any, repeat: int) -> tuple[float, int]:
    from django.db import connection, reset_queries

    fn()  # warm-up (caches, plans)
    times = []
    queries = 0
    for _ in range(repeat):
        reset_queries()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
        queries = len(connection.queries)
    return statistics.median(times), queries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--calls-per-task", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--whole", action="store_true", help="also time the whole history as the window")
    parser.add_argument(
        "--no-fold",
        action="store_true",
        help="leave the history unfolded: every figure read from the event log (the figures before the rollups)",
    )
    parser.add_argument(
        "--sqlite",
        metavar="PATH",
        help="also copy what the Flow page reads into a SQLite database at PATH and time it there",
    )
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only:
        # In a process of its own, with DATABASE_URL naming the SQLite copy.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
        os.environ.setdefault("KAIZEN_VAR_DIR", "/tmp/kaizen-bench-flow")
        import django

        django.setup()
        from boards.models import Board

        measure(
            Board.objects.get(name="Bench flow"),
            repeat=args.repeat,
            days=args.days,
            whole=args.whole,
            prefix="sqlite_flow",
        )
        return
    _setup(os.environ.get("BENCH_FLOW_DATABASE_URL", DEFAULT_DB))

    from django.conf import settings

    from boards import services
    from boards.models import FlowHour, FlowItem, ModelCall, TaskEvent

    settings.DEBUG = True  # counts the queries (connection.queries)
    # How busy the machine is: the same pure-Python loop takes about 0.25 s on an
    # idle core of the 2-core machines the figures are recorded on.
    start = time.perf_counter()
    sum(i * i for i in range(3_000_000))
    print(f"calibration_loop_s={time.perf_counter() - start:.2f}")
    print(f"load_average_1m={os.getloadavg()[0]:.1f}")
    settings.ALLOWED_HOSTS = ["*"]
    start = time.perf_counter()
    board = seed(tasks=args.tasks, days=args.days, calls_per_task=args.calls_per_task)
    print(f"seed_s={time.perf_counter() - start:.1f}")
    print(f"tasks={args.tasks}")
    print(f"events={TaskEvent.objects.filter(board=board).count()}")
    print(f"ledger_rows={ModelCall.objects.filter(board=board).count()}")
    if not args.no_fold:
        start = time.perf_counter()
        services.flow_fold(board_id=board.pk)
        print(f"fold_s={time.perf_counter() - start:.1f}")
        board.refresh_from_db()
        print(f"folded_hours={FlowHour.objects.filter(board=board).values('hour').distinct().count()}")
        print(f"folded_items={FlowItem.objects.filter(board=board).count()}")
    measure(board, repeat=args.repeat, days=args.days, whole=args.whole)
    if args.sqlite:
        start = time.perf_counter()
        _sqlite_copy(board, args.sqlite, days=2)
        print(f"sqlite_copy_s={time.perf_counter() - start:.1f}")
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{args.sqlite}"}
        argv = [
            sys.executable,
            __file__,
            "--measure-only",
            "--repeat",
            str(args.repeat),
            "--days",
            str(args.days),
        ]
        subprocess.run(argv + (["--whole"] if args.whole else []), env=env, check=True)


def _sqlite_copy(board: Any, path: str, *, days: int) -> None:
    """What the Flow page reads, into SQLite: the board (and its fold mark), the
    rollups, and the last ``days`` days of events, ledger rows, inspections and
    escalations (a window's edges read those; the rest is in the rollups)."""
    from datetime import timedelta

    from django.utils import timezone

    from andon.models import Escalation, Inspection
    from bench.sqlite_copy import copy_to_sqlite
    from boards.models import FlowHour, FlowItem, FlowLineHour, ModelCall, TaskEvent

    since = timezone.now() - timedelta(days=days)
    copy_to_sqlite(
        board,
        path,
        [
            TaskEvent.objects.filter(board=board, created_at__gte=since),
            ModelCall.objects.filter(board=board, created_at__gte=since),
            Inspection.objects.filter(board=board, created_at__gte=since),
            Escalation.objects.filter(board=board, created_at__gte=since),
            FlowHour.objects.filter(board=board),
            FlowLineHour.objects.filter(board=board),
            FlowItem.objects.filter(board=board),
        ],
    )


def measure(board: Any, *, repeat: int, days: int, whole: bool, prefix: str = "flow") -> None:
    """Time the Flow page's parts for the default window (and the whole history)."""
    from datetime import timedelta

    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from boards import flow_report, flow_selectors
    from boards.services import api_token_create
    from tests.factories import make_user

    settings.DEBUG = True  # counts the queries (connection.queries)
    settings.ALLOWED_HOSTS = ["*"]
    board_prefix = "" if prefix == "flow" else prefix.removesuffix("flow")
    # How busy the machine is as the timing starts (the seeding and copying take minutes).
    start = time.perf_counter()
    sum(i * i for i in range(3_000_000))
    print(f"{prefix}_calibration_loop_s={time.perf_counter() - start:.2f}")
    user = make_user(username="bench")
    _, key = api_token_create(user=user, name="bench", access="read", boards=None)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    page = Client()
    page.force_login(user)
    now = timezone.now()
    start_of_history = now - timedelta(days=days)
    windows = {"7d": None, **({f"{days}d": start_of_history} if whole else {})}
    for name, since in windows.items():
        params = {} if since is None else {"since": since.isoformat()}
        query = flow_report.flow_query_resolve(board=board, now=now, since=since)

        def data(query: Any = query) -> Any:
            return flow_selectors.flow_data_get(board=board, where=query.where, step=query.step)

        ms, queries = _time(data, repeat)
        print(f"{prefix}_data_{name}_ms={ms:.0f}")
        print(f"{prefix}_queries_{name}={queries}")
        snapshot = data()
        ms, _ = _time(
            lambda query=query, snapshot=snapshot: flow_report.flow_report(
                snapshot, where=query.where, now=now
            ),
            repeat,
        )
        print(f"{prefix}_report_{name}_ms={ms:.0f}")
        url = f"/api/v1/boards/{board.slug}/flow"
        api_params = {**params, "forecast_items": 100}

        def call_api(api_params: dict = api_params, url: str = url) -> None:
            response = api.get(url, api_params)
            assert response.status_code == 200, response.content[:300]

        ms, queries = _time(call_api, repeat)
        print(f"{prefix}_api_{name}_ms={ms:.0f}")
        print(f"{prefix}_api_queries_{name}={queries}")
        page_params = {k: v[:16] for k, v in params.items()}

        def get_page(page_params: dict = page_params) -> None:
            response = page.get(f"/boards/{board.slug}/flow/", page_params)
            assert response.status_code == 200

        ms, queries = _time(get_page, repeat)
        print(f"{prefix}_page_{name}_ms={ms:.0f}")
        print(f"{prefix}_page_queries_{name}={queries}")

    def board_page() -> None:
        assert page.get(board.get_absolute_url()).status_code == 200

    def board_page_figures(name: str, *, max_age_ms: int) -> None:
        settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = max_age_ms
        times, queries = _times(board_page, max(repeat, BOARD_PAGE_LOADS))
        print(f"{board_prefix}{name}_ms={statistics.median(times):.0f}")
        print(f"{board_prefix}{name}_p99_ms={_p99(times):.0f}")
        print(f"{board_prefix}{name}_queries={queries}")

    postgresql = connection.vendor == "postgresql"
    if postgresql:
        # Whether autovacuum got to the tasks during the Flow figures: then the
        # figures below are not "right after the seed" (see the vacuumed ones).
        with connection.cursor() as cursor:
            cursor.execute("SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'boards_task'")
            print(f"{board_prefix}board_page_tasks_autovacuumed_before={cursor.fetchone()[0]}")
    # Every load renders the live part (cards, ages, the SLE, the agents): the
    # page's worst case, and the figure earlier runs recorded as board_page_ms.
    board_page_figures("board_page", max_age_ms=0)
    # As loads find it under load: the live part rendered a moment before, shared.
    board_page_figures("board_page_shared", max_age_ms=60_000)
    if postgresql:
        # A live database's history has been vacuumed: autovacuum does it within
        # a minute or so of this many inserts (PostgreSQL 13 and later vacuum
        # after inserts too). That sets the visibility map an index-only scan
        # needs, and Done's count (about 97,000 tasks here) then reads the index
        # alone. Right after the seed nothing is vacuumed yet (unless
        # board_page_tasks_autovacuumed_before says otherwise), so the figures
        # above check each of Done's tasks in the table as well; they are kept
        # as they always were measured, for comparison with earlier runs. As
        # autovacuum does, this also analyzes (the seed analyzed already).
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        board_page_figures("board_page_vacuumed", max_age_ms=0)


# Loads of the board page timed (at least), for its p99.
BOARD_PAGE_LOADS = 100


def _times(fn: Any, repeat: int) -> tuple[list[float], int]:
    """Each run's milliseconds, after a warm-up, and the queries of the last."""
    from django.db import connection, reset_queries

    fn()
    times = []
    queries = 0
    for _ in range(repeat):
        reset_queries()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
        queries = len(connection.queries)
    return times, queries


def _p99(times: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(times)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


if __name__ == "__main__":
    main()
