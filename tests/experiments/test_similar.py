"""Similar work (issue 14): GET /api/v1/similar and the page, over real
embeddings of past tasks."""

from __future__ import annotations

import pytest

from andon import services as andon_services
from boards.models import ApiToken
from experiments import knowledge, vectors
from tests.andon.helpers import claim_one, complete, escalate
from tests.boards.api_support import client_for, token_for
from tests.factories import make_agent, make_board, make_reviewer, make_user

pytestmark = pytest.mark.django_db

SIMILAR = "/api/v1/similar"


@pytest.fixture(autouse=True)
def _fresh_indexes():
    vectors.indexes_clear()
    yield
    vectors.indexes_clear()


@pytest.fixture
def history(board, agent):
    """Three done tasks and a rejected one, embedded."""
    reviewer = make_reviewer()
    tasks = {}
    for key, title, body in (
        (
            "refund",
            "Money back please",
            "The blender I bought arrived broken and I want my payment returned.",
        ),
        ("login", "Cannot sign in", "The website keeps saying my password is wrong after I changed it."),
        ("parcel", "Where is my parcel", "My package was supposed to come last week and has not arrived."),
    ):
        task, claim = claim_one(board, title=title, input=body)
        assert complete(claim)
        tasks[key] = task
    rejected = escalate(board, title="Reimbursement request", input="Item came damaged, requesting a refund.")
    andon_services.escalation_reject(escalation=rejected, user=reviewer, reason="tone too informal")
    tasks["rejected"] = rejected.task
    knowledge.patterns_embed(budget_seconds=60)
    return tasks


def test_a_text_finds_the_paraphrase_first_with_its_verdict(history):
    api = client_for(token_for(make_user(), access=ApiToken.Access.READ))
    response = api.get(SIMILAR, {"text": "Unable to log into my account: it rejects my credentials"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] and body["backend"] in ("numpy", "pgvector")
    first = body["results"][0]
    assert first["task"] == history["login"].pk
    assert first["verdict"] == "passed" and first["title"] == "Cannot sign in"
    similarities = [r["similarity"] for r in body["results"]]
    assert similarities == sorted(similarities, reverse=True)
    assert all(0 <= s <= 1 for s in similarities)


def test_a_task_leaves_itself_out_and_filters_apply(history, agent):
    api = client_for(token_for(make_user(), access=ApiToken.Access.READ))
    body = api.get(SIMILAR, {"task": history["rejected"].pk, "limit": 1}).json()
    assert [r["task"] for r in body["results"]] == [history["refund"].pk]

    body = api.get(SIMILAR, {"text": "broken item, refund", "verdict": "rejected"}).json()
    assert [(r["task"], r["reason"]) for r in body["results"]] == [
        (history["rejected"].pk, "tone too informal")
    ]

    body = api.get(SIMILAR, {"text": "broken item, refund", "agent": agent.name, "limit": 2}).json()
    assert len(body["results"]) == 2 and all(r["agent"] == agent.name for r in body["results"])


def test_bad_queries_are_answered_with_the_field_named(history):
    api = client_for(token_for(make_user(), access=ApiToken.Access.READ))
    neither = api.get(SIMILAR)
    assert neither.status_code == 400
    assert neither.json()["errors"]["text"] == ["Give a text or a task."]
    both = api.get(SIMILAR, {"text": "refund", "task": history["refund"].pk})
    assert both.status_code == 400 and "not both" in both.json()["errors"]["task"][0]
    assert api.get(SIMILAR, {"text": "refund", "limit": 0}).status_code == 400
    assert api.get(SIMILAR, {"text": "refund", "verdict": "great"}).status_code == 400
    assert api.get(SIMILAR, {"task": 10**9}).status_code == 404
    assert api.get(SIMILAR, {"text": "refund", "agent": "nobody"}).status_code == 404
    assert client_for("not-a-token").get(SIMILAR, {"text": "refund"}).status_code == 401


def test_a_token_sees_only_the_boards_of_its_scope(history, board):
    elsewhere = make_board()
    make_agent(boards=[elsewhere])
    task, claim = claim_one(
        elsewhere, title="Money back for broken blender", input="refund the broken blender"
    )
    assert complete(claim)
    knowledge.patterns_embed(budget_seconds=60)
    scoped = client_for(token_for(make_user(), access=ApiToken.Access.READ, boards=[board]))
    tasks = [r["task"] for r in scoped.get(SIMILAR, {"text": "refund the broken blender"}).json()["results"]]
    assert task.pk not in tasks and history["refund"].pk in tasks
    other = client_for(token_for(make_user(), access=ApiToken.Access.READ, boards=[elsewhere]))
    assert other.get(SIMILAR, {"task": history["refund"].pk}).status_code == 403


def test_the_operation_is_in_the_openapi_schema(client):
    schema = client.get("/api/v1/openapi.json").json()
    operation = schema["paths"]["/api/v1/similar"]["get"]
    assert operation["operationId"] == "similar_list"
    assert {p["name"] for p in operation["parameters"]} >= {"text", "task", "agent", "verdict", "limit"}


def test_the_page_finds_similar_work_and_shows_the_verdicts(history, logged_in):
    response = logged_in.get("/kaizen/knowledge/", {"text": "I was given a damaged item and want a refund"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Money back please" in page and "Reimbursement request" in page
    assert "tone too informal" in page
    # Most similar first: the refunds before the sign-in trouble.
    assert page.index("Reimbursement request") < page.index("Cannot sign in")
    assert page.index("Money back please") < page.index("Cannot sign in")
    assert "Finished attempts" in page


def test_the_page_says_what_is_wrong_with_a_query(history, logged_in):
    page = logged_in.get(
        "/kaizen/knowledge/", {"text": "refund", "task": history["refund"].pk}
    ).content.decode()
    assert "not both" in page
    page = logged_in.get("/kaizen/knowledge/", {"task": 10**9}).content.decode()
    assert f"There is no task {10**9}." in page


def test_the_page_needs_a_login(client):
    response = client.get("/kaizen/knowledge/", {"text": "refund"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
