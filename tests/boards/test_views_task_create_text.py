"""The board's task form refuses text the database cannot hold or that is not
real text (control characters), with the message on the field: the same rule
as the API and the import (boards.text, through services.task_fields_errors)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards.models import Task
from tests.factories import HTMX

pytestmark = pytest.mark.django_db


def post(client, board, **fields):
    return client.post(reverse("boards-task-create", kwargs={"slug": board.slug}), fields, headers=HTMX)


@pytest.mark.parametrize(("field", "value"), [("title", "bell \x07 here"), ("input", "escape \x1b[31m")])
def test_a_control_character_is_refused_on_its_field(logged_in, board, field, value):
    fields = {"title": "Weld", "input": "", "priority": 0} | {field: value}

    response = post(logged_in, board, **fields)

    assert response.status_code == 422
    html = response.content.decode()
    assert f"field--{field} field--error" in html
    assert "This text holds a control character" in html
    assert not Task.objects.exists()


def test_a_nul_is_refused_with_a_message_not_a_server_error(logged_in, board):
    response = post(logged_in, board, title="nul \x00", input="", priority=0)

    assert response.status_code == 422
    assert "Null characters are not allowed." in response.content.decode()
    assert not Task.objects.exists()


def test_tabs_and_line_breaks_in_the_input_are_text(logged_in, board):
    response = post(logged_in, board, title="Weld", input="line one\r\n\tline two", priority=0)

    assert response.status_code == 200
    assert Task.objects.get().input == "line one\r\n\tline two"
