"""Blocking a task with a note."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services
from boards.models import Task, TaskEvent
from tests.factories import HTMX, make_agent, make_board

pytestmark = pytest.mark.django_db


def _url(task: Task) -> str:
    return reverse("boards-task-block", kwargs={"slug": task.board.slug, "pk": task.pk})


def test_it_redirects_anonymous_users_to_login(client, board):
    task = services.task_create(board=board, title="Mine")
    assert client.post(_url(task), {"note": "no"}).status_code == 302
    assert not Task.objects.get().is_blocked


def test_it_rejects_get(client, user, board):
    task = services.task_create(board=board, title="Mine")
    client.force_login(user)
    assert client.get(_url(task)).status_code == 405


def test_it_blocks_the_task_with_the_note(client, user, board):
    task = services.task_create(board=board, title="Needs data")
    client.force_login(user)

    response = client.post(_url(task), {"note": "Waiting for the data sheet"}, headers=HTMX)

    assert response.status_code == 200
    task.refresh_from_db()
    assert task.is_blocked
    assert task.blocked_note == "Waiting for the data sheet"
    assert task.events.filter(kind=TaskEvent.Kind.BLOCKED, user=user).exists()
    html = response.content.decode()
    assert "Blocked “Needs data”: Waiting for the data sheet" in html
    assert f'id="task-{task.pk}"' in html
    assert "card--blocked" in html


def test_it_needs_a_note(client, user, board):
    task = services.task_create(board=board, title="Needs data")
    client.force_login(user)

    response = client.post(_url(task), {"note": "   "}, headers=HTMX)

    assert response.status_code == 422
    assert "Say what blocks the task, so others know what to fix." in response.content.decode()
    assert not Task.objects.get(pk=task.pk).is_blocked


def test_without_htmx_a_missing_note_shows_on_the_form(client, user, board):
    task = services.task_create(board=board, title="Needs data")
    client.force_login(user)

    response = client.post(_url(task), {"note": ""})

    assert response.status_code == 422
    html = response.content.decode()
    assert 'id="id_note_error"' in html
    assert "Say what blocks the task, so others know what to fix." in html


def test_a_running_task_cannot_be_blocked(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board])
    task = services.task_create(board=board, title="Running")
    services.board_pull(board_id=board.pk)
    client.force_login(user)

    response = client.post(_url(task), {"note": "stop"}, headers=HTMX)

    assert response.status_code == 409
    assert "A task that is in progress cannot be blocked." in response.content.decode()


def test_without_htmx_it_redirects_to_the_task(client, user, board):
    task = services.task_create(board=board, title="Needs data")
    client.force_login(user)

    response = client.post(_url(task), {"note": "Supplier"}, follow=True)

    assert response.redirect_chain[-1][0] == task.get_absolute_url()
    html = response.content.decode()
    assert "Blocked “Needs data”: Supplier" in html
    assert 'id="unblock"' in html
