"""The tuning planners (experiments.tuning) on hand-made history: each proposes
on evidence that supports it, with the expected fields and the numbers in its
rationale, and nothing on thin or contrary evidence; and through the kaizen
cycle, a proposal like any other (experiments.pdca)."""

from __future__ import annotations

import pytest

from andon import jidoka
from experiments import pdca, tuning
from experiments.models import ChangeProposal, PromptVersion
from tests.experiments.helpers import fields_of
from tests.experiments.tuning_support import CHECKS, THREE_TIERS, TWO_TIERS, C, add, window
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_optimal_lengths():
    # The line caches each agent's optimal length for a minute, by id; ids repeat between tests.
    jidoka.optimal_lengths.clear()
    yield
    jidoka.optimal_lengths.clear()


def _agent(**fields):
    board = make_board(ready_limit=None, doing_limit=None)
    fields.setdefault("cascade", TWO_TIERS)
    fields.setdefault("quality_checks", CHECKS)
    return make_agent(boards=[board], **fields)


# --- max_tokens ----------------------------------------------------------------------


def test_max_tokens_comes_from_the_95th_percentile_of_passing_answers_plus_a_margin():
    agent = _agent(parameters={"max_tokens": 1000})
    add(agent, 40, calls=[C(tier=1, tokens_out=80)])
    add(agent, 10, calls=[C(tier=1, tokens_out=100)])
    # Rejected answers' lengths are not what a good answer needs.
    add(agent, 10, verdict="rejected", calls=[C(tier=1, tokens_out=600)])

    plan = tuning.plan_max_tokens(window(agent))

    # The 95th percentile of 40 x 80 and 10 x 100 tokens is 100; +20%, rounded up to 10: 120.
    assert plan.fields["parameters"] == {"max_tokens": 120}
    assert plan.fields["cascade"] == agent.cascade
    assert plan.evidence["max_tokens"] == {"current": 1000, "proposed": 120}
    assert plan.evidence["passing_answers"] == 50
    assert plan.evidence["p95_tokens"] == 100
    assert plan.evidence["longer_than_proposed"] == {"passing": 0, "all": 10}
    assert "50 answers passed" in plan.rationale
    assert "95% of them were at most 100 tokens" in plan.rationale
    assert "lower max_tokens from 1000 to 120 (88% less)" in plan.rationale
    assert "0 of the 50 passing answers (0%) and 10 of all 60 were longer than 120 tokens" in plan.rationale


def test_a_tier_with_longer_answers_sets_the_cap():
    agent = _agent(parameters={"max_tokens": 2000})
    add(agent, 600, calls=[C(tier=1, tokens_out=50)])
    add(agent, 30, tier=2, calls=[C(tier=1, confidence=0.5, would_pass=False), C(tier=2, tokens_out=300)])

    plan = tuning.plan_max_tokens(window(agent))

    # Tier 2's answers are under 5% of all: the pooled 95th percentile (50) would cut every one.
    assert plan.evidence["p95_tokens"] == 50
    assert plan.fields["parameters"]["max_tokens"] == 360
    assert [(t["tier"], t["measure"], t["tokens"]) for t in plan.evidence["by_tier"]] == [
        (1, "p95", 50),
        (2, "p95", 300),
    ]
    assert "tier 2, sim-large: 300 over 30" in plan.rationale


def test_a_tier_with_too_few_answers_for_a_percentile_counts_its_longest():
    agent = _agent(parameters={"max_tokens": 2000})
    add(agent, 60, calls=[C(tier=1, tokens_out=50)])
    add(agent, 2, tier=2, calls=[C(tier=1, confidence=0.5, would_pass=False), C(tier=2, tokens_out=400)])

    plan = tuning.plan_max_tokens(window(agent))

    assert plan.evidence["by_tier"][1] == {
        "tier": 2,
        "model": "sim-large",
        "measure": "longest",
        "tokens": 400,
        "n": 2,
    }
    assert plan.fields["parameters"]["max_tokens"] == 480
    assert "tier 2, sim-large: the longest of 2, 400" in plan.rationale


def test_a_tiers_own_max_tokens_is_lowered_with_the_agents():
    tiers = [dict(TWO_TIERS[0], parameters={"max_tokens": 4000}), TWO_TIERS[1]]
    agent = _agent(cascade=tiers, parameters={"max_tokens": 1000})
    add(agent, 40, calls=[C(tier=1, tokens_out=80)])

    plan = tuning.plan_max_tokens(window(agent))

    assert plan.fields["parameters"]["max_tokens"] == 100
    assert plan.fields["cascade"][0]["parameters"]["max_tokens"] == 100
    assert plan.evidence["tiers_lowered"] == [{"tier": 1, "model": "sim-small", "from": 4000}]
    assert "lower tier 1's (sim-small) own max_tokens from 4000 to 100" in plan.rationale


def test_an_unset_max_tokens_is_set():
    agent = _agent()
    add(agent, 40, calls=[C(tier=1, tokens_out=80)])

    plan = tuning.plan_max_tokens(window(agent))

    assert plan.fields["parameters"] == {"max_tokens": 100}
    assert "set max_tokens to 100 (unset today: the provider's default)" in plan.rationale


def test_never_below_the_floor():
    agent = _agent(parameters={"max_tokens": 1000})
    add(agent, 40, calls=[C(tier=1, tokens_out=12)])

    assert tuning.plan_max_tokens(window(agent)).fields["parameters"]["max_tokens"] == tuning.MAX_TOKENS_FLOOR


def test_a_cap_that_cuts_little_is_not_proposed():
    # 120 would be under a quarter below 150.
    agent = _agent(parameters={"max_tokens": 150})
    add(agent, 40, calls=[C(tier=1, tokens_out=100)])

    assert tuning.plan_max_tokens(window(agent)) is None


def test_no_cap_is_lowered_when_a_failed_answer_had_reached_its_own():
    agent = _agent(parameters={"max_tokens": 1000})
    add(agent, 40, calls=[C(tier=1, tokens_out=80)])
    # Cut short at its max_tokens, and rejected: the cap may be cutting answers.
    add(agent, 1, verdict="rejected", calls=[C(tier=1, tokens_out=1000)])

    assert tuning.plan_max_tokens(window(agent)) is None


def test_too_few_passing_answers_make_no_max_tokens_plan():
    agent = _agent(parameters={"max_tokens": 1000})
    add(agent, tuning.MIN_LENGTHS - 1, calls=[C(tier=1, tokens_out=80)])
    add(agent, 20, verdict="rejected", calls=[C(tier=1, tokens_out=80)])

    assert tuning.plan_max_tokens(window(agent)) is None


# --- tier 1's threshold --------------------------------------------------------------

PASSED_OVER = [C(tier=1, confidence=0.73, would_pass=True), C(tier=2, confidence=0.95, cost="0.01")]
NEEDED = [C(tier=1, confidence=0.5, would_pass=False), C(tier=2, confidence=0.95, cost="0.01")]


def _threshold_history(agent, *, band: int = 150, band_passing: bool = True):
    # Tier 1's taken answers pass 95% of the time: a band needs 127 answers for one
    # as good to show it (tuning.planned_band).
    add(agent, 190, calls=[C(tier=1, confidence=0.9)])
    add(agent, 10, verdict="rejected", calls=[C(tier=1, confidence=0.9)])
    calls = PASSED_OVER if band_passing else [C(tier=1, confidence=0.73, would_pass=False), PASSED_OVER[1]]
    add(agent, band, tier=2, calls=calls)
    add(agent, 20, tier=2, calls=NEEDED)


def test_tier_1s_threshold_is_lowered_where_its_passed_over_answers_would_have_passed():
    agent = _agent()
    _threshold_history(agent)

    plan = tuning.plan_tier1_threshold(window(agent))

    # Down to the band's lowest confidence, 0.73: below it nothing was seen.
    assert plan.fields["cascade"][0]["threshold"] == 0.73
    assert [t["model"] for t in plan.fields["cascade"]] == ["sim-small", "sim-large"]
    assert plan.fields["cascade"][1] == agent.cascade[1]
    assert plan.evidence["taken_today"]["passes"] == 190
    assert plan.evidence["planned_band"] == 127
    assert plan.evidence["band"]["n"] == 150
    assert plan.evidence["band"]["low"] == pytest.approx(150 / (150 + 1.959963984540054**2))
    assert plan.evidence["needless_escalations"] == 150
    assert plan.evidence["upper_tier_cost_needless"] == pytest.approx(1.5)
    assert (
        "had 200 of its answers taken at confidence 0.75 or more, and 190 of them passed (95%)"
        in plan.rationale
    )
    assert (
        "the 150 with confidence from 0.73 up to 0.75 would have passed inspection 150 times"
        in plan.rationale
    )
    assert "95% interval 98%–100%" in plan.rationale
    assert "lower tier 1's threshold from 0.75 to 0.73" in plan.rationale
    assert "estimated saving $1.50 per 7 days" in plan.rationale


def test_a_band_that_would_fail_more_often_keeps_the_threshold():
    agent = _agent()
    _threshold_history(agent, band_passing=False)

    assert tuning.plan_tier1_threshold(window(agent)) is None


def test_a_band_too_small_to_show_it_passes_as_often_is_no_evidence():
    agent = _agent()
    # Every one of them would have passed, but 120 cannot show a 95% rate within 5 points.
    _threshold_history(agent, band=120)

    assert tuning.plan_tier1_threshold(window(agent)) is None


def test_the_planned_band_grows_as_the_rate_to_match_falls():
    assert tuning.planned_band(0.95) == 127
    assert (
        tuning.MIN_BAND <= tuning.planned_band(0.999) < tuning.planned_band(0.95) < tuning.planned_band(0.8)
    )


def test_the_threshold_is_never_lowered_below_what_inspection_asks():
    agent = _agent(quality_checks=[{"check": "confidence", "min": 0.74}])
    _threshold_history(agent)

    # The band at 0.73 is below the 0.74 inspection asks for: not a candidate.
    assert tuning.plan_tier1_threshold(window(agent)) is None


def test_too_few_taken_answers_make_no_threshold_plan():
    agent = _agent()
    add(agent, tuning.MIN_ACCEPTED - 1, calls=[C(tier=1, confidence=0.9)])
    add(agent, 60, tier=2, calls=PASSED_OVER)

    assert tuning.plan_tier1_threshold(window(agent)) is None


def test_a_single_tier_has_no_threshold_to_tune():
    agent = _agent(cascade=[{"provider": "simulated", "model": "sim-small"}])
    add(agent, 60, calls=[C(tier=1, confidence=0.9)])

    assert tuning.plan_tier1_threshold(window(agent)) is None


# --- tier order ----------------------------------------------------------------------


def test_a_dearer_tier_that_buys_nothing_is_dropped():
    agent = _agent()
    add(agent, 40, calls=[C(tier=1, confidence=0.9)])
    add(agent, 30, tier=2, calls=PASSED_OVER)

    plan = tuning.plan_tier_order(window(agent))

    assert [t["model"] for t in plan.fields["cascade"]] == ["sim-small"]
    # The last tier takes every answer.
    assert plan.fields["cascade"][0]["threshold"] is None
    assert plan.evidence["change"] == "drop"
    assert (plan.evidence["rescued"], plan.evidence["lost"], plan.evidence["went_on"]) == (0, 0, 30)
    assert plan.evidence["upper_tier_cost"] == pytest.approx(0.3)
    assert "70 tasks were scored, 30 of which went on past tier 1 (sim-small)" in plan.rationale
    assert "rescued 0 and lost 0" in plan.rationale
    assert "Proposed: drop tier 2 (sim-large)" in plan.rationale


def test_the_upper_tiers_are_dropped_from_the_first_that_does_as_well():
    agent = _agent(cascade=THREE_TIERS)
    add(agent, 40, calls=[C(tier=1, confidence=0.9)])
    # Tier 2 rescues tier 1's failures; tier 3 adds nothing to tier 2.
    add(agent, 30, tier=2, calls=NEEDED[:1] + [C(tier=2, confidence=0.9, cost="0.005")])
    add(
        agent,
        25,
        tier=3,
        calls=NEEDED[:1]
        + [C(tier=2, confidence=0.8, would_pass=True, cost="0.005"), C(tier=3, confidence=0.95, cost="0.02")],
    )

    plan = tuning.plan_tier_order(window(agent))

    assert [t["model"] for t in plan.fields["cascade"]] == ["sim-small", "sim-medium"]
    assert plan.fields["cascade"][0]["threshold"] == 0.75
    assert plan.fields["cascade"][1]["threshold"] is None
    assert plan.evidence["dropped"] == [{"tier": 3, "model": "sim-large"}]


def test_a_dearer_tier_that_rescues_answers_is_kept():
    agent = _agent()
    add(agent, 40, calls=[C(tier=1, confidence=0.9)])
    add(agent, 30, tier=2, calls=NEEDED)

    assert tuning.plan_tier_order(window(agent)) is None


def test_too_few_tasks_past_a_tier_drop_nothing():
    agent = _agent()
    add(agent, 40, calls=[C(tier=1, confidence=0.9)])
    add(agent, tuning.MIN_WENT_ON - 1, tier=2, calls=PASSED_OVER)

    assert tuning.plan_tier_order(window(agent)) is None


def test_a_cheaper_tier_after_a_dearer_one_that_does_as_well_is_tried_first():
    agent = _agent()
    # Tier 2's calls cost a tenth of tier 1's, and its answers pass where tier 1's fail.
    add(agent, 10, calls=[C(tier=1, confidence=0.9, cost="0.01")])
    add(
        agent,
        40,
        tier=2,
        calls=[
            C(tier=1, confidence=0.5, would_pass=False, cost="0.01"),
            C(tier=2, confidence=0.9, cost="0.001"),
        ],
    )

    plan = tuning.plan_tier_order(window(agent))

    assert plan.evidence["change"] == "swap"
    assert [t["model"] for t in plan.fields["cascade"]] == ["sim-large", "sim-small"]
    # Each place keeps its threshold.
    assert [t["threshold"] for t in plan.fields["cascade"]] == [0.75, None]
    assert "on the 40 tasks both answered its answers passed 40 times (100%) against 0 (0%)" in plan.rationale


# --- temperature and top_p -----------------------------------------------------------


def _two_versions(*, template_changed: bool = False):
    """An agent at version 2 (temperature 0.7) whose version 1 ran at 0.2."""
    agent = _agent(parameters={"temperature": 0.7}, prompt_version=2)
    PromptVersion.objects.create(
        agent=agent,
        number=1,
        source=PromptVersion.Source.INITIAL,
        **fields_of(
            agent,
            parameters={"temperature": 0.2},
            prompt_template="Answer: {input}" if template_changed else agent.prompt_template,
        ),
    )
    return agent


def _sampled(agent, *, good_then: int = 54, good_now: int = 36, cost_then: str = "0.001"):
    add(agent, good_then, version=1, params={"temperature": 0.2}, calls=[C(tier=1, cost=cost_then)])
    add(agent, 60 - good_then, verdict="rejected", version=1, params={"temperature": 0.2})
    add(agent, good_now, version=2)
    add(agent, 60 - good_now, verdict="rejected", version=2)


def test_a_temperature_that_passed_significantly_more_often_is_proposed():
    agent = _two_versions()
    _sampled(agent)

    plan = tuning.plan_sampling(window(agent))

    assert plan.fields["cascade"][0]["parameters"] == {"temperature": 0.2}
    assert plan.fields["parameters"] == {"temperature": 0.7}
    assert plan.evidence["current"]["passes"] == 36
    assert plan.evidence["proposed"]["passes"] == 54
    assert plan.evidence["versions"] == [1, 2]
    assert plan.evidence["fisher_p"] < 0.001
    assert "60 answers taken with temperature 0.7, top_p unset (today's), 36 passing (60%" in plan.rationale
    assert "60 with temperature 0.2, top_p unset, 54 passing (90%" in plan.rationale
    assert "Proposed: set tier 1's temperature from 0.7 to 0.2." in plan.rationale


def test_settings_tried_under_another_template_are_not_compared():
    agent = _two_versions(template_changed=True)
    _sampled(agent)

    assert tuning.plan_sampling(window(agent)) is None


def test_a_difference_within_chance_proposes_nothing():
    agent = _two_versions()
    _sampled(agent, good_then=40, good_now=36)

    assert tuning.plan_sampling(window(agent)) is None


def test_a_better_setting_that_costs_more_is_not_proposed():
    agent = _two_versions()
    _sampled(agent, cost_then="0.0015")

    assert tuning.plan_sampling(window(agent)) is None


def test_one_setting_only_proposes_nothing():
    agent = _agent(parameters={"temperature": 0.7})
    add(agent, 60)

    assert tuning.plan_sampling(window(agent)) is None


# --- through the kaizen cycle --------------------------------------------------------


def test_the_cycle_proposes_a_tuning_plan_through_the_normal_path():
    agent = _agent()
    _threshold_history(agent)

    kinds = [p.kind for p in pdca.plan(agent)]
    proposal = pdca.cycle(agent)

    assert "tier1_threshold" in kinds
    assert proposal is not None
    assert proposal.source == PromptVersion.Source.KAIZEN
    # The strongest plan: the 60 needless escalations of 140 outputs.
    assert proposal.evidence["kind"] == "tier1_threshold"
    # A changed cascade is a major change: it waits for a person.
    assert proposal.major
    assert proposal.status == ChangeProposal.Status.PENDING
    assert proposal.candidate.cascade != agent.cascade


def test_the_cycle_proposes_a_max_tokens_cap_as_a_minor_change():
    agent = _agent(parameters={"max_tokens": 150}, cascade=[{"provider": "simulated", "model": "sim-small"}])
    add(agent, 40, calls=[C(tier=1, tokens_out=80)])

    proposal = pdca.cycle(agent)

    assert proposal.evidence["kind"] == "max_tokens"
    assert proposal.candidate.parameters == {"max_tokens": 100}
    assert not proposal.major
    assert proposal.status != ChangeProposal.Status.PENDING
