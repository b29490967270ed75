"""Importing tasks from a file on the task list page: all or nothing, every
row's problems listed with its line and field."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from boards.models import Column, Task
from tests.factories import column, make_agent, make_board, make_writer

pytestmark = pytest.mark.django_db


def import_url(board) -> str:
    return reverse("boards-task-import", kwargs={"slug": board.slug})


def upload(client, board, name: str, content: str | bytes):
    data = content.encode() if isinstance(content, str) else content
    return client.post(import_url(board), {"file": SimpleUploadedFile(name, data)})


@pytest.fixture
def writer_client(client):
    client.force_login(make_writer())
    return client


def test_it_imports_every_task_of_a_csv_into_the_intake_column(writer_client, board):
    make_agent(boards=[board], capabilities=["weld"])
    content = (
        'title,input,capability,priority,allow_reuse\nWeld 1,photo 1,weld,5,false\nWeld 2,"two\nlines",,,\n'
    )

    response = upload(writer_client, board, "tasks.csv", content)

    assert response.status_code == 302
    assert response.url == reverse("boards-task-list", kwargs={"slug": board.slug})
    first, second = Task.objects.order_by("pk")
    assert (first.title, first.input, first.capability, first.priority, first.allow_reuse) == (
        "Weld 1",
        "photo 1",
        "weld",
        5,
        False,
    )
    assert (second.input, second.priority, second.allow_reuse) == ("two\nlines", 0, True)
    assert {first.column, second.column} == {column(board, Column.Role.BACKLOG)}
    page = writer_client.get(response.url).content.decode()
    assert "Imported 2 tasks from tasks.csv into Backlog." in page


def test_it_imports_json_lines(writer_client, board):
    lines = [
        json.dumps({"title": "From JSON", "input": '{"customer": "Laura M."}', "priority": -2}),
        "",
        json.dumps({"title": "Second"}),
    ]

    response = upload(writer_client, board, "tasks.jsonl", "\n".join(lines))

    assert response.status_code == 302
    assert list(Task.objects.order_by("pk").values_list("title", "priority")) == [
        ("From JSON", -2),
        ("Second", 0),
    ]


def test_a_file_with_bad_rows_imports_nothing_and_lists_each_problem(writer_client, board):
    content = "title,priority\nGood,1\n,2\nAlso good,high\nBell \x07,0\n"

    response = upload(writer_client, board, "tasks.csv", content)

    assert response.status_code == 422
    html = response.content.decode()
    assert "3 of 4 rows have errors, so nothing was imported" in html
    assert "<strong>Line 3</strong>, title: Give the task a title." in html
    assert (
        "<strong>Line 4</strong>, priority: Priority must be a whole number from -1000 to 1000, not &#x27;high&#x27;."
        in html
    )
    assert "<strong>Line 5</strong>, title: This text holds a control character (U+0007)" in html
    # The import panel stays open on its errors.
    assert '<details id="task-import" class="panel task-import" open>' in html
    assert not Task.objects.exists()


def test_nul_bytes_and_lone_surrogates_are_row_errors_not_a_server_error(writer_client, board):
    lines = [
        json.dumps({"title": "nul", "input": "a\u0000b"}),
        '{"title": "surrogate \\ud800"}',
    ]

    response = upload(writer_client, board, "tasks.jsonl", "\n".join(lines))

    assert response.status_code == 422
    html = response.content.decode()
    assert "<strong>Line 1</strong>, input: This text holds a control character (U+0000)" in html
    assert "<strong>Line 2</strong>, title: This text holds a lone surrogate (U+D800)" in html
    assert not Task.objects.exists()


def test_it_names_the_problem_of_a_file_it_cannot_read(writer_client, board):
    not_utf8 = upload(writer_client, board, "tasks.csv", "title\ncafé\n".encode("latin-1"))
    no_title = upload(writer_client, board, "tasks.csv", "name,input\nx,y\n")
    unknown = upload(writer_client, board, "tasks.csv", "title,inptu\nx,y\n")

    assert not_utf8.status_code == 422
    assert "Line 2 is not UTF-8 text" in not_utf8.content.decode()
    assert "The first line must name the columns, with at least title" in no_title.content.decode()
    assert "Unknown column &#x27;inptu&#x27;" in unknown.content.decode()
    assert not Task.objects.exists()


def test_a_hard_limit_without_room_for_every_task_refuses_the_file(writer_client):
    board = make_board(backlog=False, ready_limit=2)

    response = upload(writer_client, board, "tasks.csv", "title\na\nb\nc\n")

    assert response.status_code == 422
    assert (
        "hard WIP limit of 2 and room for 2 more tasks, so the 3 tasks were not imported"
        in response.content.decode()
    )
    assert not Task.objects.exists()


def test_a_user_without_the_add_task_permission_may_not_import(client, user, board):
    client.force_login(user)

    response = upload(client, board, "tasks.csv", "title\na\n")
    page = client.get(reverse("boards-task-list", kwargs={"slug": board.slug})).content.decode()

    assert response.status_code == 403
    assert not Task.objects.exists()
    assert 'id="task-import"' not in page


def test_the_import_form_posts_a_file_with_a_csrf_token(writer_client, board):
    html = writer_client.get(reverse("boards-task-list", kwargs={"slug": board.slug})).content.decode()

    assert f'action="{import_url(board)}" enctype="multipart/form-data"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'type="file" name="file"' in html


def test_it_needs_a_login(client, board):
    response = upload(client, board, "tasks.csv", "title\na\n")

    assert response.status_code == 302
    assert not Task.objects.exists()
