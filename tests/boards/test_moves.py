"""Moving tasks by hand: the column rules, hard and soft WIP limits, reordering
the Ready queue, keyboard steps, blocking."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from boards import services
from boards.models import Column, Task, TaskEvent
from tests.factories import column, make_agent, make_board, make_user

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


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.BACKLOG, Role.DONE])
def test_only_the_ready_queue_can_be_reordered(board, user, role):
    first, second = (services.task_create(board=board, title=f"t{i}", input="x") for i in range(2))
    for task in (first, second):
        if role == Role.DONE:
            services.task_move(task=task, to_column=column(board, Role.DONE), user=user)
    second.refresh_from_db()

    with pytest.raises(services.MoveNotAllowed, match="Only the Ready queue can be reordered; "):
        services.task_move(task=second, to_column=column(board, role), user=user, before=first)
    with pytest.raises(services.MoveNotAllowed, match="Only the Ready queue can be reordered; "):
        services.task_step(task=second, user=user, direction="up")

    assert not TaskEvent.objects.filter(kind=TaskEvent.Kind.REORDERED).exists()


@pytest.mark.django_db
def test_in_progress_cannot_be_reordered(board, agent, user):
    first, second = (services.task_create(board=board, title=f"t{i}", input="x") for i in range(2))
    services.board_pull(board_id=board.pk)
    second.refresh_from_db()
    assert second.status == Status.RUNNING

    with pytest.raises(services.MoveNotAllowed, match="Only the Ready queue can be reordered"):
        services.task_move(task=second, to_column=column(board, Role.IN_PROGRESS), user=user, before=first)
    assert not second.events.filter(kind=TaskEvent.Kind.REORDERED).exists()


@pytest.mark.django_db
def test_a_failed_task_sent_back_to_ready_gets_fresh_attempts(board, user):
    make_agent(boards=[board], max_attempts=2)
    task = services.task_create(board=board, title="flaky", input="x")
    for _ in range(2):
        [claim] = services.board_pull(board_id=board.pk)
        services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="HTTP 500")
    task.refresh_from_db()
    assert (task.status, task.attempts) == (Status.FAILED, 2)

    moved = services.task_move(task=task, to_column=column(board, Role.READY), user=user, note="try again")

    assert (moved.status, moved.attempts, moved.last_error) == (Status.READY, 0, "")
    note = moved.events.filter(kind=TaskEvent.Kind.MOVED, user=user).get().note
    assert note.startswith("try again; starts afresh: attempts reset (were 2)")
    # One more failure is a retry again, not the end.
    [claim] = services.board_pull(board_id=board.pk)
    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="HTTP 500")
    task.refresh_from_db()
    assert (task.status, task.attempts) == (Status.READY, 1)


@pytest.mark.django_db
def test_a_done_task_sent_back_to_the_backlog_loses_its_old_output(board, agent, user):
    task = services.task_create(board=board, title="redo", input="x")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_complete(
        task_id=task.pk, lease_token=claim.lease_token, output="old answer", confidence=0.9
    )
    assert Task.objects.get(pk=task.pk).status == Status.DONE

    moved = services.task_move(task=task, to_column=column(board, Role.BACKLOG), user=user)

    assert (moved.output, moved.confidence, moved.attempts) == ("", None, 0)
    assert "output and last error cleared" in moved.events.get(kind=TaskEvent.Kind.MOVED, user=user).note


@pytest.mark.django_db
def test_a_ready_task_moved_to_the_backlog_keeps_its_attempts(board, user):
    agent = make_agent(boards=[board], max_attempts=3)
    task = services.task_create(board=board, title="t", input="x")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="HTTP 500")
    agent.paused = True
    agent.save()
    task.refresh_from_db()

    moved = services.task_move(task=task, to_column=column(board, Role.BACKLOG), user=user)

    assert (moved.attempts, moved.last_error) == (1, "HTTP 500")


@pytest.mark.django_db
def test_moving_a_blocked_task_to_done_clears_the_block(board, ready_tasks, user):
    blocked = services.task_block(task=ready_tasks[0], user=user, note="needs the drawing")

    done = services.task_move(task=blocked, to_column=column(board, Role.DONE), user=user)

    assert not done.is_blocked
    assert done.blocked_note == ""
    assert "block cleared (needs the drawing)" in done.events.get(kind=TaskEvent.Kind.MOVED, user=user).note
