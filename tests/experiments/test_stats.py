"""The kaizen loop's statistics (experiments/stats.py) against figures computed
independently: published group-sequential boundaries, scipy's multivariate normal
CDF, scipy's chi-square and exact binomial intervals. No database."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as scipy_stats

from experiments import stats
from experiments.stats import ArmCounts, Look, boundaries, evaluate

K5 = (0.2, 0.4, 0.6, 0.8, 1.0)
TWENTY = tuple((k + 1) / 20 for k in range(20))

# Lan-DeMets O'Brien-Fleming-type boundaries, K = 5 equally spaced looks, one-sided
# 0.025 (two-sided 0.05): the figures gsDesign reports for
# gsDesign(k = 5, test.type = 1, alpha = 0.025, sfu = sfLDOF), 4.877, 3.357, 2.680,
# 2.290, 2.031, as quoted in the brief.
PUBLISHED_OBF_K5 = (4.877, 3.357, 2.680, 2.290, 2.031)
# Pocock-type spending alpha·ln(1 + (e - 1)t), K = 5, one-sided 0.025 (gsDesign's
# sfLDPocock). The brief quoted 2.438, 2.427, 2.410, 2.397 and "about 2.391"; the
# last is off: with 2.391 scipy's multivariate normal CDF puts the total crossing
# probability at 0.02493, with 2.386 at 0.02500 (see the test below, which checks
# every boundary against that CDF).
PUBLISHED_POCOCK_K5 = (2.438, 2.427, 2.410, 2.397, 2.386)


def crossing_probabilities(fractions: tuple[float, ...], upper: tuple[float, ...]) -> list[float]:
    """P(Z_j >= c_j for some j <= k | H0) for each k, from scipy's multivariate normal
    CDF with the canonical correlation sqrt(t_i / t_j): independent of the recursion."""
    t = np.array(fractions)
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    probabilities = []
    for k in range(1, len(t) + 1):
        if k == 1:
            probabilities.append(float(scipy_stats.norm.sf(upper[0])))
            continue
        mvn = scipy_stats.multivariate_normal(
            np.zeros(k), corr[:k, :k], abseps=1e-9, releps=1e-7, maxpts=2 * 10**6
        )
        probabilities.append(1 - float(mvn.cdf(np.array(upper[:k]))))
    return probabilities


def efficacy_look(control: tuple[int, int], treatment: tuple[int, int], looks_before: int, **kwargs) -> Look:
    """A look of the efficacy stage after `looks_before` looks of the 20-look plan."""
    return evaluate(
        "efficacy",
        ArmCounts(*control),
        ArmCounts(*treatment),
        history=TWENTY[:looks_before],
        **kwargs,
    )


def test_the_unadjusted_multiplier_is_scipys():
    # Written out in experiments.stats, so that importing it does not import SciPy.
    assert stats.Z_975 == float(scipy_stats.norm.isf(0.025))


def test_obf_boundaries_match_published_k5():
    assert boundaries(K5, "obf", 0.025) == pytest.approx(PUBLISHED_OBF_K5, abs=0.001)


def test_pocock_boundaries_match_published_k5():
    assert boundaries(K5, "pocock", 0.025) == pytest.approx(PUBLISHED_POCOCK_K5, abs=0.001)


@pytest.mark.parametrize("spending", ["obf", "pocock"])
def test_k5_boundaries_spend_exactly_their_alpha(spending):
    spend = stats.obf_spending if spending == "obf" else stats.pocock_spending
    upper = boundaries(K5, spending, 0.025)
    expected = [spend(t, 0.025) for t in K5]
    assert crossing_probabilities(K5, upper) == pytest.approx(expected, rel=1e-4, abs=1e-8)


def test_spending_functions_at_half_and_at_the_end():
    normal = NormalDist()
    z = normal.inv_cdf(1 - 0.0125)
    assert stats.obf_spending(0.5) == pytest.approx(2 * (1 - normal.cdf(z / math.sqrt(0.5))), rel=1e-9)
    assert stats.obf_spending(0.5) == pytest.approx(0.001525, abs=5e-7)
    assert stats.obf_spending(1.0) == pytest.approx(0.025, rel=1e-12)
    assert stats.pocock_spending(0.5, 0.025) == pytest.approx(
        0.025 * math.log(1 + (math.e - 1) / 2), rel=1e-12
    )
    assert stats.pocock_spending(0.5, 0.025) == pytest.approx(0.015503, abs=5e-7)
    assert stats.pocock_spending(1.0, 0.025) == pytest.approx(0.025, rel=1e-12)
    assert stats.obf_spending(0.0) == stats.pocock_spending(0.0, 0.025) == 0.0


@pytest.mark.parametrize(
    ("fractions", "spending", "alpha"),
    [
        ((0.13, 0.37, 0.5, 0.81, 1.0), "obf", stats.ALPHA),
        ((0.13, 0.37, 0.5, 0.81, 1.0), "pocock", stats.ALPHA_HARM),
        ((0.05, 0.1, 0.45, 0.5, 1.0), "obf", stats.ALPHA),
    ],
)
def test_boundaries_for_unequal_looks_match_the_multivariate_normal(fractions, spending, alpha):
    spend = stats.obf_spending if spending == "obf" else stats.pocock_spending
    upper = boundaries(fractions, spending, alpha)
    expected = [spend(t, alpha) for t in fractions]
    assert crossing_probabilities(fractions, upper) == pytest.approx(expected, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("spending", ["obf", "pocock"])
def test_looks_one_task_apart_spend_their_increment(spending):
    # Looks one task per arm apart (max_n 2,000): the kernel between them is narrower
    # than the usual grid, which must refine rather than diverge. The multivariate
    # normal CDF is not accurate at a correlation of 0.9992, so the second look's
    # crossing probability comes from a one-dimensional integral instead.
    spend = stats.obf_spending if spending == "obf" else stats.pocock_spending
    alpha = stats.ALPHA if spending == "obf" else stats.ALPHA_HARM
    t_a, t_b = 0.3, 0.3005
    c_a, c_b = boundaries((t_a, t_b, 0.6, 1.0), spending, alpha)[:2]
    assert scipy_stats.norm.sf(c_a) == pytest.approx(spend(t_a, alpha), rel=1e-9)

    def crossing_at_b(x: float) -> float:
        return scipy_stats.norm.pdf(x) * scipy_stats.norm.sf(
            (c_b * math.sqrt(t_b) - x * math.sqrt(t_a)) / math.sqrt(t_b - t_a)
        )

    increment = integrate.quad(crossing_at_b, -12, c_a, epsabs=1e-15, epsrel=1e-10, limit=500)[0]
    assert increment == pytest.approx(spend(t_b, alpha) - spend(t_a, alpha), rel=1e-3)


def test_a_look_after_every_few_tasks_still_holds_alpha():
    # 381 looks 5 tasks per arm apart: a Monte Carlo of the Brownian motion at those
    # looks crosses as often as the spending says.
    fractions = tuple(np.round(np.arange(100, 2001, 5) / 2000, 6))
    upper = np.array(boundaries(fractions, "obf", stats.ALPHA))
    rng = np.random.default_rng(3)
    steps = np.diff((0.0, *fractions))
    crossed = 0
    paths = 0
    for _ in range(4):
        z = (rng.normal(size=(50_000, len(fractions))) * np.sqrt(steps)).cumsum(axis=1) / np.sqrt(fractions)
        crossed += int((z >= upper).any(axis=1).sum())
        paths += len(z)
    se = math.sqrt(stats.ALPHA * (1 - stats.ALPHA) / paths)
    assert crossed / paths == pytest.approx(stats.ALPHA, abs=4 * se)


def test_boundaries_by_monte_carlo_for_twenty_looks():
    # A second, cruder independent check: Brownian paths observed at the 20 looks.
    efficacy = np.array(boundaries(TWENTY, "obf", stats.ALPHA))
    harm = np.array(boundaries(TWENTY, "pocock", stats.ALPHA_HARM))
    rng = np.random.default_rng(5)
    paths = rng.normal(0, math.sqrt(1 / 20), (400_000, 20)).cumsum(axis=1)
    z = paths / np.sqrt(np.array(TWENTY))
    false_promotion = (z >= efficacy).any(axis=1).mean()
    false_rollback = (z <= -harm).any(axis=1).mean()
    se = math.sqrt(0.05 * 0.95 / len(z))
    assert false_promotion == pytest.approx(stats.ALPHA, abs=4 * se)
    assert false_rollback == pytest.approx(stats.ALPHA_HARM, abs=4 * se)


def test_adding_a_look_leaves_the_earlier_boundaries_alone():
    assert boundaries(TWENTY[:7]) == boundaries(TWENTY)[:7]


@pytest.mark.parametrize("fractions", [(), (0.0, 1.0), (0.5, 0.5), (0.6, 0.4), (0.5, 1.2)])
def test_boundaries_reject_a_schedule_that_is_not_increasing_within_0_1(fractions):
    with pytest.raises(ValueError, match="fractions"):
        boundaries(fractions)


def test_promotes_when_the_treatment_crosses_the_efficacy_boundary():
    look = efficacy_look((1000, 700), (1000, 780), looks_before=9)
    assert look.decision == "promote"
    assert look.fraction == 0.5
    assert look.efficacy_boundary == pytest.approx(boundaries(TWENTY[:10])[-1])
    assert look.z >= look.efficacy_boundary
    assert "treatment better" in look.reason


def test_continues_when_the_lift_has_not_crossed_yet():
    look = efficacy_look((1000, 700), (1000, 740), looks_before=9)
    assert look.decision == "continue"
    assert 0 < look.z < look.efficacy_boundary


def test_rolls_back_when_the_treatment_is_significantly_worse():
    look = efficacy_look((1000, 700), (1000, 620), looks_before=9)
    assert look.decision == "rollback"
    assert look.harm_boundary == pytest.approx(boundaries(TWENTY[:10], "pocock", stats.ALPHA_HARM)[-1])
    assert look.z <= -look.harm_boundary


def test_stops_for_futility_when_conditional_power_is_low_from_half_the_information():
    # z about -1.5: not harm (-2.33), but far from a 90%-power alternative's path.
    halfway = efficacy_look((1000, 700), (1000, 670), looks_before=9)
    assert halfway.decision == "futility"
    assert -halfway.harm_boundary < halfway.z < 0
    assert "conditional power" in halfway.reason
    # The same trend before t = 0.5 goes on.
    earlier = efficacy_look((900, 630), (900, 603), looks_before=8)
    assert earlier.fraction == 0.45
    assert earlier.decision == "continue"


def test_a_treatment_on_course_for_the_design_alternative_is_not_futile():
    look = efficacy_look((1000, 700), (1000, 725), looks_before=9)
    assert look.decision == "continue"


def test_reaching_the_maximum_sample_without_crossing_ends_the_experiment():
    look = efficacy_look((2000, 1400), (2000, 1450), looks_before=19)
    assert look.fraction == 1.0
    assert look.decision == "futility"
    assert "without crossing" in look.reason


def test_no_decision_below_100_per_arm():
    look = evaluate("efficacy", ArmCounts(99, 40), ArmCounts(99, 99))
    assert look.decision == "continue"
    assert look.efficacy_boundary is None and look.harm_boundary is None
    assert look.z > 5
    assert "no decision before 100 per arm" in look.reason


def test_an_arm_without_tasks_has_no_rate_in_the_reason():
    look = evaluate("canary", ArmCounts(4, 4), ArmCounts(0, 0))
    assert "no tasks yet (treatment) vs 100.0% (control, 4/4)" in look.reason
    assert "0/0" not in look.reason and "0.0% (treatment" not in look.reason


def test_a_canary_never_promotes_but_rolls_back():
    better = evaluate("canary", ArmCounts(1900, 1330), ArmCounts(100, 95), expected_share=0.05)
    assert better.decision == "continue"
    assert better.efficacy_boundary is None
    assert better.z > 5
    worse = evaluate("canary", ArmCounts(1900, 1330), ArmCounts(100, 50), expected_share=0.05)
    assert worse.decision == "rollback"


def test_a_canary_at_its_full_size_still_only_continues():
    look = evaluate("canary", ArmCounts(38000, 26600), ArmCounts(2000, 1500), expected_share=0.05)
    assert look.fraction == 1.0
    assert look.decision == "continue"


def test_the_guard_blocks_a_promotion_when_the_lower_bound_is_too_low():
    # A person promoting after a small canary: 36/60 against a 70% control.
    allowed, lower = stats.promotion_guard(ArmCounts(1900, 1330), ArmCounts(60, 36))
    assert not allowed
    assert lower == pytest.approx(scipy_stats.binomtest(36, 60).proportion_ci(0.95, method="exact").low)
    assert stats.promotion_guard(ArmCounts(1900, 1330), ArmCounts(1000, 700))[0]


def test_the_guard_blocks_evaluate_promotion(monkeypatch):
    # At 100+ per arm a crossing implies the 5-point guard (stats.promotion_guard's
    # docstring), so a stricter margin stands in for data that would fail it.
    look = efficacy_look((1000, 700), (1000, 780), looks_before=9)
    assert look.decision == "promote"
    monkeypatch.setattr(stats, "PROMOTE_MARGIN", -0.06)
    blocked = efficacy_look((1000, 700), (1000, 780), looks_before=9)
    assert blocked.decision == "continue"
    assert blocked.z >= blocked.efficacy_boundary
    assert "promote blocked by the guard" in blocked.reason


def test_treatment_lower_bound_is_the_exact_one_sided_97_5_bound():
    successes = np.array([0, 1, 36, 70, 99, 100])
    n = np.array([100, 100, 60, 100, 100, 100])
    expected = [
        scipy_stats.binomtest(int(s), int(m)).proportion_ci(0.95, method="exact").low
        for s, m in zip(successes, n, strict=True)
    ]
    assert stats.treatment_lower_bound(successes, n) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_srm_pvalue_is_scipys_chi_square():
    assert stats.srm_pvalue(1057, 943, 0.5) == pytest.approx(scipy_stats.chisquare([1057, 943]).pvalue)
    assert stats.srm_pvalue(1880, 120, 0.05) == pytest.approx(
        scipy_stats.chisquare([1880, 120], [1900, 100]).pvalue
    )


def test_srm_pauses_below_0_001():
    assert stats.srm_pvalue(1080, 920, 0.5) < 0.001
    look = evaluate("efficacy", ArmCounts(1080, 756), ArmCounts(920, 736))
    assert look.decision == "pause_srm"
    assert look.srm_p < stats.SRM_P
    assert "sample ratio mismatch" in look.reason


def test_srm_does_not_pause_at_p_0_01():
    assert stats.srm_pvalue(1057, 943, 0.5) == pytest.approx(0.0108, abs=0.0005)
    look = evaluate("efficacy", ArmCounts(1057, 740), ArmCounts(943, 660))
    assert look.decision != "pause_srm"


def test_srm_pauses_a_canary_against_its_5_percent_share():
    # 10% of the traffic went to the treatment where 5% should have.
    look = evaluate("canary", ArmCounts(1800, 1260), ArmCounts(200, 140), expected_share=0.05)
    assert look.decision == "pause_srm"
    assert (
        evaluate("canary", ArmCounts(1900, 1330), ArmCounts(100, 70), expected_share=0.05).decision
        == "continue"
    )


@pytest.mark.parametrize(
    ("control", "treatment", "decision"),
    [
        ((1000, 700), (1000, 780), "promote"),
        ((1000, 700), (1000, 620), "rollback"),
        ((1000, 700), (1000, 740), "continue"),
    ],
)
def test_the_adjusted_interval_contains_the_difference_and_agrees_with_the_decision(
    control, treatment, decision
):
    look = efficacy_look(control, treatment, looks_before=9)
    assert look.decision == decision
    assert look.ci_low < look.diff < look.ci_high
    assert look.diff == pytest.approx(treatment[1] / treatment[0] - control[1] / control[0])
    # Repeated confidence interval: the boundary times the unpooled SE on each side.
    se = math.sqrt(0.7 * 0.3 / 1000 + (treatment[1] / 1000) * (1 - treatment[1] / 1000) / 1000)
    assert look.ci_low == pytest.approx(look.diff - look.efficacy_boundary * se)
    assert look.ci_high == pytest.approx(look.diff + look.harm_boundary * se)
    assert (look.ci_low > 0) == (decision == "promote")
    assert (look.ci_high < 0) == (decision == "rollback")


def test_a_look_without_new_data_keeps_its_boundary():
    first = efficacy_look((1000, 700), (1000, 740), looks_before=9)
    again = efficacy_look((1000, 700), (1000, 740), looks_before=9, max_n=2000)
    repeated = evaluate("efficacy", ArmCounts(1000, 700), ArmCounts(1000, 740), history=(*TWENTY[:9], 0.5))
    assert first.efficacy_boundary == again.efficacy_boundary == repeated.efficacy_boundary


def test_looks_below_100_per_arm_spend_no_alpha():
    with_small_looks = evaluate(
        "efficacy", ArmCounts(200, 140), ArmCounts(200, 150), history=(0.01, 0.03, 0.05)
    )
    without = evaluate("efficacy", ArmCounts(200, 140), ArmCounts(200, 150), history=(0.05,))
    assert with_small_looks.efficacy_boundary == without.efficacy_boundary == boundaries((0.05, 0.1))[-1]


def test_to_json_round_trips():
    look = efficacy_look((1000, 700), (1000, 780), looks_before=9)
    data = json.loads(json.dumps(look.to_json(), allow_nan=False))
    assert Look.from_json(data) == look
    assert Look(**data) == look
    early = evaluate("efficacy", ArmCounts(10, 5), ArmCounts(10, 6))
    assert Look.from_json(json.loads(json.dumps(early.to_json(), allow_nan=False))) == early


def test_evaluate_is_evaluate_many_one_experiment_at_a_time():
    rng = np.random.default_rng(11)
    n = np.full(300, 600)
    s_c = rng.binomial(600, 0.7, 300)
    s_t = rng.binomial(600, 0.7, 300) + rng.integers(-60, 60, 300)
    s_t = np.clip(s_t, 0, 600)
    many = stats.evaluate_many("efficacy", n, s_c, n, s_t, history=TWENTY[:5])
    assert set(many.decision) >= {stats.PROMOTE, stats.ROLLBACK, stats.CONTINUE}
    for i in range(len(n)):
        look = evaluate(
            "efficacy", ArmCounts(600, int(s_c[i])), ArmCounts(600, int(s_t[i])), history=TWENTY[:5]
        )
        assert look.decision == stats.DECISIONS[many.decision[i]]
        assert look.z == pytest.approx(many.z[i])


def test_evaluate_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="stage"):
        evaluate("rollout", ArmCounts(100, 70), ArmCounts(100, 70))
