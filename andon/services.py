"""What reviewers do: claim and decide escalations, pull the andon cord, restart
the line. Each service checks the reviewer permission itself (views check it
too, to answer 403 early), works in one transaction, records a TaskEvent, and
schedules the live updates on commit.

Two reviewers deciding one escalation at once: the escalation's row is locked
and its status checked under the lock, so exactly one decision is applied; the
other gets AlreadyDecided, which names who decided what and when.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon.models import Escalation, LineStop
from boards import services as board_services
from boards.models import Agent, Board, Column, Task, TaskEvent

REVIEW_PERMISSION = "andon.review_escalation"
Role = Column.Role
Status = Task.Status

MAX_NOTE = 2000
MAX_OUTPUT = 100_000


class AlreadyDecided(ValidationError):
    """Someone decided the escalation first; ``escalation`` is it, as decided."""

    def __init__(self, escalation: Escalation) -> None:
        self.escalation = escalation
        who = escalation.decided_by.get_username() if escalation.decided_by_id else "the line"
        when = ""
        if escalation.decided_at:
            decided = timezone.localtime(escalation.decided_at)
            today = decided.date() == timezone.localdate()
            when = decided.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S")
        super().__init__(
            f"Already decided: {escalation.get_status_display().lower()} by {who}"
            + (f" at {when}" if when else "")
            + (f" ({escalation.note})" if escalation.note else "")
            + "."
        )


def is_reviewer(user: AbstractBaseUser | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.has_perm(REVIEW_PERMISSION))


def _require_reviewer(user: AbstractBaseUser | None) -> None:
    if not is_reviewer(user):
        raise PermissionDenied("Only reviewers (the andon.review_escalation permission) may do this.")


def _clean_note(note: str, *, field: str = "note", required: str = "") -> str:
    note = (note or "").strip()
    if required and not note:
        raise ValidationError({field: [required]})
    if len(note) > MAX_NOTE:
        raise ValidationError({field: [f"Keep it under {MAX_NOTE:,} characters (it has {len(note):,})."]})
    return note


# --- claiming -----------------------------------------------------------------------


def escalation_claim(*, escalation: Escalation, user: AbstractBaseUser, release: bool = False) -> Escalation:
    """Mark an open escalation as being handled by ``user`` (others see who), or,
    with ``release``, give it back. Taking over someone else's claim is allowed:
    a claim is a courtesy, not a lock; the decision itself is what is exclusive."""
    _require_reviewer(user)
    with transaction.atomic():
        escalation = _locked(escalation.pk)
        if not escalation.is_open:
            raise AlreadyDecided(escalation)
        if release:
            if escalation.claimed_by_id not in (None, user.pk):
                raise ValidationError("Only the reviewer who claimed it can release it.")
            escalation.claimed_by = None
            escalation.claimed_at = None
        else:
            escalation.claimed_by = user
            escalation.claimed_at = timezone.now()
        escalation.save(update_fields=["claimed_by", "claimed_at"])
        pk = escalation.pk
        transaction.on_commit(lambda: andon_broadcast.escalations_changed([pk]))
    return escalation


def _locked(pk: int) -> Escalation:
    return (
        Escalation.objects.select_for_update(of=("self",))
        .select_related("decided_by", "claimed_by")
        .get(pk=pk)
    )


# --- deciding -----------------------------------------------------------------------


def _decide(escalation: Escalation, user: AbstractBaseUser):
    """Lock the board (a rejected task goes back to Ready, whose hard limit is
    counted under it), the escalation and its task, in the order every other
    writer takes them; AlreadyDecided if someone was first."""
    board_services._lock_board(escalation.board_id)
    locked = _locked(escalation.pk)
    if not locked.is_open:
        raise AlreadyDecided(locked)
    task = (
        Task.objects.select_for_update(of=("self",), no_key=True)
        .select_related("column", "agent")
        .get(pk=locked.task_id)
    )
    return locked, task


def _close(
    escalation: Escalation, *, status: str, user: AbstractBaseUser, note: str, changed: set[int]
) -> None:
    escalation.status = status
    escalation.decided_by = user
    escalation.decided_at = timezone.now()
    escalation.note = note
    escalation.save(update_fields=["status", "decided_by", "decided_at", "note", "corrected_output"])
    board_id, pk = escalation.board_id, escalation.pk
    board_services._after_commit(board_id, changed, pull=True)
    transaction.on_commit(lambda: andon_broadcast.escalations_closed([pk]))


def _to_done(task: Task, *, kind: str, user: AbstractBaseUser, note: str) -> set[int]:
    from_column = task.column
    done = board_services._required_column(task.board_id, Role.DONE)
    board_services._place(task, done)
    task.review_feedback = ""
    task.save()
    board_services._event(
        task,
        kind,
        from_column=from_column,
        to_column=done,
        from_status=Status.REVIEW,
        to_status=task.status,
        user=user,
        note=note,
    ).save()
    return {from_column.pk, done.pk}


def escalation_approve(*, escalation: Escalation, user: AbstractBaseUser, note: str = "") -> Escalation:
    """The output is good after all: the task goes to Done with it."""
    _require_reviewer(user)
    note = _clean_note(note)
    with transaction.atomic():
        escalation, task = _decide(escalation, user)
        changed = _to_done(task, kind=TaskEvent.Kind.APPROVED, user=user, note=note or "approved in review")
        _close(escalation, status=Escalation.Status.APPROVED, user=user, note=note, changed=changed)
    return escalation


def escalation_correct(
    *, escalation: Escalation, user: AbstractBaseUser, output: str, note: str = ""
) -> Escalation:
    """Edit and approve: the task goes to Done with the reviewer's output; the
    agent's original stays on the escalation, beside it, for the kaizen loop."""
    _require_reviewer(user)
    note = _clean_note(note)
    corrected = (output or "").strip()
    with transaction.atomic():
        # Decided first: a late correction of something already decided is told so.
        escalation, task = _decide(escalation, user)
        if not corrected:
            raise ValidationError({"output": ["Write the corrected output, or reject the task instead."]})
        if len(corrected) > MAX_OUTPUT:
            raise ValidationError({"output": [f"Keep the output under {MAX_OUTPUT:,} characters."]})
        if corrected == escalation.output.strip():
            raise ValidationError(
                {"output": ["The output is unchanged: approve it as it is, or change what is wrong."]}
            )
        task.output = corrected
        escalation.corrected_output = corrected
        changed = _to_done(
            task,
            kind=TaskEvent.Kind.CORRECTED,
            user=user,
            note=note or "output corrected in review (the original is kept on the escalation)",
        )
        _close(escalation, status=Escalation.Status.CORRECTED, user=user, note=note, changed=changed)
    return escalation


def escalation_reject(*, escalation: Escalation, user: AbstractBaseUser, reason: str) -> Escalation:
    """The output is wrong: the task goes back to Ready for another attempt, with
    the reviewer's reason given to it; once the agent's attempts are used up, to
    Failed."""
    _require_reviewer(user)
    reason = _clean_note(
        reason, field="reason", required="Say what is wrong: the next attempt is given your reason."
    )
    with transaction.atomic():
        escalation, task = _decide(escalation, user)
        who = user.get_username()
        task.review_feedback = reason
        changed = board_services._return_or_fail(
            task,
            kind=TaskEvent.Kind.REJECTED,
            reason=f"rejected by {who}: {reason}",
            user=user,
            verb="rejected",
        )
        _close(escalation, status=Escalation.Status.REJECTED, user=user, note=reason, changed=changed)
    return escalation


# --- stopping and restarting the line -----------------------------------------------


def line_stop(
    *, user: AbstractBaseUser, reason: str, board: Board | None = None, agent: Agent | None = None
) -> LineStop:
    """Pull the andon cord: the board (every agent on it) or one agent pulls
    nothing until a reviewer restarts it. Runs in flight finish. Pulling it
    again while stopped changes nothing and returns the stop in force."""
    _require_reviewer(user)
    if (board is None) == (agent is None):
        raise ValidationError("Stop either a board or an agent.")
    reason = _clean_note(
        reason, field="reason", required="Say why the line stops, so others know what to fix."
    )
    with transaction.atomic():
        scope = {"board": board} if board is not None else {"agent": agent}
        current = LineStop.objects.filter(restarted_at__isnull=True, **scope).first()
        if current is not None:
            return current
        try:
            with transaction.atomic():
                stop = LineStop.objects.create(
                    kind=LineStop.Kind.CORD, reason=reason, stopped_by=user, **scope
                )
        except IntegrityError:
            return LineStop.objects.get(restarted_at__isnull=True, **scope)
        _stops_changed(stop)
    return stop


def line_restart(*, line_stop: LineStop, user: AbstractBaseUser, note: str) -> LineStop:
    """Restart a stopped line (reviewers only, with a note saying what was done)."""
    _require_reviewer(user)
    note = _clean_note(note, required="Say what was done about the stop before restarting the line.")
    with transaction.atomic():
        # of=("self",): board and agent are nullable, an outer join PostgreSQL cannot lock.
        stop = (
            LineStop.objects.select_for_update(of=("self",))
            .select_related("board", "agent")
            .get(pk=line_stop.pk)
        )
        if stop.restarted_at is not None:
            who = stop.restarted_by.get_username() if stop.restarted_by_id else "someone"
            raise ValidationError(f"This line was already restarted by {who}.")
        stop.restarted_at = timezone.now()
        stop.restarted_by = user
        stop.restart_note = note
        stop.save(update_fields=["restarted_at", "restarted_by", "restart_note"])
        _stops_changed(stop, pull=True)
    return stop


def _stops_changed(stop: LineStop, *, pull: bool = False) -> None:
    if stop.board_id:
        board_ids = [stop.board_id]
    else:
        board_ids = list(Board.objects.filter(agents=stop.agent_id).values_list("pk", flat=True))
    for board_id in board_ids:
        board_services._after_commit(board_id, [], pull=pull)
    transaction.on_commit(andon_broadcast.line_stops_changed)
