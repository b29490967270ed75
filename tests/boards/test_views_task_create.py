"""Adding a task from the form on the board, with and without htmx."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from boards import services
from boards.models import Board, Task
from tests.factories import HTMX, column, make_agent, make_board

pytestmark = pytest.mark.django_db


def _url(board: Board) -> str:
    return reverse("boards-task-create", kwargs={"slug": board.slug})


def test_it_redirects_anonymous_users_to_login(client, board):
    response = client.post(_url(board), {"title": "Sneaky"})
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))
    assert not Task.objects.exists()


def test_it_rejects_get(client, user, board):
    client.force_login(user)
    assert client.get(_url(board)).status_code == 405


def test_it_creates_the_task_and_redirects_to_the_board(client, user, board):
    make_agent(boards=[board], capabilities=["summarise"])
    client.force_login(user)

    response = client.post(
        _url(board),
        {"title": "Summarise Q3", "input": "The text", "capability": "summarise", "priority": "2"},
    )

    assert response.status_code == 302
    assert response.url == board.get_absolute_url()
    task = Task.objects.get()
    assert (task.title, task.input, task.capability, task.priority) == (
        "Summarise Q3",
        "The text",
        "summarise",
        2,
    )
    assert task.column == column(board, "backlog")
    assert task.events.get().user == user
    page = client.get(response.url).content.decode()
    assert "Added “Summarise Q3” to Backlog." in page


def test_htmx_success_returns_a_fresh_form_the_message_and_the_new_card(client, user, board):
    client.force_login(user)

    response = client.post(_url(board), {"title": "From htmx", "priority": "0"}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    task = Task.objects.get()
    # The form comes back empty, with the title focused for the next task.
    assert html.lstrip().startswith('<form id="task-form"')
    assert 'name="title"' in html and 'value="From htmx"' not in html
    assert "autofocus" in html
    assert '<div id="board-status" hx-swap-oob="innerHTML">' in html
    assert "Added “From htmx” to Backlog." in html
    backlog = column(board, "backlog")
    assert f'<section id="column-{backlog.pk}"' in html
    assert f'id="task-{task.pk}"' in html
    assert 'hx-swap-oob="outerHTML"' in html


def test_a_missing_priority_means_normal(client, user, board):
    client.force_login(user)

    client.post(_url(board), {"title": "No priority given"}, headers=HTMX)

    assert Task.objects.get().priority == 0


def test_htmx_errors_show_inline_in_the_form(client, user, board):
    client.force_login(user)

    response = client.post(_url(board), {"title": "", "priority": "5000"}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="task-form"')
    assert "This field is required." in html
    assert "Ensure this value is less than or equal to 1000." in html
    assert 'aria-invalid="true"' in html
    assert not Task.objects.exists()


def test_the_service_message_for_an_unknown_capability_shows_on_the_field(client, user, board):
    make_agent(boards=[board], capabilities=["summarise"])
    client.force_login(user)

    response = client.post(_url(board), {"title": "Translate", "capability": "translate"}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert "No agent on this board offers &#x27;translate&#x27; (offered: summarise)." in html
    assert 'id="id_capability_error"' in html
    assert not Task.objects.exists()


def test_a_full_intake_column_is_reported_above_the_form(client, user):
    board = make_board(backlog=False, ready_limit=1)
    services.task_create(board=board, title="Fills Ready")
    client.force_login(user)

    response = client.post(_url(board), {"title": "One too many"}, headers=HTMX)

    assert response.status_code == 422
    assert "Ready is at its hard WIP limit (1/1)" in response.content.decode()
    assert Task.objects.count() == 1


def test_without_htmx_errors_render_the_board_with_the_form(client, user, board):
    client.force_login(user)

    response = client.post(_url(board), {"title": "   ", "input": "kept"})

    assert response.status_code == 422
    html = response.content.decode()
    assert "<html" in html
    assert "This field is required." in html
    assert "kept</textarea>" in html
    assert html.count('<section id="column-') == 5


def test_an_unknown_board_is_404(client, user):
    client.force_login(user)
    assert client.post("/boards/nope/tasks/new/", {"title": "x"}).status_code == 404


def test_it_enforces_csrf(user, board):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    refused = client.post(_url(board), {"title": "No token"}, headers=HTMX)
    assert refused.status_code == 403
    assert not Task.objects.exists()

    # The page puts the token in hx-headers on <body>; htmx sends it as X-CSRFToken.
    page = client.get(board.get_absolute_url()).content.decode()
    token = re.search(r"hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'", page).group(1)
    accepted = client.post(_url(board), {"title": "With token"}, headers={**HTMX, "X-CSRFToken": token})
    assert accepted.status_code == 200
    assert Task.objects.get().title == "With token"


def test_reuse_is_offered_checked_and_allowed_by_default(client, user, board):
    client.force_login(user)

    html = client.get(board.get_absolute_url()).content.decode()
    assert re.search(r'<input type="checkbox" name="allow_reuse"[^>]* checked', html)
    assert "Reuse an earlier identical result" in html

    client.post(_url(board), {"title": "Reuse me", "allow_reuse": "on"})
    assert Task.objects.get().allow_reuse is True


def test_an_unticked_reuse_box_stores_allow_reuse_false(client, user, board):
    client.force_login(user)

    response = client.post(_url(board), {"title": "Fresh answer please"}, headers=HTMX)

    assert response.status_code == 200
    assert Task.objects.get().allow_reuse is False
    # The fresh form offers reuse again for the next task.
    assert re.search(r'name="allow_reuse"[^>]* checked', response.content.decode())


def test_the_form_keeps_an_unticked_reuse_box_when_it_has_errors(client, user, board):
    client.force_login(user)

    response = client.post(_url(board), {"title": ""}, headers=HTMX)

    assert response.status_code == 422
    tag = re.search(r'<input type="checkbox" name="allow_reuse"[^>]*>', response.content.decode()).group(0)
    assert "checked" not in tag
