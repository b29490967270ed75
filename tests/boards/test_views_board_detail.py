"""The board page: columns with counts, limits and Kanban states; cards; bounded queries."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from boards import selectors, services
from boards.agents import runtime
from boards.fragments import render_board_update
from boards.models import Agent, Board, Column, Task
from boards.selectors import board_sle_recent
from tests.factories import HTMX, column, make_agent, make_board

pytestmark = pytest.mark.django_db


def _url(board: Board) -> str:
    return reverse("boards-detail", kwargs={"slug": board.slug})


def _column_html(html: str, col: Column) -> str:
    """The markup of one column, from its opening tag to the next column's."""
    start = html.index(f'id="column-{col.pk}"')
    end = html.find('<section id="column-', start + 1)
    return html[start : end if end != -1 else len(html)]


def test_it_redirects_anonymous_users_to_login(client, board):
    response = client.get(_url(board))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_returns_404_for_an_unknown_board(client, user):
    client.force_login(user)
    assert client.get("/boards/no-such-board/").status_code == 404


def test_it_renders_the_columns_in_order_with_counts_and_limits(client, user):
    board = make_board(ready_limit=5, doing_limit=3)
    for i in range(2):
        services.task_create(board=board, title=f"Backlog task {i}")
    client.force_login(user)

    response = client.get(_url(board))

    assert response.status_code == 200
    html = response.content.decode()
    names = re.findall(r'class="column-name" id="column-\d+-name">([^<]+)<', html)
    assert names == ["Backlog", "Ready", "In progress", "Review", "Done"]
    backlog = _column_html(html, column(board, "backlog"))
    assert re.search(r"wip-count[^>]*>\s*2<", backlog)
    assert "no limit" in backlog
    ready = _column_html(html, column(board, "ready"))
    assert re.search(r"wip-count[^>]*>\s*0 / 5<", ready)
    assert "hard" in ready
    assert "5 free" in ready


@pytest.mark.parametrize(
    ("tasks", "state", "words"),
    [(2, "one_left", "one left"), (3, "reached", "limit reached")],
)
def test_it_marks_the_wip_state_with_a_class_and_words(client, user, tasks, state, words):
    board = make_board(backlog=False, ready_limit=3)
    for i in range(tasks):
        services.task_create(board=board, title=f"Ready task {i}")
    client.force_login(user)

    ready = _column_html(client.get(_url(board)).content.decode(), column(board, "ready"))

    assert f"wip--{state}" in ready
    assert "wip--hard" in ready
    assert f'<span class="wip-state">{words}</span>' in ready


def test_it_marks_a_soft_limit_exceeded(client, user):
    board = make_board(ready_limit=1, hard=False)
    first = services.task_create(board=board, title="First")
    second = services.task_create(board=board, title="Second")
    ready_column = column(board, "ready")
    services.task_move(task=first, to_column=ready_column, user=user)
    services.task_move(task=second, to_column=ready_column, user=user)
    client.force_login(user)

    ready = _column_html(client.get(_url(board)).content.decode(), ready_column)

    assert "wip--exceeded" in ready
    assert "wip--soft" in ready
    assert "over limit by 1" in ready


def test_cards_show_the_agent_and_label_simulated_providers(client, user):
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="summariser", capabilities=["summarise"])
    task = services.task_create(board=board, title="Summarise the report", capability="summarise", priority=3)
    services.board_pull(board_id=board.pk)
    client.force_login(user)

    doing = _column_html(client.get(_url(board)).content.decode(), column(board, "in_progress"))

    assert f'id="task-{task.pk}"' in doing
    assert agent.name in doing
    assert '<span class="badge badge--sim">simulated</span>' in doing
    assert "summarise" in doing
    assert "P3" in doing
    assert re.search(r'running <time datetime="[^"]+" data-age>', doing)
    assert reverse("boards-task-detail", kwargs={"slug": board.slug, "pk": task.pk}) in doing


def test_done_cards_show_confidence_and_failure(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], max_attempts=1)
    good = services.task_create(board=board, title="Good one")
    bad = services.task_create(board=board, title="Bad one")
    claims = {c.task_id: c.lease_token for c in services.board_pull(board_id=board.pk)}
    services.task_complete(task_id=good.pk, lease_token=claims[good.pk], output="ok", confidence=0.87)
    services.task_attempt_fail(task_id=bad.pk, lease_token=claims[bad.pk], error="model timed out")
    client.force_login(user)

    done = _column_html(client.get(_url(board)).content.decode(), column(board, "done"))

    assert "87%" in done
    assert "card--failed" in done
    assert "Failed</strong> after 1 attempt: model timed out" in done


def test_blocked_cards_show_their_note(client, user):
    board = make_board()
    task = services.task_create(board=board, title="Needs data")
    services.task_block(task=task, user=user, note="Waiting for the data sheet")
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    assert "card--blocked" in html
    assert "<strong>Blocked:</strong> Waiting for the data sheet" in html


def test_cards_show_attempts_after_the_first(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], max_attempts=3)
    task = services.task_create(board=board, title="Flaky")
    for _ in range(2):
        (claim,) = services.board_pull(board_id=board.pk)
        services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="flaky model")
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    assert "attempt 2" in html
    assert "Last attempt failed: flaky model" in html


def _backlog_html(client, user, tasks: int) -> str:
    """The Backlog's markup on the page of a new board with ``tasks`` tasks in it."""
    board = make_board()
    for i in range(tasks):
        services.task_create(board=board, title=f"Task {i}")
    client.force_login(user)
    return _column_html(client.get(_url(board)).content.decode(), column(board, "backlog"))


def test_a_column_draws_at_most_the_card_limit_and_counts_the_rest(client, user, settings):
    settings.KAIZEN_COLUMN_CARD_LIMIT = 3

    backlog = _backlog_html(client, user, tasks=5)

    assert backlog.count('class="card ') == 3
    assert "+2 more" in backlog
    assert re.search(r"wip-count[^>]*>\s*5<", backlog)


def test_a_column_without_a_wip_limit_is_counted_up_to_the_cap_and_a_limited_one_exactly(
    client, user, settings
):
    # Counting every task of a Done column (the board's whole history) at every draw
    # grew with the history: past KAIZEN_COLUMN_COUNT_CAP it says "more than".
    settings.KAIZEN_COLUMN_COUNT_CAP = 4
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2
    board = make_board(ready_limit=10, hard=False)
    for i in range(6):
        services.task_create(board=board, title=f"Task {i}")
    ready = column(board, "ready")
    for task in Task.objects.filter(board=board)[:5]:
        services.task_move(task=task, to_column=ready, user=user)
    for i in range(5):
        services.task_create(board=board, title=f"More {i}")
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    backlog = _column_html(html, column(board, "backlog"))  # 6 tasks, no WIP limit
    assert re.search(r"wip-count[^>]*>\s*4\+<", backlog)
    assert ">over 2 more</a>" in backlog
    limited = _column_html(html, ready)  # 5 tasks, past the cap but under its limit of 10
    assert re.search(r"wip-count[^>]*>\s*5 / 10<", limited)
    assert ">+3 more</a>" in limited
    assert "5 free" in limited

    # The JSON API still counts every task.
    counts = {c.role: c.task_count for c in selectors.board_column_counts_get(board=board, exact=True)}
    assert (counts["backlog"], counts["ready"]) == (6, 5)


@pytest.mark.parametrize(("tasks", "label"), [(4, "4"), (5, "4+")])
def test_a_column_counted_to_the_cap_is_exact_and_one_more_is_past_it(tasks, label, client, user, settings):
    settings.KAIZEN_COLUMN_COUNT_CAP = 4
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2

    backlog = _backlog_html(client, user, tasks)

    assert re.search(rf"wip-count[^>]*>\s*{re.escape(label)}<", backlog)
    assert (">+2 more</a>" if tasks == 4 else ">over 2 more</a>") in backlog


def test_the_cap_is_above_the_cards_drawn_whatever_it_is_set_to(client, user, settings):
    # A cap at or below the card limit would say "over 0 more", or less.
    settings.KAIZEN_COLUMN_COUNT_CAP = 2
    settings.KAIZEN_COLUMN_CARD_LIMIT = 3

    backlog = _backlog_html(client, user, tasks=6)

    assert backlog.count('class="card ') == 3
    assert re.search(r"wip-count[^>]*>\s*4\+<", backlog)
    assert ">over 1 more</a>" in backlog


def test_a_live_update_shows_a_capped_count_as_the_page_does(settings):
    settings.KAIZEN_COLUMN_COUNT_CAP = 4
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2
    board = make_board()
    for i in range(6):
        services.task_create(board=board, title=f"Task {i}")
    backlog = column(board, "backlog")

    html = render_board_update(board_id=board.pk, column_ids={backlog.pk})

    assert re.search(r"wip-count[^>]*>\s*4\+<", _column_html(html, backlog))


def test_the_backlog_is_ordered_by_priority(client, user):
    board = make_board()
    services.task_create(board=board, title="Low", priority=-1)
    services.task_create(board=board, title="Urgent", priority=5)
    services.task_create(board=board, title="Normal", priority=0)
    client.force_login(user)

    backlog = _column_html(client.get(_url(board)).content.decode(), column(board, "backlog"))

    assert re.findall(r'class="card-title"[^>]*>([^<]+)<', backlog) == ["Urgent", "Normal", "Low"]


def test_the_query_count_does_not_grow_with_the_number_of_tasks(client, user, django_assert_num_queries):
    board = make_board(ready_limit=None, doing_limit=None)
    make_agent(boards=[board], concurrency=100, max_attempts=3)
    client.force_login(user)

    def add_tasks(n: int) -> None:
        for i in range(n):
            services.task_create(board=board, title=f"Task {i}", priority=i % 3)
        # Spread them over the columns, with agents on the running ones.
        claims = services.board_pull(board_id=board.pk)
        for claim in claims[: len(claims) // 2]:
            services.task_complete(
                task_id=claim.task_id, lease_token=claim.lease_token, output="x", confidence=0.9
            )

    add_tasks(3)
    with CaptureQueriesContext(connection) as few:
        client.get(_url(board))

    add_tasks(40)
    board_sle_recent.clear()  # read again, as it is every few seconds
    with django_assert_num_queries(len(few.captured_queries)):
        response = client.get(_url(board))
    assert response.content.decode().count('class="card ') == board.tasks.count()


def test_it_offers_the_boards_capabilities_in_the_add_task_form(client, user):
    board = make_board()
    make_agent(boards=[board], capabilities=["summarise", "classify"])
    make_agent(boards=[make_board()], capabilities=["elsewhere"])
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    assert '<option value="classify">classify</option>' in html
    assert '<option value="summarise">summarise</option>' in html
    assert "elsewhere" not in html


def test_it_connects_the_page_to_the_boards_websocket(client, user, board):
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    assert f'ws-connect="/ws/boards/{board.slug}/"' in html
    assert 'hx-headers=\'{"X-CSRFToken": "' in html
    assert "sortablejs/Sortable.min.js" in html
    assert "hx-ws-2" in html


def test_it_shows_a_banner_when_the_board_is_paused(client, user):
    board = make_board()
    services.board_set_paused(board=board, paused=True)
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    assert "The line is stopped:" in html


def test_the_paused_banner_is_under_the_title_above_the_form(client, user):
    board = make_board()
    services.board_set_paused(board=board, paused=True)
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    # The first thing after the board's header, before the form and the columns.
    assert html.index("</header>", html.index('class="board-header"')) < html.index("The line is stopped:")
    assert html.index("The line is stopped:") < html.index('id="task-form"')


def test_the_agents_strip_says_in_words_which_agents_are_paused(client, user):
    board = make_board()
    make_agent(boards=[board], name="Resting agent")
    working = make_agent(boards=[board], name="Working agent")
    services.agent_set_paused(agent=Agent.objects.get(name="Resting agent"), paused=True)
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    agents = re.findall(r'<li class="agent[^"]*">(.*?)</li>', html, re.S)
    resting = next(a for a in agents if "Resting agent" in a)
    assert re.search(r">\s*paused\s*<", resting)
    assert working.name in html
    assert not any(re.search(r">\s*paused\s*<", a) for a in agents if working.name in a)


def test_an_htmx_request_gets_the_whole_page_too(client, user, board):
    # The live part alone is boards-body's job; the page has one answer.
    client.force_login(user)

    response = client.get(_url(board), headers=HTMX)

    html = response.content.decode()
    assert "<html" in html
    assert 'id="task-form"' in html
    assert html.count('<section id="column-') == 5


def test_agent_names_on_the_strip_link_to_their_pages(client, user):
    board = make_board()
    agent = make_agent(boards=[board], name="linker")
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    strip = html[html.index('id="board-agents"') :]
    assert f'<a class="agent-name" href="{agent.get_absolute_url()}">linker</a>' in strip


def test_cards_show_cost_calls_and_the_tier_taken(client, user):
    board = make_board(backlog=False)
    agent = make_agent(boards=[board])
    task = services.task_create(board=board, title="Costed")
    (claim,) = services.board_pull(board_id=board.pk)
    services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output="ok", confidence=0.9)
    Task.objects.filter(pk=task.pk).update(
        cost=Decimal("0.0021"), model_calls=3, accepted_tier=2, cache_hits=1, tokens_in=120, tokens_out=80
    )
    plain = services.task_create(board=board, title="Not run yet")
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    card = re.search(rf'<li id="task-{task.pk}".*?</li>', html, re.S).group(0)
    ledger = re.search(r'<p class="card-ledger">(.*?)</p>', card, re.S).group(1)
    assert "$0.0021" in ledger
    assert "3 calls" in ledger
    assert "tier 2" in ledger
    assert "1 cached" in ledger
    assert "reused" not in ledger
    plain_card = re.search(rf'<li id="task-{plain.pk}".*?</li>', html, re.S).group(0)
    assert "card-ledger" not in plain_card
    assert agent.name in card


def test_a_card_with_a_reused_result_says_so(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], error_rate=0.0)
    tasks = []
    for title in ("Original", "Copy"):
        task = services.task_create(board=board, title=title, input="identical input")
        (claim,) = services.board_pull(board_id=board.pk)
        runtime.run(task.pk, str(claim.lease_token))
        tasks.append(task)
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    original, copy = (re.search(rf'<li id="task-{t.pk}".*?</li>', html, re.S).group(0) for t in tasks)
    copy_ledger = re.search(r'<p class="card-ledger">(.*?)</p>', copy, re.S).group(1)
    assert ">reused<" in copy_ledger
    assert "$0.0000" in copy_ledger  # no model called, nothing spent
    assert not re.search(r"\d+ calls?<", copy_ledger)
    original_ledger = re.search(r'<p class="card-ledger">(.*?)</p>', original, re.S).group(1)
    assert ">reused<" not in original_ledger
    assert ">1 call<" in original_ledger and ">tier 1<" in original_ledger


def test_the_board_links_to_its_task_list_and_a_full_column_to_the_rest_of_its_tasks(client, user, settings):
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2
    board = make_board()
    for n in range(3):
        services.task_create(board=board, title=f"Task {n}")
    backlog = board.columns.get(role="backlog")
    client.force_login(user)

    html = client.get(board.get_absolute_url()).content.decode()

    task_list = f"/boards/{board.slug}/tasks/"
    assert f'href="{task_list}">All tasks</a>' in html
    assert f'<a href="{task_list}?column={backlog.pk}">+1 more</a>' in html
