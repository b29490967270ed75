"""GET /api/v1/boards/{slug}/muda: the seven wastes over a window, as the Muda page
shows them; bearer-token auth and scopes as every endpoint; bad input is a 400
with a message per field."""

from __future__ import annotations

import pytest

from boards.models import ApiToken
from tests.andon.muda_history import CACHE_SECONDS, SINCE, UNTIL, build_line
from tests.boards.api_support import client_for, token_for
from tests.factories import make_board

pytestmark = pytest.mark.django_db

WINDOW = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}


@pytest.fixture
def line(settings):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    return build_line()


@pytest.fixture
def reader():
    return client_for(token_for(access=ApiToken.Access.READ))


def url(line) -> str:
    return f"/api/v1/boards/{line.board.slug}/muda"


def test_it_lists_the_seven_wastes_with_value_unit_cost_target_and_definition(line, reader):
    response = reader.get(url(line), WINDOW)

    assert response.status_code == 200, response.content
    body = response.json()
    assert [w["name"] for w in body["wastes"]] == [
        "overproduction",
        "waiting",
        "transport",
        "over_processing",
        "inventory",
        "motion",
        "defects",
    ]
    for waste in body["wastes"]:
        assert {"name", "value", "unit", "cost", "target", "definition"} <= set(waste)
    by_name = {w["name"]: w for w in body["wastes"]}
    # The values worked out by hand in tests/andon/test_muda.py.
    assert by_name["transport"]["value"] == pytest.approx(1.4)
    assert by_name["transport"]["cost"] == pytest.approx(0.30)
    assert by_name["motion"]["value"] == pytest.approx(2 / 11 * 100, abs=1e-3)
    assert by_name["waiting"]["cost"] is None
    assert body["token_efficiency"]["value"] == pytest.approx(100 - 240 / 450 * 100, abs=1e-3)
    assert body["token_efficiency"]["target"] == 80.0 and body["token_efficiency"]["better"] == "higher"
    assert body["escalation_rate"]["value"] == pytest.approx(100 / 6, abs=1e-3)
    assert body["unreviewed_defects"] == 1
    assert body["html_url"].endswith(f"/boards/{line.board.slug}/muda/")


def test_an_agent_s_wastes(line, reader):
    body = reader.get(url(line), {**WINDOW, "agent": "beta"}).json()
    assert body["agent"] == "beta"
    assert body["wastes"][2]["value"] == pytest.approx(1.5)  # transport: tasks 3 and 4


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"since": "yesterday"}, "since", "Input should be a valid datetime"),
        ({"since": UNTIL.isoformat(), "until": SINCE.isoformat()}, "until", "must come after its start"),
        ({"since": "2024-01-01T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, "since", "at most 366 days"),
        ({"until": "0001-01-02T00:00:00Z"}, "until", "out of range"),
        ({"since": "2999-01-01T00:00:00Z"}, "since", "in the future"),
        ({"until": "9999-06-01T00:00:00Z"}, "until", "before the year 9999"),
    ],
)
def test_bad_input_is_a_400_with_a_message_on_its_field(line, reader, params, field, message):
    response = reader.get(url(line), params)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert field in errors and any(message in m for m in errors[field]), errors


def test_an_unknown_agent_is_a_404_naming_the_field(line, reader):
    response = reader.get(url(line), {"agent": "nobody"})
    assert response.status_code == 404
    assert "There is no agent 'nobody'" in response.json()["errors"]["agent"][0]


def test_it_needs_a_token(line, client):
    response = client.get(url(line))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_for_other_boards_may_not_read_it(line):
    other = make_board()
    client = client_for(token_for(access=ApiToken.Access.READ, boards=[other]))
    response = client.get(url(line))
    assert response.status_code == 403
    assert "may not use board" in response.json()["detail"]


def test_an_unknown_board_is_a_404(reader, db):
    response = reader.get("/api/v1/boards/no-such-board/muda")
    assert response.status_code == 404


def test_it_is_in_the_openapi_schema(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    operation = schema["paths"]["/api/v1/boards/{slug}/muda"]["get"]
    assert operation["operationId"] == "board_muda"
    assert {p["name"] for p in operation["parameters"]} >= {"slug", "since", "until", "agent"}
    assert "MudaOut" in schema["components"]["schemas"]
    assert "WasteOut" in schema["components"]["schemas"]


@pytest.mark.parametrize("copies", [1, 3])
def test_it_answers_in_a_bounded_number_of_queries(settings, django_assert_max_num_queries, copies):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    first = build_line()
    for n in range(1, copies):
        build_line(offset=10 * n, board=first.board, alpha=first.alpha, beta=first.beta)
    client = client_for(token_for(access=ApiToken.Access.READ))
    with django_assert_max_num_queries(12):
        response = client.get(url(first), {**WINDOW, "agent": "alpha"})
    assert response.status_code == 200
