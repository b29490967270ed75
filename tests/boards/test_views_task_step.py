"""Keyboard moves: up/down reorder within the column, left/right move to the
neighbouring column where the rules allow."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services
from boards.models import Task
from tests.factories import HTMX, column, make_board

pytestmark = pytest.mark.django_db


def _url(task: Task) -> str:
    return reverse("boards-task-step", kwargs={"slug": task.board.slug, "pk": task.pk})


def _ready_order(board) -> list[str]:
    return list(
        Task.objects.filter(column=column(board, "ready"))
        .order_by("position")
        .values_list("title", flat=True)
    )


@pytest.fixture
def queue(db):
    """A board whose Ready queue holds First, Second, Third."""
    board = make_board(backlog=False)
    return board, [services.task_create(board=board, title=t) for t in ("First", "Second", "Third")]


def test_it_redirects_anonymous_users_to_login(client, queue):
    _, (first, *_) = queue
    assert client.post(_url(first), {"direction": "down"}).status_code == 302


def test_down_moves_a_card_one_place_later(client, user, queue):
    board, (first, *_) = queue
    client.force_login(user)

    response = client.post(_url(first), {"direction": "down"}, headers=HTMX)

    assert response.status_code == 200
    assert "Moved “First” down in Ready." in response.content.decode()
    assert _ready_order(board) == ["Second", "First", "Third"]


def test_up_moves_a_card_one_place_earlier(client, user, queue):
    board, (_, _, third) = queue
    client.force_login(user)

    client.post(_url(third), {"direction": "up"}, headers=HTMX)

    assert _ready_order(board) == ["First", "Third", "Second"]


def test_up_at_the_top_changes_nothing_and_says_so(client, user, queue):
    board, (first, *_) = queue
    client.force_login(user)

    response = client.post(_url(first), {"direction": "up"}, headers=HTMX)

    assert response.status_code == 200
    assert "“First” is already at the top of Ready." in response.content.decode()
    assert _ready_order(board) == ["First", "Second", "Third"]


def test_left_moves_to_the_neighbouring_column(client, user):
    board = make_board()
    task = services.task_create(board=board, title="Go right")
    client.force_login(user)

    response = client.post(_url(task), {"direction": "right"}, headers=HTMX)

    assert response.status_code == 200
    assert "Moved “Go right” from Backlog to Ready." in response.content.decode()
    assert Task.objects.get(pk=task.pk).column == column(board, "ready")


def test_right_into_in_progress_is_refused_with_409(client, user, queue):
    board, (first, *_) = queue
    client.force_login(user)

    response = client.post(_url(first), {"direction": "right"}, headers=HTMX)

    assert response.status_code == 409
    html = response.content.decode()
    assert "Tasks enter In progress only when an agent pulls them from Ready." in html
    # Both the card's column and the refused one come back, as the server has them.
    assert f'<section id="column-{column(board, "ready").pk}"' in html
    assert f'<section id="column-{column(board, "in_progress").pk}"' in html
    assert Task.objects.get(pk=first.pk).column == column(board, "ready")


def test_left_of_the_first_column_is_refused(client, user):
    board = make_board()
    task = services.task_create(board=board, title="Edge")
    client.force_login(user)

    response = client.post(_url(task), {"direction": "left"}, headers=HTMX)

    assert response.status_code == 409
    assert "There is no column to the left of Backlog." in response.content.decode()


def test_an_unknown_direction_is_a_bad_request(client, user, queue):
    board, (first, *_) = queue
    client.force_login(user)

    response = client.post(_url(first), {"direction": "sideways"}, headers=HTMX)

    assert response.status_code == 400
    assert "Use up, down, left or right." in response.content.decode()
    assert _ready_order(board) == ["First", "Second", "Third"]


def test_a_refused_step_re_renders_the_neighbour_the_board_draws_even_when_positions_tie(client, user):
    # Columns with one position are drawn in the order they were made: the
    # neighbour the service refuses is the one the board shows to the right.
    board = make_board(backlog=False)
    board.columns.update(position=0)
    task = services.task_create(board=board, title="Tied")
    client.force_login(user)

    response = client.post(_url(task), {"direction": "right"}, headers=HTMX)

    assert response.status_code == 409
    html = response.content.decode()
    assert "Tasks enter In progress only when an agent pulls them from Ready." in html
    assert f'<section id="column-{column(board, "in_progress").pk}"' in html


def test_a_step_past_a_soft_limit_says_so(client, user):
    board = make_board(ready_limit=1, hard=False)
    first = services.task_create(board=board, title="First")
    second = services.task_create(board=board, title="Second")
    services.task_move(task=first, to_column=column(board, "ready"), user=user)
    client.force_login(user)

    response = client.post(_url(second), {"direction": "right"}, headers=HTMX)

    assert response.status_code == 200
    assert (
        "Moved “Second” from Backlog to Ready. Ready is over its soft WIP limit (2/1)."
        in response.content.decode()
    )


def test_stepping_an_escalated_card_out_of_review_is_refused(client, user, board, agent):
    from andon.models import Escalation
    from tests.andon.helpers import escalate

    escalation = escalate(board)
    client.force_login(user)

    response = client.post(_url(escalation.task), {"direction": "right"}, headers=HTMX)

    assert response.status_code == 409
    html = response.content.decode()
    assert escalation.get_absolute_url() in html
    assert f'<section id="column-{column(board, "review").pk}"' in html
    assert Escalation.objects.get(pk=escalation.pk).status == Escalation.Status.OPEN
    assert Task.objects.get(pk=escalation.task_id).status == Task.Status.REVIEW
