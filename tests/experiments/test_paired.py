"""The replay gate's statistics (experiments/paired.py) against figures computed
independently: scipy's exact binomial test and a hand enumeration, a restricted
maximum likelihood found by scipy.optimize, simulated replays, a bootstrap written
as a loop. No database."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import optimize, special
from scipy import stats as scipy_stats

from experiments import paired
from experiments.paired import (
    Pair,
    achieved_power,
    flip_table,
    mcnemar_exact_p,
    noninferiority_p,
    noninferiority_p_many,
    noninferiority_z_many,
    paired_bootstrap_ci,
    replay_sample_size,
    replay_stats,
)

REPORT_KEYS = {
    "pairs",
    "baseline_pass",
    "candidate_pass",
    "both_pass",
    "only_baseline",
    "only_candidate",
    "neither",
    "mcnemar_p",
    "noninferiority_margin",
    "noninferiority_p",
    "cost_delta_ci",
    "latency_delta_ci",
    "tokens_delta_ci",
    "cost_delta_mean",
    "latency_delta_mean",
    "tokens_delta_mean",
    "cost_baseline_mean",
    "latency_baseline_mean",
    "tokens_baseline_mean",
    "discordance",
    "power",
    "guardrails",
    "verdict",
    "reasons",
}


def simulate_rejections(
    pairs: int, discordance: float, difference: float, margin: float, replays: int, seed: int
) -> float:
    """Share of simulated replays in which the test shows non-inferiority at 0.05,
    when the candidate truly differs by `difference` and the versions disagree on
    `discordance` of the pairs."""
    only_baseline = (discordance - difference) / 2
    only_candidate = (discordance + difference) / 2
    counts = np.random.default_rng(seed).multinomial(
        pairs, [only_baseline, only_candidate, 1 - discordance], size=replays
    )
    p = noninferiority_p_many(np.full(replays, pairs), counts[:, 0], counts[:, 1], margin)
    return float(np.mean(p < 0.05))


def three_se(rate: float, replays: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / replays)


# McNemar


@pytest.mark.parametrize(
    "only_baseline, only_candidate",
    [(0, 1), (1, 0), (3, 3), (0, 12), (7, 2), (2, 7), (15, 16), (40, 60), (113, 87), (0, 300), (500, 499)],
)
def test_mcnemar_equals_scipy_binomtest(only_baseline, only_candidate):
    expected = scipy_stats.binomtest(only_candidate, only_baseline + only_candidate, 0.5).pvalue
    assert mcnemar_exact_p(only_baseline, only_candidate) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("only_baseline, only_candidate", [(0, 5), (9, 1), (4, 4), (6, 11), (20, 31)])
def test_mcnemar_equals_a_hand_enumeration_of_the_binomial(only_baseline, only_candidate):
    """Two-sided: every split of the discordant pairs no more likely than the one seen,
    in exact arithmetic."""
    n = only_baseline + only_candidate
    probability = [Fraction(math.comb(n, k), 2**n) for k in range(n + 1)]
    seen = probability[only_candidate]
    expected = sum(p for p in probability if p <= seen)
    assert mcnemar_exact_p(only_baseline, only_candidate) == pytest.approx(float(min(expected, 1)), abs=1e-14)


def test_mcnemar_is_one_without_discordant_pairs():
    assert mcnemar_exact_p(0, 0) == 1.0


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact_p(-1, 3)


# Tango's score test


def brute_force_z(pairs: int, only_baseline: int, only_candidate: int, margin: float) -> float:
    """The score statistic from its definition, (d - delta0) / SE0, with SE0 from the
    four cell probabilities that maximise the multinomial likelihood subject to
    P(only_candidate) - P(only_baseline) = delta0 = -margin, found by SLSQP over all
    four cells from several starting points."""
    both_or_neither = pairs - only_baseline - only_candidate
    # Cells: both pass, only baseline, only candidate, neither (concordant counts split
    # evenly: only their sum enters the likelihood of the difference).
    counts = np.array([both_or_neither / 2, only_baseline, only_candidate, both_or_neither / 2])
    delta0 = -margin

    def negative_log_likelihood(pi: np.ndarray) -> float:
        return -float(np.sum(special.xlogy(counts, np.maximum(pi, 1e-300))))

    constraints = [
        {"type": "eq", "fun": lambda pi: pi.sum() - 1},
        {"type": "eq", "fun": lambda pi: pi[2] - pi[1] - delta0},
    ]
    best = None
    for start_b in (margin + 0.01, 0.3, 0.5):
        rest = max(1 - 2 * start_b - delta0, 0.02)
        start = np.array([rest / 2, start_b, start_b + delta0, rest / 2])
        result = optimize.minimize(
            negative_log_likelihood,
            start,
            method="SLSQP",
            bounds=[(0, 1)] * 4,
            constraints=constraints,
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        # With a cell at 0 (every pair discordant, say) SLSQP may stop at the optimum
        # without claiming success; a point that keeps the constraints will do.
        feasible = abs(result.x.sum() - 1) < 1e-9 and abs(result.x[2] - result.x[1] - delta0) < 1e-9
        if feasible and (best is None or result.fun < best.fun):
            best = result
    assert best is not None
    pi_b, pi_c = best.x[1], best.x[2]
    variance = (pi_b + pi_c - (pi_c - pi_b) ** 2) / pairs
    return ((only_candidate - only_baseline) / pairs - delta0) / math.sqrt(variance)


@pytest.mark.parametrize(
    "pairs, only_baseline, only_candidate, margin",
    [
        (100, 0, 0, 0.05),  # no discordant pair
        (30, 0, 0, 0.10),
        (40, 25, 15, 0.05),  # every pair discordant
        (40, 0, 40, 0.05),
        (40, 40, 0, 0.05),
        (200, 12, 9, 0.05),
        (30, 3, 0, 0.05),
        (30, 0, 3, 0.05),
        (693, 60, 44, 0.05),
        (500, 40, 35, 0.20),
    ],
)
def test_tango_statistic_equals_a_brute_force_restricted_mle(pairs, only_baseline, only_candidate, margin):
    z = float(noninferiority_z_many(pairs, only_baseline, only_candidate, margin))
    assert z == pytest.approx(brute_force_z(pairs, only_baseline, only_candidate, margin), abs=1e-5)
    p = noninferiority_p(
        pairs=pairs, only_baseline=only_baseline, only_candidate=only_candidate, margin=margin
    )
    assert p == pytest.approx(scipy_stats.norm.sf(z), abs=1e-15)


def test_noninferiority_without_discordant_pairs_is_finite_and_shrinks_with_size():
    """No disagreement at all: Z = sqrt(n·margin / (1 - margin)), never 0/0."""
    p_small = noninferiority_p(pairs=20, only_baseline=0, only_candidate=0)
    p_large = noninferiority_p(pairs=200, only_baseline=0, only_candidate=0)
    assert p_small == pytest.approx(scipy_stats.norm.sf(math.sqrt(20 * 0.05 / 0.95)))
    assert p_large < 0.05 < p_small


def test_noninferiority_p_is_one_without_pairs():
    assert noninferiority_p(pairs=0, only_baseline=0, only_candidate=0) == 1.0


def test_noninferiority_p_rejects_impossible_counts_and_margins():
    with pytest.raises(ValueError, match="<= pairs"):
        noninferiority_p(pairs=10, only_baseline=6, only_candidate=5)
    with pytest.raises(ValueError, match="margin"):
        noninferiority_p(pairs=10, only_baseline=1, only_candidate=1, margin=0)


def test_a_worse_candidate_gets_a_larger_p():
    better = noninferiority_p(pairs=300, only_baseline=20, only_candidate=20)
    worse = noninferiority_p(pairs=300, only_baseline=30, only_candidate=15)
    assert better < 0.05 < worse


@pytest.mark.parametrize(
    "pairs, discordance, margin", [(40, 0.15, 0.05), (300, 0.15, 0.05), (150, 0.40, 0.10), (693, 0.15, 0.05)]
)
def test_size_at_the_margin_is_alpha(pairs, discordance, margin):
    """A candidate exactly `margin` worse passes at most alpha of the time (plus
    simulation error), also at small sizes."""
    replays = 40_000
    rate = simulate_rejections(pairs, discordance, -margin, margin, replays, seed=pairs)
    assert rate <= 0.05 + three_se(0.05, replays)


def test_the_wald_test_would_be_too_eager_where_tango_holds():
    """Why not the Wald z on the observed table: at 40 pairs it passes a candidate
    exactly at the margin well above alpha (this test guards the reason the module
    gives; the size test above shows Tango's at the same point)."""
    replays, pairs, margin = 40_000, 40, 0.05
    counts = np.random.default_rng(7).multinomial(pairs, [0.10, 0.05, 0.85], size=replays)
    b, c = counts[:, 0], counts[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (c - b) / pairs
        wald = (d + margin) / np.sqrt(((b + c) / pairs - d**2) / pairs)
    wald_rate = float(np.mean(np.nan_to_num(wald, nan=np.inf, posinf=np.inf) > scipy_stats.norm.isf(0.05)))
    assert wald_rate > 0.05 + three_se(0.05, replays)


# Planning


def test_power_at_the_planned_size_by_simulation():
    pairs = replay_sample_size()
    replays = 20_000
    rate = simulate_rejections(pairs, paired.DEFAULT_DISCORDANCE, 0.0, paired.DEFAULT_MARGIN, replays, seed=1)
    assert rate >= paired.DEFAULT_POWER
    assert rate == pytest.approx(achieved_power(pairs), abs=three_se(0.95, replays) + 0.005)


def test_sample_size_formula_matches_a_direct_simulation():
    """Another design (discordance 0.3, margin 10 points, 80% power): the simulated
    power at the formula's size is the planned one, and at 70% of that size it is
    clearly lower, so a formula that asked for too many pairs would fail too."""
    kwargs = dict(discordance=0.3, margin=0.10, alpha=0.05)
    pairs = replay_sample_size(power=0.80, **kwargs)
    planned = 1 - 0.20 * (1 - paired.POWER_SAFETY)
    replays = 20_000
    rate = simulate_rejections(pairs, 0.3, 0.0, 0.10, replays, seed=2)
    assert rate == pytest.approx(planned, abs=three_se(planned, replays) + 0.01)
    smaller = simulate_rejections(int(0.7 * pairs), 0.3, 0.0, 0.10, replays, seed=3)
    assert smaller < 0.80 - 0.03


def test_achieved_power_inverts_the_sample_size():
    pairs = replay_sample_size(power=0.90)
    assert achieved_power(pairs - 1) < 1 - 0.10 * (1 - paired.POWER_SAFETY) <= achieved_power(pairs)
    assert achieved_power(0) == 0.0
    assert achieved_power(100) < achieved_power(400) < achieved_power(1600)


def test_more_disagreement_needs_more_pairs():
    assert replay_sample_size(discordance=0.05) < replay_sample_size() < replay_sample_size(discordance=0.30)


def test_versions_that_never_disagree_need_only_enough_pairs_for_the_margin():
    # Z = sqrt(n·m / (1 - m)) > z_0.95 from n > 1.645²·19 = 51.4.
    assert replay_sample_size(discordance=0.0) == 52
    assert achieved_power(52, discordance=0.0) == 1.0
    assert achieved_power(51, discordance=0.0) == 0.0


# Bootstrap


def slow_bootstrap_ci(baseline, candidate, level, resamples, seed):
    """The same resampled tasks (rows of indices from the seeded generator), means and
    percentiles written out (numpy's default: linear between order statistics)."""
    n = len(baseline)
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = []
    for row in index:
        total = 0.0
        for i in row:
            total += candidate[i] - baseline[i]
        means.append(total / n)
    means.sort()

    def percentile(q):
        position = q * (len(means) - 1)
        low = math.floor(position)
        high = min(low + 1, len(means) - 1)
        return means[low] + (means[high] - means[low]) * (position - low)

    return percentile((1 - level) / 2), percentile((1 + level) / 2)


def test_bootstrap_equals_a_slow_loop_with_the_same_seed():
    rng = np.random.default_rng(11)
    baseline = list(rng.gamma(2.0, 0.01, size=57))
    candidate = list(rng.gamma(2.0, 0.012, size=57))
    fast = paired_bootstrap_ci(baseline, candidate, level=0.9, resamples=500, seed=5)
    slow = slow_bootstrap_ci(baseline, candidate, 0.9, 500, 5)
    assert fast == pytest.approx(slow, abs=1e-12)
    assert fast != paired_bootstrap_ci(baseline, candidate, level=0.9, resamples=500, seed=6)


def test_bootstrap_matches_the_normal_interval_of_a_known_distribution():
    """Differences drawn from N(0.3, 1): the mean's 95% interval is about
    mean ± 1.96/sqrt(n), which a percentile bootstrap reproduces at n = 2,000."""
    rng = np.random.default_rng(3)
    baseline = rng.normal(5, 1, size=2000)
    candidate = baseline + rng.normal(0.3, 1, size=2000)
    low, high = paired_bootstrap_ci(list(baseline), list(candidate), resamples=4000, seed=1)
    d = candidate - baseline
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_bootstrap_resamples_pairs_not_arms():
    """A candidate that costs exactly 2 more on every task: resampling pairs gives an
    interval of no width around 2, however much the tasks differ from each other;
    resampling the arms separately would not."""
    baseline = [1.0, 50.0, 3.0, 400.0, 7.0, 12.0]
    candidate = [b + 2 for b in baseline]
    assert paired_bootstrap_ci(baseline, candidate) == pytest.approx((2.0, 2.0))


def test_bootstrap_of_no_pairs_is_zero_and_unpaired_input_is_refused():
    assert paired_bootstrap_ci([], []) == (0.0, 0.0)
    with pytest.raises(ValueError, match="pair up"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


# The gate


def pairs_with(
    n: int,
    *,
    both: int,
    only_baseline: int,
    only_candidate: int,
    cost=(0.010, 0.010),
    latency=(1000.0, 1000.0),
    tokens=(500, 500),
    seed: int = 0,
) -> list[Pair]:
    """n pairs with these pass counts; each measure varies from task to task
    (gamma-distributed around the given means, the candidate's scaled per task)."""
    rng = np.random.default_rng(seed)
    outcomes = (
        [(True, True)] * both
        + [(True, False)] * only_baseline
        + [(False, True)] * only_candidate
        + [(False, False)] * (n - both - only_baseline - only_candidate)
    )
    size = rng.gamma(4.0, 0.25, size=n)  # a task's own size, shared by both versions
    noise = rng.normal(1.0, 0.05, size=(3, n))
    return [
        Pair(
            baseline_pass=bp,
            candidate_pass=cp,
            baseline_cost=cost[0] * size[i],
            candidate_cost=cost[1] * size[i] * noise[0, i],
            baseline_latency_ms=latency[0] * size[i],
            candidate_latency_ms=latency[1] * size[i] * noise[1, i],
            baseline_tokens=round(tokens[0] * size[i]),
            candidate_tokens=round(tokens[1] * size[i] * noise[2, i]),
        )
        for i, (bp, cp) in enumerate(outcomes)
    ]


def test_an_equal_candidate_passes_the_gate():
    pairs = pairs_with(800, both=620, only_baseline=40, only_candidate=40)
    result = replay_stats(pairs)
    assert result.verdict == "pass"
    assert (result.both_pass, result.only_baseline, result.only_candidate, result.neither) == (
        620,
        40,
        40,
        100,
    )
    assert result.baseline_pass == result.candidate_pass == 660
    assert result.discordance == pytest.approx(0.1)
    assert result.noninferiority_p < 0.05
    assert result.mcnemar_p == 1.0
    assert result.reasons[0].startswith("non-inferiority shown: the candidate passes 82.5% vs 82.5%")
    assert not any(g["regressed"] for g in result.guardrails.values())


def test_a_worse_candidate_fails_on_pass_rate():
    pairs = pairs_with(400, both=280, only_baseline=50, only_candidate=20)
    result = replay_stats(pairs)
    assert result.verdict == "fail"
    assert result.noninferiority_p > 0.05
    assert result.mcnemar_p == pytest.approx(scipy_stats.binomtest(20, 70, 0.5).pvalue)
    assert result.reasons[0].startswith("non-inferiority not shown: the candidate passes 75.0% vs 82.5%")


def test_a_small_replay_reports_its_low_power():
    pairs = pairs_with(60, both=45, only_baseline=5, only_candidate=5)
    result = replay_stats(pairs)
    assert result.verdict == "fail"
    assert result.power == pytest.approx(achieved_power(60, 10 / 60))
    assert result.power < 0.5
    assert "power" in result.reasons[0]


def test_a_cost_rise_beyond_its_limit_fails_the_gate():
    pairs = pairs_with(800, both=620, only_baseline=40, only_candidate=40, cost=(0.010, 0.014))
    result = replay_stats(pairs)
    cost = result.guardrails["cost"]
    assert cost["regressed"] is True
    assert cost["ci"][0] > 0.25
    assert cost["ci"][0] < 0.40 < cost["ci"][1]
    assert result.verdict == "fail"
    assert result.noninferiority_p < 0.05  # it failed on cost alone
    assert any(
        r.startswith("cost per task up 40% (95% CI +") and r.endswith("over its 25% limit")
        for r in result.reasons
    )


def test_a_rise_above_the_limit_that_is_not_significant_does_not_fail():
    """+30% on 30 tasks, all of it from 4 tasks that cost 3.25 times as much: the point
    estimate is over the 25% limit, but the interval's lower bound is not."""
    pairs = [Pair(True, True, 0.01, 0.01 * (3.25 if i < 4 else 1.0)) for i in range(30)]
    result = replay_stats(pairs)
    cost = result.guardrails["cost"]
    assert cost["ci"][0] < 0.25 < cost["candidate_mean"] / cost["baseline_mean"] - 1
    assert cost["regressed"] is False


def test_cheaper_and_faster_candidates_pass_their_guardrails():
    pairs = pairs_with(
        800, both=620, only_baseline=40, only_candidate=40, cost=(0.010, 0.007), latency=(900, 600)
    )
    result = replay_stats(pairs)
    assert result.verdict == "pass"
    assert result.guardrails["cost"]["ci"][1] < 0
    assert result.cost_delta_mean < 0
    assert any(r.startswith("latency per task down 33%") for r in result.reasons)


def test_a_tighter_limit_catches_a_smaller_rise():
    pairs = pairs_with(800, both=620, only_baseline=40, only_candidate=40, latency=(1000.0, 1150.0))
    assert replay_stats(pairs).guardrails["latency"]["regressed"] is False
    strict = replay_stats(pairs, guardrails={"cost": 0.25, "latency": 0.10, "tokens": 0.25})
    assert strict.guardrails["latency"]["regressed"] is True
    assert strict.verdict == "fail"


def test_a_measure_the_baseline_never_spent_is_compared_absolutely():
    """Tokens the baseline did not record and the candidate spends: any rise from zero
    is beyond every relative limit, so a significant one regresses; none on either
    version never does."""
    spends = [Pair(True, True, 0.01, 0.01, 100, 100, 0, 300 + i) for i in range(50)]
    result = replay_stats(spends)
    tokens = result.guardrails["tokens"]
    assert tokens["ci"] is None
    assert tokens["delta_ci"][0] > 0
    assert tokens["regressed"] is True
    assert result.verdict == "fail"
    assert "tokens per task: none on the baseline" in " ".join(result.reasons)

    silent = replay_stats([Pair(True, True, 0.01, 0.01, 100, 100) for _ in range(50)])
    assert silent.guardrails["tokens"]["regressed"] is False
    assert "tokens per task: none recorded on either version" in silent.reasons


def test_the_report_deltas_are_the_paired_bootstrap_of_the_same_seed():
    pairs = pairs_with(300, both=200, only_baseline=20, only_candidate=25, cost=(0.01, 0.011), seed=9)
    result = replay_stats(pairs, seed=3)
    expected = paired_bootstrap_ci(
        [p.baseline_cost for p in pairs], [p.candidate_cost for p in pairs], seed=3
    )
    assert result.cost_delta_ci == pytest.approx(expected, abs=1e-15)
    assert result.cost_delta_mean == pytest.approx(
        np.mean([p.candidate_cost - p.baseline_cost for p in pairs])
    )
    assert result.cost_baseline_mean == pytest.approx(np.mean([p.baseline_cost for p in pairs]))


def test_no_pairs_fail_with_the_reason():
    result = replay_stats([])
    assert result.verdict == "fail"
    assert result.reasons == ("no pairs",)
    assert result.pairs == 0 and result.noninferiority_p == 1.0 and result.power == 0.0
    assert json.dumps(result.as_json(), allow_nan=False)


def test_the_report_is_json_with_exactly_its_keys():
    report = replay_stats(pairs_with(200, both=150, only_baseline=10, only_candidate=12)).as_json()
    assert set(report) == REPORT_KEYS
    assert set(report["guardrails"]["cost"]) == {
        "limit",
        "baseline_mean",
        "candidate_mean",
        "ci",
        "delta_ci",
        "regressed",
    }
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_unknown_guardrails_are_refused():
    with pytest.raises(ValueError, match="unknown guardrails \\['quality'\\]"):
        replay_stats([Pair(True, True)], guardrails={"quality": 0.1})


# Flips


def test_flip_table_lists_the_flipped_tasks_in_input_order():
    items = [
        ("t3", True, False),
        ("t1", False, True),
        ("t2", True, True),
        ("t9", True, False),
        ("t4", False, False),
    ]
    assert flip_table(items) == {"now_fail": ["t3", "t9"], "now_pass": ["t1"]}
    assert flip_table([]) == {"now_fail": [], "now_pass": []}
