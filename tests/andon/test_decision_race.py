"""Two reviewers decide one escalation at the same moment, each in their own process
and database connection: exactly one decision is applied, the other reviewer is
told who decided first, and the task ends in one place with one decision event.

To make the two decisions really collide, the test holds the escalation's row lock
while both processes start deciding, waits until PostgreSQL shows both of them
blocked on a lock, and only then lets go."""

from __future__ import annotations

import json
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection, transaction

from andon.models import Escalation
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import escalate
from tests.factories import make_agent, make_board, make_reviewer
from tests.live import LiveProcess, child_env, drop_queue, log_path_for, purge_queue, register, wait_for

pytestmark = pytest.mark.redis

DECISIONS = (TaskEvent.Kind.APPROVED, TaskEvent.Kind.CORRECTED, TaskEvent.Kind.REJECTED)
# What each action leaves behind: the escalation's status, the event, the task's place.
OUTCOME = {
    "approve": (Escalation.Status.APPROVED, TaskEvent.Kind.APPROVED, Column.Role.DONE, Task.Status.DONE),
    "correct": (Escalation.Status.CORRECTED, TaskEvent.Kind.CORRECTED, Column.Role.DONE, Task.Status.DONE),
    "reject": (Escalation.Status.REJECTED, TaskEvent.Kind.REJECTED, Column.Role.READY, Task.Status.READY),
}
VERB = {"approve": "approved", "correct": "edited and approved", "reject": "rejected"}


@pytest.fixture
def open_escalation(transactional_db):
    board = make_board()
    make_agent(boards=[board])
    escalation = escalate(board)
    make_reviewer(username="ana")
    make_reviewer(username="ben")
    yield escalation
    # Pulls and runs the commits above enqueued have no worker here.
    purge_queue(settings.CELERY_TASK_DEFAULT_QUEUE)


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("ana_does", "ben_does"), [("approve", "reject"), ("reject", "correct"), ("approve", "approve")]
)
def test_two_processes_deciding_one_escalation_apply_exactly_one_decision(
    request, open_escalation, tmp_path, ana_does, ben_does
):
    escalation = open_escalation
    queue = f"kaizen-decision-race-{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    actions = {"ana": ana_does, "ben": ben_does}
    reviewers = {}
    for username, action in actions.items():
        argv = [
            sys.executable,
            "-m",
            "tests.andon.decision_race_client",
            "--escalation",
            str(escalation.pk),
            "--user",
            username,
            "--action",
            action,
            "--go",
            str(go),
        ]
        process = LiveProcess(
            username, argv, child_env({"CELERY_QUEUE": queue}), log_path_for(request, username)
        )
        register(request, process)
        reviewers[username] = process
    try:
        for process in reviewers.values():
            wait_for(
                f"{process.name} to start",
                lambda p=process: "WAITING" in p.log_text(),
                timeout=60,
                process=process,
            )
        with transaction.atomic():
            Escalation.objects.select_for_update().get(pk=escalation.pk)
            go.touch()
            deadline = time.monotonic() + 30
            while _waiting_on_locks() < 2:
                assert time.monotonic() < deadline, "the two reviewers never both waited to decide"
                for process in reviewers.values():
                    assert process.alive or "RESULT" not in process.log_text(), (
                        f"{process.name} decided past a locked escalation:\n{process.log_tail()}"
                    )
                time.sleep(0.01)
        for process in reviewers.values():
            wait_for(f"{process.name} to finish", lambda p=process: not p.alive, timeout=60)
            assert process.returncode == 0, process.log_tail()
    finally:
        for process in reviewers.values():
            process.stop()
        drop_queue(queue)

    results = {}
    for username, process in reviewers.items():
        line = next(line for line in process.log_text().splitlines() if line.startswith("RESULT "))
        results[username] = json.loads(line.removeprefix("RESULT "))
    outcomes = sorted(result["outcome"] for result in results.values())
    assert outcomes == ["already_decided", "decided"], results
    [winner] = [name for name, result in results.items() if result["outcome"] == "decided"]
    [loser] = [name for name in results if name != winner]
    assert f"{VERB[actions[winner]]} by {winner}" in results[loser]["message"]

    status, kind, role, task_status = OUTCOME[actions[winner]]
    escalation.refresh_from_db()
    assert (escalation.status, escalation.decided_by.username) == (status, winner)
    task = Task.objects.select_related("column").get(pk=escalation.task_id)
    assert (task.column.role, task.status) == (role, task_status)
    decisions = list(task.events.filter(kind__in=DECISIONS))
    assert [(e.kind, e.user.username) for e in decisions] == [(kind, winner)]
    # In one place: the history ends where the task is, and nothing waits on a decision.
    assert task.events.order_by("pk").last().to_column_id == task.column_id
    assert not Escalation.objects.filter(task=task, status=Escalation.Status.OPEN).exists()


@pytest.mark.postgres
def test_two_processes_deciding_overlapping_groups_decide_each_escalation_once(
    request, transactional_db, tmp_path
):
    """Ana approves a group of three identical escalations while Ben rejects two of
    them, listed the other way round: whoever locks first decides its members; the
    other decides what is left and is told what it skipped; nothing deadlocks."""
    from boards.models import Board

    board = make_board()
    make_agent(boards=[board], spike_defects=1000, spike_window=1000)
    review = board.columns.get(role=Column.Role.REVIEW)
    review.wip_limit = None
    review.save()
    first, second, third = (escalate(board, title=f"Part {n}") for n in range(3))
    make_reviewer(username="ana")
    make_reviewer(username="ben")
    groups = {
        "ana": (f"{first.pk},{second.pk},{third.pk}", "approve"),
        "ben": (f"{third.pk},{second.pk}", "reject"),
    }
    queue = f"kaizen-decision-race-{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    reviewers = {}
    for username, (ids, action) in groups.items():
        argv = [
            sys.executable, "-m", "tests.andon.decision_race_client",
            "--escalation", ids, "--user", username, "--action", action, "--go", str(go),
        ]  # fmt: skip
        process = LiveProcess(
            username, argv, child_env({"CELERY_QUEUE": queue}), log_path_for(request, username)
        )
        register(request, process)
        reviewers[username] = process
    try:
        for process in reviewers.values():
            wait_for(f"{process.name} to start", lambda p=process: "WAITING" in p.log_text(), timeout=60)
        # Both take the board's lock first (as every decision does): hold it until both wait.
        with transaction.atomic():
            Board.objects.select_for_update(no_key=True).get(pk=board.pk)
            go.touch()
            deadline = time.monotonic() + 30
            while _waiting_on_locks() < 2:
                assert time.monotonic() < deadline, "the two reviewers never both waited to decide"
                time.sleep(0.01)
        for process in reviewers.values():
            wait_for(f"{process.name} to finish", lambda p=process: not p.alive, timeout=60)
            assert process.returncode == 0, process.log_tail()
    finally:
        for process in reviewers.values():
            process.stop()
        drop_queue(queue)
        purge_queue(settings.CELERY_TASK_DEFAULT_QUEUE)

    results = {}
    for username, process in reviewers.items():
        line = next(line for line in process.log_text().splitlines() if line.startswith("RESULT "))
        results[username] = json.loads(line.removeprefix("RESULT "))
    decided_by = {}
    for username, result in results.items():
        for pk in result["decided"]:
            assert pk not in decided_by, results
            decided_by[pk] = username
    assert sorted(decided_by) == sorted([first.pk, second.pk, third.pk]), results
    if results["ana"]["outcome"] == "decided" and len(results["ana"]["decided"]) == 3:
        assert results["ben"]["outcome"] == "already_decided"
    else:
        assert (results["ben"]["decided"], results["ana"]["decided"]) == ([third.pk, second.pk], [first.pk])
        assert sorted(results["ana"]["skipped"]) == sorted([second.pk, third.pk])
    for escalation in (first, second, third):
        escalation.refresh_from_db()
        winner = decided_by[escalation.pk]
        assert escalation.decided_by.username == winner
        expected = Escalation.Status.APPROVED if winner == "ana" else Escalation.Status.REJECTED
        assert escalation.status == expected
        events = list(Task.objects.get(pk=escalation.task_id).events.filter(kind__in=DECISIONS))
        assert [e.user.username for e in events] == [winner]
