"""The board page's andon cord: one "Stop the line" control with a scope (the whole
board or one of its agents), rendered by the page for reviewers only and never
pushed, so live updates cannot close it; others get neither the control nor the
right to post it."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from andon.models import LineStop
from boards.models import Board
from tests.factories import HTMX, make_agent, make_board, make_reviewer, make_user

pytestmark = pytest.mark.django_db


def _cord(board: Board) -> str:
    return reverse("boards-cord", kwargs={"slug": board.slug})


def _page(client, board: Board) -> str:
    return client.get(board.get_absolute_url()).content.decode()


def test_a_reviewer_gets_one_cord_with_the_board_and_each_agent_to_choose_from(client, board):
    welder = make_agent(boards=[board], name="welder")
    client.force_login(make_reviewer())

    html = _page(client, board)

    assert html.count('id="cord-form"') == 1
    assert f'action="{_cord(board)}"' in html
    assert '<option value="board">The whole board (every agent)</option>' in html
    assert f'<option value="agent-{welder.pk}">welder only</option>' in html


def test_the_cord_offers_only_this_boards_agents_by_name_with_no_query_of_its_own(client, board, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS = 60_000
    make_agent(boards=[board], name="welder")
    make_agent(boards=[board], name="painter")
    make_agent(boards=[make_board()], name="elsewhere")
    client.force_login(make_reviewer())
    _page(client, board)  # renders the live part, which reads the agents

    with CaptureQueriesContext(connection) as queries:
        html = _page(client, board)

    offered = re.findall(r'<option value="agent-\d+">(\w+) only</option>', html)
    assert offered == ["painter", "welder"]
    # Read with the live part's agents: no query names the agents table again.
    assert not [q for q in queries.captured_queries if '"boards_agent"' in q["sql"]]


def test_someone_who_may_not_pull_the_cord_gets_no_cord_in_the_page(client, board):
    make_agent(boards=[board], name="welder")
    client.force_login(make_user())

    html = _page(client, board)

    # Not hidden by CSS: absent.
    assert "cord-form" not in html
    assert reverse("andon-cord") not in html
    assert _cord(board) not in html
    assert "Pull the andon cord" not in html


def test_the_cord_is_not_in_the_live_part_of_the_page(client, board):
    make_agent(boards=[board], name="welder")
    client.force_login(make_reviewer())

    html = _page(client, board)
    body = html[html.index('id="board-body"') :]
    banner = html[html.index('id="board-banner"') : html.index("</div>", html.index('id="board-banner"'))]

    assert "cord" not in body
    assert "cord" not in banner


def test_a_reviewer_stops_the_whole_board(client, board):
    ana = make_reviewer(username="ana")
    client.force_login(ana)

    response = client.post(_cord(board), {"scope": "board", "reason": "prices are wrong"}, headers=HTMX)

    assert response.status_code == 200
    stop = LineStop.objects.get(restarted_at__isnull=True)
    assert (stop.board, stop.agent, stop.reason, stop.stopped_by) == (board, None, "prices are wrong", ana)
    assert "is stopped: prices are wrong" in response.content.decode()


def test_a_reviewer_stops_one_agent(client, board):
    welder = make_agent(boards=[board], name="welder")
    client.force_login(make_reviewer())

    response = client.post(_cord(board), {"scope": f"agent-{welder.pk}", "reason": "drifting"}, headers=HTMX)

    assert response.status_code == 200
    stop = LineStop.objects.get(restarted_at__isnull=True)
    assert (stop.board, stop.agent) == (None, welder)


def test_an_agent_of_another_board_is_refused(client, board):
    stranger = make_agent(boards=[make_board()], name="stranger")
    client.force_login(make_reviewer())

    response = client.post(_cord(board), {"scope": f"agent-{stranger.pk}", "reason": "x"}, headers=HTMX)

    assert response.status_code == 422
    assert "neither this board nor one of its agents" in response.content.decode()
    assert not LineStop.objects.exists()


def test_a_reason_is_needed(client, board):
    client.force_login(make_reviewer())

    response = client.post(_cord(board), {"scope": "board", "reason": "  "}, headers=HTMX)

    assert response.status_code == 422
    assert "Say why the line stops" in response.content.decode()
    assert not LineStop.objects.exists()


def test_without_javascript_it_goes_back_to_the_board_with_the_message(client, board):
    client.force_login(make_reviewer())

    response = client.post(_cord(board), {"scope": "board", "reason": "prices are wrong"}, follow=True)

    assert response.redirect_chain[-1][0] == board.get_absolute_url()
    assert "is stopped: prices are wrong" in response.content.decode()
    assert LineStop.objects.filter(board=board).exists()


def test_someone_who_is_not_a_reviewer_is_refused(client, board):
    client.force_login(make_user())

    response = client.post(_cord(board), {"scope": "board", "reason": "mine"}, headers=HTMX)

    assert response.status_code == 403
    assert not LineStop.objects.exists()


def test_it_takes_only_a_post(client, board):
    client.force_login(make_reviewer())

    assert client.get(_cord(board)).status_code == 405
