"""What reviewers do: claim and decide escalations, pull the andon cord, restart
the line. Each service checks the reviewer permission itself (views check it
too, to answer 403 early), works in one transaction, records a TaskEvent, and
schedules the live updates on commit.

Two reviewers deciding one escalation at once: the escalation's row is locked
and its status checked under the lock, so exactly one decision is applied; the
other gets AlreadyDecided, which names who decided what and when.

Identical escalations (the same agent, normalised input and output; see
Escalation.group_key) can be decided together, as one group:
each still gets its own decision, TaskEvent and broadcast, all in one
transaction, under the same locks. A member someone else decided meanwhile is
reported in the result (GroupDecision.skipped), never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import budgets, muda_rollups, waste_thresholds
from andon.models import SIMULATED_REVIEWER, Alert, AndonRecord, Escalation, LineStop, has_similar_cases
from boards import services as board_services
from boards.models import Agent, Board, Column, Task, TaskEvent
from experiments import patterns

REVIEW_PERMISSION = "andon.review_escalation"
Role = Column.Role
Status = Task.Status

MAX_NOTE = 2000
MAX_OUTPUT = 100_000


class AlreadyDecided(ValidationError):
    """Someone decided the escalation first; ``escalation`` is it, as decided."""

    def __init__(self, escalation: Escalation) -> None:
        self.escalation = escalation
        who = reviewer_label(escalation.decided_by) if escalation.decided_by else "the line"
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


def is_simulated_reviewer(user: User | None) -> bool:
    return bool(user is not None and user.get_username() == SIMULATED_REVIEWER)


def reviewer_label(user: User) -> str:
    """Who decided, in words: the simulated reviewer is never taken for a person."""
    name = user.get_username()
    return f"{name} (the demo's simulated reviewer, not a person)" if is_simulated_reviewer(user) else name


def is_reviewer(user: User | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.has_perm(REVIEW_PERMISSION))


def _require_reviewer(user: User | None) -> None:
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


def escalation_claim(*, escalation: Escalation, user: User, release: bool = False) -> Escalation:
    """Mark an open escalation as being handled by ``user`` (others see who), or,
    with ``release``, give it back. Taking over someone else's claim is allowed:
    a claim is a courtesy, not a lock; the decision itself is what is exclusive."""
    return escalations_claim(escalations=[escalation], user=user, release=release)[0]


def escalations_claim(
    *, escalations: Sequence[Escalation], user: User, release: bool = False
) -> list[Escalation]:
    """escalation_claim for a group of identical escalations (the first is the
    one the reviewer acted on): members decided meanwhile are left as they are;
    AlreadyDecided only when none is open any more."""
    _require_reviewer(user)
    with transaction.atomic():
        locked = _locked_many([e.pk for e in escalations])
        open_ = [e for e in locked if e.is_open]
        if not open_:
            raise AlreadyDecided(locked[0])
        first = open_[0]
        if release and first.claimed_by_id not in (None, user.pk):
            raise ValidationError("Only the reviewer who claimed it can release it.")
        now = timezone.now()
        changed = []
        for escalation in open_:
            if release:
                if escalation.claimed_by_id != user.pk:
                    continue
                escalation.claimed_by = None
                escalation.claimed_at = None
            else:
                escalation.claimed_by = user
                escalation.claimed_at = now
            escalation.save(update_fields=["claimed_by", "claimed_at"])
            changed.append(escalation.pk)
        transaction.on_commit(lambda: andon_broadcast.escalations_changed(changed or [first.pk]))
    return open_


def _locked(pk: int) -> Escalation:
    return (
        Escalation.objects.select_for_update(of=("self",))
        .select_related("decided_by", "claimed_by")
        .get(pk=pk)
    )


def _locked_many(pks: Sequence[int]) -> list[Escalation]:
    """The escalations, locked in id order (as every writer takes them, so two
    group decisions cannot deadlock), returned in the order of ``pks``;
    Escalation.DoesNotExist if none exists any more."""
    rows = {
        e.pk: e
        for e in Escalation.objects.select_for_update(of=("self",))
        .select_related("decided_by", "claimed_by")
        .filter(pk__in=set(pks))
        .order_by("pk")
    }
    found = [rows[pk] for pk in dict.fromkeys(pks) if pk in rows]
    if not found:
        raise Escalation.DoesNotExist("None of these escalations exists any more.")
    return found


# --- deciding -----------------------------------------------------------------------


@dataclass
class GroupDecision:
    """What a decision on a group of identical escalations did: ``decided``, in
    the order asked, and ``skipped``, those someone else decided first (each
    with who decided what), left as they were."""

    decided: list[Escalation] = field(default_factory=list)
    skipped: list[AlreadyDecided] = field(default_factory=list)


NOT_IDENTICAL = (
    "These escalations are not identical (the same board, agent, input and output), "
    "so one decision cannot cover them: decide them one by one."
)


def _decide(escalations: Sequence[Escalation]):
    """Lock the board (a rejected task goes back to Ready, whose hard limit is
    counted under it), the escalations and their tasks, in the order every
    other writer takes them. Returns the open ones with their tasks, and an
    AlreadyDecided for each member someone decided first; AlreadyDecided
    itself when none is open any more."""
    pks = list(dict.fromkeys(e.pk for e in escalations))
    board_ids = set(Escalation.objects.filter(pk__in=pks).values_list("board_id", flat=True))
    if len(board_ids) > 1:
        raise ValidationError(NOT_IDENTICAL)
    if board_ids:
        board_services.board_lock(board_ids.pop())
    locked = _locked_many(pks)
    open_ = [e for e in locked if e.is_open]
    skipped = [AlreadyDecided(e) for e in locked if not e.is_open]
    if not open_:
        raise skipped[0]
    tasks = {
        task.pk: task
        for task in Task.objects.select_for_update(of=("self",), no_key=True)
        .select_related("column", "agent")
        .filter(pk__in={e.task_id for e in open_})
        .order_by("pk")
    }
    if len(open_) > 1:
        for escalation in open_:
            escalation.task = tasks[escalation.task_id]
        if len({e.group_key for e in open_}) > 1:
            raise ValidationError(NOT_IDENTICAL)
    return [(e, tasks[e.task_id]) for e in open_], skipped


def _warned(members: Sequence[tuple[Escalation, Task]]) -> bool:
    """Whether the decision was made with a failure warning in sight: the inbox
    row of a group shows the warning of any member that has one (andon.models
    Escalation.row_warning); the escalation's own page, its own."""
    return any(has_similar_cases(escalation.similar) for escalation, _ in members)


def _close(escalation: Escalation, *, status: str, user: User, note: str, warned: bool) -> None:
    status_before = escalation.status
    escalation.status = status
    escalation.decided_by = user
    escalation.decided_at = timezone.now()
    escalation.note = note
    # The inbox compares the time to decision with and without a warning shown.
    escalation.warned = warned
    escalation.decision_seconds = max(0.0, (escalation.decided_at - escalation.created_at).total_seconds())
    escalation.save(
        update_fields=[
            "status",
            "decided_by",
            "decided_at",
            "note",
            "corrected_output",
            "warned",
            "decision_seconds",
        ]
    )
    # A late fact: a rejected draft's tokens become waste; the status counts move.
    muda_rollups.escalation_decided(escalation, status_before=status_before)


def _after_decisions(decided: list[Escalation], changed: set[int]) -> None:
    # The knowledge base learns the verdicts (embedded after the commit, off this path).
    patterns.decisions_record(decided)
    pks = [e.pk for e in decided]
    board_services.board_changed_on_commit(decided[0].board_id, changed, pull=True)
    transaction.on_commit(lambda: andon_broadcast.escalations_closed(pks))


def _together(note: str, count: int) -> str:
    if count < 2:
        return note
    return f"{note} (one of {count} identical escalations decided together)"


def _to_done(task: Task, *, kind: str, user: User, note: str) -> set[int]:
    from_column = task.column
    done = board_services.column_required(task.board_id, Role.DONE)
    board_services.task_place(task, done)
    task.review_feedback = ""
    task.save()
    board_services.task_event(
        task,
        kind,
        from_column=from_column,
        to_column=done,
        from_status=Status.REVIEW,
        to_status=task.status,
        user=user,
        note=note,
    ).save()
    muda_rollups.finishes_refresh(tasks=[task])
    return {from_column.pk, done.pk}


def escalation_approve(*, escalation: Escalation, user: User, note: str = "") -> Escalation:
    """The output is good after all: the task goes to Done with it."""
    return escalations_approve(escalations=[escalation], user=user, note=note).decided[0]


def escalations_approve(*, escalations: Sequence[Escalation], user: User, note: str = "") -> GroupDecision:
    """Approve identical escalations at once: each task goes to Done with the output."""
    _require_reviewer(user)
    note = _clean_note(note)
    with transaction.atomic():
        members, skipped = _decide(escalations)
        warned = _warned(members)
        result = GroupDecision(skipped=skipped)
        changed: set[int] = set()
        for escalation, task in members:
            changed |= _to_done(
                task,
                kind=TaskEvent.Kind.APPROVED,
                user=user,
                note=_together(note or "approved in review", len(members)),
            )
            _close(escalation, status=Escalation.Status.APPROVED, user=user, note=note, warned=warned)
            result.decided.append(escalation)
        _after_decisions(result.decided, changed)
    return result


def escalation_correct(*, escalation: Escalation, user: User, output: str, note: str = "") -> Escalation:
    """Edit and approve: the task goes to Done with the reviewer's output; the
    agent's original stays on the escalation, beside it, for the kaizen loop."""
    return escalations_correct(escalations=[escalation], user=user, output=output, note=note).decided[0]


def escalations_correct(
    *, escalations: Sequence[Escalation], user: User, output: str, note: str = ""
) -> GroupDecision:
    """Edit and approve identical escalations with one correction."""
    _require_reviewer(user)
    note = _clean_note(note)
    corrected = (output or "").strip()
    with transaction.atomic():
        # Decided first: a late correction of something already decided is told so.
        members, skipped = _decide(escalations)
        if not corrected:
            raise ValidationError({"output": ["Write the corrected output, or reject the task instead."]})
        if len(corrected) > MAX_OUTPUT:
            raise ValidationError({"output": [f"Keep the output under {MAX_OUTPUT:,} characters."]})
        if corrected == members[0][0].output.strip():
            raise ValidationError(
                {"output": ["The output is unchanged: approve it as it is, or change what is wrong."]}
            )
        warned = _warned(members)
        result = GroupDecision(skipped=skipped)
        changed: set[int] = set()
        for escalation, task in members:
            task.output = corrected
            escalation.corrected_output = corrected
            changed |= _to_done(
                task,
                kind=TaskEvent.Kind.CORRECTED,
                user=user,
                note=_together(
                    note or "output corrected in review (the original is kept on the escalation)",
                    len(members),
                ),
            )
            _close(escalation, status=Escalation.Status.CORRECTED, user=user, note=note, warned=warned)
            result.decided.append(escalation)
        _after_decisions(result.decided, changed)
    return result


def escalation_reject(*, escalation: Escalation, user: User, reason: str) -> Escalation:
    """The output is wrong: the task goes back to Ready for another attempt, with
    the reviewer's reason given to it; once the agent's attempts are used up, to
    Failed."""
    return escalations_reject(escalations=[escalation], user=user, reason=reason).decided[0]


def escalations_reject(*, escalations: Sequence[Escalation], user: User, reason: str) -> GroupDecision:
    """Reject identical escalations with one reason: each task goes back for
    another attempt (or to Failed), each given the reason."""
    _require_reviewer(user)
    reason = _clean_note(
        reason, field="reason", required="Say what is wrong: the next attempt is given your reason."
    )
    with transaction.atomic():
        members, skipped = _decide(escalations)
        warned = _warned(members)
        who = user.get_username()
        result = GroupDecision(skipped=skipped)
        changed: set[int] = set()
        for escalation, task in members:
            task.review_feedback = reason
            changed |= board_services.task_return_or_fail(
                task,
                kind=TaskEvent.Kind.REJECTED,
                reason=f"rejected by {who}: {reason}",
                user=user,
                verb="rejected",
            )
            _close(escalation, status=Escalation.Status.REJECTED, user=user, note=reason, warned=warned)
            result.decided.append(escalation)
        _after_decisions(result.decided, changed)
    return result


# --- stopping and restarting the line -----------------------------------------------


def line_stop(*, user: User, reason: str, board: Board | None = None, agent: Agent | None = None) -> LineStop:
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


def line_restart(*, line_stop: LineStop, user: User, note: str) -> LineStop:
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
            who = stop.restarted_by.get_username() if stop.restarted_by else "someone"
            raise ValidationError(f"This line was already restarted by {who}.")
        stop.restarted_at = timezone.now()
        stop.restarted_by = user
        stop.restart_note = note
        stop.save(update_fields=["restarted_at", "restarted_by", "restart_note"])
        # A budget's stop restarted by a person holds for the rest of its period;
        # after another kind of stop, a budget reached meanwhile stops the line again.
        if stop.kind == LineStop.Kind.BUDGET:
            budgets.budget_stop_restarted(stop, user=user, note=note)
        else:
            # A waste stop holds for its crossing only: restarted, it does not
            # stop again until the waste has recovered and crossed anew.
            waste_thresholds.waste_stop_restarted(stop, user=user, note=note)
            budgets.budgets_recheck(board_id=stop.board_id, agent_id=stop.agent_id)
        _stops_changed(stop, pull=True)
    return stop


# --- alerts ----------------------------------------------------------------------------


def alert_acknowledge(*, alert: Alert, user: User) -> Alert:
    """A reviewer has seen an andon alert (a budget warning, a cost anomaly):
    it leaves the inbox, on record. Acknowledging it twice changes nothing."""
    _require_reviewer(user)
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        if locked.acknowledged_at is not None:
            return locked
        locked.acknowledged_at = timezone.now()
        locked.acknowledged_by = user
        locked.save(update_fields=["acknowledged_at", "acknowledged_by"])
        AndonRecord.objects.create(
            action=AndonRecord.Action.ALERT_ACKNOWLEDGED,
            alert=locked,
            budget_id=locked.budget_id,
            board_id=locked.board_id,
            agent_id=locked.agent_id,
            user=user,
            detail=f"{locked.get_kind_display()} acknowledged: {locked.title}",
        )
        transaction.on_commit(andon_broadcast.line_stops_changed)
    return locked


def _stops_changed(stop: LineStop, *, pull: bool = False) -> None:
    if stop.board_id:
        board_ids = [stop.board_id]
    else:
        board_ids = list(Board.objects.filter(agents=stop.agent_id).values_list("pk", flat=True))
    for board_id in board_ids:
        board_services.board_changed_on_commit(board_id, [], pull=pull)
    transaction.on_commit(andon_broadcast.line_stops_changed)
