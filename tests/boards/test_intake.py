"""A task created one at a time (the board's form, the API) is written by INSERTs
of a fixed shape (kaizen_web.rows), not Model.save, and comes back as save() would
have left it: its id, its timestamps, its place, its CREATED event. On PostgreSQL,
outside a transaction and into an intake column without a WIP limit (the API's
usual case), it takes two statements and no transaction: where it goes, then the
task with its event in one INSERT."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from boards import services
from boards.models import Task, TaskEvent
from boards.services.primitives import WipLimitReached
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
    if connection.vendor == "postgresql":
        # One statement: the event's INSERT takes the task's new id from a WITH.
        [insert] = inserts
        assert insert.split()[2] == '"boards_task"' and 'INSERT INTO "boards_taskevent"' in insert
    else:
        assert [sql.split()[2] for sql in inserts] == ['"boards_task"', '"boards_taskevent"']
    # Every column given, in the model's order (Model.save leaves out none either,
    # but names them through its compiler each time); the id comes back without
    # Django's "RETURNING "boards_task"."id"" form.
    assert all('RETURNING "boards_task"."id"' not in sql for sql in inserts)


def test_a_task_of_higher_priority_goes_before_those_of_lower_priority():
    board = make_board(ready_limit=None)
    low = [services.task_create(board=board, title=f"low {i}", priority=0) for i in range(2)]
    made = [
        services.task_create(board=board, title=title, priority=priority)
        for title, priority in [("high", 5), ("higher", 9), ("last", 0)]
    ]
    order = list(Task.objects.filter(board=board).order_by("position").values_list("title", flat=True))
    assert order == ["higher", "high", "low 0", "low 1", "last"]
    # Each task as returned holds the place it was saved in.
    for task in [*low, *made]:
        assert task.position == Task.objects.get(pk=task.pk).position


def _autocommit_of_each_statement(fn) -> list[tuple[str, bool]]:
    """Each statement ``fn`` runs, with whether it ran in autocommit (outside any transaction)."""
    seen = []

    def record(execute, sql, params, many, context):
        seen.append((sql, connection.get_autocommit()))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        fn()
    return seen


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_task_going_last_takes_two_statements_and_no_transaction_on_postgresql():
    board = make_board(ready_limit=None)
    user = make_user(username="api")
    services.task_create(board=board, title="warm", user=user)
    made: list[Task] = []

    statements = _autocommit_of_each_statement(
        lambda: made.append(services.task_create(board=board, title="after", user=user))
    )

    (task,) = made
    saved = Task.objects.get(pk=task.pk)
    assert (saved.title, saved.column, saved.position) == ("after", column(board, "backlog"), task.position)
    assert saved.position > Task.objects.get(title="warm").position
    (event,) = TaskEvent.objects.filter(task=task)
    assert (event.kind, event.user_id, event.to_column_id) == (
        TaskEvent.Kind.CREATED,
        user.pk,
        saved.column_id,
    )
    if connection.vendor == "postgresql":
        # Its place, then the task with its event.
        assert len(statements) == 2 and all(autocommit for _, autocommit in statements)
        assert "WITH parent AS (INSERT INTO" in statements[1][0]
    else:
        # SQLite: everything after BEGIN IMMEDIATE, under the write lock.
        assert statements[0][0].startswith("BEGIN") and len(statements) > 2
        assert not any(autocommit for _, autocommit in statements[1:])


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_task_going_among_others_finds_its_slot_in_a_transaction():
    board = make_board(ready_limit=None)
    services.task_create(board=board, title="low", priority=0)
    made: list[Task] = []

    statements = _autocommit_of_each_statement(
        lambda: made.append(services.task_create(board=board, title="urgent", priority=3))
    )

    order = list(Task.objects.filter(board=board).order_by("position").values_list("title", flat=True))
    assert order == ["urgent", "low"] and made[0].position == Task.objects.get(title="urgent").position
    # The slot among the waiting tasks, and the insert, in one transaction.
    inserting = next(i for i, (sql, _) in enumerate(statements) if "INSERT" in sql)
    assert not statements[inserting][1] and not statements[inserting - 1][1]
    # Whether a task of lower priority waits is asked once, not again in the transaction.
    assert sum('"slot_lower"' in sql for sql, _ in statements) == 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_limited_intake_is_still_counted_under_the_board_lock():
    board = make_board(ready_limit=2, backlog=False)
    services.task_create(board=board, title="one")

    statements = _autocommit_of_each_statement(lambda: services.task_create(board=board, title="two"))

    sqls = [sql for sql, _ in statements]
    if connection.features.has_select_for_update:
        # The lock is taken in a transaction, then the count, the slot (read again:
        # one read before the lock may be overtaken) and the insert.
        locked = next(i for i, sql in enumerate(sqls) if "FOR NO KEY UPDATE" in sql)
        assert all(not autocommit for _, autocommit in statements[locked:])
        assert any('"slot_last"' in sql for sql in sqls[locked:])
    with pytest.raises(WipLimitReached):
        services.task_create(board=board, title="three")
    assert list(Task.objects.filter(board=board).order_by("position").values_list("title", flat=True)) == [
        "one",
        "two",
    ]


def test_whether_a_lower_priority_task_waits_is_read_by_an_index_of_unfinished_tasks_on_postgresql():
    # Without task_open_priority, PostgreSQL read every task of the table to answer
    # it (a hashed subplan): 14 ms a task added with 58,000 tasks on record.
    if connection.vendor != "postgresql":
        pytest.skip("the plan is PostgreSQL's (SQLite plans the subquery by its own rules)")
    from django.utils import timezone

    from boards.services.primitives import _intake_places_query

    board = make_board(ready_limit=None)
    done = column(board, "done")
    Task.objects.bulk_create(
        Task(board=board, column=done, title=f"d{i}", status=Task.Status.DONE, finished_at=timezone.now())
        for i in range(300)
    )
    services.task_create(board=board, title="waiting", priority=1)
    sql, params = _intake_places_query(board_id=board.pk, priority=2).query.get_compiler("default").as_sql()
    # As the line runs it: a prepared statement, planned once for any values (a
    # generic plan), which a partial index whose condition took a parameter could not serve.
    numbered = iter(range(1, len(params) + 1))
    prepared = re.sub("%s", lambda _: f"${next(numbered)}", sql)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE boards_task")
        # A table this small might be read whole either way: the index is what is under test.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        try:
            cursor.execute(f"PREPARE intake_place AS {prepared}")
            cursor.execute("EXPLAIN EXECUTE intake_place(" + ", ".join(["%s"] * len(params)) + ")", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE intake_place")
            cursor.execute("RESET plan_cache_mode")
            cursor.execute("RESET enable_seqscan")
    assert "task_open_priority" in plan
    # And it still finds the waiting task of lower priority: the new one goes before it.
    urgent = services.task_create(board=board, title="urgent", priority=2)
    waiting = Task.objects.get(board=board, title="waiting")
    assert urgent.column_id == waiting.column_id and urgent.position < waiting.position


def test_a_task_moved_into_a_column_goes_before_those_of_lower_priority_there():
    # Ready and Review alike (both by the index of unfinished tasks).
    from boards.services.primitives import task_place

    board = make_board(ready_limit=None)
    for role in ("ready", "review"):
        target = column(board, role)
        low = Task.objects.create(board=board, column=target, title=f"low {role}", priority=0, position=1024)
        mover = services.task_create(board=board, title=f"high {role}", priority=5)
        task_place(mover, target)
        mover.save()
        assert mover.position < low.position, role
        later = services.task_create(board=board, title=f"low too {role}", priority=0)
        task_place(later, target)
        later.save()
        assert later.position > low.position, role
