"""The board page under load: its live part shared by the loads of a moment
(boards.fragments.board_live_html_get), and a number of queries that does not
grow with the board, whether the live part is rendered or shared."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from boards import services
from boards.fragments import board_live_html_clear
from boards.models import Board
from tests.factories import column, make_agent, make_board, make_user_with

pytestmark = pytest.mark.django_db

# Long enough that nothing a test does outlasts it.
A_MINUTE_MS = 60_000


def _url(board: Board) -> str:
    return reverse("boards-detail", kwargs={"slug": board.slug})


def _titles(html: str) -> list[str]:
    return re.findall(r'class="card-title"[^>]*>([^<]+)<', html)


def _fill(board: Board, n: int) -> None:
    """``n`` more tasks, spread over Backlog, Ready, In progress and Done."""
    for i in range(n):
        services.task_create(board=board, title=f"Task {i}", priority=i % 3)
    claims = services.board_pull(board_id=board.pk)
    for claim in claims[: len(claims) // 2]:
        services.task_complete(
            task_id=claim.task_id, lease_token=claim.lease_token, output="x", confidence=0.9
        )


def _queries(client, board: Board) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(_url(board)).status_code == 200
    return len(captured.captured_queries)


@pytest.mark.parametrize("max_age_ms", [0, A_MINUTE_MS], ids=["rendered", "shared"])
def test_the_query_count_does_not_grow_past_the_card_limit(client, settings, max_age_ms):
    settings.KAIZEN_COLUMN_CARD_LIMIT = 4
    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = max_age_ms
    board = make_board(ready_limit=None, doing_limit=None)
    make_agent(boards=[board], concurrency=100)
    # A reviewer: the page also draws the andon cord, with the board's agents.
    client.force_login(make_user_with("andon.review_escalation"))
    _fill(board, 3)
    client.get(_url(board))  # the first load renders what the next ones may share
    small = _queries(client, board)

    _fill(board, 60)
    board_live_html_clear()  # as if the kept rendering had grown old
    html = client.get(_url(board)).content.decode()

    assert _queries(client, board) == small
    # The board did grow past the limit: columns are capped, with a link to the rest.
    assert "more</a>" in html


def test_a_shared_load_makes_fewer_queries_than_a_rendered_one(client, user, settings):
    board = make_board()
    make_agent(boards=[board])
    client.force_login(user)
    _fill(board, 5)
    rendered = _queries(client, board)

    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = A_MINUTE_MS
    client.get(_url(board))
    shared = _queries(client, board)

    assert shared < rendered


def test_loads_within_the_max_age_share_the_live_part(client, user, settings):
    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = A_MINUTE_MS
    board = make_board()
    client.force_login(user)
    services.task_create(board=board, title="First")
    assert "First" in _titles(client.get(_url(board)).content.decode())

    services.task_create(board=board, title="Second")

    # Shown as it was a moment ago: the page's script catches up as its socket opens.
    assert "Second" not in _titles(client.get(_url(board)).content.decode())
    # What it catches up with is always fresh.
    body = client.get(reverse("boards-body", kwargs={"slug": board.slug})).content.decode()
    assert "Second" in _titles(body)


def test_a_load_past_the_max_age_renders_it_again(client, user, settings):
    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = A_MINUTE_MS
    board = make_board()
    client.force_login(user)
    client.get(_url(board))
    services.task_create(board=board, title="Later")

    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = 1  # the kept rendering is now too old

    assert "Later" in _titles(client.get(_url(board)).content.decode())


def test_the_page_after_the_viewers_own_task_shows_it(client, user, settings):
    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = A_MINUTE_MS
    board = make_board()
    make_agent(boards=[board])
    client.force_login(user)
    client.get(_url(board))

    # Without JavaScript: the form posts, and the board page follows with a message.
    response = client.post(
        reverse("boards-task-create", kwargs={"slug": board.slug}),
        {"title": "Mine", "input": "", "capability": "general", "priority": "0"},
        follow=True,
    )

    html = response.content.decode()
    assert "Added “Mine”" in html
    assert "Mine" in _titles(html)


def test_each_board_keeps_its_own_live_part(client, user, settings):
    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = A_MINUTE_MS
    first, second = make_board(), make_board()
    services.task_create(board=first, title="On the first")
    services.task_create(board=second, title="On the second")
    client.force_login(user)

    assert _titles(client.get(_url(first)).content.decode()) == ["On the first"]
    assert _titles(client.get(_url(second)).content.decode()) == ["On the second"]


def test_the_task_form_offers_the_capabilities_of_the_boards_agents(client, user):
    # The empty form's fields are kept rendered per set of capabilities.
    first, second = make_board(), make_board()
    make_agent(boards=[first], capabilities=["translate"])
    make_agent(boards=[second], capabilities=["summarise"])
    client.force_login(user)

    first_html = client.get(_url(first)).content.decode()
    second_html = client.get(_url(second)).content.decode()

    assert 'value="translate"' in first_html and 'value="summarise"' not in first_html
    assert 'value="summarise"' in second_html and 'value="translate"' not in second_html
    # Still a form that posts, with its CSRF token, on each.
    assert 'name="csrfmiddlewaretoken"' in first_html
    assert re.search(r'name="title"', column_free(first_html))


def test_the_capabilities_come_from_one_query_and_a_custom_class_says_its_own():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from boards.selectors import board_capabilities_get

    board = make_board()
    make_agent(boards=[board], capabilities=["translate", "summarise"])
    make_agent(boards=[board], capabilities=["translate"])
    make_agent(boards=[board], implementation="boards.example_agents.KeywordClassifier", capabilities=[])
    make_agent(boards=[make_board()], capabilities=["elsewhere"])

    with CaptureQueriesContext(connection) as queries:
        offered = board_capabilities_get(board=board)

    assert offered == ["classify", "summarise", "translate"]
    assert len(queries) == 1
    # Only what the capabilities are read from: not each agent's cascade and checks.
    sql = queries.captured_queries[0]["sql"]
    assert '"capabilities"' in sql and '"cascade"' not in sql and '"quality_checks"' not in sql


def column_free(html: str) -> str:
    """The page without its columns (the form's fields only appear once)."""
    start = html.find('<div id="board-body"')
    return html[:start] if start != -1 else html


def test_the_capped_backlog_links_to_the_rest(client, user, settings):
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2
    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = A_MINUTE_MS
    board = make_board()
    for i in range(5):
        services.task_create(board=board, title=f"Task {i}")
    client.force_login(user)
    backlog = column(board, "backlog")

    html = client.get(_url(board)).content.decode()

    more = re.search(r'<p class="more"><a href="([^"]+)">\+(\d+) more</a>', html)
    assert more is not None
    assert more.group(2) == "3"
    assert more.group(1) == reverse("boards-task-list", kwargs={"slug": board.slug}) + f"?column={backlog.pk}"


def test_a_cards_action_urls_are_its_views(client, user):
    # The card carries its page's URL once (data-url), and board.js names each
    # action by adding its word: each such URL is the action's view.
    board = make_board()
    task = services.task_create(board=board, title="Card")
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    detail = reverse("boards-task-detail", kwargs={"slug": board.slug, "pk": task.pk})
    assert f'data-url="{detail}"' in html
    for action in ("move", "step", "block", "unblock"):
        url = reverse(f"boards-task-{action}", kwargs={"slug": board.slug, "pk": task.pk})
        assert url == f"{detail}{action}/"
    assert f'<a class="card-title" href="{detail}">Card</a>' in html
    assert f'href="{detail}#block"' in html


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_rendering_from_long_ago_is_not_shown_while_another_load_renders(settings):
    # While one load renders the live part again, the others show the previous
    # rendering, but not one from a quiet spell long ago: they wait for the new one.
    import threading
    import time

    from boards import fragments

    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = 1000
    board = make_board()
    services.task_create(board=board, title="Now")
    long_ago = time.monotonic() - 11 * 1.0  # past STALE_FACTOR (10) max ages
    fragments._live_html[board.pk] = fragments.BoardLiveHtml(
        banner="", body="from long ago", rendered_at=long_ago, capabilities=(), cord_agents=()
    )
    lock = fragments._rendering.setdefault(board.pk, threading.Lock())
    lock.acquire()  # another load is rendering it
    shown: list[str] = []

    def load() -> None:
        try:
            shown.append(fragments.board_live_html_get(board=board).body)
        finally:
            connection.close()

    waiting = threading.Thread(target=load)
    waiting.start()
    waiting.join(timeout=0.5)
    still_waiting = waiting.is_alive()
    lock.release()
    waiting.join(timeout=60)

    assert still_waiting and shown and "from long ago" not in shown[0] and "Now" in shown[0]
