"""Reads for the andon inbox: open escalations and their filters, an agent's recent
record, the inbox figures, and the breakers that are not closed."""

from __future__ import annotations

import pytest

from andon import selectors
from andon import services as andon_services
from andon.models import CircuitBreaker, Escalation, Inspection
from tests.andon.helpers import claim_one, complete, escalate
from tests.factories import column, make_agent, make_board, make_reviewer


@pytest.fixture
def roomy(board):
    review = column(board, "review")
    review.wip_limit = 50
    review.save()
    return board


@pytest.mark.django_db
def test_the_inbox_lists_open_escalations_newest_first_filtered_by_board_agent_and_check(roomy):
    first_agent = make_agent(boards=[roomy], concurrency=1)
    older = escalate(roomy, input="older")
    first_agent.paused = True
    first_agent.save()
    second_agent = make_agent(
        boards=[roomy], concurrency=1, quality_checks=[{"check": "length", "name": "short", "max_chars": 5}]
    )
    newer = escalate(roomy, input="newer")
    decided = escalate(roomy, input="decided")
    andon_services.escalation_approve(escalation=decided, user=make_reviewer())
    elsewhere = make_board()
    make_agent(boards=[elsewhere])
    stranger = escalate(elsewhere)

    assert [e.pk for e in selectors.inbox_escalations_get()] == [stranger.pk, newer.pk, older.pk]
    assert [e.pk for e in selectors.inbox_escalations_get(board_id=roomy.pk)] == [newer.pk, older.pk]
    assert [e.pk for e in selectors.inbox_escalations_get(agent_id=second_agent.pk)] == [newer.pk]
    assert [e.pk for e in selectors.inbox_escalations_get(check="short")] == [newer.pk]
    assert [e.pk for e in selectors.inbox_escalations_get(check="confidence")] == [stranger.pk, older.pk]
    choices = selectors.inbox_filter_choices_get()
    assert choices["checks"] == ["confidence", "short"]


@pytest.mark.django_db
def test_an_agents_record_counts_its_last_outputs_and_the_decisions_on_them(roomy):
    # Three defects would stop its line (a spike) before the passes below.
    agent = make_agent(boards=[roomy], concurrency=5, spike_defects=10)
    who = make_reviewer()
    approved = escalate(roomy, input="approved")
    andon_services.escalation_approve(escalation=approved, user=who)
    escalate(roomy, input="still open")
    rejected = escalate(roomy, input="rejected")
    andon_services.escalation_reject(escalation=rejected, user=who, reason="wrong")
    for n in range(2):
        _, claim = claim_one(roomy, input=f"fine {n}")
        assert complete(claim)

    record = selectors.agent_record_get(agent_id=agent.pk)

    assert (record.outputs, record.defects) == (5, 3)
    assert (record.approved, record.corrected, record.rejected) == (1, 0, 1)
    assert record.defect_rate == pytest.approx(0.6)


@pytest.mark.django_db
def test_an_agents_record_leaves_out_decisions_on_outputs_older_than_its_window(roomy):
    agent = make_agent(boards=[roomy], concurrency=1)
    old = escalate(roomy, input="long ago")
    andon_services.escalation_approve(escalation=old, user=make_reviewer())
    for n in range(3):
        _, claim = claim_one(roomy, input=f"fine {n}")
        assert complete(claim)

    record = selectors.agent_record_get(agent_id=agent.pk, last=3)

    assert (record.outputs, record.defects, record.approved) == (3, 0, 0)


@pytest.mark.django_db
def test_the_inbox_figures_count_escalations_over_inspected_outputs(roomy):
    make_agent(boards=[roomy], concurrency=1)
    first = escalate(roomy, input="first")
    escalate(roomy, input="second")
    _, claim = claim_one(roomy, input="fine")
    assert complete(claim)
    andon_services.escalation_approve(escalation=first, user=make_reviewer())

    stats = selectors.inbox_stats_get()

    assert (stats.open, stats.inspected, stats.escalated, stats.decided) == (1, 3, 2, 1)
    assert stats.escalation_rate == pytest.approx(2 / 3)
    assert stats.rate_ok is False
    assert stats.median_decision_s is not None and stats.median_decision_s >= 0


@pytest.mark.django_db
def test_a_withdrawn_escalation_is_not_a_decision_in_the_figures(roomy):
    make_agent(boards=[roomy], concurrency=1)
    escalation = escalate(roomy)
    # Rows left by moves out of Review from before such moves were refused.
    Escalation.objects.filter(pk=escalation.pk).update(status=Escalation.Status.WITHDRAWN)

    stats = selectors.inbox_stats_get()
    assert (stats.open, stats.decided) == (0, 0)
    assert Escalation.objects.get().status == Escalation.Status.WITHDRAWN


@pytest.mark.django_db
def test_breakers_get_returns_the_agents_and_models_breakers_that_are_not_closed(board):
    tripped, fine, other = (make_agent(boards=[board]) for _ in range(3))
    CircuitBreaker.objects.create(scope="agent", agent=tripped, state="open", consecutive_failures=5)
    CircuitBreaker.objects.create(scope="agent", agent=fine, state="closed", consecutive_failures=2)
    CircuitBreaker.objects.create(scope="agent", agent=other, state="half_open")
    CircuitBreaker.objects.create(scope="model", board=board, key="simulated/sim-small", state="open")
    CircuitBreaker.objects.create(scope="model", board=board, key="simulated/sim-large", state="closed")

    agents, models = selectors.breakers_get(agent_ids=[tripped.pk, fine.pk])

    assert set(agents) == {tripped.pk}
    assert [b.key for b in models] == ["simulated/sim-small"]
    assert not Inspection.objects.exists()
