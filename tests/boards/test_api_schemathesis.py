"""The API against its own OpenAPI schema, with Schemathesis: requests generated
from the schema must never meet a server error, and a request the schema says
is valid must be taken (2xx), unless it names a board or task that does not
exist (404) or the board cannot take it as it is now (409). Requests that break
the schema must be refused in the documented error shape, never a 5xx.

Seeded and bounded (derandomized, a fixed number of examples an operation) so
it runs the same every time and in seconds. Before this, the schema did not
state the server's limits (a blank title, priority -1000..1000, lengths) and a
NUL or a lone surrogate made a 500."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from boards import services
from tests.boards.api_support import token_for
from tests.factories import make_agent, make_board, make_user_with

pytestmark = pytest.mark.django_db

EXAMPLES = 50
NEGATIVE_EXAMPLES = 25
# What a schema-valid request may answer besides success.
EXPECTED_REFUSALS = {404, 409}
# Rules between parameters no schema states (a window's end after its start and at
# most so long, an agent that serves the board, a forecast date ahead and within the
# horizon): a 400 naming only those fields, which is what the operations document.
CROSS_FIELD_RULES = {
    "GET /api/v1/boards/{slug}/flow": {"until", "since", "agent", "forecast_date", "resolution"},
    "GET /api/v1/boards/{slug}/muda": {"since", "until"},
    # Exactly one of a text and a task.
    "GET /api/v1/similar": {"text", "task"},
}

RESPONSE_CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]


@pytest.fixture
def in_process_wsgi():
    # The requests go through Django's WSGI handler in this thread, inside the
    # test's transaction; like Django's test client, keep its signals from
    # closing the test's connection after each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(in_process_wsgi):
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", in_process_wsgi)


@pytest.fixture
def known(db):
    """A board with an agent and a task, for cases that name things that exist."""
    board = make_board()
    agent = make_agent(boards=[board], capabilities=["general", "weld"])
    task = services.task_create(board=board, title="An existing task")
    return {"slug": board.slug, "task_id": task.pk, "name": agent.name}


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def _strategy(operation, mode: GenerationMode, known: dict):
    free = operation.as_strategy(generation_mode=mode)
    names = {p.name for p in operation.path_parameters} & set(known)
    if not names or not mode.is_positive:
        return free
    # Half the cases name a board or task that exists, so success paths are exercised too.
    fixed = operation.as_strategy(generation_mode=mode, path_parameters={n: known[n] for n in names})
    return st.one_of(fixed, free)


def test_schema_valid_requests_are_taken_and_never_meet_a_server_error(api_schema, known):
    auth = {"Authorization": f"Bearer {token_for(make_user_with('boards.add_task', 'boards.change_agent'))}"}
    failures: list[str] = []

    for operation in operations(api_schema):

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(operation, GenerationMode.POSITIVE, known))
        def run(case) -> None:
            response = case.call(headers=auth)
            case.validate_response(response, checks=RESPONSE_CHECKS, headers=auth)
            status = response.status_code
            rules = CROSS_FIELD_RULES.get(case.operation.label, set())
            if status == 400 and rules and set(response.json()["errors"]) <= rules:
                return
            if not (200 <= status < 300 or status in EXPECTED_REFUSALS):
                failures.append(
                    f"{case.operation.label}: {status} {response.text[:300]}\n{case.as_curl_command()}"
                )

        run()

    assert failures == []


def test_requests_that_break_the_schema_are_refused_as_json_never_a_server_error(api_schema, known):
    auth = {"Authorization": f"Bearer {token_for(make_user_with('boards.add_task', 'boards.change_agent'))}"}
    failures: list[str] = []

    for operation in operations(api_schema):

        @settings(
            max_examples=NEGATIVE_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(operation, GenerationMode.NEGATIVE, known))
        def run(case) -> None:
            headers = {**(case.headers or {}), **auth}
            response = case.call(headers=headers)
            status = response.status_code
            is_json = response.headers.get("content-type", [""])[0].startswith("application/json")
            if status >= 500 or (
                status >= 400 and not (is_json and set(response.json()) == {"detail", "errors"})
            ):
                failures.append(
                    f"{case.operation.label}: {status} {response.text[:300]}\n{case.as_curl_command()}"
                )

        run()

    assert failures == []
