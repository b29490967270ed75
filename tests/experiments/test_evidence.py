"""The tuning evidence (experiments.evidence) from hand-made history: each tier's
and each setting's pass rate with its Wilson interval, cost, latency and tokens;
the cascade stopped after each tier, on the same tasks, and which of those depths
are dominated; per capability and pooled; bounded reads."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from experiments.evidence import agent_tuning_evidence_get, dominated, wilson
from tests.experiments.tuning_support import CHECKS, TWO_TIERS, C, add
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db

Z = 1.959963984540054


def _wilson(passes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval by its formula, to check the library's against."""
    p = passes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


@pytest.fixture
def agent():
    board = make_board(ready_limit=None, doing_limit=None)
    return make_agent(boards=[board], cascade=TWO_TIERS, quality_checks=CHECKS)


ESCALATED = [
    C(tier=1, confidence=0.6, would_pass=False, cost="0.001"),
    C(tier=2, confidence=0.95, cost="0.01"),
]


def test_wilson_matches_its_formula():
    for passes, n in ((40, 55), (0, 12), (30, 30), (1, 1)):
        low, high = wilson(passes, n)
        expected = _wilson(passes, n)
        assert low == pytest.approx(expected[0], abs=1e-9)
        assert high == pytest.approx(expected[1], abs=1e-9)
    assert wilson(0, 0) is None


def test_each_tier_has_its_pass_rate_interval_cost_latency_and_tokens(agent):
    add(agent, 40, verdict="passed")
    add(agent, 10, verdict="rejected")
    add(agent, 5, verdict="corrected")
    add(agent, 15, verdict="passed", tier=2, calls=ESCALATED)
    add(agent, 5, verdict="approved", tier=2, calls=ESCALATED)

    evidence = agent_tuning_evidence_get(agent)

    [capability] = evidence.capabilities
    assert capability.label == "classify"
    one, two = capability.tiers
    assert (one.tier, one.model, one.simulated) == (1, "sim-small", True)
    # Corrected answers were not good enough as they were: they do not pass, and are counted apart.
    assert (one.figures.rate.passes, one.figures.n, one.figures.corrected) == (40, 55, 5)
    assert one.figures.rate.low == pytest.approx(_wilson(40, 55)[0])
    assert one.figures.rate.high == pytest.approx(_wilson(40, 55)[1])
    assert one.figures.cost == pytest.approx(0.001)
    assert one.figures.latency_p50_ms == 100
    assert one.figures.tokens_out == 40
    # Approved as they were: those pass.
    assert (two.tier, two.model, two.figures.rate.passes, two.figures.n) == (2, "sim-large", 20, 20)
    # Per task: both calls of an escalated attempt.
    assert two.figures.cost == pytest.approx(0.011)
    assert two.figures.latency_p95_ms == 200
    assert two.figures.tokens_out == 80


def test_latency_percentiles_are_of_the_tasks(agent):
    add(agent, 19, calls=[C(tier=1, latency_ms=100.0)])
    add(agent, 1, calls=[C(tier=1, latency_ms=2100.0)])

    [tier] = agent_tuning_evidence_get(agent).overall.tiers

    assert tier.figures.latency_p50_ms == 100
    # numpy's linear percentile of 19 x 100 ms and one 2100 ms: 100 + 0.05 x 2000.
    assert tier.figures.latency_p95_ms == pytest.approx(200)


def test_depths_score_the_cascade_stopped_after_each_tier_on_the_same_tasks(agent):
    add(agent, 40, verdict="passed")
    add(agent, 15, verdict="rejected")
    add(agent, 20, verdict="passed", tier=2, calls=ESCALATED)

    overall = agent_tuning_evidence_get(agent).overall

    one, two = overall.depths
    # Stopped after tier 1: tier 1's own answer where the cascade went on (it would have failed).
    assert (one.tier, one.model, one.rate.passes, one.rate.n) == (1, "sim-small", 40, 75)
    assert one.cost == pytest.approx(0.001)
    assert (two.tier, two.model, two.rate.passes, two.rate.n) == (2, "sim-large", 60, 75)
    assert two.cost == pytest.approx((55 * 0.001 + 20 * 0.011) / 75)
    # Dearer and better: both on the frontier.
    assert not one.dominated and not two.dominated
    assert [d.tier for d in overall.frontier] == [1, 2]


def test_a_dearer_tier_that_passes_no_more_is_dominated(agent):
    add(agent, 40, verdict="passed")
    # Tier 1 would have passed these too: tier 2 bought nothing.
    add(
        agent,
        20,
        verdict="passed",
        tier=2,
        calls=[C(tier=1, confidence=0.72, would_pass=True), C(tier=2, confidence=0.95, cost="0.01")],
    )

    one, two = agent_tuning_evidence_get(agent).overall.depths

    assert one.rate.rate == two.rate.rate == 1.0
    assert not one.dominated
    assert two.dominated
    assert dominated([(1.0, 0.5), (2.0, 0.5), (3.0, 0.9), (0.5, 0.2)]) == [False, True, False, False]


def test_a_depth_with_too_many_unknown_outcomes_is_left_out(agent):
    add(agent, 30, verdict="passed")
    # Passed-over answers whose inspection could not be told (custom checks).
    add(
        agent,
        20,
        verdict="passed",
        tier=2,
        calls=[C(tier=1, confidence=0.6, would_pass=None), C(tier=2, confidence=0.95, cost="0.01")],
    )

    overall = agent_tuning_evidence_get(agent).overall

    # 20 of 50 unknown stopped after tier 1: the 30 left would be the easy tasks only.
    assert [d.tier for d in overall.depths] == [2]
    assert overall.unknown_depths == [1]


def test_settings_tried_are_counted_apart_across_versions(agent):
    add(agent, 30, verdict="passed", params={"temperature": 0.2, "max_tokens": 300}, version=1)
    add(agent, 10, verdict="rejected", params={"temperature": 0.7, "max_tokens": 300}, version=2)
    add(agent, 10, verdict="passed", params={"temperature": 0.7, "max_tokens": 300}, version=3)

    settings = agent_tuning_evidence_get(agent).overall.settings

    by_temperature = {s.temperature: s for s in settings}
    assert set(by_temperature) == {0.2, 0.7}
    assert by_temperature[0.2].versions == (1,)
    assert (by_temperature[0.2].figures.rate.passes, by_temperature[0.2].figures.n) == (30, 30)
    assert by_temperature[0.7].versions == (2, 3)
    assert (by_temperature[0.7].figures.rate.passes, by_temperature[0.7].figures.n) == (10, 20)
    assert {s.max_tokens for s in settings} == {300}
    assert {s.top_p for s in settings} == {None}


def test_tiers_are_the_active_versions_only(agent):
    add(agent, 10, verdict="rejected", version=agent.prompt_version + 1)
    add(agent, 10, verdict="passed")

    evidence = agent_tuning_evidence_get(agent)

    [tier] = evidence.overall.tiers
    assert tier.figures.rate.passes == tier.figures.n == 10
    # The settings count every version in the window.
    assert sum(s.figures.n for s in evidence.overall.settings) == 20


def test_capabilities_are_apart_and_pooled(agent):
    add(agent, 20, verdict="passed", capability="classify")
    add(agent, 10, verdict="rejected", capability="summarise")
    add(agent, 5, verdict="passed", capability="")

    evidence = agent_tuning_evidence_get(agent)

    assert [c.label for c in evidence.capabilities] == ["classify", "summarise", "(no capability)"]
    summarise = evidence.capabilities[1]
    assert summarise.tiers[0].figures.rate.passes == 0
    assert evidence.overall.label == "all capabilities"
    assert evidence.overall.tiers[0].figures.rate.passes == 25
    assert evidence.overall.tiers[0].figures.n == 35


def test_patterns_outside_the_window_are_not_read(agent):
    add(agent, 10, verdict="rejected", ago=timedelta(days=40))
    add(agent, 10, verdict="passed")

    evidence = agent_tuning_evidence_get(agent)

    assert evidence.patterns == 10
    assert evidence.overall.tiers[0].figures.rate.rate == 1.0
    assert agent_tuning_evidence_get(agent, since=timezone.now() - timedelta(days=60)).patterns == 20


def test_reads_are_two_queries_and_capped(agent):
    add(agent, 30, verdict="passed", ago=timedelta(minutes=5))
    add(agent, 20, verdict="rejected", tier=2, calls=ESCALATED, ago=timedelta(minutes=1))

    with CaptureQueriesContext(connection) as queries:
        evidence = agent_tuning_evidence_get(agent, limit=20)

    assert len(queries) == 2
    # The newest 20 only: the escalated ones.
    assert evidence.patterns == 20
    assert evidence.capped
    assert [t.tier for t in evidence.overall.tiers] == [2]


def test_no_history_is_empty(agent):
    evidence = agent_tuning_evidence_get(agent)

    assert evidence.empty
    assert evidence.capabilities == []
    assert evidence.overall.depths == []
