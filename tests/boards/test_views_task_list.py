"""A board's task list: search, filters, order, pages; a GET form that htmx
enhances (only the results are swapped, the URL is pushed)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from boards import services
from boards.models import Column, Task
from tests.factories import HTMX, column, make_agent, make_board

pytestmark = pytest.mark.django_db


def list_url(board, **params) -> str:
    url = reverse("boards-task-list", kwargs={"slug": board.slug})
    if params:
        from urllib.parse import urlencode

        url += "?" + urlencode(params, doseq=True)
    return url


def titles(response) -> list[str]:
    """The titles in the results table, in order."""
    return re.findall(
        r'<th scope="row" class="task-table-title"><a href="[^"]+">([^<]+)</a>', response.content.decode()
    )


def finish(task: Task, *, when=None) -> Task:
    """Put a task in Done (as a run finishing would), at ``when``."""
    done = column(task.board, Column.Role.DONE)
    Task.objects.filter(pk=task.pk).update(
        column=done, status=Task.Status.DONE, finished_at=when or timezone.now()
    )
    task.refresh_from_db()
    return task


def test_it_redirects_anonymous_users_to_login(client, board):
    response = client.get(list_url(board))

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_lists_every_task_newest_first_with_a_count_and_links(logged_in, board):
    first = services.task_create(board=board, title="First in")
    second = services.task_create(board=board, title="Second in")

    response = logged_in.get(list_url(board))

    assert response.status_code == 200
    assert titles(response) == ["Second in", "First in"]
    html = response.content.decode()
    assert "2 tasks" in html
    assert f'href="{first.get_absolute_url()}"' in html
    assert f'href="{second.get_absolute_url()}"' in html


def test_the_done_columns_link_shows_every_done_task_not_only_the_boards_fifty(logged_in, board, settings):
    # The board draws KAIZEN_COLUMN_CARD_LIMIT cards a column, then "+N more":
    # that link (?column=<pk>) must reach the rest.
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2
    done = [finish(services.task_create(board=board, title=f"done {n}")) for n in range(5)]
    services.task_create(board=board, title="still waiting")

    response = logged_in.get(list_url(board, column=column(board, Column.Role.DONE).pk))

    assert sorted(titles(response)) == sorted(t.title for t in done)
    assert "5 tasks found" in response.content.decode()


def test_it_searches_title_and_input_ignoring_case(logged_in, board):
    services.task_create(board=board, title="Weld seam 4", input="photo")
    services.task_create(board=board, title="Invoice", input="The WELD was cracked")
    services.task_create(board=board, title="Unrelated", input="nothing")

    response = logged_in.get(list_url(board, q="weld"))

    assert sorted(titles(response)) == ["Invoice", "Weld seam 4"]


def test_it_filters_by_status_agent_and_capability(logged_in, board):
    welder = make_agent(boards=[board], name="welder", capabilities=["weld"])
    make_agent(boards=[board], name="painter", capabilities=["paint"])
    welded = services.task_create(board=board, title="welded", capability="weld")
    Task.objects.filter(pk=welded.pk).update(agent=welder)
    finish(welded)
    services.task_create(board=board, title="painted", capability="paint")

    assert titles(logged_in.get(list_url(board, status="done"))) == ["welded"]
    assert titles(logged_in.get(list_url(board, agent="welder"))) == ["welded"]
    assert titles(logged_in.get(list_url(board, capability="paint"))) == ["painted"]
    # The agents and capabilities of the board are offered in the filter form.
    html = logged_in.get(list_url(board)).content.decode()
    assert '<option value="welder">welder</option>' in html
    assert '<option value="paint">paint</option>' in html


def test_it_filters_by_the_days_created_and_finished(logged_in, board):
    old = services.task_create(board=board, title="old")
    Task.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    finish(old, when=timezone.now() - timedelta(days=9))
    services.task_create(board=board, title="new")
    today = timezone.localdate()

    assert titles(logged_in.get(list_url(board, created_from=today.isoformat()))) == ["new"]
    assert titles(logged_in.get(list_url(board, created_to=(today - timedelta(days=5)).isoformat()))) == [
        "old"
    ]
    # The "to" day counts whole: a task created today is found with to=today.
    assert sorted(titles(logged_in.get(list_url(board, created_to=today.isoformat())))) == ["new", "old"]
    nine_days_ago = (today - timedelta(days=9)).isoformat()
    found = logged_in.get(list_url(board, finished_from=nine_days_ago, finished_to=nine_days_ago))
    assert titles(found) == ["old"]


def test_it_sorts_by_the_order_chosen(logged_in, board):
    services.task_create(board=board, title="Beta", priority=1)
    services.task_create(board=board, title="Alpha", priority=9)
    services.task_create(board=board, title="Gamma", priority=5)

    assert titles(logged_in.get(list_url(board, sort="title"))) == ["Alpha", "Beta", "Gamma"]
    assert titles(logged_in.get(list_url(board, sort="priority"))) == ["Alpha", "Gamma", "Beta"]
    assert titles(logged_in.get(list_url(board, sort="oldest"))) == ["Beta", "Alpha", "Gamma"]


def test_it_pages_through_many_tasks_keeping_the_filters(logged_in):
    board = make_board(ready_limit=None)
    for n in range(53):
        services.task_create(board=board, title=f"match {n:02d}")
    services.task_create(board=board, title="other")

    first = logged_in.get(list_url(board, q="match"))
    html = first.content.decode()

    assert len(titles(first)) == 50
    assert "53 tasks found" in html and "Page 1 of 2" in html
    assert 'href="?q=match&amp;page=2"' in html
    second = logged_in.get(list_url(board, q="match", page=2))
    assert titles(second) == ["match 02", "match 01", "match 00"]
    # A page past the end shows the last, rather than an error.
    assert titles(logged_in.get(list_url(board, q="match", page=99))) == titles(second)


def test_it_uses_a_bounded_number_of_queries_whatever_the_task_count(
    logged_in, django_assert_max_num_queries
):
    board = make_board(ready_limit=None)
    agents = [make_agent(boards=[board], name=f"agent {n}") for n in range(3)]
    for n in range(120):
        task = services.task_create(board=board, title=f"task {n}")
        Task.objects.filter(pk=task.pk).update(agent=agents[n % 3])

    # Session, user, board, columns, agents, the count and the page; the
    # permission check for the import form adds two for a user who is no superuser.
    with django_assert_max_num_queries(10):
        response = logged_in.get(list_url(board))

    assert len(titles(response)) == 50


def test_a_column_of_another_board_is_refused_with_a_message(logged_in, board):
    other = make_board()

    response = logged_in.get(list_url(board, column=column(other, Column.Role.DONE).pk))

    assert response.status_code == 400
    assert "That column is not on this board." in response.content.decode()


def test_control_characters_in_the_search_are_refused_not_a_server_error(logged_in, board):
    # A NUL reached PostgreSQL from the API and came back as a 500.
    nul = logged_in.get(list_url(board, q="weld\x00"))
    bell = logged_in.get(list_url(board, q="weld\x07"))

    assert nul.status_code == 400
    assert "Null characters are not allowed." in nul.content.decode()
    assert bell.status_code == 400
    assert "control character (U+0007)" in bell.content.decode()


def test_the_filter_form_works_without_javascript_and_with_htmx(logged_in, board):
    html = logged_in.get(list_url(board)).content.decode()

    form = re.search(r'<form id="task-filters"[^>]*>', html).group()
    assert 'method="get"' in form
    assert f'action="{list_url(board)}"' in form
    assert f'hx-get="{list_url(board)}"' in form
    assert 'hx-push-url="true"' in form and 'hx-target="#task-results"' in form


def test_an_htmx_request_gets_only_the_results(logged_in, board):
    services.task_create(board=board, title="Found me")

    response = logged_in.get(list_url(board, q="found"), headers=HTMX)

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="task-results"')
    assert "Found me" in html
    # The form (and what is typed in it) is not replaced.
    assert 'id="task-filters"' not in html


def test_the_export_link_carries_the_filters(logged_in, board):
    services.task_create(board=board, title="Weld")

    html = logged_in.get(list_url(board, q="weld", sort="title")).content.decode()

    export = reverse("boards-task-export", kwargs={"slug": board.slug})
    assert f'href="{export}?q=weld&amp;sort=title"' in html


def test_an_htmx_request_with_bad_filters_lists_the_errors_in_the_results(logged_in, board):
    # Only the results are swapped, so the form's own error marks would not show.
    response = logged_in.get(
        list_url(board, created_from="2025-05-02", created_to="2025-05-01"), headers=HTMX
    )

    assert response.status_code == 400
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="task-results"')
    assert "<strong>Created to</strong>: This date is before the first one: swap them." in html
