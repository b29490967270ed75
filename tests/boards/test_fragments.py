"""What the websocket pushes: changed columns (and Ready, whose cards say why each
waits), whole, with the banner, the agents and the flow status, as hx-swap-oob
fragments; never a form (the andon cord is the page's own control)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from andon.models import CircuitBreaker, LineStop
from boards import services
from boards.fragments import render_board_update
from boards.models import Task
from tests.andon.helpers import escalate
from tests.factories import column, make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db


def test_it_renders_the_changed_columns_out_of_band_with_their_cards(board):
    task = services.task_create(board=board, title="Fresh card")
    backlog = column(board, "backlog")

    html = render_board_update(board_id=board.pk, column_ids={backlog.pk})

    sections = re.findall(r'<section id="column-(\d+)"[^>]*>', html)
    # The changed column, and Ready: what any change may alter, its cards' reasons to wait.
    assert sections == [str(backlog.pk), str(column(board, "ready").pk)]
    assert re.search(rf'<section id="column-{backlog.pk}"[^>]*hx-swap-oob="outerHTML"', html)
    assert f'<li id="task-{task.pk}"' in html
    assert "Fresh card" in html


def test_it_renders_every_changed_column(board):
    ids = {column(board, "backlog").pk, column(board, "done").pk}

    html = render_board_update(board_id=board.pk, column_ids=ids)

    assert {int(pk) for pk in re.findall(r'<section id="column-(\d+)"', html)} == ids | {
        column(board, "ready").pk
    }


def test_it_also_sends_the_banner_and_the_agents_load(board):
    make_agent(boards=[board], name="puller")
    services.board_set_paused(board=board, paused=True)

    html = render_board_update(board_id=board.pk, column_ids=set())

    assert re.search(r'<div id="board-banner"[^>]*hx-swap-oob="outerHTML"', html)
    assert "The line is stopped:" in html
    assert re.search(r'<section id="board-agents"[^>]*hx-swap-oob="outerHTML"', html)
    assert "puller" in html
    assert re.search(r'<section id="flow-status"[^>]*hx-swap-oob="outerHTML"', html)
    assert "The board is paused: agents pull nothing until it is resumed." in html
    # No column changed: only Ready comes along.
    assert re.findall(r'<section id="column-(\d+)"', html) == [str(column(board, "ready").pk)]


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


def test_a_push_says_why_agents_are_not_pulling_and_each_ready_card_why_it_waits(board):
    review = column(board, "review")
    review.wip_limit, review.hard_limit = 1, True
    review.save()
    make_agent(boards=[board], concurrency=5)
    escalate(board, input="first")
    waiting = services.task_create(board=board, title="Waiting card", input="second")
    services.board_pull(board_id=board.pk)

    html = render_board_update(board_id=board.pk, column_ids=set())

    flow = re.search(r'<section id="flow-status".*?</section>', html, re.S).group(0)
    assert 'data-state="stalled"' in flow
    assert "Waiting for review: Review is full (1/1), 1 decision is needed in the andon inbox." in flow
    assert f'href="/andon/?board={board.pk}"' in flow
    card = re.search(rf'<li id="task-{waiting.pk}".*?</li>', html, re.S).group(0)
    assert f'aria-describedby="task-{waiting.pk}-hold"' in card
    assert re.search(rf'id="task-{waiting.pk}-hold">Waits for review: Review is full \(1/1\)\.<', card)


def test_pushes_carry_no_form_not_even_for_a_reviewer_to_pull_the_cord(board):
    make_agent(boards=[board], name="stoppable")
    make_reviewer()
    LineStop.objects.create(board=board, kind=LineStop.Kind.CORD, reason="seeded")

    html = render_board_update(board_id=board.pk, column_ids=set(board.columns.values_list("pk", flat=True)))

    assert "<form" not in html
    assert "The line is stopped" in html


def test_a_closed_breaker_with_a_few_failures_is_a_calm_note_not_an_alarm(board):
    calm = make_agent(boards=[board], name="calm")
    alarmed = make_agent(boards=[board], name="alarmed")
    CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.AGENT,
        agent=calm,
        state=CircuitBreaker.State.CLOSED,
        consecutive_failures=2,
    )
    CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.AGENT,
        agent=alarmed,
        state=CircuitBreaker.State.OPEN,
        consecutive_failures=5,
    )

    html = render_board_update(board_id=board.pk, column_ids=set())

    chips = dict(re.findall(r'<a class="agent-name"[^>]*>([^<]+)</a>(.*?)</li>', html, re.S))
    assert "breaker" not in chips["calm"].lower()
    assert "badge--breaker-open" in chips["alarmed"]
    assert "breaker open" in chips["alarmed"]


def test_a_push_runs_a_bounded_number_of_queries_with_every_hold_in_play(django_assert_max_num_queries):
    board = make_board(ready_limit=None)
    agents = [make_agent(boards=[board], name=f"agent {i}", breaker_cooldown_seconds=600) for i in range(3)]
    for i in range(30):
        services.task_create(board=board, title=f"Task {i}")
    services.board_pull(board_id=board.pk)
    LineStop.objects.create(agent=agents[0], kind=LineStop.Kind.CORD, reason="stopped")
    CircuitBreaker.objects.create(
        scope=CircuitBreaker.Scope.AGENT,
        agent=agents[1],
        state=CircuitBreaker.State.OPEN,
        consecutive_failures=5,
        opened_at=timezone.now(),
    )
    services.agent_set_paused(agent=agents[2], paused=True)
    ids = set(board.columns.values_list("pk", flat=True))

    with django_assert_max_num_queries(22):
        html = render_board_update(board_id=board.pk, column_ids=ids)

    assert 'data-state="stalled"' in html


def _troubled_agents(board, n: int, start: int = 0) -> None:
    """Agents each with what the agents' strip and the flow status read about it:
    a line stop, an open breaker of its own, an open breaker of its model."""
    for i in range(start, start + n):
        agent = make_agent(boards=[board], name=f"troubled {i}")
        LineStop.objects.create(agent=agent, kind=LineStop.Kind.CORD, reason=f"stopped {i}")
        CircuitBreaker.objects.create(
            scope=CircuitBreaker.Scope.AGENT,
            agent=agent,
            state=CircuitBreaker.State.OPEN,
            consecutive_failures=5,
            opened_at=timezone.now(),
        )
        tier = agent.tiers[0]
        CircuitBreaker.objects.get_or_create(
            scope=CircuitBreaker.Scope.MODEL,
            board=board,
            key=f"{tier.provider}/{tier.model}",
            defaults={"state": CircuitBreaker.State.OPEN, "opened_at": timezone.now()},
        )


def test_an_update_of_ready_reads_each_thing_once_however_many_agents(django_assert_max_num_queries):
    # The banner, the agents' strip and the flow status used to read the agents,
    # their line stops and their breakers two or three times each: 15 queries.
    board = make_board(ready_limit=None)
    for i in range(5):
        services.task_create(board=board, title=f"Task {i}")
    services.task_block(task=services.task_create(board=board, title="Blocked"), user=None, note="why")
    _troubled_agents(board, 1)
    ready = {column(board, "ready").pk}
    with CaptureQueriesContext(connection) as one_agent:
        render_board_update(board_id=board.pk, column_ids=ready)
    _troubled_agents(board, 4, start=1)

    with django_assert_max_num_queries(len(one_agent.captured_queries)):
        html = render_board_update(board_id=board.pk, column_ids=ready)

    assert len(one_agent.captured_queries) <= 9
    assert html.count('class="badge badge--stopped"') == 5
    assert html.count("badge--breaker-open") >= 5


def test_a_card_kept_from_an_earlier_update_is_drawn_anew_when_what_it_shows_changes(board):
    # Cards are kept rendered between updates (boards.fragments.cards_html_set):
    # any change a card shows must still reach the browser.
    agent = make_agent(boards=[board], name="first name")
    task = services.task_create(board=board, title="Kept card")
    Task.objects.filter(pk=task.pk).update(agent=agent)
    columns = {task.column_id}
    services.task_block(task=task, user=None, note="note one")
    assert "note one" in render_board_update(board_id=board.pk, column_ids=columns)
    kept = render_board_update(board_id=board.pk, column_ids=columns)

    services.task_block(task=Task.objects.get(pk=task.pk), user=None, note="note two")
    agent.name = "second name"
    agent.save()
    html = render_board_update(board_id=board.pk, column_ids=columns)

    assert "note one" in kept and "first name" in kept
    assert "note two" in html and "note one" not in html
    assert "second name" in html and "first name" not in html


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 1, 31, 13, 47, 12, tzinfo=UTC),  # a month's last day, before a leap February
        datetime(2024, 2, 29, 0, 0, 59, tzinfo=UTC),  # a leap day, at midnight
        datetime(2025, 3, 30, 23, 59, 59, tzinfo=UTC),  # late in a long month
        datetime(2025, 12, 15, 6, 30, 0, 500_000, tzinfo=UTC),  # a year's end ahead, with microseconds
        datetime(2025, 8, 31, 21, 5, 44, 999_999, tzinfo=UTC),  # a 31st, with microseconds
    ],
)
def test_a_kept_cards_age_in_words_is_the_one_it_would_be_drawn_with(moment, monkeypatch):
    # A kept card is keyed by what its age in words depends on
    # (boards.fragments._elapsed), not by the words: two moments of now with the
    # same key must give the same words, or a card would show a stale age. The
    # words can change only where a unit turns: a whole minute after the moment
    # under a day; beyond it, a whole hour after the moment or after its whole
    # second (Django counts months from that), or a midnight (a 31st's month
    # turns then when the month has no 31st). Each is looked at a microsecond
    # before, on it and a microsecond after, over two months.
    from boards import jinja
    from boards.fragments import _elapsed

    whole = moment.replace(microsecond=0)
    turns = [moment + timedelta(minutes=n) for n in range(1, 24 * 60)]
    for start in (moment, whole):
        turns += [start + timedelta(hours=n) for n in range(24, 24 * 60)]
    midnight = datetime.combine(moment.date(), datetime.min.time(), tzinfo=UTC)
    turns += [midnight + timedelta(days=n) for n in range(2, 60)]
    clock = [moment]
    monkeypatch.setattr(jinja.timezone, "now", lambda: clock[0])

    words_by_key: dict[object, set[str]] = {}
    for turn in turns:
        for now in (turn - timedelta(microseconds=1), turn, turn + timedelta(microseconds=1)):
            clock[0] = now
            words_by_key.setdefault(_elapsed(moment, now), set()).add(jinja.timesince(moment))

    assert {key: words for key, words in words_by_key.items() if len(words) > 1} == {}
    assert len(words_by_key) > 2000
