"""kaizen_web.rows: many rows in one INSERT whose text does not depend on how many
there are, written as bulk_create would write them, on both databases."""

from __future__ import annotations

import datetime
import math
import uuid
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from andon.models import Inspection, MudaFinish
from boards.models import Task, TaskEvent
from boards.services.primitives import task_rows_update
from experiments.models import Pattern
from kaizen_web.rows import rows_insert, rows_insert_linked
from tests.factories import column, make_board

pytestmark = pytest.mark.django_db


def _tasks(n: int) -> list[Task]:
    board = make_board(ready_limit=None)
    ready = board.columns.get(role="ready")
    return [Task.objects.create(board=board, column=ready, title=f"t{i}") for i in range(n)]


def _inspections(tasks: list[Task]) -> list[Inspection]:
    return [
        Inspection(
            task_id=task.pk,
            board_id=task.board_id,
            attempt=1,
            passed=i % 2 == 0,
            failures=[{"check": "length", "why": f'too "long" {i}'}],
            notes=[] if i % 2 else ["a note, with {braces}"],
            tokens_out=i,
        )
        for i, task in enumerate(tasks)
    ]


def _statements(fn) -> list[tuple[str, bool]]:
    """The SQL ``fn`` runs, as it is handed to the database driver (before its
    values), each with whether it ran as executemany."""
    seen = []

    def record(execute, sql, params, many, context):
        seen.append((sql, many))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        fn()
    return seen


def test_the_statement_is_the_same_whatever_the_number_of_rows():
    tasks = _tasks(12)
    small = _statements(lambda: rows_insert(Inspection, _inspections(tasks[:2])))
    large = _statements(lambda: rows_insert(Inspection, _inspections(tasks[2:])))
    assert len(small) == 1 and small == large
    assert Inspection.objects.count() == 12


def test_one_row_has_a_fixed_statement_of_its_own_and_reads_back_with_its_id():
    tasks = _tasks(3)
    first, second = (
        _statements(lambda t=t: rows_insert(Inspection, _inspections([t]), returning=True)) for t in tasks[:2]
    )
    assert first == second
    [(sql, many)] = [(sql, many) for sql, many in first if sql.startswith("INSERT")]
    if connection.vendor == "postgresql":
        # Values, not one-element arrays (psycopg dumps each array in Python).
        assert "VALUES" in sql and "unnest" not in sql and "%s::jsonb" in sql and not many
    made = _inspections(tasks[2:])
    rows_insert(Inspection, made, returning=True)
    saved = Inspection.objects.get(pk=made[0].pk)
    assert (saved.task_id, saved.failures, saved.notes) == (tasks[2].pk, made[0].failures, made[0].notes)


def test_rows_read_back_as_they_were_made_and_get_their_ids_in_order():
    tasks = _tasks(5)
    made = _inspections(tasks)
    rows_insert(Inspection, made, returning=True)
    assert [row.pk for row in made] == sorted(row.pk for row in made)
    for row in made:
        saved = Inspection.objects.get(pk=row.pk)
        assert (saved.task_id, saved.passed, saved.failures, saved.notes, saved.tokens_out) == (
            row.task_id,
            row.passed,
            row.failures,
            row.notes,
            row.tokens_out,
        )
        # auto_now_add is filled in, on the instance too.
        assert saved.created_at == row.created_at is not None
        assert not row._state.adding


def test_choices_decimals_and_nulls_are_written_as_bulk_create_writes_them():
    [task] = _tasks(1)
    event = TaskEvent(task=task, board_id=task.board_id, kind=TaskEvent.Kind.COMPLETED, note="n")
    rows_insert(TaskEvent, [event])
    saved = TaskEvent.objects.get(task=task)
    assert (saved.kind, saved.from_column_id, saved.note) == ("completed", None, "n")
    pattern = Pattern(
        task_id=task.pk,
        board_id=task.board_id,
        verdict=Pattern.Verdict.PASSED,
        params={"temperature": 0.2},
        cost=Decimal("0.0000012345"),
        text_hash="x",
    )
    rows_insert(Pattern, [pattern], ignore_conflicts=True)
    saved_pattern = Pattern.objects.get(task=task)
    assert (saved_pattern.verdict, saved_pattern.params, saved_pattern.cost, saved_pattern.vector) == (
        "passed",
        {"temperature": 0.2},
        Decimal("0.0000012345"),
        None,
    )


def test_every_kind_of_value_reads_back_exactly_from_a_batch():
    # On PostgreSQL a batch travels as one JSON document (json_to_recordset): each
    # value JSON has no type for must come back as it was, to the microsecond and
    # the last digit.
    board = make_board(ready_limit=None)
    ready = board.columns.get(role="ready")
    at = datetime.datetime(2026, 12, 7, 11, 36, 1, 123456, tzinfo=datetime.UTC)
    texts = ['quote " and back\\slash', "line\nbreak\ttab", "ünïcødé ✓ 漢字", "{braces} %s %(x)s", ""]
    tasks = [
        Task(
            board=board,
            column=ready,
            title=text[:200] or "empty",
            input=text,
            position=2**40 + i,
            priority=-3 + i,
            cost=Decimal("12345.0123456789") if i == 0 else Decimal("0.0000000001") * i,
            confidence=None if i == 1 else 1 / 3 + i,
            lease_token=None if i == 2 else uuid.uuid4(),
            lease_expires_at=at + datetime.timedelta(microseconds=i),
            allow_reuse=i % 2 == 0,
            prompt_version=None if i == 3 else i,
        )
        for i, text in enumerate(texts)
    ]
    statements = _statements(lambda: rows_insert(Task, tasks, returning=True))
    pattern = Pattern(
        task_id=tasks[0].pk,
        board_id=board.pk,
        verdict=Pattern.Verdict.PASSED,
        params={"nested": {"quote": 'a "b"', "list": [1, 2.5, None, True]}},
        vector=bytes(range(256)),
        text_hash="h",
    )
    other = Pattern(task_id=tasks[1].pk, board_id=board.pk, verdict="passed", text_hash="g", vector=None)
    viewed = Pattern(
        task_id=tasks[2].pk,
        board_id=board.pk,
        verdict="passed",
        text_hash="f",
        vector=memoryview(b"\x00\xff"),
    )
    statements += _statements(lambda: rows_insert(Pattern, [pattern, other, viewed], ignore_conflicts=True))
    if connection.vendor == "postgresql":
        # Both batches went as JSON documents: none fell back to the arrays.
        inserts = [sql for sql, _ in statements if sql.startswith("INSERT")]
        assert len(inserts) == 2 and all("json_to_recordset" in sql for sql in inserts)

    for made in tasks:
        saved = Task.objects.get(pk=made.pk)
        fields = ("input", "position", "priority", "cost", "confidence", "lease_token", "lease_expires_at")
        fields += ("allow_reuse", "prompt_version", "status", "created_at")
        assert [getattr(saved, name) for name in fields] == [getattr(made, name) for name in fields]
    saved_pattern = Pattern.objects.get(task_id=tasks[0].pk)
    assert bytes(saved_pattern.vector) == bytes(range(256))
    assert saved_pattern.params == pattern.params
    assert Pattern.objects.get(task_id=tasks[1].pk).vector is None
    assert bytes(Pattern.objects.get(task_id=tasks[2].pk).vector) == b"\x00\xff"


@pytest.mark.parametrize(
    "interval",
    [
        datetime.timedelta(seconds=-1),
        datetime.timedelta(days=-3, hours=5, microseconds=7),
        datetime.timedelta(days=2, seconds=1, microseconds=999_999),
        datetime.timedelta(0),
    ],
)
def test_a_duration_reads_back_as_it_was_whatever_the_interval_style(interval):
    # No model of ours has a DurationField yet: the JSON form is checked alone,
    # under the style that reads an unsigned part after a minus as negative too.
    if connection.vendor != "postgresql":
        pytest.skip("the JSON document is PostgreSQL's")
    from kaizen_web.rows import _json_document

    document = _json_document(["c0"], [[interval]])
    with transaction.atomic(), connection.cursor() as cursor:
        for style in ("sql_standard", "postgres", "iso_8601"):
            cursor.execute(f"SET LOCAL IntervalStyle = {style}")
            # Read as seconds: psycopg cannot parse an interval in the sql_standard style.
            cursor.execute(
                "SELECT EXTRACT(EPOCH FROM c0) FROM json_to_recordset(%s::json) AS u(c0 interval)", [document]
            )
            seconds = (
                Decimal(interval.days * 86400 + interval.seconds) + Decimal(interval.microseconds) / 10**6
            )
            assert cursor.fetchone() == (seconds,), style


def test_values_django_would_convert_or_refuse_still_go_through_the_field():
    # Aware datetimes, finite Decimals and UUIDs are written as they are; a naive
    # datetime is still made aware (with Django's warning), and a Decimal NaN
    # still refused, as bulk_create does.
    board = make_board(ready_limit=None)
    ready = board.columns.get(role="ready")
    naive = datetime.datetime(2026, 12, 7, 12, 0)  # noqa: DTZ001 (naive on purpose)
    made = [Task(board=board, column=ready, title=f"n{i}", lease_expires_at=naive) for i in range(2)]
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        rows_insert(Task, made, returning=True)
    assert Task.objects.get(pk=made[0].pk).lease_expires_at == naive.replace(tzinfo=datetime.UTC)
    refused = [Task(board=board, column=ready, title=f"d{i}", cost=Decimal("NaN")) for i in range(2)]
    with pytest.raises(ValidationError):
        rows_insert(Task, refused)
    made[0].cost = Decimal("Infinity")
    with pytest.raises(ValidationError):
        task_rows_update(made[:1], ["cost"])


def test_on_postgresql_a_batch_travels_as_one_json_document_and_a_nan_by_arrays():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite writes a batch by executemany; it stores a NaN as NULL")
    tasks = _tasks(2)
    at = timezone.now()

    def finishes(leads):
        return [
            MudaFinish(task_id=task.pk, board_id=task.board_id, finished_at=at, lead_s=lead, ready_s=1.5)
            for task, lead in zip(tasks, leads, strict=True)
        ]

    [(sql, _)] = _statements(lambda: rows_insert(MudaFinish, finishes([1.25, 2.5])))
    assert "json_to_recordset(%s::json)" in sql and "unnest" not in sql
    MudaFinish.objects.all().delete()
    # JSON has no NaN: that batch goes as an array a column, and keeps its NaN.
    [(sql, _)] = _statements(lambda: rows_insert(MudaFinish, finishes([math.nan, 2.5])))
    assert "unnest(" in sql
    leads = dict(MudaFinish.objects.values_list("task_id", "lead_s"))
    assert math.isnan(leads[tasks[0].pk]) and leads[tasks[1].pk] == 2.5


def test_ignore_conflicts_skips_a_row_a_unique_constraint_refuses():
    [task] = _tasks(1)

    def pattern(reason: str) -> Pattern:
        return Pattern(task_id=task.pk, board_id=task.board_id, attempt=1, verdict="passed", reason=reason)

    rows_insert(Pattern, [pattern("first")], ignore_conflicts=True)
    rows_insert(Pattern, [pattern("second")], ignore_conflicts=True)
    assert list(Pattern.objects.filter(task=task).values_list("reason", flat=True)) == ["first"]


def test_ids_of_rows_that_may_be_skipped_are_refused():
    with pytest.raises(ValueError, match="cannot return"):
        rows_insert(Pattern, [Pattern()], returning=True, ignore_conflicts=True)


def test_update_fields_merge_a_row_into_the_one_its_unique_fields_match():
    tasks = _tasks(2)
    at = timezone.now()

    def finish(task: Task, lead: float) -> MudaFinish:
        return MudaFinish(task_id=task.pk, board_id=task.board_id, finished_at=at, lead_s=lead, ready_s=lead)

    upsert = {"unique_fields": ["task", "finished_at"], "update_fields": ["lead_s"]}
    rows_insert(MudaFinish, [finish(tasks[0], 1.0)], **upsert)
    rows_insert(MudaFinish, [finish(tasks[0], 2.0), finish(tasks[1], 3.0)], **upsert)
    assert sorted(MudaFinish.objects.values_list("task_id", "lead_s", "ready_s")) == [
        (tasks[0].pk, 2.0, 1.0),  # merged: only lead_s taken from the new row
        (tasks[1].pk, 3.0, 3.0),
    ]
    # One row alone (a VALUES statement on PostgreSQL) merges the same way.
    rows_insert(MudaFinish, [finish(tasks[1], 4.0)], **upsert)
    assert MudaFinish.objects.get(task=tasks[1]).lead_s == 4.0 and MudaFinish.objects.count() == 2


def _task_and_event(board, *, board_id=None) -> tuple[Task, TaskEvent]:
    task = Task(board=board, column=column(board, "backlog"), title="linked", input="in", position=7)
    event = TaskEvent(
        task=task,
        board_id=board_id or board.pk,
        kind=TaskEvent.Kind.CREATED,
        note="a note",
        to_status="backlog",
    )
    return task, event


def test_a_row_and_one_that_links_to_it_read_back_with_their_ids():
    board = make_board(ready_limit=None)
    task, event = _task_and_event(board)

    statements = _statements(lambda: rows_insert_linked(task, event, link="task"))

    assert task.pk is not None and event.task_id == task.pk
    assert not task._state.adding and not event._state.adding
    saved = TaskEvent.objects.select_related("task").get(task=task)
    assert (saved.task.title, saved.task.input, saved.task.position, saved.note, saved.to_status) == (
        "linked",
        "in",
        7,
        "a note",
        "backlog",
    )
    assert saved.task.created_at == task.created_at
    inserts = [sql for sql, _ in statements if "INSERT" in sql]
    # One statement on PostgreSQL; SQLite has no INSERT in a WITH.
    assert len(inserts) == (1 if connection.vendor == "postgresql" else 2)
    if connection.vendor == "postgresql":
        from psycopg._queries import MAX_CACHED_STATEMENT_PARAMS

        # Within what psycopg keeps parsed (rows_insert_linked says why).
        assert inserts[0].count("%s") <= MAX_CACHED_STATEMENT_PARAMS
    # Fixed: the next pair runs the same text.
    task, event = _task_and_event(board)
    assert _statements(lambda: rows_insert_linked(task, event, link="task")) == statements


def test_a_link_that_is_no_foreign_key_to_the_row_is_refused():
    board = make_board(ready_limit=None)
    task, event = _task_and_event(board)
    with pytest.raises(ValueError, match="not a foreign key to Task's primary key"):
        rows_insert_linked(task, event, link="board")
    assert task.pk is None and not Task.objects.filter(title="linked").exists()


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_row_is_not_written_when_the_one_linking_to_it_fails():
    board = make_board(ready_limit=None)
    task, event = _task_and_event(board, board_id=board.pk + 1000)  # no such board
    if connection.vendor == "postgresql":
        # In autocommit: the one statement is its own transaction.
        with pytest.raises(IntegrityError):
            rows_insert_linked(task, event, link="task")
    else:
        # Two statements elsewhere: the caller's transaction keeps them together.
        with pytest.raises(IntegrityError), transaction.atomic():
            rows_insert_linked(task, event, link="task")
    assert not Task.objects.filter(title="linked").exists()
