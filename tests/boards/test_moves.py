"""Moving tasks by hand: the column rules, hard and soft WIP limits, reordering
the Ready queue, keyboard steps, blocking."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from boards import services
from boards.models import Column, Task, TaskEvent
from tests.factories import column, make_board, make_user

Role = Column.Role
Status = Task.Status


@pytest.fixture
def ready_tasks(board):
    # No agent on the board, so nothing is pulled out of Ready under our feet.
    tasks = [services.task_create(board=board, title=f"t{i}", input="x") for i in range(3)]
    services.board_pull(board_id=board.pk)
    return [Task.objects.get(pk=t.pk) for t in tasks]


def _ready_order(board):
    return list(
        column(board, Role.READY).tasks.order_by("position", "created_at").values_list("title", flat=True)
    )


@pytest.mark.django_db
def test_move_to_done_records_who_and_when(board, ready_tasks, user):
    task = services.task_move(
        task=ready_tasks[0], to_column=column(board, Role.DONE), user=user, note="done by hand"
    )

    assert task.status == Status.DONE
    assert task.finished_at is not None
    event = task.events.get(kind=TaskEvent.Kind.MOVED, user=user)
    assert (event.from_status, event.to_status, event.note, event.actor) == (
        "ready",
        "done",
        "done by hand",
        "user",
    )


@pytest.mark.django_db
def test_hard_limit_refuses_the_move_with_a_message(board, user):
    tasks = [services.task_create(board=board, title=f"t{i}", input="x") for i in range(6)]
    services.board_pull(board_id=board.pk)  # Ready takes 5 of them

    with pytest.raises(services.WipLimitReached) as err:
        services.task_move(task=tasks[5], to_column=column(board, Role.READY), user=user)

    assert "Ready is at its hard WIP limit (5/5)" in err.value.messages[0]
    tasks[5].refresh_from_db()
    assert tasks[5].status == Status.BACKLOG
    assert not tasks[5].events.filter(kind=TaskEvent.Kind.MOVED, user=user).exists()


@pytest.mark.django_db
def test_soft_limit_allows_the_move_and_notes_it(user):
    board = make_board(hard=False, ready_limit=1)
    first, second = (services.task_create(board=board, title=f"t{i}", input="x") for i in range(2))
    services.board_pull(board_id=board.pk)

    moved = services.task_move(task=second, to_column=column(board, Role.READY), user=user)

    assert moved.status == Status.READY
    ready = column(board, Role.READY)
    assert ready.wip_state(ready.tasks.count()) == Column.WipState.EXCEEDED
    assert "over its soft WIP limit" in moved.events.get(user=user).note


@pytest.mark.django_db
def test_nobody_moves_a_task_into_in_progress_by_hand(board, ready_tasks, user):
    with pytest.raises(services.MoveNotAllowed, match="only when an agent pulls"):
        services.task_move(task=ready_tasks[0], to_column=column(board, Role.IN_PROGRESS), user=user)


@pytest.mark.django_db
def test_nobody_drags_a_task_out_of_in_progress(board, agent, user):
    task = services.task_create(board=board, title="t", input="x")
    services.board_pull(board_id=board.pk)
    task.refresh_from_db()

    with pytest.raises(services.MoveNotAllowed, match="agent is working"):
        services.task_move(task=task, to_column=column(board, Role.READY), user=user)


@pytest.mark.django_db
def test_move_to_another_boards_column_is_refused(board, ready_tasks, user):
    other = make_board()
    with pytest.raises(services.MoveNotAllowed):
        services.task_move(task=ready_tasks[0], to_column=column(other, Role.DONE), user=user)


@pytest.mark.django_db
def test_reorder_ready_queue_with_before(board, ready_tasks, user):
    t0, t1, t2 = ready_tasks
    services.task_move(task=t2, to_column=column(board, Role.READY), user=user, before=t0)
    assert _ready_order(board) == ["t2", "t0", "t1"]

    services.task_move(task=t2, to_column=column(board, Role.READY), user=user, before=None)
    assert _ready_order(board) == ["t0", "t1", "t2"]
    assert t2.events.filter(kind=TaskEvent.Kind.REORDERED).count() == 2


@pytest.mark.django_db
def test_reorder_survives_running_out_of_gaps(board, ready_tasks, user):
    t0, t1, t2 = ready_tasks
    # Squeeze t2 in front of t0 far more often than the gap between positions allows.
    for _ in range(14):
        services.task_move(task=t2, to_column=column(board, Role.READY), user=user, before=t1)
        services.task_move(task=t1, to_column=column(board, Role.READY), user=user, before=t2)
    assert _ready_order(board) == ["t0", "t1", "t2"]


@pytest.mark.django_db
def test_keyboard_steps(board, ready_tasks, user):
    t0, t1, t2 = ready_tasks
    services.task_step(task=t2, user=user, direction="up")
    assert _ready_order(board) == ["t0", "t2", "t1"]
    services.task_step(task=Task.objects.get(pk=t0.pk), user=user, direction="down")
    assert _ready_order(board) == ["t2", "t0", "t1"]

    moved = services.task_step(task=Task.objects.get(pk=t1.pk), user=user, direction="left")
    assert moved.status == Status.BACKLOG
    with pytest.raises(services.MoveNotAllowed):
        services.task_step(task=moved, user=user, direction="left")
    with pytest.raises(ValidationError):
        services.task_step(task=moved, user=user, direction="sideways")


@pytest.mark.django_db
def test_block_needs_a_note_and_unblock_clears_it(board, ready_tasks):
    reviewer = make_user()
    with pytest.raises(ValidationError) as err:
        services.task_block(task=ready_tasks[0], user=reviewer, note="  ")
    assert "note" in err.value.message_dict

    blocked = services.task_block(task=ready_tasks[0], user=reviewer, note="needs the drawing")
    assert blocked.is_blocked and blocked.blocked_note == "needs the drawing"

    unblocked = services.task_unblock(task=blocked, user=reviewer)
    assert not unblocked.is_blocked
    kinds = list(unblocked.events.filter(user=reviewer).values_list("kind", flat=True))
    assert kinds == ["blocked", "unblocked"]
