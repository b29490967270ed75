"""What the websocket pushes: changed columns, whole, as hx-swap-oob fragments."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from boards import services
from boards.fragments import render_board_update
from boards.models import Task
from tests.factories import column, make_agent, make_board

pytestmark = pytest.mark.django_db


def test_it_renders_the_changed_columns_out_of_band_with_their_cards(board):
    task = services.task_create(board=board, title="Fresh card")
    backlog = column(board, "backlog")

    html = render_board_update(board_id=board.pk, column_ids={backlog.pk})

    sections = re.findall(r'<section id="column-(\d+)"[^>]*>', html)
    assert sections == [str(backlog.pk)]
    assert re.search(rf'<section id="column-{backlog.pk}"[^>]*hx-swap-oob="outerHTML"', html)
    assert f'<li id="task-{task.pk}"' in html
    assert "Fresh card" in html


def test_it_renders_every_changed_column(board):
    ids = {column(board, "backlog").pk, column(board, "done").pk}

    html = render_board_update(board_id=board.pk, column_ids=ids)

    assert {int(pk) for pk in re.findall(r'<section id="column-(\d+)"', html)} == ids


def test_it_also_sends_the_banner_and_the_agents_load(board):
    make_agent(boards=[board], name="puller")
    services.board_set_paused(board=board, paused=True)

    html = render_board_update(board_id=board.pk, column_ids=set())

    assert re.search(r'<div id="board-banner"[^>]*hx-swap-oob="outerHTML"', html)
    assert "The line is stopped:" in html
    assert re.search(r'<section id="board-agents"[^>]*hx-swap-oob="outerHTML"', html)
    assert "puller" in html
    assert '<section id="column-' not in html


def test_titles_are_escaped(board):
    services.task_create(board=board, title="<script>alert(1)</script>")

    html = render_board_update(board_id=board.pk, column_ids={column(board, "backlog").pk})

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_it_is_empty_for_a_board_that_no_longer_exists(board):
    pk = board.pk
    board.delete()
    assert render_board_update(board_id=pk, column_ids={1}) == ""


def test_its_query_count_does_not_grow_with_the_number_of_tasks(django_assert_num_queries):
    board = make_board(ready_limit=None)
    ids = set(board.columns.values_list("pk", flat=True))
    services.task_create(board=board, title="One")
    with CaptureQueriesContext(connection) as few:
        render_board_update(board_id=board.pk, column_ids=ids)
    for i in range(30):
        services.task_create(board=board, title=f"More {i}")
    with django_assert_num_queries(len(few.captured_queries)):
        html = render_board_update(board_id=board.pk, column_ids=ids)
    assert html.count('<li id="task-') == 31


def test_pushed_cards_and_agents_carry_the_ledger_line_and_agent_links(board):
    agent = make_agent(boards=[board], name="pusher")
    task = services.task_create(board=board, title="Costed card")
    Task.objects.filter(pk=task.pk).update(cost=Decimal("0.0042"), model_calls=2, accepted_tier=1)
    backlog = column(board, "backlog")

    html = render_board_update(board_id=board.pk, column_ids={backlog.pk})

    card = re.search(rf'<li id="task-{task.pk}".*?</li>', html, re.S).group(0)
    assert re.search(r'<p class="card-ledger">.*\$0\.0042.*>2 calls<.*>tier 1<', card, re.S)
    assert f'<a class="agent-name" href="{agent.get_absolute_url()}">pusher</a>' in html
