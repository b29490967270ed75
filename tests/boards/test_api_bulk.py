"""POST /api/v1/boards/{slug}/tasks/bulk: many tasks in one request, all or none."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from boards import services
from boards.api.schemas import MAX_BULK_TASKS
from boards.models import ApiToken, Column, Task, TaskEvent
from tests.boards.api_support import client_for, post_json, token_for
from tests.boards.test_worker import wait_until
from tests.factories import column, make_agent, make_board, make_user, make_writer

pytestmark = pytest.mark.django_db


def bulk_path(board) -> str:
    return f"/api/v1/boards/{board.slug}/tasks/bulk"


@pytest.fixture
def writer():
    return make_writer()


@pytest.fixture
def api_client(writer):
    return client_for(token_for(writer))


def test_it_adds_every_task_and_answers_201_with_them_in_order(api_client, board, agent, writer):
    sent = [
        {"title": f"Inspect weld {n}", "input": f"photo {n}", "capability": "general", "priority": n % 3}
        for n in range(25)
    ]

    response = post_json(api_client, bulk_path(board), {"tasks": sent})

    assert response.status_code == 201
    body = response.json()
    assert body["count"] == 25
    assert [t["title"] for t in body["tasks"]] == [t["title"] for t in sent]
    ids = [t["id"] for t in body["tasks"]]
    stored = Task.objects.in_bulk(ids)
    assert len(stored) == 25
    for out, task in zip(body["tasks"], sent, strict=True):
        row = stored[out["id"]]
        assert (row.title, row.input, row.priority) == (task["title"], task["input"], task["priority"])
        assert out["status"] == "backlog"
        assert out["column"] == {"name": "Backlog", "role": "backlog"}
        assert out["board"] == board.slug
        assert row.column == column(board, Column.Role.BACKLOG)
    # Each has its CREATED event, naming the token's user.
    events = TaskEvent.objects.filter(task_id__in=ids, kind=TaskEvent.Kind.CREATED)
    assert events.count() == 25
    assert set(events.values_list("user", flat=True)) == {writer.pk}


def test_its_queries_do_not_grow_with_the_batch(api_client, board):
    def queries(n: int) -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            response = post_json(
                api_client, bulk_path(board), {"tasks": [{"title": f"t{i}"} for i in range(n)]}
            )
        assert response.status_code == 201
        inserts = sum(q["sql"].lstrip().upper().startswith("INSERT") for q in captured)
        return len(captured) - inserts, inserts

    queries(1)  # the token's first use records it, once
    few, many = queries(5), queries(200)
    # The same reads and updates; the rows go in a few multi-row INSERTs (SQLite
    # caps the parameters of a statement, so more of them there), never one a task.
    assert many[0] == few[0]
    assert many[1] <= 200 / 10


def test_a_bad_task_refuses_the_batch_naming_its_index_and_field(api_client, board):
    tasks = [{"title": "fine"}, {"title": "also fine"}, {"title": "   "}, {"title": "ok", "priority": 5000}]

    response = post_json(api_client, bulk_path(board), {"tasks": tasks})

    assert response.status_code == 400
    body = response.json()
    assert set(body["errors"]) == {"tasks.2.title", "tasks.3.priority"}
    assert body["errors"]["tasks.2.title"] == ["Give the task a title."]
    assert "2 of 4 tasks have errors" in body["detail"]
    assert not Task.objects.exists()
    assert not TaskEvent.objects.exists()


def test_a_task_of_the_wrong_shape_is_named_by_its_index(api_client, board):
    response = post_json(
        api_client, bulk_path(board), {"tasks": [{"title": "fine"}, {"title": 7}, {"input": "x"}, "nope"]}
    )

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"tasks.1.title", "tasks.2.title", "tasks.3"}
    assert errors["tasks.2.title"] == ["This field is required."]
    assert errors["tasks.3"] == ["Send a JSON object here."]
    assert not Task.objects.exists()


def test_it_refuses_more_than_the_maximum(api_client, board):
    tasks = [{"title": "t"}] * (MAX_BULK_TASKS + 1)

    response = post_json(api_client, bulk_path(board), {"tasks": tasks})

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "tasks": [
            f"Send at most {MAX_BULK_TASKS:,} tasks a request (this one had 1,001): split the batch into several requests."
        ]
    }
    assert not Task.objects.exists()


def test_it_refuses_an_empty_batch(api_client, board):
    response = post_json(api_client, bulk_path(board), {"tasks": []})

    assert response.status_code == 400
    assert response.json()["errors"] == {"tasks": ["Send at least one task."]}


def test_a_batch_a_hard_wip_limit_has_no_room_for_is_refused_whole_with_409(api_client):
    board = make_board(ready_limit=5, backlog=False)

    response = post_json(api_client, bulk_path(board), {"tasks": [{"title": f"t{i}"} for i in range(6)]})

    assert response.status_code == 409
    assert "hard WIP limit of 5" in response.json()["detail"]
    assert not Task.objects.exists()
    # A batch that fits is taken.
    response = post_json(api_client, bulk_path(board), {"tasks": [{"title": f"t{i}"} for i in range(5)]})
    assert response.status_code == 201


def test_a_capability_no_agent_offers_is_a_409_naming_the_task(api_client, board, agent):
    tasks = [{"title": "a", "capability": "general"}, {"title": "b", "capability": "welding"}]

    response = post_json(api_client, bulk_path(board), {"tasks": tasks})

    assert response.status_code == 409
    assert list(response.json()["errors"]) == ["tasks.1.capability"]
    assert not Task.objects.exists()


def test_a_user_without_add_task_is_refused_403(board):
    user = make_user()
    token, key = services.api_token_create(user=user)
    ApiToken.objects.filter(pk=token.pk).update(access=ApiToken.Access.WRITE)

    response = post_json(client_for(key), bulk_path(board), {"tasks": [{"title": "T"}]})

    assert response.status_code == 403
    assert "boards.add_task" in response.json()["detail"]
    assert not Task.objects.exists()


def test_a_read_only_token_is_refused_403(board):
    client = client_for(token_for(access=ApiToken.Access.READ))

    response = post_json(client, bulk_path(board), {"tasks": [{"title": "T"}]})

    assert response.status_code == 403
    assert "read-only" in response.json()["detail"]
    assert not Task.objects.exists()


def test_a_token_scoped_to_another_board_is_refused_403(board, writer):
    other = make_board()
    client = client_for(token_for(writer, boards=[other]))

    response = post_json(client, bulk_path(board), {"tasks": [{"title": "T"}]})

    assert response.status_code == 403
    assert not Task.objects.exists()


def test_the_schema_documents_it(client):
    schema = client.get("/api/v1/openapi.json").json()

    operation = schema["paths"]["/api/v1/boards/{slug}/tasks/bulk"]["post"]
    assert operation["operationId"] == "task_bulk_create"
    assert f"{MAX_BULK_TASKS:,}" in operation["description"]
    assert {"201", "400", "403", "409", "413"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[-1]
    tasks = schema["components"]["schemas"][ref]["properties"]["tasks"]
    assert (tasks["minItems"], tasks["maxItems"]) == (1, MAX_BULK_TASKS)


@pytest.mark.worker
def test_a_real_worker_takes_a_bulk_batch_to_done(celery_worker):
    board = make_board(ready_limit=None, doing_limit=10)
    make_agent(boards=[board], name="bulk", latency_ms=0, error_rate=0, concurrency=10, quality_checks=[])
    client = client_for(token_for(make_writer()))

    response = post_json(
        client,
        bulk_path(board),
        {"tasks": [{"title": f"Summarise {n}", "input": f"report {n}"} for n in range(60)]},
    )

    assert response.status_code == 201
    ids = [t["id"] for t in response.json()["tasks"]]
    # The batch's commit asks the workers to pull.
    wait_until(
        "every task of the batch to reach Done",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.DONE).count() == len(ids),
    )
    completed = TaskEvent.objects.filter(task_id__in=ids, kind=TaskEvent.Kind.COMPLETED)
    assert completed.count() == len(ids)
