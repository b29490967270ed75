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
from tests.factories import make_board

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.fixture
def batches(settings, monkeypatch) -> list[int]:
    """Grouping on (a window wide enough for the test's threads to meet in it),
    and the size of every batch the intake's thread writes."""
    settings.KAIZEN_INTAKE_GROUP_MS = 300
    sizes: list[int] = []
    write = intake._IntakeGroup._write

    def counted(batch):
        sizes.append(len(batch))
        return write(batch)

    monkeypatch.setattr(intake._IntakeGroup, "_write", staticmethod(counted))
    return sizes


def add_together(board, titles: list[str]) -> list[Task | Exception]:
    """task_create from one request thread per title, all at once."""
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

    added = add_together(board, [f"task {n}" for n in range(6)])

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

    added = add_together(board, ["first", "second", "third"])

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

    added = add_together(board, ["one", "two"])

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

    added = add_together(board, ["alone", "also alone"])

    assert batches == []
    assert all(isinstance(task, Task) for task in added)
