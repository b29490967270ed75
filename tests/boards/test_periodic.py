"""The periodic Celery tasks (the pull safety net and the demo feed): each goes
over every board, and one board's error is logged without stopping the rest."""

from __future__ import annotations

import pytest

from boards import services, tasks
from boards.models import Task
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def test_demo_feed_goes_on_past_a_board_whose_feed_fails(caplog):
    # Boards are visited by name: the broken one comes first. Its example asks for
    # a capability no agent offers, so task_create refuses it.
    broken = make_board(name="A broken demo")
    broken.demo_tasks = [{"title": "Weld", "capability": "welding"}]
    broken.save()
    healthy = make_board(name="B healthy demo")
    healthy.demo_tasks = [{"title": "Inspect", "input": "scratch"}]
    healthy.save()

    assert tasks.feed_demo_boards() == 1

    assert list(Task.objects.filter(board=healthy).values_list("title", flat=True)) == ["Inspect"]
    assert not Task.objects.filter(board=broken).exists()
    assert f"demo feed of board {broken.pk} failed" in caplog.text


def test_demo_feed_skips_paused_boards_and_boards_without_examples():
    paused = make_board()
    paused.demo_tasks = [{"title": "Inspect"}]
    paused.paused = True
    paused.save()
    make_board()  # no examples

    assert tasks.feed_demo_boards() == 0
    assert not Task.objects.exists()


def test_pull_all_boards_pulls_every_unpaused_board():
    boards = [make_board(backlog=False) for _ in range(3)]
    for board in boards:
        make_agent(boards=[board])
        services.task_create(board=board, title="t", input="x")
    boards[2].paused = True
    boards[2].save()

    assert tasks.pull_all_boards() == 2

    running = set(Task.objects.filter(status=Task.Status.RUNNING).values_list("board_id", flat=True))
    assert running == {boards[0].pk, boards[1].pk}
