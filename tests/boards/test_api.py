"""The JSON API under /api/v1/: token auth, task intake, reads, errors, schema."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.core import serializers
from django.test import Client

from boards import services
from boards.agents import CallRecord, Output, runtime
from boards.models import ApiToken, Column, ModelCall, Task, TaskEvent
from tests.boards.api_support import token_for
from tests.factories import column, grant, make_agent, make_board, make_user
from tests.response_cache import settled

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_key(user) -> str:
    # A write token for every board, of a user who may add tasks.
    grant(user, "boards.add_task")
    return token_for(user)


@pytest.fixture
def api_client(api_key) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")


def post_task(client: Client, slug: str, body: object) -> object:
    return client.post(f"/api/v1/boards/{slug}/tasks", data=body, content_type="application/json")


# Ten decimal places, as the ledger keeps them: exact, never a float or "0E-10".
DOLLARS = re.compile(r"^\d+\.\d{10}$")

# Tier 1 never reaches its threshold, so every task escalates to tier 2 (two calls).
ESCALATING = [
    {
        "provider": "simulated",
        "model": "sim-small",
        "threshold": 0.999,
        "parameters": {"latency_ms": 0, "error_rate": 0},
    },
    {"provider": "simulated", "model": "sim-large", "parameters": {"latency_ms": 0, "error_rate": 0}},
]


def run_next(board, **task_fields) -> Task:
    """Create a task, let an agent claim it and run it in-process, as a worker would."""
    task = services.task_create(board=board, title=task_fields.pop("title", "Summarise"), **task_fields)
    [claim] = services.board_pull(board_id=board.pk)
    assert runtime.run(task.pk, str(claim.lease_token)) == "done"
    return task


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
    assert Task.objects.get().allow_reuse is True


def test_a_task_can_opt_out_of_reuse(api_client, board):
    response = post_task(api_client, board.slug, {"title": "Fresh", "input": "x", "allow_reuse": False})

    assert response.status_code == 201
    assert Task.objects.get(pk=response.json()["id"]).allow_reuse is False


def test_it_rejects_an_allow_reuse_that_is_not_a_boolean(api_client, board):
    response = post_task(api_client, board.slug, {"title": "T", "input": "x", "allow_reuse": "no"})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["allow_reuse"]
    assert not Task.objects.exists()


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


def test_it_refuses_a_capability_no_agent_offers_as_a_conflict(api_client, board, agent):
    # Well-formed, and valid by the schema: the board cannot serve it as it is
    # now (an agent offering it may join), so 409, with the field named.
    response = post_task(api_client, board.slug, {"title": "T", "input": "x", "capability": "welding"})

    assert response.status_code == 409
    [message] = response.json()["errors"]["capability"]
    assert "'welding'" in message and "general" in message
    assert not Task.objects.exists()


def test_it_reports_every_wrong_field_at_once(api_client, board):
    response = post_task(api_client, board.slug, {"title": 3, "priority": [1]})

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"title", "priority"}


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
    assert response.json()["errors"] == {"title": ["This field is required."]}


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
    assert body["agent"] == {
        "name": agent.name,
        "models": ["sim-small"],
        "implementation": None,
        "simulated": True,
    }
    assert body["attempts"] == 1
    assert body["started_at"] is not None
    assert body["finished_at"] is None
    assert set(body) >= {"output", "confidence", "priority", "capability", "created_at", "updated_at"}
    # Nothing called yet: no cost, no tier.
    assert body["cost"] == "0.0000000000"
    assert (body["tokens_in"], body["tokens_out"], body["model_calls"], body["cache_hits"]) == (0, 0, 0, 0)
    assert (body["accepted_tier"], body["reused_from"], body["confidence_source"]) == (None, None, "")


def test_it_shows_what_a_cascaded_task_cost_and_which_tier_answered(api_client, board):
    agent = make_agent(boards=[board], cascade=ESCALATING)
    task = run_next(board, input="The weekly report: volumes flat, two carriers raised prices.")

    body = api_client.get(f"/api/v1/tasks/{task.pk}").json()

    calls = list(ModelCall.objects.filter(task=task).order_by("pk"))
    assert [c.tier for c in calls] == [1, 2]
    assert body["agent"]["models"] == ["sim-small", "sim-large"]
    assert body["status"] == "done"
    assert body["accepted_tier"] == 2
    assert body["prompt_version"] == agent.prompt_version == 1
    assert body["confidence_source"] == "simulated"
    assert body["model_calls"] == 2
    assert body["cache_hits"] == 0
    assert body["tokens_in"] == sum(c.tokens_in for c in calls) > 0
    assert body["tokens_out"] == sum(c.tokens_out for c in calls) > 0
    # Exact: the string is the sum of the ledger rows, each priced by its own tier.
    assert DOLLARS.match(body["cost"])
    tiers = agent.tiers
    expected = sum((tiers[c.tier - 1].cost(c.tokens_in, c.tokens_out) for c in calls), Decimal(0))
    assert Decimal(body["cost"]) == expected > 0


def test_it_shows_a_custom_agent_class_without_models(api_client, board):
    agent = make_agent(boards=[board], implementation="boards.example_agents.KeywordClassifier")
    task = run_next(board, title="Refund please", input="I was charged twice, please refund the charge.")

    body = api_client.get(f"/api/v1/tasks/{task.pk}").json()

    assert body["agent"] == {
        "name": agent.name,
        "models": [],
        "implementation": "boards.example_agents.KeywordClassifier",
        "simulated": False,
    }
    assert body["output"] == "label: billing"
    assert (body["model_calls"], body["cost"], body["accepted_tier"]) == (0, "0.0000000000", None)


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


@pytest.mark.parametrize("suffix", ["", "/calls"])
@pytest.mark.parametrize("task_id", ["abc", "0", str(2**63)])
def test_it_answers_400_for_a_task_id_that_cannot_be_one(api_client, db, task_id, suffix):
    response = api_client.get(f"/api/v1/tasks/{task_id}{suffix}")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["task_id"]


@pytest.mark.parametrize("suffix", ["", "/calls"])
def test_reading_a_task_needs_a_token(board, suffix):
    task = services.task_create(board=board, title="Secret", input="")

    response = Client().get(f"/api/v1/tasks/{task.pk}{suffix}")

    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["detail"]


# --- GET /tasks/{id}/calls ----------------------------------------------------------


def test_it_lists_a_tasks_model_calls_oldest_first(api_client, board):
    agent = make_agent(boards=[board], cascade=ESCALATING)
    task = run_next(board, input="Extract the dates: lease ends 30 June, notice due 90 days before.")

    response = api_client.get(f"/api/v1/tasks/{task.pk}/calls")

    assert response.status_code == 200
    calls = response.json()
    assert [(c["tier"], c["model"], c["accepted"]) for c in calls] == [
        (1, "sim-small", False),
        (2, "sim-large", True),
    ]
    first = calls[0]
    assert (first["source"], first["provider"], first["simulated"], first["attempt"]) == (
        "model",
        "simulated",
        True,
        1,
    )
    assert first["prompt_version"] == agent.prompt_version
    assert first["confidence"] < 0.999 and first["confidence_source"] == "simulated"
    assert (first["error"], first["reused_from"]) == ("", None)
    assert all(DOLLARS.match(c["cost"]) for c in calls)
    # The task's totals are these rows added up.
    task_body = api_client.get(f"/api/v1/tasks/{task.pk}").json()
    assert sum(Decimal(c["cost"]) for c in calls) == Decimal(task_body["cost"])
    assert sum(c["tokens_in"] for c in calls) == task_body["tokens_in"]
    assert set(first) == {
        "id",
        "created_at",
        "attempt",
        "tier",
        "source",
        "provider",
        "model",
        "simulated",
        "prompt_version",
        "tokens_in",
        "tokens_out",
        "cost",
        "latency_ms",
        "confidence",
        "confidence_source",
        "accepted",
        "stale",
        "error",
        "reused_from",
    }
    assert [c["stale"] for c in calls] == [False, False]


def test_a_late_results_calls_are_listed_as_stale(api_client, board):
    make_agent(boards=[board])
    task = services.task_create(board=board, title="Late", input="late answer")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="lease expired")
    call = CallRecord(source="model", tier=1, provider="simulated", model="sim-small", accepted=True)
    late = Output(text="late", confidence=0.9, tier=1, calls=(call,))
    assert services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output=late) is False

    [row] = api_client.get(f"/api/v1/tasks/{task.pk}/calls").json()

    assert (row["accepted"], row["stale"]) == (False, True)


def test_a_reused_result_names_the_task_it_came_from(api_client, board):
    make_agent(boards=[board], cascade=ESCALATING)
    original = run_next(board, input="Summarise: volumes flat, label printer live.")
    repeat = run_next(board, input="Summarise:  volumes FLAT, label printer live.")

    body = api_client.get(f"/api/v1/tasks/{repeat.pk}").json()
    calls = api_client.get(f"/api/v1/tasks/{repeat.pk}/calls").json()

    assert body["reused_from"] == original.pk
    assert (body["model_calls"], body["cost"], body["accepted_tier"]) == (0, "0.0000000000", None)
    assert [(c["source"], c["reused_from"], c["tier"], c["cost"]) for c in calls] == [
        ("reuse", original.pk, None, "0.0000000000")
    ]


def test_a_task_that_opted_out_of_reuse_calls_the_models_again(
    api_client, board, django_capture_on_commit_callbacks
):
    make_agent(boards=[board], cascade=ESCALATING)
    with django_capture_on_commit_callbacks() as committed:
        run_next(board, input="Summarise: volumes flat.")
    settled(committed)
    response = post_task(
        api_client,
        board.slug,
        {"title": "Summarise", "input": "Summarise: volumes flat.", "allow_reuse": False},
    )
    [claim] = services.board_pull(board_id=board.pk)
    runtime.run(claim.task_id, str(claim.lease_token))

    body = api_client.get(f"/api/v1/tasks/{response.json()['id']}").json()

    assert body["reused_from"] is None
    # The response cache still serves the identical calls: no tokens spent.
    assert (body["model_calls"], body["cache_hits"]) == (0, 2)


def test_a_task_not_yet_run_has_no_calls(api_client, board):
    task = services.task_create(board=board, title="Waiting", input="")

    response = api_client.get(f"/api/v1/tasks/{task.pk}/calls")

    assert response.status_code == 200
    assert response.json() == []


def test_calls_of_an_unknown_task_are_404(api_client, db):
    response = api_client.get("/api/v1/tasks/999999/calls")

    assert response.status_code == 404
    assert response.json() == {"detail": "There is no task 999999.", "errors": {}}


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


def test_the_board_detail_counts_every_task_where_the_board_page_caps_the_count(api_client, board, settings):
    settings.KAIZEN_COLUMN_COUNT_CAP = 3
    settings.KAIZEN_COLUMN_CARD_LIMIT = 2
    for n in range(5):
        services.task_create(board=board, title=f"task {n}", input="")

    response = api_client.get(f"/api/v1/boards/{board.slug}")

    backlog = response.json()["columns"][0]
    assert (backlog["role"], backlog["task_count"]) == ("backlog", 5)


def test_board_detail_query_count_does_not_grow_with_tasks(
    api_client, django_assert_num_queries, board, agent
):
    for n in range(30):
        services.task_create(board=board, title=f"task {n}", input="")
    services.board_pull(board_id=board.pk)
    api_client.get("/api/v1/boards")  # the token's first use writes last_used_at; keep it out

    # The token, the board, its columns with all their counts in one grouped query,
    # and its agents (for the capabilities they offer).
    with django_assert_num_queries(4):
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
        "/api/v1/boards/{slug}/tasks/bulk",
        "/api/v1/boards/{slug}/muda",
        "/api/v1/boards/{slug}/flow",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{task_id}/calls",
        "/api/v1/agents/{name}/replays",
        "/api/v1/replays/{replay_id}",
        "/api/v1/similar",
    }
    create = schema["paths"]["/api/v1/boards/{slug}/tasks"]["post"]
    assert set(create["responses"]) == {"201", "400", "401", "403", "404", "409", "413", "415"}
    error_ref = create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error_ref == "#/components/schemas/ErrorOut"
    assert set(schema["components"]["schemas"]["ErrorOut"]["properties"]) == {"detail", "errors"}
    components = schema["components"]["schemas"]
    assert components["TaskIn"]["properties"]["allow_reuse"]["default"] is True
    task_fields = components["TaskOut"]["properties"]
    assert {"cost", "tokens_in", "tokens_out", "model_calls", "cache_hits", "accepted_tier"} <= set(
        task_fields
    )
    assert {"prompt_version", "confidence_source", "reused_from"} <= set(task_fields)
    assert task_fields["cost"]["type"] == "string" and "exact" in task_fields["cost"]["description"]
    assert set(components["AgentRefOut"]["properties"]) == {"name", "models", "implementation", "simulated"}
    calls = schema["paths"]["/api/v1/tasks/{task_id}/calls"]["get"]
    assert set(calls["responses"]) == {"200", "400", "401", "403", "404"}
    assert "ledger" in calls["description"]
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"


def test_the_docs_page_needs_a_login_like_every_page(user):
    anonymous = Client().get("/api/v1/docs")
    client = Client()
    client.force_login(user)

    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")
    assert client.get("/api/v1/docs").status_code == 200
