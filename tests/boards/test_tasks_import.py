"""services.tasks_import: many tasks in one transaction, all or nothing, each
where task_create would have put it, one pull after the commit."""

from __future__ import annotations

import pytest

from boards import services
from boards.models import Column, Task, TaskEvent
from boards.task_files import TaskRow
from tests.factories import column, make_agent, make_board

pytestmark = pytest.mark.django_db


def rows(*specs: tuple[str, int]) -> list[TaskRow]:
    return [TaskRow(line=n + 2, title=title, priority=priority) for n, (title, priority) in enumerate(specs)]


def queue(board) -> list[str]:
    """The titles of the intake column, in the order agents would pull them."""
    intake = (
        board.columns.filter(role__in=[Column.Role.BACKLOG, Column.Role.READY]).order_by("position").first()
    )
    return list(
        Task.objects.filter(column=intake)
        .order_by("position", "created_at", "pk")
        .values_list("title", flat=True)
    )


def test_it_places_each_task_where_task_create_would(user):
    # Ready as the intake (no Backlog): its order is the order agents pull in.
    one_by_one, imported = (
        make_board(backlog=False, ready_limit=None),
        make_board(backlog=False, ready_limit=None),
    )
    existing = [("urgent", 5), ("normal", 0), ("later", -5)]
    batch = [("a0", 0), ("b9", 9), ("c0", 0), ("d-5", -5), ("e5", 5), ("f-9", -9)]
    for board in (one_by_one, imported):
        for title, priority in existing:
            services.task_create(board=board, title=title, priority=priority)
    for title, priority in batch:
        services.task_create(board=one_by_one, title=title, priority=priority)

    services.tasks_import(board=imported, rows=rows(*batch), user=user)

    assert queue(imported) == queue(one_by_one)


def test_it_widens_a_gap_too_narrow_for_its_rows():
    board = make_board(backlog=False, ready_limit=None)
    high = services.task_create(board=board, title="high", priority=5)
    low = services.task_create(board=board, title="low", priority=0)
    # Neighbours one apart: no room between them without moving "low".
    Task.objects.filter(pk=low.pk).update(position=high.position + 1)

    services.tasks_import(board=board, rows=rows(*[(f"new {n}", 3) for n in range(5)]))

    assert queue(board) == ["high", *[f"new {n}" for n in range(5)], "low"]


def test_it_creates_every_task_with_its_event_and_pulls_once_after_commit(
    user, django_capture_on_commit_callbacks, monkeypatch
):
    board = make_board()
    make_agent(boards=[board])
    pulls: list[int] = []
    monkeypatch.setattr(services.pull, "request_pull", lambda *, board_id: pulls.append(board_id))
    # And one live update of the board, after commit.
    changed: list[int] = []
    monkeypatch.setattr(
        services.pull.broadcast, "columns_changed", lambda board_id, ids: changed.append(board_id)
    )

    with django_capture_on_commit_callbacks(execute=True):
        tasks = services.tasks_import(board=board, rows=rows(*[(f"t{n}", 0) for n in range(2500)]), user=user)

    assert len(tasks) == Task.objects.filter(board=board).count() == 2500
    events = TaskEvent.objects.filter(board=board, kind=TaskEvent.Kind.CREATED)
    assert events.count() == 2500
    assert set(events.values_list("user", flat=True)) == {user.pk}
    assert pulls == [board.pk]
    assert changed == [board.pk]


def test_it_reports_progress_after_each_batch():
    board = make_board()
    seen: list[int] = []

    services.tasks_import(board=board, rows=rows(*[(f"t{n}", 0) for n in range(2100)]), progress=seen.append)

    assert seen == [1000, 2000, 2100]


def test_one_bad_row_refuses_the_whole_batch_with_every_rows_problems():
    board = make_board()
    make_agent(boards=[board], capabilities=["weld"])
    batch = [
        TaskRow(line=2, title="fine"),
        TaskRow(line=3, title="   "),
        TaskRow(line=4, title="x", priority=5000, capability="paint"),
        TaskRow(line=5, title="x", input="bell \x07"),
        TaskRow(line=6, title="x", input="lone \ud800"),
        TaskRow(line=7, title="x", problems={"priority": ["It must be a whole number, not 'high'."]}),
    ]

    with pytest.raises(services.TasksImportRefused) as refused:
        services.tasks_import(board=board, rows=batch)

    errors = refused.value.row_errors
    assert set(errors) == {3, 4, 5, 6, 7}
    assert errors[3] == {"title": ["Give the task a title."]}
    assert set(errors[4]) == {"priority", "capability"}
    assert "control character (U+0007" in errors[5]["input"][0]
    assert "lone surrogate (U+D800)" in errors[6]["input"][0]
    # What the file said about a field is kept, not replaced by a second opinion.
    assert errors[7] == {"priority": ["It must be a whole number, not 'high'."]}
    assert "5 of 6 rows have errors, so nothing was imported" in refused.value.messages[0]
    assert not Task.objects.exists()


def test_a_hard_wip_limit_without_room_for_the_whole_batch_refuses_all_of_it():
    board = make_board(backlog=False, ready_limit=3)
    services.task_create(board=board, title="already there")

    with pytest.raises(
        services.TasksImportRefused, match="room for 2 more tasks, so the 3 tasks were not imported"
    ):
        services.tasks_import(board=board, rows=rows(("a", 0), ("b", 0), ("c", 0)))

    assert queue(board) == ["already there"]
    services.tasks_import(board=board, rows=rows(("a", 0), ("b", 0)))
    assert len(queue(board)) == 3


def test_a_soft_limit_takes_the_batch_and_notes_it():
    board = make_board(backlog=False, ready_limit=1, hard=False)

    services.tasks_import(board=board, rows=rows(("a", 0), ("b", 0)))

    notes = set(TaskEvent.objects.filter(board=board).values_list("note", flat=True))
    assert notes == {"Ready is over its soft WIP limit (2/1)."}
    assert column(board, Column.Role.READY).tasks.count() == 2


def test_an_empty_batch_is_refused():
    with pytest.raises(services.TasksImportRefused, match="no tasks"):
        services.tasks_import(board=make_board(), rows=[])
