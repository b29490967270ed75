"""The board's live part, re-fetched by a reconnecting browser to catch up."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from boards import services
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def _url(board) -> str:
    return reverse("boards-body", kwargs={"slug": board.slug})


def test_it_redirects_anonymous_users_to_login(client, board):
    assert client.get(_url(board)).status_code == 302


def test_it_returns_the_agents_and_every_column_without_the_page(client, user, board):
    make_agent(boards=[board], name="helper")
    task = services.task_create(board=board, title="Catch me up")
    client.force_login(user)

    response = client.get(_url(board))

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert 'id="board-agents"' in html and "helper" in html
    assert html.count('<section id="column-') == 5
    assert f'id="task-{task.pk}"' in html
    # Swapped into #board-body as they are: not out of band.
    assert not re.search(r'<section id="(column-\d+|board-agents)"[^>]*hx-swap-oob', html)


def test_it_sends_the_paused_banner_out_of_band_to_its_place_above_the_form(client, user, board):
    services.board_set_paused(board=board, paused=True)
    client.force_login(user)

    html = client.get(_url(board)).content.decode()

    assert re.search(r'<div id="board-banner"[^>]*hx-swap-oob="outerHTML"', html)
    assert "The line is stopped:" in html


def test_it_is_404_for_an_unknown_board(client, user):
    client.force_login(user)
    assert client.get("/boards/nope/body/").status_code == 404
