"""What a careless or hostile client sends the API: every answer is JSON in the
documented shape, never a 500 or an HTML page. Each of these failed before
(500 for NUL and lone surrogates, HTML 400 for a large body, text/plain taken)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from boards.models import Task
from boards.services import MAX_INPUT
from tests.boards.api_support import client_for, post_json, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(db) -> Client:
    # Exceptions become responses, as a real client would see them.
    client = client_for(token_for())
    client.raise_request_exception = False
    return client


def tasks_path(board) -> str:
    return f"/api/v1/boards/{board.slug}/tasks"


def post_raw(client: Client, path: str, body: str | bytes, content_type: str | None = "application/json"):
    extra = {} if content_type is None else {"CONTENT_TYPE": content_type}
    if content_type is None:
        # The test client sets one unless told otherwise; send none at all.
        return client.generic("POST", path, body, content_type="", **extra)
    return client.generic("POST", path, body, **extra)


def assert_error_shape(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# --- text the database cannot hold ---------------------------------------------------


@pytest.mark.parametrize("field", ["title", "input"])
def test_a_nul_byte_is_refused_naming_the_field(api, board, field):
    body = {"title": "Weld", "input": ""} | {field: "a\u0000b"}

    response = post_json(api, tasks_path(board), body)

    errors = assert_error_shape(response, 400)["errors"]
    assert list(errors) == [field]
    assert "control character (U+0000)" in errors[field][0]
    assert not Task.objects.exists()


@pytest.mark.parametrize("field", ["title", "input", "capability"])
def test_a_lone_surrogate_is_refused_naming_the_field(api, board, field):
    # \ud800 alone is valid JSON text but no valid Unicode: nothing can encode it.
    body = {"title": "Weld", "input": ""} | {field: "SURROGATE"}
    raw = json.dumps(body).replace("SURROGATE", "a\\ud800")

    response = post_raw(api, tasks_path(board), raw)

    errors = assert_error_shape(response, 400)["errors"]
    assert list(errors) == [field]
    assert "lone surrogate" in errors[field][0]
    assert not Task.objects.exists()


def test_a_lone_surrogate_in_a_key_is_refused(api, board):
    response = post_raw(api, tasks_path(board), '{"title": "Weld", "\\udfff": 1}')

    assert list(assert_error_shape(response, 400)["errors"]) == ["body"]


def test_a_surrogate_pair_is_a_character_like_any_other(api, board):
    response = post_raw(api, tasks_path(board), '{"title": "Smile \\ud83d\\ude00"}')

    assert response.status_code == 201
    assert Task.objects.get().title == "Smile \U0001f600"


@pytest.mark.parametrize("title", ["bell \x07", "two\nlines", "tab\there", "del \x7f", "c1 \x85 inside"])
def test_a_title_with_any_control_character_is_refused(api, board, title):
    response = post_json(api, tasks_path(board), {"title": title})

    errors = assert_error_shape(response, 400)["errors"]
    assert list(errors) == ["title"]
    assert "control character" in errors["title"][0]


def test_an_input_may_hold_tabs_and_line_breaks_but_no_other_control_character(api, board):
    ok = post_json(api, tasks_path(board), {"title": "T", "input": "a\tb\r\nc\n"})
    escape = post_json(api, tasks_path(board), {"title": "T", "input": "colour \x1b[31m"})

    assert ok.status_code == 201
    errors = assert_error_shape(escape, 400)["errors"]
    assert list(errors) == ["input"]
    assert "U+001B" in errors["input"][0] and "only tab, newline and carriage return" in errors["input"][0]


def test_an_input_longer_than_the_limit_is_refused(api, board):
    response = post_json(api, tasks_path(board), {"title": "T", "input": "x" * (MAX_INPUT + 1)})

    errors = assert_error_shape(response, 400)["errors"]
    assert errors["input"] == [f"Keep the input to {MAX_INPUT:,} characters (it has {MAX_INPUT + 1:,})."]


def test_input_is_optional_and_defaults_to_empty(api, board):
    response = post_json(api, tasks_path(board), {"title": "Only a title"})

    assert response.status_code == 201
    assert response.json()["input"] == ""
    assert Task.objects.get().input == ""


# --- paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["%00", "a%20b", "caf%C3%A9", "x" * 81])
def test_a_path_that_cannot_name_a_board_is_refused_as_json(api, slug):
    response = api.get(f"/api/v1/boards/{slug}")

    errors = assert_error_shape(response, 400)["errors"]
    assert list(errors) == ["slug"]
    assert errors["slug"][0].startswith(
        ("A board's slug holds only letters", "String should have at most 80")
    )


def test_a_nul_in_a_board_path_of_a_write_is_refused_too(api):
    response = post_json(api, "/api/v1/boards/%00/tasks", {"title": "T"})

    assert list(assert_error_shape(response, 400)["errors"]) == ["slug"]


def test_an_unknown_api_path_answers_json_404(api):
    for path in ("/api/v1/nothing", "/api/v1/boards/demo/tasks/", "/api/v1/boards/"):
        response = api.get(path)
        body = assert_error_shape(response, 404)
        assert "openapi.json" in body["detail"]


def test_an_unknown_path_needs_no_login_to_say_so(db):
    response = Client().get("/api/v1/nothing")

    assert_error_shape(response, 404)


def test_a_method_the_path_does_not_take_answers_json_405(api, board):
    response = api.delete(tasks_path(board))

    body = assert_error_shape(response, 405)
    assert response["Allow"] == "GET, POST" or set(response["Allow"].split(", ")) == {"GET", "POST"}
    assert "DELETE is not allowed here" in body["detail"]


@pytest.mark.parametrize("query", ["q=%00", "agent=a%07", "capability=%1b"])
def test_control_characters_in_the_task_list_filters_are_refused(api, board, query):
    response = api.get(f"{tasks_path(board)}?{query}")

    errors = assert_error_shape(response, 400)["errors"]
    assert list(errors) == [query.split("=")[0]]


# --- bodies ------------------------------------------------------------------------------


def test_a_body_past_the_limit_answers_json_413(api, board, settings):
    body = b'{"title": "big", "input": "' + b"x" * (10 * 2**20) + b'"}'

    response = post_raw(api, tasks_path(board), body)

    detail = assert_error_shape(response, 413)["detail"]
    assert "2.5 MB" in detail and "2,621,440 bytes" in detail
    assert not Task.objects.exists()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_declared_json_answers_415(api, board, content_type):
    response = post_raw(api, tasks_path(board), '{"title": "T"}', content_type)

    detail = assert_error_shape(response, 415)["detail"]
    assert "Content-Type: application/json" in detail
    assert not Task.objects.exists()


def test_json_with_a_utf8_charset_is_taken_and_another_charset_is_not(api, board):
    utf8 = post_raw(api, tasks_path(board), '{"title": "T"}', "application/json; charset=UTF-8")
    latin = post_raw(api, tasks_path(board), '{"title": "T"}', "application/json; charset=latin-1")

    assert utf8.status_code == 201
    assert "UTF-8" in assert_error_shape(latin, 415)["detail"]


def test_a_body_that_is_not_utf8_is_refused(api, board):
    response = post_raw(api, tasks_path(board), '{"title": "café"}'.encode("latin-1"))

    errors = assert_error_shape(response, 400)["errors"]
    assert "not UTF-8" in errors["body"][0]


def test_json_nested_too_deep_is_a_400_not_a_crash(api, board):
    response = post_raw(api, tasks_path(board), "[" * 100_000 + "]" * 100_000)

    assert list(assert_error_shape(response, 400)["errors"]) == ["body"]


def test_the_token_is_checked_before_the_body(board):
    # No token: 401, whatever the body; a read-only token: 403, whatever the body.
    anonymous = post_raw(Client(), tasks_path(board), "x" * 100, "text/plain")
    reader = post_raw(client_for(token_for(access="read")), tasks_path(board), "not json", "text/plain")

    assert_error_shape(anonymous, 401)
    assert "read-only" in assert_error_shape(reader, 403)["detail"]


# --- our own failures ---------------------------------------------------------------------


def test_an_unexpected_server_error_still_answers_json(api, board, monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr("boards.api.endpoints.selectors.board_column_counts_get", broken)

    response = api.get(f"/api/v1/boards/{board.slug}")

    body = assert_error_shape(response, 500)
    assert "the disk is on fire" not in body["detail"]
    assert "the disk is on fire" in caplog.text
