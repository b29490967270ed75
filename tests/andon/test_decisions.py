"""What reviewers decide: approve, edit and approve, or reject an escalated output;
each decision is made once, recorded with who made it and when, and only by a
reviewer."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from andon import services as andon_services
from andon.models import Escalation, LineStop
from boards import services
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import GOOD, complete, escalate, pull, where
from tests.factories import column, make_agent, make_reviewer, make_user

Role = Column.Role
Status = Task.Status
DECISIONS = (TaskEvent.Kind.APPROVED, TaskEvent.Kind.CORRECTED, TaskEvent.Kind.REJECTED)


def _decision_events(task: Task) -> list[TaskEvent]:
    return list(task.events.filter(kind__in=DECISIONS))


# --- approve ------------------------------------------------------------------------


@pytest.mark.django_db
def test_approving_sends_the_task_to_done_with_its_output(escalation, ana):
    before = timezone.now()

    decided = andon_services.escalation_approve(escalation=escalation, user=ana, note="fine as it is")

    task = escalation.task
    assert where(task) == (Role.DONE, Status.DONE)
    assert task.output == GOOD
    assert task.finished_at is not None
    assert decided.status == Escalation.Status.APPROVED
    assert (decided.decided_by, decided.note) == (ana, "fine as it is")
    assert decided.decided_at >= before
    [event] = _decision_events(task)
    assert (event.kind, event.user, event.actor) == (TaskEvent.Kind.APPROVED, ana, TaskEvent.Actor.USER)
    assert (event.from_column.role, event.to_column.role) == (Role.REVIEW, Role.DONE)
    assert event.created_at >= before
    assert event.note == "fine as it is"


# --- edit and approve ------------------------------------------------------------------


@pytest.mark.django_db
def test_correcting_sends_the_task_to_done_with_the_corrected_output_and_keeps_the_original(escalation, ana):
    decided = andon_services.escalation_correct(
        escalation=escalation, user=ana, output="  Replace the cover; the seal is intact.  "
    )

    task = escalation.task
    assert where(task) == (Role.DONE, Status.DONE)
    assert task.output == "Replace the cover; the seal is intact."
    decided.refresh_from_db()
    assert decided.status == Escalation.Status.CORRECTED
    assert decided.output == GOOD
    assert decided.corrected_output == "Replace the cover; the seal is intact."
    assert decided.decided_by == ana
    [event] = _decision_events(task)
    assert (event.kind, event.user) == (TaskEvent.Kind.CORRECTED, ana)


@pytest.mark.django_db
def test_a_correction_that_changes_nothing_is_refused_and_nothing_changes(escalation, ana):
    with pytest.raises(ValidationError) as error:
        andon_services.escalation_correct(escalation=escalation, user=ana, output=f"  {GOOD} ")

    assert "unchanged" in error.value.message_dict["output"][0]
    escalation.refresh_from_db()
    assert escalation.status == Escalation.Status.OPEN
    assert where(escalation.task) == (Role.REVIEW, Status.REVIEW)


@pytest.mark.django_db
def test_an_empty_correction_is_refused(escalation, ana):
    with pytest.raises(ValidationError) as error:
        andon_services.escalation_correct(escalation=escalation, user=ana, output="   ")

    assert "output" in error.value.message_dict
    assert Escalation.objects.get(pk=escalation.pk).is_open


# --- reject --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rejecting_sends_the_task_back_to_ready_with_the_reviewers_reason(escalation, ana):
    decided = andon_services.escalation_reject(
        escalation=escalation, user=ana, reason="It names the wrong part number."
    )

    task = escalation.task
    assert where(task) == (Role.READY, Status.READY)
    assert task.review_feedback == "It names the wrong part number."
    assert task.last_error == "rejected by ana: It names the wrong part number."
    assert decided.status == Escalation.Status.REJECTED
    assert (decided.decided_by, decided.note) == (ana, "It names the wrong part number.")
    [event] = _decision_events(task)
    assert (event.kind, event.user, event.to_status) == (TaskEvent.Kind.REJECTED, ana, Status.READY)
    assert "attempt 1 of 3 rejected" in event.note


@pytest.mark.django_db
def test_a_rejected_task_is_pulled_again_and_a_pass_clears_the_feedback(escalation, ana):
    andon_services.escalation_reject(escalation=escalation, user=ana, reason="Wrong part number.")

    [claim] = pull(escalation.board)
    assert claim.task_id == escalation.task_id
    assert complete(claim)

    task = escalation.task
    assert where(task) == (Role.DONE, Status.DONE)
    assert (task.attempts, task.review_feedback) == (2, "")


@pytest.mark.django_db
def test_rejecting_after_the_last_attempt_fails_the_task(board):
    make_agent(boards=[board], max_attempts=1)
    escalation = escalate(board)

    andon_services.escalation_reject(escalation=escalation, user=make_reviewer(), reason="Still wrong.")

    task = escalation.task
    assert where(task) == (Role.DONE, Status.FAILED)
    assert "rejected after 1 attempt(s)" in task.events.get(kind=TaskEvent.Kind.REJECTED).note


@pytest.mark.django_db
def test_rejecting_without_a_reason_is_refused_and_nothing_changes(escalation, ana):
    events_before = escalation.task.events.count()

    with pytest.raises(ValidationError) as error:
        andon_services.escalation_reject(escalation=escalation, user=ana, reason="  ")

    assert "reason" in error.value.message_dict
    escalation.refresh_from_db()
    assert escalation.status == Escalation.Status.OPEN and escalation.decided_by is None
    task = escalation.task
    assert where(task) == (Role.REVIEW, Status.REVIEW)
    assert task.review_feedback == "" and task.last_error == ""
    assert task.events.count() == events_before


@pytest.mark.django_db
def test_a_rejected_task_goes_to_the_backlog_when_ready_is_full(board, ana):
    make_agent(boards=[board], concurrency=10)
    escalation = escalate(board)
    Column.objects.filter(board=board, role=Role.READY).update(wip_limit=1)
    services.task_create(board=board, title="filler", input="filler")
    filler = Task.objects.get(title="filler")
    Task.objects.filter(pk=filler.pk).update(column=column(board, Role.READY), status=Status.READY)

    andon_services.escalation_reject(escalation=escalation, user=ana, reason="Wrong part.")

    assert where(escalation.task) == (Role.BACKLOG, Status.BACKLOG)


# --- one decision only -------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("second", ["approve", "correct", "reject", "claim"])
def test_a_second_decision_is_refused_naming_the_first(escalation, ana, second):
    andon_services.escalation_approve(escalation=escalation, user=ana)
    other = make_reviewer(username="ben")

    with pytest.raises(andon_services.AlreadyDecided) as error:
        if second == "approve":
            andon_services.escalation_approve(escalation=escalation, user=other)
        elif second == "correct":
            andon_services.escalation_correct(escalation=escalation, user=other, output="Better.")
        elif second == "reject":
            andon_services.escalation_reject(escalation=escalation, user=other, reason="No.")
        else:
            andon_services.escalation_claim(escalation=escalation, user=other)

    assert "approved by ana" in error.value.messages[0]
    assert error.value.escalation.decided_by == ana
    task = escalation.task
    assert where(task) == (Role.DONE, Status.DONE)
    assert [e.kind for e in _decision_events(task)] == [TaskEvent.Kind.APPROVED]


@pytest.mark.django_db
def test_already_decided_quotes_the_reviewers_note(escalation, ana):
    andon_services.escalation_reject(escalation=escalation, user=ana, reason="Wrong part number.")

    with pytest.raises(andon_services.AlreadyDecided, match=r"rejected by ana at .*\(Wrong part number\.\)"):
        andon_services.escalation_approve(escalation=escalation, user=make_reviewer())


# --- moved by hand: refused -------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.READY, Role.DONE, Role.BACKLOG])
def test_moving_an_escalated_task_out_of_review_by_hand_is_refused(escalation, role):
    # Any logged-in user could do this from the board: the defect would end up in
    # Done with its escalation "withdrawn" in their name, decided by no reviewer.
    user = make_user()

    with pytest.raises(services.EscalationOpen) as refused:
        services.task_move(task=escalation.task, to_column=column(escalation.board, role), user=user)

    assert refused.value.escalation_url == escalation.get_absolute_url()
    assert escalation.get_absolute_url() in refused.value.messages[0]
    assert "andon inbox" in refused.value.messages[0]
    escalation.refresh_from_db()
    assert (escalation.status, escalation.decided_by, escalation.decided_at) == (
        Escalation.Status.OPEN,
        None,
        None,
    )
    assert where(escalation.task) == (Role.REVIEW, Status.REVIEW)
    assert not escalation.task.events.filter(from_column__role=Role.REVIEW).exists()


@pytest.mark.django_db
def test_a_reviewer_cannot_move_an_escalated_task_past_the_inbox_either(escalation, ana):
    with pytest.raises(services.EscalationOpen):
        services.task_move(task=escalation.task, to_column=column(escalation.board, Role.DONE), user=ana)
    with pytest.raises(services.EscalationOpen):
        services.task_step(task=escalation.task, user=ana, direction="right")

    assert Escalation.objects.get(pk=escalation.pk).is_open
    # The decision is the way out.
    andon_services.escalation_approve(escalation=escalation, user=ana)
    assert where(escalation.task) == (Role.DONE, Status.DONE)


@pytest.mark.django_db
def test_blocking_an_escalated_task_keeps_it_in_review_waiting_on_its_decision(escalation, ana):
    # A block is a note for the reviewers (what the decision waits on), not a decision.
    services.task_block(task=escalation.task, user=make_user(), note="waiting for the customer's drawing")

    assert where(escalation.task) == (Role.REVIEW, Status.REVIEW)
    assert Escalation.objects.get(pk=escalation.pk).is_open
    andon_services.escalation_reject(escalation=escalation, user=ana, reason="Wrong part number.")
    assert Escalation.objects.get(pk=escalation.pk).status == Escalation.Status.REJECTED


@pytest.mark.django_db
def test_a_task_escalated_again_after_a_rejection_has_one_open_escalation(escalation, ana):
    board = escalation.board
    andon_services.escalation_reject(escalation=escalation, user=ana, reason="Wrong part number.")
    [claim] = pull(board)

    assert complete(claim, confidence=0.1)

    statuses = sorted(Escalation.objects.filter(task=escalation.task).values_list("status", flat=True))
    assert statuses == [Escalation.Status.OPEN, Escalation.Status.REJECTED]


# --- claiming -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_reviewer_claims_an_escalation_and_releases_it(escalation, ana):
    claimed = andon_services.escalation_claim(escalation=escalation, user=ana)
    assert (claimed.claimed_by, claimed.is_open) == (ana, True)
    assert claimed.claimed_at is not None

    with pytest.raises(ValidationError, match="Only the reviewer who claimed it"):
        andon_services.escalation_claim(escalation=escalation, user=make_reviewer(), release=True)

    released = andon_services.escalation_claim(escalation=escalation, user=ana, release=True)
    assert (released.claimed_by, released.claimed_at) == (None, None)


@pytest.mark.django_db
def test_another_reviewer_may_take_over_a_claim(escalation, ana):
    andon_services.escalation_claim(escalation=escalation, user=ana)
    ben = make_reviewer(username="ben")

    taken = andon_services.escalation_claim(escalation=escalation, user=ben)

    assert Escalation.objects.get(pk=taken.pk).claimed_by == ben


# --- permissions -----------------------------------------------------------------------------


def _every_reviewer_service(escalation: Escalation, user) -> dict:
    stop = LineStop.objects.create(board=escalation.board, kind=LineStop.Kind.CORD, reason="seeded")
    return {
        "claim": lambda: andon_services.escalation_claim(escalation=escalation, user=user),
        "approve": lambda: andon_services.escalation_approve(escalation=escalation, user=user),
        "correct": lambda: andon_services.escalation_correct(escalation=escalation, user=user, output="x"),
        "reject": lambda: andon_services.escalation_reject(escalation=escalation, user=user, reason="no"),
        "stop board": lambda: andon_services.line_stop(user=user, board=escalation.board, reason="stop"),
        "stop agent": lambda: andon_services.line_stop(user=user, agent=escalation.agent, reason="stop"),
        "restart": lambda: andon_services.line_restart(line_stop=stop, user=user, note="restart"),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["plain user", "staff without the permission", "anonymous"])
def test_every_reviewer_service_refuses_a_user_without_the_review_permission(escalation, who):
    from django.contrib.auth.models import AnonymousUser

    if who == "anonymous":
        user = AnonymousUser()
    else:
        user = make_user(is_staff=who.startswith("staff"))
    services_ = _every_reviewer_service(escalation, user)

    outcomes = {}
    for name, call in services_.items():
        try:
            call()
            outcomes[name] = "allowed"
        except PermissionDenied:
            outcomes[name] = "refused"
    assert outcomes == dict.fromkeys(services_, "refused")

    escalation.refresh_from_db()
    assert escalation.status == Escalation.Status.OPEN and escalation.claimed_by is None
    assert where(escalation.task) == (Role.REVIEW, Status.REVIEW)
    assert list(LineStop.objects.values_list("reason", "restarted_at")) == [("seeded", None)]


@pytest.mark.django_db
def test_a_superuser_is_a_reviewer(escalation):
    boss = make_user(is_superuser=True)

    andon_services.escalation_approve(escalation=escalation, user=boss)

    assert Escalation.objects.get(pk=escalation.pk).status == Escalation.Status.APPROVED
