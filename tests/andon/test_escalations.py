"""Every output is inspected when its run completes: a pass goes to Done, a defect
stops in Review with an escalation for a reviewer (or goes to Done marked as a
defect on a board without a Review column)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from andon import jidoka
from andon import services as andon_services
from andon.models import Escalation, Inspection
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import DEFECTIVE, GOOD, claim_one, complete, fail, model_call, pull, where
from tests.factories import make_agent, make_board, make_reviewer

Role = Column.Role
Status = Task.Status


@pytest.fixture(autouse=True)
def _fresh_caches():
    jidoka.optimal_lengths.clear()
    yield
    jidoka.optimal_lengths.clear()


@pytest.mark.django_db
def test_a_passing_output_goes_to_done_with_a_passed_inspection(board, agent):
    task, claim = claim_one(board)

    assert complete(claim, confidence=0.95)

    assert where(task) == (Role.DONE, Status.DONE)
    inspection = Inspection.objects.get(task=task)
    assert inspection.passed is True
    assert inspection.failures == []
    assert (inspection.agent_id, inspection.board_id, inspection.attempt) == (agent.pk, board.pk, 1)
    assert not Escalation.objects.filter(task=task).exists()
    assert task.events.filter(kind=TaskEvent.Kind.COMPLETED).count() == 1


@pytest.mark.django_db
def test_a_defect_goes_to_review_with_an_open_escalation_carrying_the_output_and_cost(board):
    agent = make_agent(boards=[board], max_attempts=3)
    task, claim = claim_one(board)
    # The first attempt's call costs too: the escalation carries the task's cost so far.
    assert fail(claim, calls=[model_call(cost="0.0100", error="upstream 503")])
    [claim] = pull(board)
    text = "I'm not sure, but the scratch is possibly cosmetic."

    assert complete(claim, confidence=DEFECTIVE, text=text, cost="0.0125")

    assert where(task) == (Role.REVIEW, Status.REVIEW)
    escalation = Escalation.objects.get(task=task)
    assert escalation.status == Escalation.Status.OPEN
    assert escalation.output == text
    assert escalation.confidence == DEFECTIVE
    assert escalation.confidence_source == "simulated"
    assert escalation.cost == Decimal("0.0225") == task.cost
    assert (escalation.agent_id, escalation.board_id, escalation.attempt) == (agent.pk, board.pk, 2)
    assert set(escalation.failed_checks) == {"confidence", "uncertainty"}
    assert all(f["reason"] for f in escalation.failures)
    assert escalation.inspection.passed is False
    assert escalation.inspection.failures == escalation.failures
    event = task.events.get(kind=TaskEvent.Kind.ESCALATED)
    assert (event.from_status, event.to_status) == (Status.RUNNING, Status.REVIEW)
    assert event.to_column.role == Role.REVIEW
    assert event.agent_id == agent.pk
    assert "confidence" in event.note
    assert not task.events.filter(kind=TaskEvent.Kind.COMPLETED).exists()


@pytest.mark.django_db
def test_without_a_review_column_a_defect_goes_to_done_and_its_inspection_records_it():
    board = make_board()
    Column.objects.filter(board=board, role=Role.REVIEW).delete()
    make_agent(boards=[board])
    task, claim = claim_one(board)

    assert complete(claim, confidence=DEFECTIVE)

    assert where(task) == (Role.DONE, Status.DONE)
    assert task.output == GOOD
    inspection = Inspection.objects.get(task=task)
    assert inspection.passed is False
    assert inspection.failed_checks == ["confidence"]
    assert not Escalation.objects.exists()
    event = task.events.get(kind=TaskEvent.Kind.COMPLETED)
    assert "no Review column" in event.note


@pytest.mark.django_db
def test_token_waste_is_recorded_on_a_passing_outputs_inspection(board):
    agent = make_agent(boards=[board])
    # The agent's history: twenty passed outputs of 10 tokens make 10 its optimal length.
    history_task, claim = claim_one(board)
    complete(claim)
    Inspection.objects.bulk_create(
        [
            Inspection(task=history_task, board=board, agent=agent, passed=True, tokens_out=10)
            for _ in range(20)
        ]
    )
    jidoka.optimal_lengths.clear()  # the estimate is cached for a minute
    task, claim = claim_one(board, input="another part")
    long_answer = "x" * 400  # 100 tokens at four characters a token

    assert complete(claim, confidence=0.95, text=long_answer)

    assert where(task) == (Role.DONE, Status.DONE)
    inspection = Inspection.objects.get(task=task)
    assert inspection.passed is True
    assert inspection.tokens_out == 100
    assert inspection.waste_tokens == 90
    assert any("90 wasted" in note for note in inspection.notes)


@pytest.mark.django_db
def test_token_waste_is_measured_against_a_fixed_optimal_length_from_the_ledger_tokens(board):
    make_agent(
        boards=[board],
        quality_checks=[{"check": "token_waste", "ratio": 1.5, "optimal_tokens": 4}],
    )
    task, claim = claim_one(board)

    # The accepted call reports 16 tokens out (the ledger's figure wins over an estimate).
    assert complete(claim, confidence=0.95, cost="0.001")

    inspection = Inspection.objects.get(task=task)
    assert (inspection.passed, inspection.tokens_out, inspection.waste_tokens) == (True, 16, 12)


@pytest.mark.django_db
def test_malformed_quality_checks_make_every_output_a_defect(board):
    agent = make_agent(boards=[board])
    task, claim = claim_one(board)
    # Written around clean(), as a bad migration or a raw UPDATE could.
    type(agent).objects.filter(pk=agent.pk).update(quality_checks=[{"check": "telepathy"}])

    assert complete(claim, confidence=0.99)

    assert where(task) == (Role.REVIEW, Status.REVIEW)
    assert Escalation.objects.get(task=task).failed_checks == ["configuration"]


@pytest.mark.django_db
def test_an_agent_with_no_checks_passes_everything(board):
    make_agent(boards=[board], quality_checks=[])
    task, claim = claim_one(board)

    assert complete(claim, confidence=0.01, text="I don't know.")

    assert where(task) == (Role.DONE, Status.DONE)
    assert Inspection.objects.get(task=task).passed is True


@pytest.mark.django_db
def test_a_stale_result_is_not_inspected(board, agent):
    task, claim = claim_one(board)
    assert fail(claim)

    assert complete(claim, confidence=DEFECTIVE) is False

    assert where(task) == (Role.READY, Status.READY)
    assert not Inspection.objects.exists()
    assert not Escalation.objects.exists()


@pytest.mark.django_db
def test_reviewers_corrections_set_the_optimal_length_token_waste_is_measured_against(board):
    agent = make_agent(boards=[board], concurrency=10, spike_defects=10)
    who = make_reviewer()
    for n in range(3):
        task, claim = claim_one(board, input=f"corrected {n}")
        complete(claim, confidence=DEFECTIVE)
        andon_services.escalation_correct(
            escalation=Escalation.objects.get(task=task), user=who, output="y" * 40
        )  # 10 tokens
    jidoka.optimal_lengths.clear()
    task, claim = claim_one(board, input="long")

    assert complete(claim, confidence=0.95, text="x" * 200)  # 50 tokens

    inspection = Inspection.objects.get(task=task)
    assert (inspection.passed, inspection.waste_tokens) == (True, 40)
    assert jidoka.optimal_lengths.get(agent.pk) == 10
