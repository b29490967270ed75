"""What people do on the board: move a task where the column rules allow,
reorder the Ready queue, block and unblock a task, pause a board or an agent,
and what follows a change to a board made in the admin.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from andon import muda_rollups
from andon.models import Escalation
from boards.models import Agent, Board, Column, Task, TaskEvent
from boards.selectors import column_neighbour_get
from boards.services.primitives import board_lock, slot_before, task_event, task_place, wip_check
from boards.services.pull import board_changed_on_commit

Role = Column.Role
Status = Task.Status

# Where a person may drag a card. In progress belongs to the agents: a task enters
# it only when an agent pulls it, and leaves it when the run ends or its lease runs out.
# A task in Review with an open escalation leaves it only by a reviewer's decision
# in the andon inbox (EscalationOpen); these moves are for one that has none.
MANUAL_MOVES: dict[str, set[str]] = {
    Role.BACKLOG: {Role.READY, Role.DONE},
    Role.READY: {Role.BACKLOG, Role.DONE},
    Role.REVIEW: {Role.READY, Role.DONE, Role.BACKLOG},
    Role.DONE: {Role.READY, Role.BACKLOG},
    Role.IN_PROGRESS: set(),
}


class MoveNotAllowed(ValidationError):
    """The board's rules do not allow this move."""


class EscalationOpen(MoveNotAllowed):
    """The task waits in Review on a reviewer's decision: only the andon decisions
    (approve, edit and approve, reject) take it out. ``escalation_url`` is where
    that decision is made, for a caller that can show a link."""

    def __init__(self, task: Task, escalation: Escalation) -> None:
        self.escalation = escalation
        self.escalation_url = escalation.get_absolute_url()
        super().__init__(
            f"“{task.title}” waits in Review for a reviewer's decision: only approving, editing or "
            f"rejecting it in the andon inbox takes it out of Review ({self.escalation_url})."
        )


# Why a column other than Ready keeps its own order.
_OWN_ORDER: dict[str, str] = {
    Role.BACKLOG: "the Backlog is pulled by priority, then age",
    Role.IN_PROGRESS: "In progress is ordered by when agents pulled its tasks",
    Role.DONE: "Done lists tasks by when they finished",
}


def _reorder_refused(column: Column) -> MoveNotAllowed:
    # Only Ready's order decides anything (what agents pull next); reordering
    # elsewhere would record events with no visible effect.
    why = _OWN_ORDER.get(column.role, f"{column.name} keeps the order its tasks arrived in")
    return MoveNotAllowed(f"Only the Ready queue can be reordered; {why}.")


def task_move(
    *,
    task: Task,
    to_column: Column,
    user: User | None,
    before: Task | None = None,
    note: str = "",
) -> Task:
    """Move a task by hand, where the column's rules allow, or reorder it within
    its column when ``to_column`` is its own (``before`` is the card it now precedes).
    The returned task's ``wip_note`` says when the move took the column past its
    soft WIP limit (empty otherwise)."""
    if to_column.board_id != task.board_id:
        raise MoveNotAllowed("That column belongs to another board.")
    with transaction.atomic():
        board_lock(task.board_id)
        task = (
            Task.objects.select_for_update(of=("self",), no_key=True).select_related("column").get(pk=task.pk)
        )
        if before is not None:
            # Read it afresh: the caller's copy may hold a position that has moved since.
            before = Task.objects.filter(pk=before.pk, column=to_column).exclude(pk=task.pk).first()
        from_column = task.column
        if from_column.pk == to_column.pk:
            if to_column.role != Role.READY:
                raise _reorder_refused(to_column)
            task.position = slot_before(to_column, before, exclude_pk=task.pk)
            task.save(update_fields=["position", "updated_at"])
            task_event(
                task,
                TaskEvent.Kind.REORDERED,
                from_column=from_column,
                to_column=to_column,
                from_status=task.status,
                to_status=task.status,
                user=user,
                note=note,
            ).save()
            board_changed_on_commit(task.board_id, [to_column.pk], pull=True)
            task.wip_note = ""
            return task
        if from_column.role == Role.REVIEW:
            # A defect waits on a person who may decide it: a move by anyone
            # else (or by a reviewer, past the inbox) would end it undecided.
            escalation = Escalation.objects.filter(task=task, status=Escalation.Status.OPEN).first()
            if escalation is not None:
                raise EscalationOpen(task, escalation)
        if to_column.role not in MANUAL_MOVES[from_column.role]:
            if from_column.role == Role.IN_PROGRESS:
                message = "An agent is working on this task; it leaves In progress when the run ends."
            elif to_column.role == Role.IN_PROGRESS:
                message = "Tasks enter In progress only when an agent pulls them from Ready."
            else:
                message = f"Tasks cannot move from {from_column.name} to {to_column.name}."
            raise MoveNotAllowed(message)
        soft_note = wip_check(to_column)
        from_status = task.status
        position = None if before is None else slot_before(to_column, before, exclude_pk=task.pk)
        task_place(task, to_column, position=position)
        notes = [note, soft_note]
        sent_back = from_column.role in (Role.DONE, Role.REVIEW) and to_column.role in (
            Role.BACKLOG,
            Role.READY,
        )
        if sent_back and (task.attempts or task.last_error or task.output or task.confidence is not None):
            # A person sends the task round again: it starts afresh, with the
            # agent's full attempts rather than what the last round left of them.
            notes.append(
                f"starts afresh: attempts reset (were {task.attempts}), output and last error cleared"
            )
            task.attempts = 0
            task.last_error = ""
            task.output = ""
            task.confidence = None
            task.confidence_source = ""
            task.accepted_tier = None
            task.reused_from = None
        if to_column.role == Role.DONE and task.blocked_at is not None:
            # A finished task waits on nothing; a block left on it would show on its card.
            notes.append(f"block cleared ({task.blocked_note})")
            task.blocked_note = ""
            task.blocked_at = None
        task.save()
        task_event(
            task,
            TaskEvent.Kind.MOVED,
            from_column=from_column,
            to_column=to_column,
            from_status=from_status,
            to_status=task.status,
            user=user,
            note="; ".join(n for n in notes if n),
        ).save()
        if task.status == Status.DONE:
            muda_rollups.finishes_refresh(tasks=[task])
        board_changed_on_commit(task.board_id, [from_column.pk, to_column.pk], pull=True)
    # For the caller to tell the person, as the event records it: a soft limit exceeded.
    task.wip_note = soft_note
    return task


def task_step(*, task: Task, user: User | None, direction: str) -> Task:
    """Keyboard moves: ``up``/``down`` reorder within the column, ``left``/``right``
    move to the neighbouring column (where the rules allow)."""
    column = task.column
    if direction in ("up", "down") and column.role != Role.READY:
        # Refused even at the column's edge, where there would be nothing to swap.
        raise _reorder_refused(column)
    siblings = Task.objects.filter(column=column).exclude(pk=task.pk)
    if direction == "up":
        previous = siblings.filter(position__lt=task.position).order_by("-position").first()
        return (
            task if previous is None else task_move(task=task, to_column=column, user=user, before=previous)
        )
    if direction == "down":
        following = list(siblings.filter(position__gt=task.position).order_by("position")[:2])
        if not following:
            return task
        before = following[1] if len(following) > 1 else None
        return task_move(task=task, to_column=column, user=user, before=before)
    if direction in ("left", "right"):
        neighbour = column_neighbour_get(column=column, direction=direction)
        if neighbour is None:
            raise MoveNotAllowed(f"There is no column to the {direction} of {column.name}.")
        return task_move(task=task, to_column=neighbour, user=user)
    raise ValidationError(f"Unknown direction {direction!r}: use up, down, left or right.")


def task_block(*, task: Task, user: User | None, note: str) -> Task:
    note = (note or "").strip()
    if not note:
        raise ValidationError({"note": ["Say what blocks the task, so others know what to fix."]})
    with transaction.atomic():
        task = Task.objects.select_for_update(of=("self",), no_key=True).get(pk=task.pk)
        if task.status in (Status.RUNNING, Status.DONE, Status.FAILED):
            raise MoveNotAllowed(f"A task that is {task.get_status_display().lower()} cannot be blocked.")
        task.blocked_note = note
        task.blocked_at = timezone.now()
        task.save(update_fields=["blocked_note", "blocked_at", "updated_at"])
        task_event(
            task, TaskEvent.Kind.BLOCKED, from_status=task.status, to_status=task.status, user=user, note=note
        ).save()
        board_changed_on_commit(task.board_id, [task.column_id], pull=False)
    return task


def task_unblock(*, task: Task, user: User | None, note: str = "") -> Task:
    with transaction.atomic():
        task = Task.objects.select_for_update(of=("self",), no_key=True).get(pk=task.pk)
        if task.blocked_at is None:
            return task
        task.blocked_note = ""
        task.blocked_at = None
        task.save(update_fields=["blocked_note", "blocked_at", "updated_at"])
        task_event(
            task,
            TaskEvent.Kind.UNBLOCKED,
            from_status=task.status,
            to_status=task.status,
            user=user,
            note=note.strip(),
        ).save()
        board_changed_on_commit(task.board_id, [task.column_id], pull=True)
    return task


def board_set_paused(*, board: Board, paused: bool) -> Board:
    with transaction.atomic():
        board = board_lock(board.pk)
        board.paused = paused
        board.save(update_fields=["paused"])
        board_changed_on_commit(board.pk, [], pull=not paused)
    return board


def agent_set_paused(*, agent: Agent, paused: bool) -> Agent:
    with transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        agent.paused = paused
        agent.save(update_fields=["paused"])
        for board_id in agent.boards.values_list("pk", flat=True):
            # No column changed: the update carries the board's agents (with
            # this one's state); resuming frees capacity, so pull too.
            board_changed_on_commit(board_id, [], pull=not paused)
    return agent


def board_config_changed(*, board_id: int) -> None:
    """A board's columns, or the agents serving it, were changed in the admin.

    The admin saves those rows itself; this does what a service would do after
    them: once the change commits, every column goes to the browsers (a WIP
    limit shows as it now is), with the agents strip, and the board pulls, as a
    raised limit or a new agent may have freed capacity."""
    column_ids = list(Column.objects.filter(board_id=board_id).values_list("pk", flat=True))
    board_changed_on_commit(board_id, column_ids, pull=True)
