"""A task created one at a time (the board's form, the API) is written by two
INSERTs of a fixed shape (kaizen_web.rows), not Model.save, and comes back as
save() would have left it: its id, its timestamps, its place, its CREATED event."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from boards import services
from boards.models import Task, TaskEvent
from tests.factories import column, make_board, make_user

pytestmark = pytest.mark.django_db


def test_a_created_task_is_saved_whole_with_its_event():
    board = make_board(ready_limit=None)
    user = make_user(username="intake")

    task = services.task_create(
        board=board, title="  Sort the inbox ", input="three mails", priority=2, allow_reuse=False, user=user
    )

    assert task.pk is not None and not task._state.adding
    saved = Task.objects.get(pk=task.pk)
    assert (saved.title, saved.input, saved.priority, saved.allow_reuse) == (
        "Sort the inbox",
        "three mails",
        2,
        False,
    )
    assert saved.column == column(board, "backlog") and saved.status == Task.Status.BACKLOG
    assert saved.created_at == task.created_at and saved.updated_at == task.updated_at
    assert saved.position == task.position and saved.input_key == task.input_key != ""
    (event,) = TaskEvent.objects.filter(task=task)
    assert (event.kind, event.board_id, event.to_column_id, event.to_status, event.user_id, event.actor) == (
        TaskEvent.Kind.CREATED,
        board.pk,
        column(board, "backlog").pk,
        Task.Status.BACKLOG,
        user.pk,
        TaskEvent.Actor.USER,
    )
    # A second task of the same priority goes after the first.
    second = services.task_create(board=board, title="next", priority=2)
    assert second.position > task.position and second.pk > task.pk


def test_the_inserts_are_the_fixed_shape_statements():
    board = make_board(ready_limit=None)
    services.task_create(board=board, title="warm")  # the statements compiled once

    with CaptureQueriesContext(connection) as queries:
        services.task_create(board=board, title="measured")

    # (Django logs an executemany as "1 times: INSERT ...".)
    sqls = [q["sql"] for q in queries.captured_queries]
    inserts = [sql[sql.index("INSERT") :] for sql in sqls if "INSERT" in sql]
    assert [sql.split()[2] for sql in inserts] == ['"boards_task"', '"boards_taskevent"']
    # Every column given, in the model's order (Model.save leaves out none either,
    # but names them through its compiler each time); the id comes back without
    # Django's "RETURNING "boards_task"."id"" form.
    assert all('RETURNING "boards_task"."id"' not in sql for sql in inserts)
