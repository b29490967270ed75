"""Many claimers at once never exceed a hard WIP limit and never claim a task twice.

Racers (processes on PostgreSQL, threads on either database) pull one board while
finishing and failing runs; see tests/boards/wip_race_client.py. Besides the
racers' own counts after every pull, the TaskEvent history is replayed in commit
order of its ids to find the most tasks In progress at any moment.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import uuid
from collections import Counter

import pytest
from django.conf import settings

from boards import services
from boards.models import Column, Task, TaskEvent
from tests.boards.wip_race_client import race
from tests.factories import make_agent, make_board
from tests.live import LiveProcess, child_env, drop_queue, log_path_for, purge_queue, register, wait_for

pytestmark = pytest.mark.redis

DOING_LIMIT = 4
READY_LIMIT = 6
RACERS = 4
PULLS = 25
TASKS = 80


@pytest.fixture
def race_board(transactional_db):
    board = make_board(ready_limit=READY_LIMIT, doing_limit=DOING_LIMIT)
    # Three agents with two slots each offer more than the board's limit, so
    # the board's hard limit is what holds claims back.
    for n in range(3):
        make_agent(boards=[board], name=f"racer-agent-{n}", concurrency=2, error_rate=0, max_attempts=100)
    for n in range(TASKS):
        services.task_create(board=board, title=f"Case {n}", input=f"case {n}", priority=n % 3)
    yield board
    # The runs the pulls enqueued have no worker here; drop them.
    purge_queue(settings.CELERY_TASK_DEFAULT_QUEUE)


def max_in_progress_from_history(board) -> int:
    doing = board.columns.get(role=Column.Role.IN_PROGRESS)
    current = highest = 0
    for from_id, to_id in (
        TaskEvent.objects.filter(board=board).order_by("pk").values_list("from_column_id", "to_column_id")
    ):
        if to_id == doing.pk and from_id != doing.pk:
            current += 1
        elif from_id == doing.pk and to_id != doing.pk:
            current -= 1
        highest = max(highest, current)
    assert current == Task.objects.filter(column=doing).count(), "the history does not add up"
    return highest


def assert_no_attempt_claimed_twice(board) -> int:
    claimed = list(
        TaskEvent.objects.filter(board=board, kind=TaskEvent.Kind.CLAIMED).values_list("task_id", "note")
    )
    keys = []
    for task_id, note in claimed:
        match = re.fullmatch(r"attempt (\d+)", note)
        assert match, f"unexpected CLAIMED note {note!r}"
        keys.append((task_id, int(match.group(1))))
    duplicates = [key for key, n in Counter(keys).items() if n > 1]
    assert duplicates == [], f"(task, attempt) claimed more than once: {duplicates[:5]}"
    per_task = Counter(task_id for task_id, _ in keys)
    for task_id, attempts in Task.objects.filter(board=board).values_list("pk", "attempts"):
        assert per_task.get(task_id, 0) == attempts
    return len(keys)


def check_results(board, results: list[dict], *, claims_before: int) -> None:
    for result in results:
        assert result["max_in_progress"] <= DOING_LIMIT, result["seed"]
        # Failed runs go back to Ready while others refill it from the Backlog:
        # its hard limit must hold too.
        assert result["max_ready"] <= READY_LIMIT, result["seed"]
    # The leases racers were handed by their own pulls (the pulls a finished run
    # triggers claim too, unseen here; the history below covers those).
    tokens = [token for result in results for _, token in result["claims"]]
    assert len(tokens) == len(set(tokens))
    assert max_in_progress_from_history(board) == DOING_LIMIT
    claims = assert_no_attempt_claimed_twice(board)
    assert claims - claims_before >= DOING_LIMIT, "hardly anything was claimed during the race"
    assert Task.objects.filter(board=board, status=Task.Status.DONE).exists()


def claims_so_far(board) -> int:
    return TaskEvent.objects.filter(board=board, kind=TaskEvent.Kind.CLAIMED).count()


@pytest.mark.postgres
def test_racing_processes_never_exceed_a_hard_wip_limit(request, race_board, tmp_path):
    # The runs they enqueue go to a queue nobody consumes; it is dropped below.
    queue = f"kaizen-race-{uuid.uuid4().hex[:8]}"
    claims_before = claims_so_far(race_board)
    go = tmp_path / "go"
    racers = []
    for seed in range(RACERS):
        argv = [
            sys.executable,
            "-m",
            "tests.boards.wip_race_client",
            "--board",
            str(race_board.pk),
            "--pulls",
            str(PULLS),
            "--seed",
            str(seed),
            "--go",
            str(go),
        ]
        name = f"racer{seed}"
        racer = LiveProcess(name, argv, child_env({"CELERY_QUEUE": queue}), log_path_for(request, name))
        register(request, racer)
        racers.append(racer)
    try:
        for racer in racers:
            wait_for(
                f"{racer.name} to start", lambda r=racer: "WAITING" in r.log_text(), timeout=60, process=racer
            )
        go.touch()
        for racer in racers:
            wait_for(f"{racer.name} to finish", lambda r=racer: not r.alive, timeout=120)
            assert racer.returncode == 0, racer.log_tail()
    finally:
        for racer in racers:
            racer.stop()
        drop_queue(queue)

    results = []
    for racer in racers:
        line = next(line for line in racer.log_text().splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line.removeprefix("RESULT ")))
    check_results(race_board, results, claims_before=claims_before)


def test_racing_threads_never_exceed_a_hard_wip_limit(race_board):
    results: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(RACERS)
    claims_before = claims_so_far(race_board)

    def racer(seed: int) -> None:
        try:
            start.wait()
            results.append(race(board_id=race_board.pk, pulls=PULLS, seed=seed))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer, args=(seed,)) for seed in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == RACERS
    check_results(race_board, results, claims_before=claims_before)
