"""The line acting on jidoka in the worker: a reviewer's reason for rejecting an
output reaches the next attempt's prompt (and an earlier result is not reused in
its place), and the cascade does not call a model whose circuit breaker is open.

Runs are run in-process (boards.agents.runtime.run) with the simulated provider, whose
requests are recorded."""

from __future__ import annotations

import pytest

from andon import services as andon_services
from andon.models import CircuitBreaker
from boards import selectors
from boards.agents import REVIEW_FEEDBACK_NOTE, cascade, runtime
from boards.agents.simulated import SimulatedProvider
from boards.models import Column, ModelCall, Task
from tests.andon.helpers import DEFECTIVE, claim_one, complete, escalate, pull, where
from tests.factories import make_agent, make_reviewer, open_model_breaker

pytestmark = pytest.mark.usefixtures("no_open_breakers")

State = CircuitBreaker.State
REASON = "It names the wrong part number: the housing is part 7."
TWO_TIERS = [
    # A threshold sim-small never reaches: without a breaker, both tiers are called.
    {"provider": "simulated", "model": "sim-small", "threshold": 0.999},
    {"provider": "simulated", "model": "sim-large"},
]


@pytest.fixture
def requests_sent(monkeypatch) -> list[tuple[str, str]]:
    """(model, prompt) of every call the cascade makes to a provider."""
    sent: list[tuple[str, str]] = []
    simulated = SimulatedProvider(latency_scale=0)

    class Recording:
        def complete(self, request):
            sent.append((request.model, request.prompt))
            return simulated.complete(request)

    monkeypatch.setattr(cascade, "get_provider", lambda name: Recording())
    return sent


def _rejected(board) -> Task:
    """A task whose first output a reviewer rejected, claimed again: (task, claim)."""
    escalation = escalate(board)
    andon_services.escalation_reject(escalation=escalation, user=make_reviewer(), reason=REASON)
    [claim] = pull(board)
    assert claim.task_id == escalation.task_id
    return Task.objects.get(pk=claim.task_id), claim


# --- (a) the reviewer's reason reaches the next attempt ---------------------------------


@pytest.mark.django_db
def test_a_rejected_tasks_next_attempt_has_the_reviewers_reason_appended_to_its_prompt(board, requests_sent):
    make_agent(boards=[board], prompt_template="Inspect: {input}")
    task, claim = _rejected(board)

    runtime.run(task.pk, str(claim.lease_token))

    [(_, prompt)] = requests_sent
    assert prompt == "Inspect: scratch on housing" + REVIEW_FEEDBACK_NOTE.format(feedback=REASON)


@pytest.mark.django_db
def test_a_template_with_review_feedback_places_the_reason_itself(board, requests_sent):
    make_agent(
        boards=[board],
        prompt_template="Inspect: {input}\nA reviewer said of your last answer: {review_feedback}",
    )
    task, claim = _rejected(board)

    runtime.run(task.pk, str(claim.lease_token))

    [(_, prompt)] = requests_sent
    assert prompt == f"Inspect: scratch on housing\nA reviewer said of your last answer: {REASON}"


@pytest.mark.django_db
def test_a_first_attempt_has_no_reviewer_note(board, requests_sent):
    make_agent(boards=[board], prompt_template="Inspect: {input}")
    task, claim = claim_one(board)

    runtime.run(task.pk, str(claim.lease_token))

    assert requests_sent == [("sim-small", "Inspect: scratch on housing")]


@pytest.mark.django_db
def test_a_rejected_task_is_not_given_an_earlier_tasks_result_again(board, requests_sent):
    agent = make_agent(boards=[board], quality_checks=[])
    # An identical task this agent already finished: its result would be reused.
    earlier, claim = claim_one(board)
    assert complete(claim)
    agent.quality_checks = [{"check": "confidence", "min": 0.5}]
    agent.save()
    task, claim = claim_one(board)
    assert complete(claim, confidence=DEFECTIVE)
    escalation = task.escalations.get()
    andon_services.escalation_reject(escalation=escalation, user=make_reviewer(), reason=REASON)
    [claim] = pull(board)
    # Without the reviewer's reason, the earlier result would be taken.
    unreviewed = Task.objects.select_related("agent").get(pk=task.pk)
    unreviewed.review_feedback = ""
    assert selectors.task_reusable_get(task=unreviewed) == earlier

    runtime.run(task.pk, str(claim.lease_token))

    task.refresh_from_db()
    assert task.reused_from_id is None
    assert len(requests_sent) == 1
    sources = list(ModelCall.objects.filter(task=task, attempt=2).values_list("source", flat=True))
    assert sources == [ModelCall.Source.MODEL]


# --- (b) the cascade and the model breakers ---------------------------------------------


@pytest.mark.django_db
def test_the_cascade_skips_a_tier_whose_model_breaker_is_open(board, requests_sent):
    make_agent(boards=[board], cascade=TWO_TIERS, quality_checks=[])
    open_model_breaker(board, "sim-small")
    task, claim = claim_one(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "done"

    assert [model for model, _ in requests_sent] == ["sim-large"]
    task.refresh_from_db()
    assert task.accepted_tier == 2
    assert list(ModelCall.objects.filter(task=task).values_list("model", flat=True)) == ["sim-large"]


@pytest.mark.django_db
def test_with_no_tier_callable_the_task_goes_back_without_spending_an_attempt(board, requests_sent):
    agent = make_agent(boards=[board], quality_checks=[], breaker_threshold=1)
    task, claim = claim_one(board)
    # Opened after the claim (an agent whose every model is open pulls nothing).
    open_model_breaker(board, "sim-small")

    assert runtime.run(task.pk, str(claim.lease_token)) == "deferred"

    assert requests_sent == []
    assert where(task) == (Column.Role.READY, Task.Status.READY)
    task.refresh_from_db()
    assert task.attempts == 0
    assert not ModelCall.objects.filter(task=task).exists()
    event = task.events.get(kind="deferred")
    assert "circuit breaker is open" in event.note and event.agent_id == agent.pk
    # Nothing was tried, so the agent's own breaker (threshold 1) does not count it.
    assert not CircuitBreaker.objects.filter(agent=agent, state=State.OPEN).exists()


@pytest.mark.django_db
def test_with_a_called_tier_failing_and_the_rest_skipped_the_attempt_fails(board, requests_sent):
    make_agent(
        boards=[board],
        quality_checks=[],
        cascade=[
            {
                "provider": "simulated",
                "model": "sim-small",
                "threshold": 0.5,
                "parameters": {"error_rate": 1},
            },
            {"provider": "simulated", "model": "sim-large"},
        ],
    )
    task, claim = claim_one(board)
    open_model_breaker(board, "sim-large")

    assert runtime.run(task.pk, str(claim.lease_token)) == "failed"

    task.refresh_from_db()
    assert task.attempts == 1 and "simulated error" in task.last_error


@pytest.mark.django_db
def test_with_the_stronger_tier_out_of_service_the_weaker_output_goes_on_to_inspection(board, requests_sent):
    make_agent(boards=[board], cascade=TWO_TIERS, quality_checks=[])
    open_model_breaker(board, "sim-large")
    task, claim = claim_one(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "done"

    assert [model for model, _ in requests_sent] == ["sim-small"]
    task.refresh_from_db()
    assert task.accepted_tier == 1
    assert list(ModelCall.objects.filter(task=task).values_list("model", "accepted")) == [("sim-small", True)]


@pytest.mark.django_db
def test_after_the_cooldown_one_call_probes_the_model_and_its_answer_closes_the_breaker(
    board, requests_sent, settings
):
    settings.KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS = 60
    make_agent(boards=[board], quality_checks=[])
    breaker = open_model_breaker(board, "sim-small", opened_seconds_ago=61)
    task, claim = claim_one(board)

    assert runtime.run(task.pk, str(claim.lease_token)) == "done"

    assert [model for model, _ in requests_sent] == ["sim-small"]
    breaker.refresh_from_db()
    assert (breaker.state, breaker.consecutive_failures) == (State.CLOSED, 0)
