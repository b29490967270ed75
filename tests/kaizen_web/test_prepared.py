"""kaizen_web.prepared: a queryset compiled once answers as the queryset itself would,
for every value, on both databases, converted as Django converts its rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, transaction
from django.db.models import Count, Q
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from boards.models import Board, Column, Task
from kaizen_web.prepared import Prepared, fields
from tests.factories import make_board

pytestmark = pytest.mark.django_db


def _tasks(*, column_id, title):
    return (
        Task.objects.filter(column_id=column_id)
        .filter(Q(title=title) | Q(priority__gt=1))
        .order_by("pk")
        .values_list("pk", "title", "priority", "created_at", "allow_reuse")
    )


def test_each_call_reads_its_own_values_as_the_queryset_would():
    board = make_board()
    ready, done = board.columns.get(role="ready"), board.columns.get(role="done")
    for column in (ready, done):
        for index in range(3):
            Task.objects.create(
                board=board, column=column, title=f"t{index}", priority=index, allow_reuse=index != 1
            )
    prepared = Prepared(_tasks, column_id=int, title=str)
    for column in (ready, done):
        for title in ("t0", "t1", "nothing"):
            assert prepared.rows(column_id=column.pk, title=title) == list(
                _tasks(column_id=column.pk, title=title)
            )
    rows = prepared.rows(column_id=done.pk, title="t1")
    # Converted as Django converts them (SQLite's integers and text, too).
    assert [type(value) for value in rows[0][3:]] == [datetime, bool]
    assert [row[1] for row in rows] == ["t1", "t2"]


def test_compiled_once_then_only_run():
    board = make_board()
    prepared = Prepared(_tasks, column_id=int, title=str)
    prepared.rows(column_id=1, title="x")
    compiled = dict(prepared._compiled)
    column_id = board.columns.first().pk
    with CaptureQueriesContext(connection) as queries:
        assert prepared.rows(column_id=column_id, title="y") == []
    assert len(queries) == 1
    assert prepared._compiled == compiled


def test_none_is_a_shape_of_its_own():
    board = make_board()
    ready = board.columns.get(role="ready")
    Task.objects.create(board=board, column=ready, title="a", prompt_version=None)
    Task.objects.create(board=board, column=ready, title="b", prompt_version=3)
    prepared = Prepared(
        lambda *, version: Task.objects.filter(column=ready, prompt_version=version).values_list("title"),
        version=int,
    )
    assert prepared.rows(version=None) == [("a",)]
    assert prepared.rows(version=3) == [("b",)]
    assert prepared.rows(version=None) == [("a",)]


def test_instances_are_whole_model_objects():
    board = make_board()
    prepared = Prepared(lambda *, slug: Board.objects.filter(slug=slug).values_list(*fields(Board)), slug=str)
    [found] = prepared.instances(Board, slug=board.slug)
    assert found == board and found.name == board.name and found.created_at == board.created_at
    assert not found._state.adding
    assert prepared.instances(Board, slug="no-such-board") == []


def test_instances_of_some_columns_defer_the_others():
    board = make_board(name="Read in part")
    prepared = Prepared(lambda *, slug: Board.objects.filter(slug=slug).values_list("id", "name"), slug=str)
    [found] = prepared.instances(Board, columns=["id", "name"], slug=board.slug)
    assert found.pk == board.pk and found.name == "Read in part"
    assert "slug" in found.get_deferred_fields()
    assert found.slug == board.slug  # loaded when asked for, as with only()


def test_instances_carry_the_annotations_read_after_their_fields():
    board = make_board()
    ready = board.columns.get(role="ready")
    Task.objects.create(board=board, column=ready, title="a")
    prepared = Prepared(
        lambda *, board_id: (
            Column.objects.filter(board_id=board_id)
            .annotate(task_count=Count("tasks"))
            .order_by("position")
            .values_list(*fields(Column), "task_count")
        ),
        board_id=int,
    )
    found = prepared.instances(Column, ["task_count"], board_id=board.pk)
    assert found == list(board.columns.order_by("position"))
    assert {column.role: column.task_count for column in found}["ready"] == 1
    assert sum(column.task_count for column in found) == 1


def test_a_value_the_sql_does_not_take_is_refused():
    # A value the build does not pass on as a parameter (ignored, or turned into
    # SQL text) cannot be run again with another: refused, never silently ignored.
    prepared = Prepared(lambda *, n: Column.objects.filter(position__gte=0).values_list("pk"), n=int)
    with pytest.raises(ValueError, match="n not found"):
        prepared.rows(n=1)


def test_only_ints_text_datetimes_and_lists_of_ints_or_text():
    with pytest.raises(TypeError, match="an int, a str, a datetime or a list of ints or of strs"):
        Prepared(lambda *, when: Task.objects.values_list("pk"), when=date)
    with pytest.raises(TypeError, match="a list of ints or of strs"):
        Prepared(lambda *, whens: Task.objects.values_list("pk"), whens=list[datetime])


def _since(*, column_id, since):
    return (
        Task.objects.filter(column_id=column_id)
        .filter(Q(created_at__gte=since) | Q(priority__gt=5))
        .order_by("pk")
        .values_list("title")
    )


def test_a_datetime_answers_as_the_queryset_would_in_any_zone_or_none():
    board = make_board()
    ready = board.columns.get(role="ready")
    start = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    for minutes in range(4):
        task = Task.objects.create(board=board, column=ready, title=f"t{minutes}", priority=minutes * 3)
        Task.objects.filter(pk=task.pk).update(created_at=start + timedelta(minutes=minutes))
    prepared = Prepared(_since, column_id=int, since=datetime)
    paris = ZoneInfo("Europe/Paris")
    for since in (
        start,
        start + timedelta(microseconds=1),
        start + timedelta(minutes=2),
        # The same instants in another zone: the same rows.
        (start + timedelta(minutes=1)).astimezone(paris),
        start - timedelta(days=1),
        start + timedelta(days=1),
    ):
        assert prepared.rows(column_id=ready.pk, since=since) == list(_since(column_id=ready.pk, since=since))
    assert prepared.rows(column_id=ready.pk, since=start + timedelta(minutes=2)) == [("t2",), ("t3",)]
    assert len(prepared._compiled) == 1
    # A naive one is taken in the default time zone, with Django's warning, as the
    # queryset takes it.
    naive = datetime(2026, 3, 1, 12, 1)
    with pytest.warns(RuntimeWarning, match="received a naive datetime"):
        expected = list(_since(column_id=ready.pk, since=naive))
    with pytest.warns(RuntimeWarning, match="received a naive datetime"):
        assert prepared.rows(column_id=ready.pk, since=naive) == expected
    assert expected == [("t1",), ("t2",), ("t3",)]


def _titles(*, ids, column_id):
    return Task.objects.filter(Q(pk__in=ids) | Q(column_id=column_id)).order_by("pk").values_list("title")


def test_a_list_answers_as_the_queryset_for_every_length_in_a_few_shapes():
    board = make_board()
    ready, done = board.columns.get(role="ready"), board.columns.get(role="done")
    tasks = [Task.objects.create(board=board, column=ready, title=f"t{i}") for i in range(9)]
    Task.objects.create(board=board, column=done, title="done")
    prepared = Prepared(_titles, ids=list, column_id=int)
    ids = [task.pk for task in tasks]
    for length in range(1, 10):
        # Out of order and repeated, as a caller may pass them; a set too.
        wanted = list(reversed(ids[:length])) + ids[:1]
        assert prepared.rows(ids=wanted, column_id=done.pk) == list(_titles(ids=wanted, column_id=done.pk))
        assert prepared.rows(ids=set(wanted), column_id=0) == [(f"t{i}",) for i in range(length)]
    # Lists of 1 to 10 items (the sets without the repeated one) made five shapes:
    # 1, 2, 4, 8 and 16 placeholders.
    assert sorted(sizes for _, _, ((_, sizes),) in prepared._compiled) == [1, 2, 4, 8, 16]


def test_an_empty_list_is_refused_and_none_is_no_item():
    board = make_board()
    ready = board.columns.get(role="ready")
    task = Task.objects.create(board=board, column=ready, title="kept")
    prepared = Prepared(_titles, ids=list, column_id=int)
    # As Django leaves None out of an IN list (under an exclude, a NULL item would
    # match nothing at all).
    assert prepared.rows(ids=[None, task.pk], column_id=0) == [("kept",)]
    excluded = Prepared(
        lambda *, ids: Task.objects.filter(column=ready).exclude(pk__in=ids).values_list("title"), ids=list
    )
    assert excluded.rows(ids=[task.pk + 1, None]) == [("kept",)]
    for empty in ([], [None]):
        with pytest.raises(ValueError, match="ids is an empty list"):
            prepared.rows(ids=empty, column_id=1)


def _asking(*, capabilities, column_id):
    return (
        Task.objects.filter(column_id=column_id)
        .filter(Q(capability="") | Q(capability__in=capabilities))
        .order_by("pk")
        .values_list("title")
    )


def test_a_list_of_text_answers_as_the_queryset_for_every_length():
    board = make_board()
    ready, done = board.columns.get(role="ready"), board.columns.get(role="done")
    names = [f"skill-{i}" for i in range(6)]
    for name in ["", *names]:
        Task.objects.create(board=board, column=ready, title=f"asks {name or 'nothing'}", capability=name)
    Task.objects.create(board=board, column=done, title="done", capability=names[0])
    prepared = Prepared(_asking, capabilities=list[str], column_id=int)
    for length in range(1, 7):
        # Repeated and out of order, and a set.
        wanted = list(reversed(names[:length])) + names[:1]
        for given in (wanted, set(wanted)):
            assert prepared.rows(capabilities=given, column_id=ready.pk) == list(
                _asking(capabilities=wanted, column_id=ready.pk)
            )
        assert len(prepared.rows(capabilities=wanted, column_id=ready.pk)) == length + 1
    # Text that is not a capability's, quotes and all, is a value like any other.
    assert prepared.rows(capabilities=["x' OR '1'='1"], column_id=ready.pk) == [("asks nothing",)]
    # Lists of 1 to 7 items made four shapes: 1, 2, 4 and 8 placeholders.
    assert sorted(sizes for _, _, ((_, sizes),) in prepared._compiled) == [1, 2, 4, 8]


def _first(*, column_id, limit):
    tasks = Task.objects.filter(column_id=column_id).order_by("-priority", "pk").values_list("title")
    return tasks if limit is None else tasks[:limit]


def test_a_slice_s_bound_is_a_parameter_of_one_statement():
    board = make_board()
    ready = board.columns.get(role="ready")
    for index in range(5):
        Task.objects.create(board=board, column=ready, title=f"t{index}", priority=index % 3)
    prepared = Prepared(_first, column_id=int, limit=int)
    for limit in (0, 1, 2, 3, 4, 5, 9, None):
        assert prepared.rows(column_id=ready.pk, limit=limit) == list(_first(column_id=ready.pk, limit=limit))
    # Every limit ran one compiled SQL, whose LIMIT takes the value; None, no
    # slice at all, is a shape of its own.
    shapes = {nulls: compiled for (_, nulls, _), compiled in prepared._compiled.items()}
    assert set(shapes) == {frozenset(), frozenset({"limit"})}
    assert "LIMIT %s" in shapes[frozenset()].sql and "LIMIT" not in shapes[frozenset({"limit"})].sql
    with pytest.raises(ValueError, match="limit is negative"):
        prepared.rows(column_id=ready.pk, limit=-1)


def test_an_offset_and_a_limit_among_other_parameters_take_their_own_places():
    board = make_board()
    ready, done = board.columns.get(role="ready"), board.columns.get(role="done")
    for index in range(6):
        Task.objects.create(board=board, column=ready, title=f"t{index}", priority=index)
    Task.objects.create(board=board, column=done, title="done", priority=9)

    def page(*, column_id, skip, size, least):
        tasks = Task.objects.filter(column_id=column_id, priority__gte=least).order_by("pk")
        return tasks.values_list("title")[skip : skip + size]

    prepared = Prepared(page, column_id=int, skip=int, size=int, least=int)
    for skip, size, least in [(0, 2, 0), (1, 2, 0), (2, 3, 1), (4, 9, 0), (0, 1, 5), (5, 1, 9)]:
        assert prepared.rows(column_id=ready.pk, skip=skip, size=size, least=least) == list(
            page(column_id=ready.pk, skip=skip, size=size, least=least)
        )
    assert len(prepared._compiled) == 1


def test_a_bound_that_is_not_a_value_s_own_is_refused():
    # tasks[:n + 1]: the SQL's LIMIT is not n, so no call could change it.
    prepared = Prepared(lambda *, n: Task.objects.order_by("pk").values_list("pk")[: n + 1], n=int)
    with pytest.raises(ValueError, match="n not found"):
        prepared.rows(n=1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_lock_outside_a_transaction_is_refused_as_django_refuses_it():
    board = make_board()
    locking = Prepared(
        lambda *, pk: Board.objects.filter(pk=pk).select_for_update().values_list("pk"), pk=int
    )
    with transaction.atomic():
        assert locking.rows(pk=board.pk) == [(board.pk,)]
    # Django says so when it compiles the query; a compiled one says so at every call.
    with pytest.raises(TransactionManagementError, match="outside of a transaction"):
        locking.rows(pk=board.pk)


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.postgres
def test_postgresql_prepares_it_once_per_connection_and_django_s_own_queries_never():
    board = make_board()
    column_id = board.columns.first().pk
    prepared = Prepared(_tasks, column_id=int, title=str)
    before = _prepared_statements()
    with CaptureQueriesContext(connection) as queries:
        for title in ("a", "b", "c"):
            assert prepared.rows(column_id=column_id, title=title) == list(
                _tasks(column_id=column_id, title=title)
            )
    # Still run through Django's cursor wrapper: counted, logged, wrapped.
    assert sum(q["sql"].startswith('SELECT "boards_task"."id"') for q in queries.captured_queries) == 6
    made = [s for s in _prepared_statements() if s not in before]
    # One PREPARE for the three calls; the querysets' own runs prepared nothing.
    assert len(made) == 1 and '"boards_task"."column_id" = $1' in made[0]
    # psycopg tracks nothing of Django's own statements (its threshold is Django's None).
    assert connection.connection.prepare_threshold is None


@pytest.mark.postgres
def test_preparing_is_off_with_kaizen_db_prepare_off(settings):
    settings.KAIZEN_DB_PREPARE = False
    board = make_board()
    prepared = Prepared(_tasks, column_id=int, title=str)
    before = _prepared_statements()
    assert prepared.rows(column_id=board.columns.first().pk, title="a") == []
    assert _prepared_statements() == before


@pytest.mark.postgres
def test_a_query_can_say_it_is_not_to_be_prepared():
    board = make_board()
    prepared = Prepared(_tasks, prepare=False, column_id=int, title=str)
    before = _prepared_statements()
    assert prepared.rows(column_id=board.columns.first().pk, title="a") == []
    assert _prepared_statements() == before
    # Nor is anything else prepared meanwhile: psycopg's threshold is back at Django's None.
    assert connection.connection.prepare_threshold is None


@pytest.mark.postgres
def test_rows_insert_and_the_tasks_executemany_are_prepared_once_per_connection():
    """The line's INSERTs (rows_insert, one row or many) and its UPDATE of many
    tasks (executemany) were planned at every call: PostgreSQL now plans each
    shape once per connection, whatever the size or sign of its integers, and
    every row still reads back as written."""
    from boards.models import TaskEvent
    from boards.services.primitives import task_rows_update
    from kaizen_web.rows import rows_insert

    board = make_board()
    ready = board.columns.get(role="ready")
    before = _prepared_statements()
    tasks = []
    # Small and large integers (psycopg's own choice: smallint, then integer).
    for batch in ([1], [2, 3], [40_000], [50_000, 60_000]):
        made = [Task(board=board, column=ready, title=f"t{n}", position=n) for n in batch]
        rows_insert(Task, made, returning=True)
        tasks += made
    base = {task.pk: task.position for task in tasks}
    for factor in (1, 100_000, -3):
        for task in tasks:
            task.position = base[task.pk] * factor
        task_rows_update(tasks, ["position"])
    rows_insert(TaskEvent, [TaskEvent(task=tasks[0], board=board, kind="created", actor="user")])

    made = [s for s in _prepared_statements() if s not in before]
    inserts = [s for s in made if s.startswith('INSERT INTO "boards_task" ')]
    # One statement per shape (one row, several rows), not one per call.
    assert len(inserts) == 2 and any("json_to_recordset" in s for s in inserts)
    updates = [s for s in made if s.startswith('UPDATE "boards_task"')]
    assert len(updates) == 1 and '"position" = $1' in updates[0]
    assert sum(s.startswith('INSERT INTO "boards_taskevent"') for s in made) == 1
    assert sorted(Task.objects.filter(board=board).values_list("title", "position")) == sorted(
        (f"t{n}", n * -3) for n in (1, 2, 3, 40_000, 50_000, 60_000)
    )
    assert [t.pk for t in tasks] == sorted(Task.objects.filter(board=board).values_list("pk", flat=True))
    assert connection.connection.prepare_threshold is None


@pytest.mark.postgres
def test_a_prepared_insert_that_fails_leaves_the_next_one_working():
    """An INSERT refused by a constraint inside a savepoint (its statement prepared,
    then failing) does not break the next one on the same connection."""
    from django.db import IntegrityError, transaction

    from kaizen_web.rows import rows_insert

    board = make_board()
    ready = board.columns.get(role="ready")
    with transaction.atomic():
        rows_insert(Task, [Task(board=board, column=ready, title="first")], returning=True)
        with pytest.raises(IntegrityError), transaction.atomic():
            rows_insert(Task, [Task(board=board, column=ready, title=None)])
        rows_insert(Task, [Task(board=board, column=ready, title="second")], returning=True)
    assert sorted(Task.objects.filter(board=board).values_list("title", flat=True)) == ["first", "second"]


@pytest.mark.postgres
def test_a_connection_keeps_its_cursor_between_statements_and_a_nested_one_gets_its_own():
    """The PreparingCursor goes back to its connection when closed and serves the
    next statement (making one was a sixth of a short statement's CPU): each
    statement still reads only its own rows, and a statement run while another's
    cursor is open gets a cursor of its own."""
    from kaizen_web.prepared import _KEPT, prepared_cursor

    board = make_board()
    ready, done = board.columns.get(role="ready"), board.columns.get(role="done")
    Task.objects.create(board=board, column=ready, title="ready one")
    Task.objects.create(board=board, column=done, title="done one")
    prepared = Prepared(
        lambda *, column_id: Task.objects.filter(column_id=column_id).values_list("title"), column_id=int
    )
    assert prepared.rows(column_id=ready.pk) == [("ready one",)]
    kept = connection.connection.__dict__[_KEPT]
    assert prepared.rows(column_id=done.pk) == [("done one",)]
    assert connection.connection.__dict__[_KEPT] is kept and not kept.closed
    # Closed, it let go of what it read, as closing does.
    assert kept.pgresult is None

    with prepared_cursor("default") as outer:
        outer.execute("SELECT title FROM boards_task WHERE column_id = %s", [ready.pk])
        # Taken while open: the next statement makes its own, and both read theirs.
        assert _KEPT not in connection.connection.__dict__
        assert prepared.rows(column_id=done.pk) == [("done one",)]
        inner = connection.connection.__dict__[_KEPT]
        assert inner is not kept
        assert outer.fetchall() == [("ready one",)]
    # The last one closed is kept.
    assert connection.connection.__dict__[_KEPT] is kept
