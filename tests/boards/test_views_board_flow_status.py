"""The board page says, near the top, why agents are not pulling while Ready has
work, and each waiting Ready card says why it waits; the page and the live
parts (board body, pushes) render it from one selector."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from andon.models import LineStop
from boards import services
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def test_the_page_says_the_line_is_stopped_above_the_agents_and_the_columns(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], name="welder")
    task = services.task_create(board=board, title="Waiting card")
    LineStop.objects.create(board=board, kind=LineStop.Kind.CORD, reason="porosity")
    client.force_login(user)

    html = client.get(board.get_absolute_url()).content.decode()

    flow = re.search(r'<section id="flow-status".*?</section>', html, re.S).group(0)
    assert 'data-state="stalled"' in flow
    assert "Agents are not pulling" in flow
    assert "The line is stopped: porosity. A reviewer restarts it from the andon." in flow
    assert html.index('id="flow-status"') < html.index('id="board-agents"') < html.index('class="columns"')
    assert f'id="task-{task.pk}-hold">Waits: the line is stopped.<' in html


def test_a_quiet_line_when_work_flows(client, user):
    board = make_board(backlog=False, doing_limit=1)
    make_agent(boards=[board], concurrency=3)
    for i in range(2):
        services.task_create(board=board, title=f"Task {i}")
    services.board_pull(board_id=board.pk)
    client.force_login(user)

    html = client.get(board.get_absolute_url()).content.decode()

    flow = re.search(r'<section id="flow-status".*?</section>', html, re.S).group(0)
    assert 'data-state="busy"' in flow
    assert "In progress is full (1/1)" in flow
    assert "flow-holds" not in flow


def test_the_catch_up_body_carries_the_flow_status(client, user):
    board = make_board(backlog=False)
    services.task_create(board=board, title="Nobody to do it")
    client.force_login(user)

    html = client.get(reverse("boards-body", kwargs={"slug": board.slug})).content.decode()

    assert "No agent serves this board: tasks wait in Ready until one does." in html


def test_the_agent_strip_folds_to_a_summary_line(client, user):
    board = make_board()
    busy = make_agent(boards=[board], name="busy", concurrency=4)
    make_agent(boards=[board], name="idle", concurrency=2)
    LineStop.objects.create(agent=busy, kind=LineStop.Kind.CORD, reason="checking")
    client.force_login(user)

    html = client.get(board.get_absolute_url()).content.decode()

    summary = re.search(r'<p class="agents-summary">(.*?)</p>', html, re.S).group(1)
    assert re.sub(r"<[^>]+>|\s+", " ", summary).split() == "2 · 0/6 running · 1 stopped".split()
    assert 'aria-controls="agent-list"' in html
