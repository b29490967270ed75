"""The task page offers only what the board's services would do: moves its rules
allow from the task's column (Done offers "Run again"), a block where a block may
go, nothing while an escalation waits for a reviewer; its tables scroll inside
their panel instead of being clipped."""

from __future__ import annotations

import re

import pytest

from boards import services
from boards.models import Column, Task
from tests.andon.helpers import escalate
from tests.factories import column, make_agent, make_board

pytestmark = pytest.mark.django_db

Role = Column.Role


def _html(client, task: Task) -> str:
    return client.get(task.get_absolute_url()).content.decode()


def _options(html: str) -> list[str]:
    select = re.search(r'<select id="move-column".*?</select>', html, re.S)
    return re.findall(r">([^<]+)</option>", select.group(0)) if select else []


def _done_task(board) -> Task:
    task = services.task_create(board=board, title="Finished")
    services.task_move(task=task, to_column=column(board, Role.DONE), user=None)
    return Task.objects.get(pk=task.pk)


def test_a_done_task_offers_run_again_and_no_block(client, user, board):
    task = _done_task(board)
    client.force_login(user)

    html = _html(client, task)

    assert "<h2>Run again</h2>" in html
    assert _options(html) == ["Backlog", "Ready"]
    assert ">Run again</button>" in html
    assert "Block task" not in html
    assert 'id="block"' not in html


def test_run_again_sends_a_done_task_back_to_ready(client, user, board):
    task = _done_task(board)
    client.force_login(user)

    client.post(task.get_absolute_url() + "move/", {"column": column(board, Role.READY).pk})

    assert Task.objects.get(pk=task.pk).status == Task.Status.READY


def test_a_backlog_task_offers_the_moves_its_rules_allow_and_a_block(client, user, board):
    task = services.task_create(board=board, title="Fresh")
    client.force_login(user)

    html = _html(client, task)

    # Not its own column, and never In progress: agents pull into it.
    assert _options(html) == ["Ready", "Done"]
    assert "Block task" in html


def test_a_running_task_offers_no_move_and_no_block(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board])
    task = services.task_create(board=board, title="Busy")
    services.board_pull(board_id=board.pk)
    client.force_login(user)

    html = _html(client, task)

    assert 'id="move-column"' not in html
    assert "An agent is working on it" in html
    assert "Block task" not in html


def test_a_task_waiting_for_a_reviewer_points_to_its_escalation_instead_of_moves(client, user, board):
    make_agent(boards=[board], concurrency=5)
    escalation = escalate(board, input="doubtful")
    client.force_login(user)

    html = _html(client, escalation.task)

    assert 'id="move-column"' not in html
    assert f'href="{escalation.get_absolute_url()}"' in html
    assert "decides this output in the andon inbox" in html


def test_the_history_table_scrolls_inside_its_panel(client, user, board):
    task = services.task_create(board=board, title="Long story")
    client.force_login(user)

    html = _html(client, task)

    assert re.search(r'<div class="table-scroll">\s*<table class="events">', html)
