"""selectors.task_reusable_get: the newest identical answer that passed
inspection (or that a reviewer approved), looked for among the newest few with
plain queries, and among all of them when every one of those failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from andon.models import Escalation, Inspection
from boards import selectors
from boards.models import Column, Task
from boards.text import input_key
from tests.factories import column, make_agent, make_board

pytestmark = pytest.mark.django_db

INPUT = "The invoice lists 40 units; we received 36."


@pytest.fixture
def line():
    board = make_board()
    agent = make_agent(boards=[board], reuse_results=True)
    return board, agent


def done(board, agent, n: int, *, passed: bool | None, approved: bool = False) -> Task:
    """A done task answered ``n`` minutes ago (a larger n is older), with an
    inspection that ``passed`` (None: no inspection), optionally escalated and approved."""
    task = Task.objects.create(
        board=board,
        column=column(board, Column.Role.DONE),
        status=Task.Status.DONE,
        title=f"answer {n}",
        input=INPUT,
        input_key=input_key(INPUT),
        agent=agent,
        prompt_version=1,
        output=f"output {n}",
        finished_at=timezone.now() - timedelta(minutes=n),
    )
    if passed is not None:
        inspection = Inspection.objects.create(task=task, board=board, agent=agent, passed=passed)
        if approved:
            Escalation.objects.create(
                task=task, board=board, agent=agent, inspection=inspection, status=Escalation.Status.APPROVED
            )
    return task


def asking(board, agent) -> Task:
    return Task.objects.create(
        board=board,
        column=column(board, Column.Role.IN_PROGRESS),
        status=Task.Status.RUNNING,
        title="the same again",
        input=INPUT,
        input_key=input_key(INPUT),
        agent=agent,
        prompt_version=1,
    )


def test_it_takes_the_newest_passing_answer(line):
    board, agent = line
    done(board, agent, 3, passed=True)
    newest = done(board, agent, 1, passed=True)
    done(board, agent, 2, passed=False)

    found = selectors.task_reusable_get(task=asking(board, agent))

    assert found == newest
    assert (found.output, found.reviewed) == ("output 1", False)


def test_it_skips_a_newer_defect_for_an_older_pass(line):
    board, agent = line
    older = done(board, agent, 5, passed=True)
    done(board, agent, 1, passed=False)

    assert selectors.task_reusable_get(task=asking(board, agent)) == older


def test_an_approved_defect_is_reused_as_reviewed(line):
    board, agent = line
    done(board, agent, 5, passed=True)
    approved = done(board, agent, 1, passed=False, approved=True)

    found = selectors.task_reusable_get(task=asking(board, agent))

    assert found == approved
    assert found.reviewed is True


def test_an_answer_without_inspection_is_reused(line):
    board, agent = line
    plain = done(board, agent, 1, passed=None)

    assert selectors.task_reusable_get(task=asking(board, agent)) == plain


def test_only_defects_give_nothing(line):
    board, agent = line
    for n in range(3):
        done(board, agent, n, passed=False)

    assert selectors.task_reusable_get(task=asking(board, agent)) is None


def test_a_pass_older_than_the_newest_few_defects_is_still_found(line):
    board, agent = line
    older = done(board, agent, 100, passed=True)
    for n in range(selectors.REUSE_CANDIDATES + 2):
        done(board, agent, n + 1, passed=False)

    found = selectors.task_reusable_get(task=asking(board, agent))

    assert found == older
    assert found.reviewed is False


def test_a_batch_of_identical_tasks_is_looked_up_once(line, django_assert_num_queries):
    board, agent = line
    earlier = done(board, agent, 1, passed=True)
    batch = [asking(board, agent) for _ in range(5)]
    fresh = asking(board, agent)
    fresh.allow_reuse = False

    with django_assert_num_queries(2):
        found = selectors.tasks_reusable_get(tasks=[*batch, fresh])

    assert found == {**{task.pk: earlier for task in batch}, fresh.pk: None}
