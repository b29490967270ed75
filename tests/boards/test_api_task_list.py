"""GET /api/v1/boards/{slug}/tasks: a board's tasks, filtered and a page at a time."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone

from boards import services
from boards.api.schemas import MAX_PAGE_SIZE
from boards.models import Column, Task
from boards.task_files import TaskRow
from tests.boards.api_support import client_for, token_for
from tests.factories import column, make_agent, make_board

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(db):
    return client_for(token_for())


def listing(api, board, query: str = "") -> dict:
    response = api.get(f"/api/v1/boards/{board.slug}/tasks" + (f"?{query}" if query else ""))
    assert response.status_code == 200, response.content
    return response.json()


def titles(body: dict) -> list[str]:
    return [task["title"] for task in body["results"]]


def test_it_lists_the_boards_tasks_newest_first(api, board):
    services.task_create(board=board, title="first")
    services.task_create(board=board, title="second")
    services.task_create(board=make_board(), title="another board's")

    body = listing(api, board)

    assert body["count"] == 2
    assert titles(body) == ["second", "first"]
    assert (body["next"], body["previous"]) == (None, None)
    task = body["results"][0]
    assert task["board"] == board.slug and task["column"] == {"name": "Backlog", "role": "backlog"}


def test_it_pages_with_limit_and_offset_and_links_the_next_page_with_the_filters(api):
    board = make_board(ready_limit=None)
    services.tasks_import(board=board, rows=[TaskRow(line=n, title=f"weld {n}") for n in range(7)])
    services.task_create(board=board, title="other")

    first = listing(api, board, "q=weld&limit=3")
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()

    assert first["count"] == second["count"] == third["count"] == 7
    assert [len(page["results"]) for page in (first, second, third)] == [3, 3, 1]
    seen = titles(first) + titles(second) + titles(third)
    assert sorted(seen) == sorted(f"weld {n}" for n in range(7))
    assert parse_qs(urlsplit(first["next"]).query) == {"q": ["weld"], "limit": ["3"], "offset": ["3"]}
    assert third["next"] is None
    assert parse_qs(urlsplit(third["previous"]).query)["offset"] == ["3"]


def test_a_page_larger_than_the_maximum_is_refused_naming_limit(api, board):
    response = api.get(f"/api/v1/boards/{board.slug}/tasks?limit={MAX_PAGE_SIZE + 1}")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["limit"]


def test_it_filters_by_status_column_agent_capability_and_text(api, board):
    welder = make_agent(boards=[board], name="welder", capabilities=["weld"])
    make_agent(boards=[board], name="painter", capabilities=["paint"])
    welded = services.task_create(board=board, title="Weld seam", input="photo", capability="weld")
    done = column(board, Column.Role.DONE)
    Task.objects.filter(pk=welded.pk).update(agent=welder, column=done, status=Task.Status.DONE)
    services.task_create(board=board, title="Paint door", input="the WELDED frame", capability="paint")
    services.task_create(board=board, title="Sweep")

    assert titles(listing(api, board, "status=done")) == ["Weld seam"]
    assert sorted(titles(listing(api, board, "status=done&status=backlog"))) == [
        "Paint door",
        "Sweep",
        "Weld seam",
    ]
    assert titles(listing(api, board, f"column={done.pk}")) == ["Weld seam"]
    assert titles(listing(api, board, "agent=welder")) == ["Weld seam"]
    assert titles(listing(api, board, "capability=paint")) == ["Paint door"]
    assert titles(listing(api, board, "q=weld")) == ["Paint door", "Weld seam"]
    assert titles(listing(api, board, "q=WELD&capability=weld")) == ["Weld seam"]


def test_an_unknown_column_or_agent_matches_nothing_rather_than_erring(api, board):
    services.task_create(board=board, title="T")

    assert listing(api, board, "column=999999")["count"] == 0
    assert listing(api, board, "agent=nobody")["count"] == 0


def test_it_filters_by_creation_and_finishing_time(api, board):
    now = timezone.now()
    old = services.task_create(board=board, title="old")
    Task.objects.filter(pk=old.pk).update(
        created_at=now - timedelta(days=3), finished_at=now - timedelta(days=2)
    )
    services.task_create(board=board, title="new")
    day_ago = (now - timedelta(days=1)).isoformat().replace("+00:00", "Z")

    assert titles(listing(api, board, f"created_after={day_ago}")) == ["new"]
    assert titles(listing(api, board, f"created_before={day_ago}")) == ["old"]
    assert titles(listing(api, board, f"finished_before={day_ago}")) == ["old"]
    assert titles(listing(api, board, f"finished_after={day_ago}")) == []
    # Without an offset a time is UTC; an offset is honoured.
    naive = (now - timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert titles(listing(api, board, f"created_after={naive}")) == ["new"]
    far_east = (now - timedelta(days=1)).astimezone(timezone.get_fixed_timezone(600)).isoformat()
    assert titles(listing(api, board, "created_after=" + far_east.replace("+", "%2B"))) == ["new"]


def test_a_time_at_the_edge_of_the_calendar_is_no_server_error(api, board):
    services.task_create(board=board, title="T")

    assert listing(api, board, "created_before=9999-12-31T23:59:59-23:59")["count"] == 1
    assert listing(api, board, "created_after=0001-01-01T00:00:00%2B23:59")["count"] == 1


def test_it_sorts_as_asked(api, board):
    for title, priority in (("b", 1), ("a", 9), ("c", 5)):
        services.task_create(board=board, title=title, priority=priority)

    assert titles(listing(api, board, "sort=title")) == ["a", "b", "c"]
    assert titles(listing(api, board, "sort=priority")) == ["a", "c", "b"]
    assert titles(listing(api, board, "sort=oldest")) == ["b", "a", "c"]


def test_it_uses_a_bounded_number_of_queries_whatever_the_task_count(api, django_assert_max_num_queries):
    board = make_board(ready_limit=None)
    agents = [make_agent(boards=[board], name=f"agent {n}") for n in range(4)]
    services.tasks_import(board=board, rows=[TaskRow(line=n, title=f"t{n}") for n in range(300)])
    for n, task in enumerate(Task.objects.filter(board=board)):
        Task.objects.filter(pk=task.pk).update(agent=agents[n % 4])
    api.get("/api/v1/boards")  # the token's first use writes last_used_at; keep it out

    # The token, the board, the count and one page (its columns and agents joined).
    with django_assert_max_num_queries(4):
        body = listing(api, board, "limit=200")

    assert len(body["results"]) == 200
    assert {task["agent"]["name"] for task in body["results"]} == {f"agent {n}" for n in range(4)}


def test_the_schema_documents_the_list_its_filters_and_its_limits(db):
    schema = client_for("none").get("/api/v1/openapi.json").json()

    operation = schema["paths"]["/api/v1/boards/{slug}/tasks"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert {
        "slug",
        "status",
        "column",
        "agent",
        "capability",
        "q",
        "created_after",
        "created_before",
        "finished_after",
        "finished_before",
        "sort",
        "limit",
        "offset",
    } == set(parameters)
    assert parameters["limit"]["schema"]["maximum"] == MAX_PAGE_SIZE
    page = schema["components"]["schemas"]["TaskPageOut"]["properties"]
    assert set(page) == {"count", "next", "previous", "results"}
