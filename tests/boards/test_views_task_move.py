"""Moving a card by hand (drag and drop): where the rules allow, refused with a
message and 409 where they do not, and reordering the Ready queue with `before`."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services
from boards.models import Task, TaskEvent
from tests.factories import HTMX, column, make_agent, make_board

pytestmark = pytest.mark.django_db


def _url(task: Task) -> str:
    return reverse("boards-task-move", kwargs={"slug": task.board.slug, "pk": task.pk})


def _ready_order(board) -> list[str]:
    return list(
        Task.objects.filter(column=column(board, "ready"))
        .order_by("position")
        .values_list("title", flat=True)
    )


def test_it_redirects_anonymous_users_to_login(client, board):
    task = services.task_create(board=board, title="Mine")
    response = client.post(_url(task), {"column": column(board, "ready").pk})
    assert response.status_code == 302
    assert Task.objects.get().column == column(board, "backlog")


def test_it_rejects_get(client, user, board):
    task = services.task_create(board=board, title="Mine")
    client.force_login(user)
    assert client.get(_url(task)).status_code == 405


def test_it_moves_a_task_where_the_rules_allow(client, user, board):
    task = services.task_create(board=board, title="Ship it")
    ready = column(board, "ready")
    client.force_login(user)

    response = client.post(_url(task), {"column": ready.pk}, headers=HTMX)

    assert response.status_code == 200
    task.refresh_from_db()
    assert task.column == ready
    event = task.events.get(kind=TaskEvent.Kind.MOVED)
    assert event.user == user
    html = response.content.decode()
    assert "Moved “Ship it” from Backlog to Ready." in html
    # Both columns come back out of band, the card in its new one.
    backlog = column(board, "backlog")
    assert f'<section id="column-{backlog.pk}"' in html
    ready_html = html[html.index(f'<section id="column-{ready.pk}"') :]
    assert f'id="task-{task.pk}"' in ready_html
    assert html.count('hx-swap-oob="outerHTML"') == 2


def test_a_hard_limit_refuses_the_drop_with_409_and_the_message(client, user):
    board = make_board(ready_limit=2)
    ready = column(board, "ready")
    tasks = [services.task_create(board=board, title=f"Task {i}") for i in range(3)]
    for task in tasks[:2]:
        services.task_move(task=task, to_column=ready, user=user)
    client.force_login(user)

    response = client.post(_url(tasks[2]), {"column": ready.pk}, headers=HTMX)

    assert response.status_code == 409
    html = response.content.decode()
    assert '<p class="flash flash--error">Ready is at its hard WIP limit (2/2)' in html
    # The columns come back as the server has them, so the card goes back.
    backlog_html = html[html.index(f'<section id="column-{column(board, "backlog").pk}"') :]
    assert f'id="task-{tasks[2].pk}"' in backlog_html.split("</section>")[0]
    assert Task.objects.get(pk=tasks[2].pk).column == column(board, "backlog")


def test_a_soft_limit_allows_the_drop_and_marks_the_column(client, user):
    board = make_board(ready_limit=1, hard=False)
    ready = column(board, "ready")
    first, second = (services.task_create(board=board, title=t) for t in ("First", "Second"))
    services.task_move(task=first, to_column=ready, user=user)
    client.force_login(user)

    response = client.post(_url(second), {"column": ready.pk}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Ready is over its soft WIP limit (2/1)." in html
    ready_html = html[html.index(f'<section id="column-{ready.pk}"') :].split("</section>")[0]
    assert "wip--exceeded" in ready_html
    assert "over limit by 1" in ready_html
    assert Task.objects.get(pk=second.pk).column == ready


def test_moving_into_in_progress_is_refused(client, user, board):
    task = services.task_create(board=board, title="Do it now")
    services.task_move(task=task, to_column=column(board, "ready"), user=user)
    client.force_login(user)

    response = client.post(_url(task), {"column": column(board, "in_progress").pk}, headers=HTMX)

    assert response.status_code == 409
    assert "Tasks enter In progress only when an agent pulls them from Ready." in response.content.decode()
    assert Task.objects.get(pk=task.pk).column == column(board, "ready")


def test_moving_out_of_in_progress_is_refused(client, user):
    board = make_board(backlog=False)
    make_agent(boards=[board])
    task = services.task_create(board=board, title="Being worked on")
    services.board_pull(board_id=board.pk)
    client.force_login(user)

    response = client.post(_url(task), {"column": column(board, "done").pk}, headers=HTMX)

    assert response.status_code == 409
    assert "An agent is working on this task" in response.content.decode()


def test_dropping_before_a_card_reorders_the_ready_queue(client, user):
    board = make_board(backlog=False)
    first, second, third = (services.task_create(board=board, title=t) for t in ("First", "Second", "Third"))
    client.force_login(user)

    response = client.post(
        _url(third), {"column": column(board, "ready").pk, "before": first.pk}, headers=HTMX
    )

    assert response.status_code == 200
    assert "Reordered “Third” in Ready." in response.content.decode()
    assert _ready_order(board) == ["Third", "First", "Second"]
    assert third.events.filter(kind=TaskEvent.Kind.REORDERED, user=user).exists()


def test_dropping_at_the_end_of_the_ready_queue(client, user):
    board = make_board(backlog=False)
    first, second, third = (services.task_create(board=board, title=t) for t in ("First", "Second", "Third"))
    client.force_login(user)

    client.post(_url(first), {"column": column(board, "ready").pk}, headers=HTMX)

    assert _ready_order(board) == ["Second", "Third", "First"]


def test_a_column_of_another_board_is_a_bad_request(client, user, board):
    task = services.task_create(board=board, title="Stay home")
    elsewhere = column(make_board(), "ready")
    client.force_login(user)

    response = client.post(_url(task), {"column": elsewhere.pk}, headers=HTMX)

    assert response.status_code == 400
    assert "That column is not on this board." in response.content.decode()
    assert Task.objects.get(pk=task.pk).column == column(board, "backlog")


def test_a_missing_column_is_a_bad_request(client, user, board):
    task = services.task_create(board=board, title="Where to?")
    client.force_login(user)

    response = client.post(_url(task), {"column": "abc"}, headers=HTMX)

    assert response.status_code == 400
    assert "Enter a whole number." in response.content.decode()


def test_a_task_of_another_board_is_404(client, user, board):
    task = services.task_create(board=make_board(), title="Not here")
    client.force_login(user)

    url = reverse("boards-task-move", kwargs={"slug": board.slug, "pk": task.pk})
    assert client.post(url, {"column": column(board, "ready").pk}).status_code == 404


def test_without_htmx_it_redirects_to_the_task_with_a_message(client, user, board):
    task = services.task_create(board=board, title="No script")
    client.force_login(user)

    response = client.post(_url(task), {"column": column(board, "done").pk}, follow=True)

    assert response.redirect_chain[-1][0] == task.get_absolute_url()
    assert "Moved “No script” from Backlog to Done." in response.content.decode()


def test_without_htmx_a_refusal_renders_the_task_page_with_409(client, user, board):
    task = services.task_create(board=board, title="No script")
    client.force_login(user)

    response = client.post(_url(task), {"column": column(board, "in_progress").pk})

    assert response.status_code == 409
    html = response.content.decode()
    assert "<h1>No script</h1>" in html
    assert "Tasks enter In progress only when an agent pulls them from Ready." in html


# --- a defect waiting in Review -----------------------------------------------------------


def test_an_escalated_card_dropped_on_done_is_refused_and_put_back_in_review(client, user, board, agent):
    from andon.models import Escalation
    from tests.andon.helpers import escalate

    escalation = escalate(board)
    task = escalation.task
    review, done = column(board, "review"), column(board, "done")
    # A user with no andon permission: the board is theirs to use, the decision is not.
    client.force_login(user)

    response = client.post(_url(task), {"column": done.pk}, headers=HTMX)

    assert response.status_code == 409
    html = response.content.decode()
    assert "only approving, editing or rejecting it in the andon inbox" in html
    assert escalation.get_absolute_url() in html
    # Review comes back as the server has it: the card goes back there.
    review_html = html[html.index(f'<section id="column-{review.pk}"') :].split("</section>")[0]
    assert f'id="task-{task.pk}"' in review_html
    assert Escalation.objects.get(pk=escalation.pk).status == Escalation.Status.OPEN
    assert Task.objects.get(pk=task.pk).column == review


def test_without_htmx_moving_an_escalated_task_renders_the_task_page_with_409(client, user, board, agent):
    from tests.andon.helpers import escalate

    escalation = escalate(board)
    client.force_login(user)

    response = client.post(_url(escalation.task), {"column": column(board, "ready").pk})

    assert response.status_code == 409
    assert escalation.get_absolute_url() in response.content.decode()
    assert Task.objects.get(pk=escalation.task_id).status == Task.Status.REVIEW
