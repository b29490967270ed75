"""Cards in flight on the board show their age from the first claim, amber past
the 70th percentile and red past the 85th of the board's recent cycle times,
with a title saying so; the board costs one query more, whatever the history."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from boards.fragments import render_board_update
from boards.models import Task, TaskEvent
from boards.selectors import board_sle_get, board_sle_recent
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def _finished(board, agent, cycle_seconds: float, *, ago: float = 3600) -> Task:
    done = board.columns.get(role="done")
    task = Task.objects.create(board=board, column=done, title="done", status="done", agent=agent)
    now = timezone.now()
    for kind, f, t, at in (
        ("claimed", "ready", "running", now - timedelta(seconds=ago + cycle_seconds)),
        ("completed", "running", "done", now - timedelta(seconds=ago)),
    ):
        event = TaskEvent.objects.create(
            task=task, board=board, kind=kind, from_status=f, to_status=t, actor="agent"
        )
        TaskEvent.objects.filter(pk=event.pk).update(created_at=at)
    return task


def _running(board, agent, title: str, age: float, *, status: str = "running") -> Task:
    role = "in_progress" if status == "running" else "review"
    task = Task.objects.create(
        board=board, column=board.columns.get(role=role), title=title, status=status, agent=agent
    )
    event = TaskEvent.objects.create(
        task=task, board=board, kind="claimed", from_status="ready", to_status="running", actor="agent"
    )
    TaskEvent.objects.filter(pk=event.pk).update(created_at=timezone.now() - timedelta(seconds=age))
    return task


def _history(board, agent):
    # Cycle times 100..1000 s: 70th percentile 700 s, 85th 900 s (nearest rank).
    for cycle in range(100, 1001, 100):
        _finished(board, agent, cycle)


def test_the_sle_is_the_recent_cycle_times_percentiles():
    board = make_board(doing_limit=None)
    agent = make_agent(boards=[board])
    _history(board, agent)
    sle = board_sle_get(board=board)
    assert sle.count == 10
    assert (sle.get(70), sle.get(85)) == (pytest.approx(700), pytest.approx(900))


def test_cards_age_turns_amber_then_red():
    board = make_board(doing_limit=None)
    agent = make_agent(boards=[board])
    _history(board, agent)
    calm = _running(board, agent, "calm", 300)
    amber = _running(board, agent, "amber", 800)
    red = _running(board, agent, "red", 2000, status="review")
    ids = set(board.columns.values_list("pk", flat=True))
    html = render_board_update(board_id=board.pk, column_ids=ids)

    def age_of(task):
        card = re.search(rf'<li id="task-{task.pk}".*?</li>', html, re.S).group(0)
        return re.search(r'<span class="card-age card-age--(\w+)"[^>]*title="([^"]*)"', card).groups()

    assert age_of(calm)[0] == "ok"
    level, title = age_of(amber)
    assert level == "amber" and "70th percentile of the board's cycle times (11 min 40 s)" in title
    assert "past 70th" in re.search(rf'<li id="task-{amber.pk}".*?</li>', html, re.S).group(0)
    level, title = age_of(red)
    assert level == "red" and "the SLE (15 min)" in title
    assert "past SLE" in re.search(rf'<li id="task-{red.pk}".*?</li>', html, re.S).group(0)


def test_no_age_on_cards_not_in_flight():
    board = make_board()
    make_agent(boards=[board])
    ready = board.columns.get(role="ready")
    task = Task.objects.create(board=board, column=ready, title="waiting", status="ready")
    html = render_board_update(board_id=board.pk, column_ids={ready.pk})
    card = re.search(rf'<li id="task-{task.pk}".*?</li>', html, re.S).group(0)
    assert "card-age--" not in card and "data-sle-p85" not in card


def test_the_age_costs_one_query_whatever_the_history():
    board = make_board(doing_limit=None)
    agent = make_agent(boards=[board])
    _history(board, agent)
    _running(board, agent, "a", 10)
    ids = set(board.columns.values_list("pk", flat=True))
    with CaptureQueriesContext(connection) as few:
        render_board_update(board_id=board.pk, column_ids=ids)
    for _ in range(20):
        _history(board, agent)
        _running(board, agent, "more", 50)
    board_sle_recent.clear()  # read again, as it is every few seconds
    with CaptureQueriesContext(connection) as many:
        render_board_update(board_id=board.pk, column_ids=ids)
    assert len(many.captured_queries) == len(few.captured_queries)
    # The SLE's one query (the cards' first claims are a subquery of their own query).
    assert sum('"first_claim"' in q["sql"] for q in few.captured_queries) == 1


def _sle_reads(queries) -> int:
    return sum('"first_claim"' in q["sql"] for q in queries)


def test_the_live_updates_read_the_sle_at_most_once_every_few_seconds(monkeypatch):
    board = make_board(doing_limit=None)
    agent = make_agent(boards=[board])
    _history(board, agent)  # 70th percentile 700 s
    card = _running(board, agent, "a", 800)
    ids = set(board.columns.values_list("pk", flat=True))
    clock = [1000.0]
    monkeypatch.setattr(board_sle_recent, "_clock", lambda: clock[0])

    def level() -> str:
        html = render_board_update(board_id=board.pk, column_ids=ids)
        li = re.search(rf'<li id="task-{card.pk}".*?</li>', html, re.S).group(0)
        return re.search(r"card-age--(\w+)", li).group(1)

    with CaptureQueriesContext(connection) as first:
        assert level() == "amber"
    assert _sle_reads(first.captured_queries) == 1
    for _ in range(3):  # longer cycle times: 800 s is no longer past the 70th percentile
        _finished(board, agent, 5000)

    clock[0] += board_sle_recent.ttl - 0.5
    with CaptureQueriesContext(connection) as kept:
        assert level() == "amber"
    assert _sle_reads(kept.captured_queries) == 0

    clock[0] += 1.0
    with CaptureQueriesContext(connection) as again:
        assert level() == "ok"
    assert _sle_reads(again.captured_queries) == 1
