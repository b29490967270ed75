"""The task page: the task, its output, confidence and agent, and its history."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def test_it_redirects_anonymous_users_to_login(client, board):
    task = services.task_create(board=board, title="Private")
    response = client.get(task.get_absolute_url())
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_shows_the_output_confidence_agent_and_history(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board], name="writer", model="sim-large")
    task = services.task_create(board=board, title="Write it", input="The brief", user=user)
    (claim,) = services.board_pull(board_id=board.pk)
    services.task_complete(
        task_id=task.pk, lease_token=claim.lease_token, output="The answer", confidence=0.91
    )
    client.force_login(user)

    response = client.get(task.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Write it</h1>" in html
    assert "The brief" in html
    assert "The answer" in html
    assert "91%" in html
    assert "writer" in html and "sim-large" in html
    assert '<span class="badge badge--sim">simulated</span>' in html
    # created by the user, claimed and completed by the agent, in order
    kinds = ["Created", "Claimed", "Completed"]
    positions = [html.index(f"<td>{kind}</td>") for kind in kinds]
    assert positions == sorted(positions)
    assert "Ready → In progress" in html
    assert "In progress → Done" in html
    assert f"{user.get_username()} <span" in html


def test_it_offers_block_and_move_forms_that_work_without_javascript(client, user, board):
    task = services.task_create(board=board, title="Plain")
    client.force_login(user)

    html = client.get(task.get_absolute_url()).content.decode()

    assert f'action="{reverse("boards-task-block", kwargs={"slug": board.slug, "pk": task.pk})}"' in html
    assert f'action="{reverse("boards-task-move", kwargs={"slug": board.slug, "pk": task.pk})}"' in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_a_task_of_another_board_is_404(client, user, board):
    task = services.task_create(board=make_board(), title="Elsewhere")
    client.force_login(user)

    url = reverse("boards-task-detail", kwargs={"slug": board.slug, "pk": task.pk})
    assert client.get(url).status_code == 404
