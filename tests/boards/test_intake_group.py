"""The web server's intake on SQLite: tasks added by requests arriving together
are written by one thread in one transaction (boards.services.intake._IntakeGroup),
each request getting its own task or its own error after the commit."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from boards import broadcast, services
from boards.models import Task, TaskEvent
from boards.services import intake
from boards.services.primitives import WipLimitReached
from kaizen_web.http import serving_request
from kaizen_web.processes import wait_until
from tests.factories import make_board

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


class Batches(list):
    """The size of every batch the intake's thread writes, and how many requests
    the next batch waits for (the test's threads, all of them, whatever the
    machine's load: a condition, not a window that a slow machine could miss)."""

    expect = 1


@pytest.fixture
def batches(settings, monkeypatch) -> Batches:
    settings.KAIZEN_INTAKE_GROUP_MS = 10
    sizes = Batches()
    flush = intake._IntakeGroup.flush

    def counted(self, batch):
        sizes.append(len(batch))
        return flush(self, batch)

    def linger(self):
        assert wait_until(lambda: self.waiting() >= sizes.expect, timeout=30)

    monkeypatch.setattr(intake._IntakeGroup, "flush", counted)
    monkeypatch.setattr(intake._IntakeGroup, "linger", linger)
    return sizes


def add_together(board, titles: list[str], batches: Batches) -> list[Task | Exception]:
    """task_create from one request thread per title, all at once."""
    batches.expect = len(titles)
    start = threading.Barrier(len(titles))

    def request(title: str) -> Task | Exception:
        start.wait()
        try:
            with serving_request():
                return services.task_create(board=board, title=title, input=f"input of {title}")
        except Exception as exc:
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(len(titles)) as pool:
        return list(pool.map(request, titles))


def test_tasks_added_together_are_written_in_one_transaction_each_with_its_own(batches):
    board = make_board(backlog=False, ready_limit=None)

    added = add_together(board, [f"task {n}" for n in range(6)], batches)

    assert batches == [6]
    assert all(isinstance(task, Task) for task in added)
    assert sorted(task.title for task in added) == [f"task {n}" for n in range(6)]
    stored = list(Task.objects.filter(board=board).order_by("position"))
    assert {task.pk for task in stored} == {task.pk for task in added}
    # Placed one after another, as six requests would have placed them.
    assert len({task.position for task in stored}) == 6
    for task in added:
        assert task.input == f"input of {task.title}"
        assert TaskEvent.objects.filter(task_id=task.pk, kind=TaskEvent.Kind.CREATED).count() == 1


def test_a_batch_that_fails_is_written_one_task_at_a_time_each_with_its_outcome(batches):
    board = make_board(backlog=False, ready_limit=2, hard=True)

    added = add_together(board, ["first", "second", "third"], batches)

    assert batches == [3]
    refused = [outcome for outcome in added if isinstance(outcome, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], WipLimitReached)
    taken = [outcome for outcome in added if isinstance(outcome, Task)]
    assert sorted(Task.objects.filter(board=board).values_list("pk", flat=True)) == sorted(
        task.pk for task in taken
    )
    assert TaskEvent.objects.filter(task__board=board, kind=TaskEvent.Kind.CREATED).count() == 2


def test_tasks_are_not_added_twice_when_the_work_after_the_commit_fails(batches, monkeypatch):
    board = make_board(backlog=False, ready_limit=None)

    def fails(*args, **kwargs):
        raise RuntimeError("the live update failed")

    monkeypatch.setattr(broadcast, "columns_changed", fails)

    added = add_together(board, ["one", "two"], batches)

    assert batches == [2]
    assert all(isinstance(task, Task) for task in added)
    assert Task.objects.filter(board=board).count() == 2


def test_outside_a_served_request_a_task_is_written_in_the_callers_own_transaction(batches):
    board = make_board(backlog=False, ready_limit=None)

    task = services.task_create(board=board, title="from a command")

    assert batches == []
    assert Task.objects.filter(pk=task.pk).exists()


def test_with_no_window_a_served_request_writes_its_own_task(batches, settings):
    settings.KAIZEN_INTAKE_GROUP_MS = 0
    board = make_board(backlog=False, ready_limit=None)

    added = add_together(board, ["alone", "also alone"], batches)

    assert batches == []
    assert all(isinstance(task, Task) for task in added)


def test_a_batch_the_database_refuses_fails_every_request_at_once(batches, monkeypatch):
    from django.db import OperationalError

    board = make_board(backlog=False, ready_limit=None)
    tries: list[str] = []

    def locked(task, *, user):
        tries.append(task.title)
        raise OperationalError("database is locked")

    monkeypatch.setattr(intake, "_task_insert", locked)

    added = add_together(board, ["a", "b", "c"], batches)

    # Not tried again one by one (each would wait out the lock's timeout again).
    assert batches == [3]
    assert len(tries) == 1
    assert all(isinstance(outcome, OperationalError) for outcome in added)
    assert not Task.objects.filter(board=board).exists()
