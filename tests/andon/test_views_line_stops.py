"""The line stops page, the restart (reviewers only, with a note) and the andon
cord (reviewers only: a board or an agent, with a reason)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from andon import services as andon_services
from andon.models import LineStop
from tests.factories import HTMX, make_agent, make_reviewer, make_user

pytestmark = pytest.mark.django_db

STOPS = "/andon/stops/"
CORD = "/andon/cord/"


@pytest.fixture
def stop(ana, board) -> LineStop:
    return andon_services.line_stop(user=ana, board=board, reason="porosity in every seam")


def _restart(stop: LineStop) -> str:
    return reverse("andon-line-restart", kwargs={"pk": stop.pk})


# --- the page ---------------------------------------------------------------------


def test_it_shows_active_stops_and_the_history(client, ana, board, stop):
    agent = make_agent(boards=[board], name="welder")
    old = andon_services.line_stop(user=ana, agent=agent, reason="drifting answers")
    andon_services.line_restart(line_stop=old, user=ana, note="prompt rolled back")
    client.force_login(ana)

    html = client.get(STOPS).content.decode()

    active = html[html.index("Stopped now") : html.index("History")]
    assert f'id="stop-{stop.pk}"' in active and "porosity in every seam" in active
    assert "drifting answers" not in active
    history = html[html.index("History") :]
    assert "agent welder" in history and "prompt rolled back" in history
    assert history.count("<td>ana</td>") == 3  # two stops pulled, one restarted by ana


def test_the_page_is_for_reviewers_only(client):
    client.force_login(make_user())

    assert client.get(STOPS).status_code == 403


# --- restart ------------------------------------------------------------------------


def test_reviewer_restarts_the_line_with_a_note(client, ana, stop):
    client.force_login(ana)

    response = client.post(_restart(stop), {"note": "cleaned the nozzle"})

    assert (response.status_code, response.url) == (302, STOPS)
    stop.refresh_from_db()
    assert not stop.is_active
    assert (stop.restarted_by, stop.restart_note) == (ana, "cleaned the nozzle")
    assert "Restarted the line of board" in client.get(STOPS).content.decode()


def test_restart_needs_a_note(client, ana, stop):
    client.force_login(ana)

    response = client.post(_restart(stop), {"note": "  "})

    assert response.status_code == 422
    assert "Say what was done about the stop before restarting the line." in response.content.decode()
    stop.refresh_from_db()
    assert stop.is_active


def test_restarting_twice_is_409(client, ana, stop):
    andon_services.line_restart(line_stop=stop, user=make_reviewer(username="bob"), note="done")
    client.force_login(ana)

    response = client.post(_restart(stop), {"note": "me too"})

    assert response.status_code == 409
    assert "already restarted by bob" in response.content.decode()


def test_a_non_reviewer_cannot_restart(client, stop):
    client.force_login(make_user())

    assert client.post(_restart(stop), {"note": "let it run"}).status_code == 403
    stop.refresh_from_db()
    assert stop.is_active


# --- the cord ---------------------------------------------------------------------


def test_the_cord_stops_a_board(client, ana, board):
    client.force_login(ana)

    response = client.post(CORD, {"board": board.pk, "reason": "wrong drawings loaded"})

    assert (response.status_code, response.url) == (302, board.get_absolute_url())
    stop = LineStop.objects.get(board=board)
    assert (stop.is_active, stop.kind, stop.stopped_by, stop.reason) == (
        True,
        LineStop.Kind.CORD,
        ana,
        "wrong drawings loaded",
    )


def test_the_cord_stops_an_agent(client, ana, board):
    agent = make_agent(boards=[board], name="welder")
    client.force_login(ana)

    response = client.post(CORD, {"agent": agent.pk, "reason": "hallucinated part numbers"})

    assert response.status_code == 302
    stop = LineStop.objects.get(agent=agent)
    assert stop.is_active and stop.board is None


def test_the_cord_goes_back_to_next(client, ana, board):
    client.force_login(ana)

    response = client.post(CORD, {"board": board.pk, "reason": "jam", "next": "/andon/"})

    assert response.url == "/andon/"


def test_the_cord_ignores_a_foreign_next(client, ana, board):
    client.force_login(ana)

    response = client.post(CORD, {"board": board.pk, "reason": "jam", "next": "//evil.example/"})

    assert response.url == board.get_absolute_url()


def test_the_cord_with_htmx_answers_a_message(client, ana, board):
    client.force_login(ana)

    response = client.post(CORD, {"board": board.pk, "reason": "jam"}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.startswith('<p class="flash flash--success"')
    assert f"The line of board {board.name} is stopped: jam" in html


def test_the_cord_needs_a_reason(client, ana, board):
    client.force_login(ana)

    response = client.post(CORD, {"board": board.pk, "reason": ""}, headers=HTMX)

    assert response.status_code == 422
    assert "Say why the line stops" in response.content.decode()
    assert not LineStop.objects.exists()


def test_the_cord_without_javascript_and_without_a_reason_shows_its_form(client, ana, board):
    client.force_login(ana)

    response = client.post(CORD, {"board": board.pk, "reason": "", "next": "/boards/"})

    assert response.status_code == 422
    html = response.content.decode()
    assert "Say why the line stops" in html
    assert '<input type="hidden" name="next" value="/boards/">' in html


def test_the_cord_needs_a_board_or_an_agent(client, ana):
    client.force_login(ana)

    response = client.post(CORD, {"reason": "jam"}, headers=HTMX)

    assert response.status_code == 422
    assert "Choose a board or an agent" in response.content.decode()


def test_a_non_reviewer_cannot_pull_the_cord(client, board):
    client.force_login(make_user())

    assert client.post(CORD, {"board": board.pk, "reason": "jam"}).status_code == 403
    assert not LineStop.objects.exists()


def test_pulling_the_cord_twice_keeps_one_stop(client, ana, board):
    client.force_login(ana)

    client.post(CORD, {"board": board.pk, "reason": "jam"})
    client.post(CORD, {"board": board.pk, "reason": "still jammed"})

    assert LineStop.objects.filter(board=board).count() == 1
