"""Unblocking a task."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services
from boards.models import Task, TaskEvent
from tests.factories import HTMX

pytestmark = pytest.mark.django_db


def _url(task: Task) -> str:
    return reverse("boards-task-unblock", kwargs={"slug": task.board.slug, "pk": task.pk})


@pytest.fixture
def blocked(board, user) -> Task:
    task = services.task_create(board=board, title="Stuck")
    return services.task_block(task=task, user=user, note="Waiting")


def test_it_redirects_anonymous_users_to_login(client, blocked):
    assert client.post(_url(blocked)).status_code == 302
    assert Task.objects.get(pk=blocked.pk).is_blocked


def test_it_rejects_get(client, user, blocked):
    client.force_login(user)
    assert client.get(_url(blocked)).status_code == 405


def test_it_unblocks_the_task(client, user, blocked):
    client.force_login(user)

    response = client.post(_url(blocked), headers=HTMX)

    assert response.status_code == 200
    task = Task.objects.get(pk=blocked.pk)
    assert not task.is_blocked
    assert task.blocked_note == ""
    assert task.events.filter(kind=TaskEvent.Kind.UNBLOCKED, user=user).exists()
    html = response.content.decode()
    assert "Unblocked “Stuck”." in html
    assert "card--blocked" not in html


def test_unblocking_a_task_that_is_not_blocked_says_so(client, user, board):
    task = services.task_create(board=board, title="Free")
    client.force_login(user)

    response = client.post(_url(task), headers=HTMX)

    assert response.status_code == 200
    assert "“Free” was not blocked." in response.content.decode()
    assert not task.events.filter(kind=TaskEvent.Kind.UNBLOCKED).exists()


def test_without_htmx_it_redirects_to_the_task(client, user, blocked):
    client.force_login(user)

    response = client.post(_url(blocked))

    assert response.status_code == 302
    assert response.url == blocked.get_absolute_url()
