"""Identical escalations (the same board, agent, normalised input and output) are
one row of the inbox and one decision: each member still gets its own decision,
TaskEvent and broadcast, in one transaction; a member someone else decided
meanwhile is reported, never overwritten."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from andon import selectors
from andon import services as andon_services
from andon.models import Escalation
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import DEFECTIVE, claim_one, complete, where
from tests.factories import column, make_agent, make_board, make_reviewer, make_user

pytestmark = pytest.mark.django_db

Role = Column.Role
Status = Task.Status
OUTPUT = "The housing has a scratch near the seal, I think."


@pytest.fixture
def line():
    board = make_board()
    review = column(board, Role.REVIEW)
    review.wip_limit = None
    review.save()
    agent = make_agent(boards=[board], spike_defects=1000, spike_window=1000)
    return board, agent


def escalated(board, *, title: str = "Inspect part 7", input: str = "scratch on housing", text: str = OUTPUT):
    task, claim = claim_one(board, title=title, input=input)
    assert complete(claim, confidence=DEFECTIVE, text=text)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def test_identical_escalations_are_one_row_with_their_members_oldest_first(line):
    board, _ = line
    first = escalated(board, title="Part 7, morning shift")
    second = escalated(board, title="Part 7, night shift", input="  SCRATCH on   housing ")

    [row] = selectors.inbox_groups_get()

    assert row.pk == first.pk
    assert [m.pk for m in row.members] == [first.pk, second.pk]
    assert row.member_ids == f"{first.pk},{second.pk}"


@pytest.mark.parametrize(
    "different",
    [{"input": "a dent in the lid"}, {"text": "Replace the cover."}, {"input": ""}],
    ids=["input", "output", "no-input"],
)
def test_escalations_that_differ_or_have_no_input_are_rows_of_their_own(line, different):
    board, _ = line
    kwargs = {"input": "" if different.get("input") == "" else "scratch on housing"}
    one = escalated(board, **kwargs)
    other = escalated(board, **different)

    rows = selectors.inbox_groups_get()

    assert sorted(r.pk for r in rows) == sorted([one.pk, other.pk])
    assert all(len(r.members) == 1 for r in rows)


def test_another_agents_identical_answer_is_another_row(line):
    board, agent = line
    mine = escalated(board)
    agent.paused = True
    agent.save()
    make_agent(boards=[board], spike_defects=1000, spike_window=1000)
    theirs = escalated(board)
    assert theirs.agent_id != mine.agent_id

    assert len(selectors.inbox_groups_get()) == 2


def test_a_check_filter_shows_a_group_whole_when_any_member_failed_that_check(line):
    board, _ = line
    first = escalated(board)
    escalated(board)
    Escalation.objects.filter(pk=first.pk).update(
        failures=[{"name": "has-part", "check": "regex", "reason": "x"}]
    )

    [row] = selectors.inbox_groups_get(check="has-part")

    assert len(row.members) == 2
    assert selectors.inbox_groups_get(check="json") == []


# --- deciding a group ---------------------------------------------------------------


def test_approving_a_group_decides_every_member_with_its_own_record(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(3)]

    result = andon_services.escalations_approve(escalations=members, user=ana, note="all fine")

    assert [e.pk for e in result.decided] == [e.pk for e in members] and result.skipped == []
    for escalation in members:
        escalation.refresh_from_db()
        assert (escalation.status, escalation.decided_by, escalation.note) == ("approved", ana, "all fine")
        assert where(escalation.task) == (Role.DONE, Status.DONE)
        [event] = escalation.task.events.filter(kind=TaskEvent.Kind.APPROVED)
        assert event.user == ana
        assert event.note == "all fine (one of 3 identical escalations decided together)"
    assert selectors.inbox_groups_get() == []


def test_correcting_a_group_gives_every_task_the_one_correction(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(2)]

    andon_services.escalations_correct(escalations=members, user=ana, output="Replace the cover.")

    for escalation in members:
        escalation.refresh_from_db()
        assert escalation.status == Escalation.Status.CORRECTED
        assert (escalation.output, escalation.corrected_output) == (OUTPUT, "Replace the cover.")
        escalation.task.refresh_from_db()
        assert escalation.task.output == "Replace the cover."
        assert escalation.task.events.filter(kind=TaskEvent.Kind.CORRECTED, user=ana).count() == 1


def test_rejecting_a_group_sends_every_task_back_with_the_reason(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(2)]

    andon_services.escalations_reject(escalations=members, user=ana, reason="No hedging, please.")

    for escalation in members:
        escalation.refresh_from_db()
        assert (escalation.status, escalation.note) == ("rejected", "No hedging, please.")
        task = escalation.task
        assert where(task) == (Role.READY, Status.READY)
        assert task.review_feedback == "No hedging, please."
        assert task.events.filter(kind=TaskEvent.Kind.REJECTED, user=ana).count() == 1


def test_a_member_decided_meanwhile_is_reported_and_left_as_it_was(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(3)]
    bob = make_reviewer(username="bob")
    andon_services.escalation_reject(escalation=members[1], user=bob, reason="Wrong part.")

    result = andon_services.escalations_approve(escalations=members, user=ana)

    assert [e.pk for e in result.decided] == [members[0].pk, members[2].pk]
    [skipped] = result.skipped
    assert skipped.escalation.pk == members[1].pk
    assert "rejected by bob" in skipped.messages[0]
    members[1].refresh_from_db()
    assert (members[1].status, members[1].decided_by, members[1].note) == ("rejected", bob, "Wrong part.")
    assert members[1].task.events.filter(kind=TaskEvent.Kind.APPROVED).count() == 0


def test_a_group_decided_entirely_by_someone_else_is_already_decided(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(2)]
    bob = make_reviewer(username="bob")
    andon_services.escalations_approve(escalations=members, user=bob)

    with pytest.raises(andon_services.AlreadyDecided, match="approved by bob"):
        andon_services.escalations_reject(escalations=members, user=ana, reason="late")


def test_escalations_that_are_not_identical_cannot_be_decided_as_one(line, ana):
    board, _ = line
    one = escalated(board)
    other = escalated(board, input="a dent in the lid")

    with pytest.raises(ValidationError, match="not identical"):
        andon_services.escalations_correct(escalations=[one, other], user=ana, output="Replace it.")

    assert Escalation.objects.filter(status=Escalation.Status.OPEN).count() == 2


def test_escalations_of_two_boards_cannot_be_decided_as_one(line, ana):
    board, agent = line
    other_board = make_board()
    column(other_board, Role.REVIEW)
    agent.boards.add(other_board)
    one = escalated(board)
    other = escalated(other_board)

    with pytest.raises(ValidationError, match="not identical"):
        andon_services.escalations_approve(escalations=[one, other], user=ana)

    assert Escalation.objects.filter(status=Escalation.Status.OPEN).count() == 2


def test_a_bad_reason_decides_no_member(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(2)]

    with pytest.raises(ValidationError):
        andon_services.escalations_reject(escalations=members, user=ana, reason="  ")

    assert Escalation.objects.filter(status=Escalation.Status.OPEN).count() == 2


def test_only_reviewers_decide_groups(line):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(2)]

    with pytest.raises(PermissionDenied):
        andon_services.escalations_approve(escalations=members, user=make_user())


def test_claiming_a_group_claims_its_open_members(line, ana):
    board, _ = line
    members = [escalated(board, title=f"Part {n}") for n in range(2)]

    andon_services.escalations_claim(escalations=members, user=ana)

    assert {e.claimed_by_id for e in Escalation.objects.filter(pk__in=[m.pk for m in members])} == {ana.pk}
    andon_services.escalations_claim(escalations=members, user=ana, release=True)
    assert {e.claimed_by_id for e in Escalation.objects.filter(pk__in=[m.pk for m in members])} == {None}
