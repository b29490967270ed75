"""The JSON API under /api/v1/: token auth, task intake, reads, errors, schema."""

from __future__ import annotations

import json

import pytest
from django.core import serializers
from django.test import Client

from boards import services
from boards.models import ApiToken, Column, Task, TaskEvent
from tests.factories import column, make_board, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_key(user) -> str:
    _, key = services.api_token_create(user=user, name="tests")
    return key


@pytest.fixture
def api_client(api_key) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")


def post_task(client: Client, slug: str, body: object) -> object:
    return client.post(f"/api/v1/boards/{slug}/tasks", data=body, content_type="application/json")


# --- POST /boards/{slug}/tasks ------------------------------------------------------


def test_it_creates_a_task_in_the_intake_column(api_client, board, agent, user):
    response = post_task(
        api_client,
        board.slug,
        {"title": "Inspect weld 7", "input": "photo 7", "capability": "general", "priority": 5},
    )

    assert response.status_code == 201
    body = response.json()
    task = Task.objects.get(pk=body["id"])
    assert (task.title, task.input, task.capability, task.priority) == (
        "Inspect weld 7",
        "photo 7",
        "general",
        5,
    )
    assert task.column == column(board, Column.Role.BACKLOG)
    assert body["status"] == "backlog"
    assert body["board"] == board.slug
    assert body["column"] == {"name": "Backlog", "role": "backlog"}
    assert body["agent"] is None
    assert body["blocked"] is None
    # The event names the token's user, so the board history says who added it.
    assert TaskEvent.objects.get(task=task, kind=TaskEvent.Kind.CREATED).user == user


def test_it_defaults_capability_and_priority(api_client, board):
    response = post_task(api_client, board.slug, {"title": "Plain", "input": ""})

    assert response.status_code == 201
    assert response.json()["capability"] == ""
    assert response.json()["priority"] == 0


def test_it_needs_no_csrf_token_with_a_bearer_token(api_key, board):
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {api_key}")

    response = post_task(client, board.slug, {"title": "No CSRF", "input": "x"})

    assert response.status_code == 201


def test_it_rejects_a_missing_title_with_a_field_message(api_client, board):
    response = post_task(api_client, board.slug, {"input": "x"})

    assert response.status_code == 400
    assert response.json()["errors"] == {"title": ["This field is required."]}
    assert not Task.objects.exists()


def test_it_rejects_a_blank_title_with_the_services_message(api_client, board):
    response = post_task(api_client, board.slug, {"title": "   ", "input": "x"})

    assert response.status_code == 400
    assert response.json()["errors"] == {"title": ["Give the task a title."]}


def test_it_rejects_a_priority_of_the_wrong_type(api_client, board):
    response = post_task(api_client, board.slug, {"title": "T", "input": "x", "priority": "high"})

    assert response.status_code == 400
    body = response.json()
    assert list(body["errors"]) == ["priority"]
    assert "integer" in body["errors"]["priority"][0]


def test_it_rejects_a_priority_sent_as_a_string_of_digits(api_client, board):
    # Strict types: "5" is a client bug the schema (integer) says is wrong.
    response = post_task(api_client, board.slug, {"title": "T", "input": "x", "priority": "5"})

    assert response.status_code == 400
    assert "priority" in response.json()["errors"]


def test_it_rejects_a_priority_out_of_range(api_client, board):
    response = post_task(api_client, board.slug, {"title": "T", "input": "x", "priority": 5000})

    assert response.status_code == 400
    assert response.json()["errors"] == {"priority": ["Priority must be between -1000 and 1000."]}


def test_it_rejects_a_capability_no_agent_offers(api_client, board, agent):
    response = post_task(api_client, board.slug, {"title": "T", "input": "x", "capability": "welding"})

    assert response.status_code == 400
    [message] = response.json()["errors"]["capability"]
    assert "'welding'" in message and "general" in message
    assert not Task.objects.exists()


def test_it_reports_every_wrong_field_at_once(api_client, board):
    response = post_task(api_client, board.slug, {"title": 3, "priority": [1]})

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"title", "input", "priority"}


def test_it_rejects_an_unknown_field(api_client, board):
    response = post_task(api_client, board.slug, {"titel": "T", "title": "T", "input": "x"})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["titel"]


def test_it_rejects_malformed_json(api_client, board):
    response = api_client.post(
        f"/api/v1/boards/{board.slug}/tasks", data='{"title": "T",', content_type="application/json"
    )

    assert response.status_code == 400
    body = response.json()
    assert list(body["errors"]) == ["body"]
    assert body["errors"]["body"][0].startswith("The body is not valid JSON")
    assert not Task.objects.exists()


def test_it_rejects_a_body_that_is_not_an_object(api_client, board):
    response = post_task(api_client, board.slug, ["T", "x"])

    assert response.status_code == 400
    assert response.json()["errors"] == {"body": ["Send a JSON object as the body."]}


def test_it_lists_the_required_fields_for_an_empty_body(api_client, board):
    response = api_client.post(f"/api/v1/boards/{board.slug}/tasks", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "title": ["This field is required."],
        "input": ["This field is required."],
    }


def test_it_refuses_with_409_when_the_intake_column_is_at_its_hard_limit(api_client):
    board = make_board(backlog=False, ready_limit=1)
    assert post_task(api_client, board.slug, {"title": "first", "input": ""}).status_code == 201

    response = post_task(api_client, board.slug, {"title": "second", "input": ""})

    assert response.status_code == 409
    assert "hard WIP limit" in response.json()["detail"]
    assert response.json()["errors"] == {}
    assert Task.objects.filter(board=board).count() == 1


def test_it_answers_404_json_for_an_unknown_board(api_client, db):
    response = post_task(api_client, "no-such-board", {"title": "T", "input": "x"})

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert "no-such-board" in response.json()["detail"]


# --- authentication ---------------------------------------------------------------


def test_it_answers_401_json_without_a_token(board):
    response = post_task(Client(), board.slug, {"title": "T", "input": "x"})

    # 401 JSON, not the login redirect every page gets from LoginRequiredMiddleware.
    assert response.status_code == 401
    assert response.json()["errors"] == {}
    assert "Authorization: Bearer" in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Task.objects.exists()


def test_it_answers_401_for_an_unknown_token(board, api_key):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key}x")

    response = post_task(client, board.slug, {"title": "T", "input": "x"})

    assert response.status_code == 401
    assert "not valid" in response.json()["detail"]
    assert not Task.objects.exists()


def test_it_answers_401_for_another_auth_scheme(board, api_key):
    client = Client(HTTP_AUTHORIZATION=f"Token {api_key}")

    response = client.get("/api/v1/boards")

    assert response.status_code == 401


def test_it_answers_401_for_the_token_of_an_inactive_user(board):
    user = make_user(is_active=False)
    _, key = services.api_token_create(user=user)

    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/v1/boards")

    assert response.status_code == 401


def test_a_login_session_is_not_a_token(board, user):
    client = Client()
    client.force_login(user)

    response = client.get("/api/v1/boards")

    assert response.status_code == 401


def test_the_token_is_stored_hashed(user):
    token, key = services.api_token_create(user=user, name="ci")

    stored = serializers.serialize("json", ApiToken.objects.all())
    assert key not in stored
    assert token.key_hash == ApiToken.hash_key(key)
    assert key.startswith(token.prefix) and len(token.prefix) < len(key) // 2


def test_using_a_token_records_when_it_was_last_used(api_client, api_key):
    assert api_client.get("/api/v1/boards").status_code == 200

    assert ApiToken.objects.get(key_hash=ApiToken.hash_key(api_key)).last_used_at is not None


# --- GET /tasks/{id} --------------------------------------------------------------


def test_it_shows_a_task_an_agent_is_running(api_client, board, agent):
    task = services.task_create(board=board, title="Run me", input="in", capability="general")
    services.board_pull(board_id=board.pk)

    response = api_client.get(f"/api/v1/tasks/{task.pk}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == task.pk
    assert body["title"] == "Run me"
    assert body["status"] == "running"
    assert body["board"] == board.slug
    assert body["column"] == {"name": "In progress", "role": "in_progress"}
    assert body["agent"] == {"name": agent.name, "provider": "simulated", "simulated": True}
    assert body["attempts"] == 1
    assert body["started_at"] is not None
    assert body["finished_at"] is None
    assert set(body) >= {"output", "confidence", "priority", "capability", "created_at", "updated_at"}


def test_it_shows_a_finished_tasks_output_and_confidence(api_client, board, agent):
    task = services.task_create(board=board, title="Finish me", input="in")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output="all good", confidence=0.9)

    body = api_client.get(f"/api/v1/tasks/{task.pk}").json()

    assert body["status"] == "done"
    assert body["output"] == "all good"
    assert body["confidence"] == 0.9
    assert body["finished_at"] is not None


def test_it_shows_why_a_task_is_blocked(api_client, board, user):
    task = services.task_create(board=board, title="Stuck", input="")
    services.task_block(task=task, user=user, note="waiting for the supplier")

    body = api_client.get(f"/api/v1/tasks/{task.pk}").json()

    assert body["blocked"] == "waiting for the supplier"


def test_it_answers_404_for_an_unknown_task(api_client, db):
    response = api_client.get("/api/v1/tasks/999999")

    assert response.status_code == 404
    assert response.json()["detail"] == "There is no task 999999."


@pytest.mark.parametrize("task_id", ["abc", "0", str(2**63)])
def test_it_answers_400_for_a_task_id_that_cannot_be_one(api_client, db, task_id):
    response = api_client.get(f"/api/v1/tasks/{task_id}")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["task_id"]


def test_reading_a_task_needs_a_token(board):
    task = services.task_create(board=board, title="Secret", input="")

    response = Client().get(f"/api/v1/tasks/{task.pk}")

    assert response.status_code == 401


# --- GET /boards and /boards/{slug} -------------------------------------------------


def test_it_lists_the_boards(api_client):
    first = make_board(name="Alpha line")
    make_board(name="Beta line")

    response = api_client.get("/api/v1/boards")

    assert response.status_code == 200
    boards = response.json()
    assert [b["name"] for b in boards] == ["Alpha line", "Beta line"]
    assert boards[0] == {
        "slug": first.slug,
        "name": "Alpha line",
        "description": "",
        "paused": False,
        "url": f"http://testserver/api/v1/boards/{first.slug}",
        "html_url": f"http://testserver{first.get_absolute_url()}",
    }


def test_it_shows_a_boards_columns_with_counts_and_wip_state(api_client, board):
    for n in range(4):
        services.task_create(board=board, title=f"task {n}", input="")
    services.board_pull(board_id=board.pk)  # no agents: fills Ready (limit 5) from the Backlog

    response = api_client.get(f"/api/v1/boards/{board.slug}")

    assert response.status_code == 200
    body = response.json()
    assert body["slug"] == board.slug
    columns = body["columns"]
    assert [c["name"] for c in columns] == ["Backlog", "Ready", "In progress", "Review", "Done"]
    ready = columns[1]
    assert ready["role"] == "ready"
    assert ready["task_count"] == 4
    assert (ready["wip_limit"], ready["hard_limit"], ready["wip_state"]) == (5, True, "one_left")
    assert columns[0]["task_count"] == 0
    assert columns[0]["wip_state"] == "unlimited"
    assert columns[2]["wip_state"] == "under"


def test_board_detail_query_count_does_not_grow_with_tasks(
    api_client, django_assert_num_queries, board, agent
):
    for n in range(30):
        services.task_create(board=board, title=f"task {n}", input="")
    services.board_pull(board_id=board.pk)
    api_client.get("/api/v1/boards")  # the token's first use writes last_used_at; keep it out

    # The token, the board, and its columns with all their counts in one grouped query.
    with django_assert_num_queries(3):
        response = api_client.get(f"/api/v1/boards/{board.slug}")

    assert sum(c["task_count"] for c in response.json()["columns"]) == 30


def test_it_answers_404_for_an_unknown_board_detail(api_client, db):
    response = api_client.get("/api/v1/boards/nope")

    assert response.status_code == 404
    assert response.json()["errors"] == {}


# --- the schema ---------------------------------------------------------------------


def test_openapi_schema_lists_the_paths_and_the_error_shape(db):
    # Public on purpose: clients and code generators read it before they have a token.
    response = Client().get("/api/v1/openapi.json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert set(schema["paths"]) == {
        "/api/v1/boards",
        "/api/v1/boards/{slug}",
        "/api/v1/boards/{slug}/tasks",
        "/api/v1/tasks/{task_id}",
    }
    create = schema["paths"]["/api/v1/boards/{slug}/tasks"]["post"]
    assert set(create["responses"]) == {"201", "400", "401", "404", "409"}
    error_ref = create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error_ref == "#/components/schemas/ErrorOut"
    assert set(schema["components"]["schemas"]["ErrorOut"]["properties"]) == {"detail", "errors"}
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"


def test_the_docs_page_needs_a_login_like_every_page(user):
    anonymous = Client().get("/api/v1/docs")
    client = Client()
    client.force_login(user)

    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")
    assert client.get("/api/v1/docs").status_code == 200
