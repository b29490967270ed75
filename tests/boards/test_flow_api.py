"""GET /api/v1/boards/{slug}/flow: token auth and scope, field messages on bad
parameters, the measures of a fixed history, a forecast, and the OpenAPI schema."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from boards.models import ApiToken
from tests.boards.api_support import client_for, token_for
from tests.boards.flow_history import T0, at, build_history
from tests.factories import make_board

pytestmark = pytest.mark.django_db


def url(board) -> str:
    return f"/api/v1/boards/{board.slug}/flow"


def test_it_needs_a_token():
    board = make_board()
    response = Client().get(url(board))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_limited_to_another_board_is_refused():
    board, other = make_board(), make_board()
    key = token_for(access=ApiToken.Access.READ, boards=[other])
    response = client_for(key).get(url(board))
    assert response.status_code == 403
    assert other.slug in response.json()["detail"]


def test_the_measures_of_a_fixed_history():
    h = build_history()
    key = token_for(access=ApiToken.Access.READ)
    response = client_for(key).get(
        url(h["board"]), {"since": T0.isoformat(), "until": at(3 * 3600).isoformat(), "resolution": "1h"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["percentile_method"] == "nearest-rank"
    assert body["cycle_time"] == {
        "p50": 1500.0,
        "p70": 3600.0,
        "p85": 3600.0,
        "p95": 3600.0,
        "unit": "s",
        "count": 3,
    }
    assert body["lead_time"]["p85"] == 7000.0
    assert body["throughput"]["per_hour"]["values"] == [2, 2, 0]
    assert body["throughput"]["per_day"]["values"] == [4]
    assert body["wip"]["values"] == [2, 1, 1]
    assert body["cfd"]["bands"]["done"] == [2, 4, 4]
    assert [a["title"] for a in body["age"]] == ["four"]
    assert body["forecast"] is None
    assert "first claim" in body["definitions"]["cycle_time"]


def test_agent_and_capability_filters():
    h = build_history()
    client = client_for(token_for(access=ApiToken.Access.READ))
    window = {"since": T0.isoformat(), "until": at(3 * 3600).isoformat()}
    body = client.get(url(h["board"]), {**window, "agent": "beta"}).json()
    assert body["cycle_time"]["count"] == 1
    body = client.get(url(h["board"]), {**window, "capability": "summarise"}).json()
    assert body["lead_time"]["count"] == 2


def test_a_forecast_of_when_and_how_many():
    h = build_history()
    client = client_for(token_for(access=ApiToken.Access.READ))
    # The sampling window is the 7 days before now: the history at T0 is older, so
    # every sampled hour is zero and nothing is ever forecast done.
    future = (timezone.now() + timedelta(days=1)).isoformat()
    response = client.get(url(h["board"]), {"forecast_items": 3, "forecast_date": future})
    assert response.status_code == 200, response.content
    forecast = response.json()["forecast"]
    assert forecast["trials"] == 10_000
    assert forecast["sampling_window"]["items"] == 0
    assert [row["periods"] for row in forecast["when"]["table"]] == [None, None, None, None]
    assert [row["at_least"] for row in forecast["how_many"]["table"]] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"resolution": "2m"}, "resolution"),
        (
            {"since": "2020-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z", "resolution": "1m"},
            "resolution",
        ),
        # Centuries of hourly throughput took minutes of CPU (schemathesis found it).
        ({"since": "1100-01-01T00:00:00Z"}, "since"),
        ({"since": "2020-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"agent": "nobody"}, "agent"),
        ({"forecast_items": 0}, "forecast_items"),
        ({"forecast_date": "2020-01-01T00:00:00Z"}, "forecast_date"),
        ({"sample_days": 0}, "sample_days"),
    ],
)
def test_bad_parameters_get_a_400_with_a_message_for_the_field(params, field):
    board = make_board()
    response = client_for(token_for(access=ApiToken.Access.READ)).get(url(board), params)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert field in errors and errors[field][0], errors


def test_an_unknown_board_is_a_404():
    response = client_for(token_for(access=ApiToken.Access.READ)).get("/api/v1/boards/nope/flow")
    assert response.status_code == 404


def test_the_openapi_schema_describes_it():
    schema = Client().get("/api/v1/openapi.json").json()
    operation = schema["paths"]["/api/v1/boards/{slug}/flow"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"since", "until", "agent", "capability", "forecast_items", "forecast_date"} <= names
    out = schema["components"]["schemas"]["FlowOut"]["properties"]
    assert {"wip", "throughput", "cycle_time", "lead_time", "age", "cfd", "forecast"} <= set(out)


@pytest.mark.parametrize("extra", [3, 30])
def test_bounded_queries(extra, django_assert_max_num_queries):
    from tests.boards.flow_history import add_finished

    h = build_history()
    add_finished(h["board"], h["alpha"], extra)
    client = client_for(token_for(access=ApiToken.Access.READ))
    with django_assert_max_num_queries(18):
        response = client.get(
            url(h["board"]), {"since": T0.isoformat(), "until": at(3 * 3600).isoformat(), "forecast_items": 5}
        )
    assert response.json()["throughput"]["total"] == 4 + extra
