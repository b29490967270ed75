"""The statistics of the replay gate: may a candidate prompt version replace the active one?

Pure functions (numpy + scipy, no models). A replay runs a sample of an agent's past
tasks through both versions, so each task gives a pair: the baseline's (the active
version's) pass or fail, cost, latency and tokens, and the candidate's. The gate
passes when

- the candidate is non-inferior on pass rate: p_candidate - p_baseline > -margin, shown
  by Tango's score test for paired proportions at one-sided alpha; and
- no guardrail regressed: no per-task mean (cost, latency, tokens) rose by more than
  its limit, a significant rise (the lower bound of a paired bootstrap interval of the
  relative change lies above the limit).

The pass counts, in the notation of a paired 2x2 table, are both_pass, only_baseline
(the baseline passes, the candidate fails), only_candidate and neither. Only the
discordant pairs carry information about the difference, which is
(only_candidate - only_baseline) / pairs.

Why Tango (1998) and not the Wald z on the discordant pairs: the Wald variance is
estimated from the observed table, which is zero when no pair is discordant (0/0), and
too small at small counts, which makes the Wald test too eager. Tango's score
statistic estimates the variance under the null hypothesis (the restricted maximum
likelihood estimate of the cells with the difference held at -margin), which is never
zero for 0 < margin < 1, and its size at the margin stays at alpha down to about 30
pairs (tests/experiments/test_paired.py). The test is the one-sided half of a TOST:
p < alpha exactly when -margin lies below Tango's two-sided (1 - 2·alpha) score
interval, the interval that inverts the same statistic.

`noninferiority_p_many` is the vectorised core that `noninferiority_p` wraps; the
benchmark (`bench/stats.py --only-replay-gate`) runs it on simulated replays, so
both use the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Pair:
    """One task replayed through both versions."""

    baseline_pass: bool
    candidate_pass: bool
    baseline_cost: float = 0.0
    candidate_cost: float = 0.0
    baseline_latency_ms: float = 0.0
    candidate_latency_ms: float = 0.0
    baseline_tokens: int = 0
    candidate_tokens: int = 0


DEFAULT_MARGIN = 0.05  # non-inferiority margin (5 points)
DEFAULT_ALPHA = 0.05  # one-sided
DEFAULT_POWER = 0.95
# The share of pairs on which the two versions disagree, assumed when planning a replay.
DEFAULT_DISCORDANCE = 0.15
# The relative increase of a per-task mean that a guardrail allows.
DEFAULT_GUARDRAILS: Mapping[str, float] = {"cost": 0.25, "latency": 0.25, "tokens": 0.25}
# The guardrails' names, the Pair fields they compare and the words a reviewer reads.
GUARDRAIL_FIELDS = {
    "cost": ("baseline_cost", "candidate_cost", "cost per task"),
    "latency": ("baseline_latency_ms", "candidate_latency_ms", "latency per task"),
    "tokens": ("baseline_tokens", "candidate_tokens", "tokens per task"),
}
# Two-sided level of the bootstrap intervals of the guardrails and the deltas: a
# guardrail regresses only on a rise beyond its limit at one-sided 2.5%.
GUARDRAIL_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
# A resample whose baseline mean is 0 while the candidate's is not has no finite
# relative change; it counts as this one (a millionfold rise), so that the percentiles
# interpolate between finite numbers and the figures stay valid JSON.
RELATIVE_CHANGE_CAP = 1e6
# replay_sample_size plans for a tenth less type II error than asked (power 0.955 for
# 0.95). The normal approximation is close here (the exact power of Tango's test at
# its 672 pairs is 0.9520 for the defaults, enumerated over the trinomial), but a
# 20,000-replay check of 0.95 has a standard error of 0.0015, so 0.9520 is under 2 of
# them; at 0.955 planned (693 pairs, exact 0.9572) it is over 4. It also leaves room for
# a discordance guessed a little low: 693 pairs keep 0.95 up to a discordance of 0.157.
POWER_SAFETY = 0.1


def mcnemar_exact_p(only_baseline: int, only_candidate: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs split as a fair coin would
    under "no difference" (2·P(X <= min) for X ~ Binomial(discordant, 1/2), at most 1;
    1.0 when no pair is discordant). Equal to scipy.stats.binomtest(only_candidate,
    discordant, 0.5).pvalue (bench/stats.py checks 2,000 tables to 1e-12)."""
    _check_counts(only_baseline + only_candidate, only_baseline, only_candidate)
    discordant = only_baseline + only_candidate
    if discordant == 0 or only_baseline == only_candidate:
        return 1.0
    from scipy import stats  # at first use: see experiments.stats

    return float(min(1.0, 2 * stats.binom.cdf(min(only_baseline, only_candidate), discordant, 0.5)))


def noninferiority_z_many(
    pairs: np.ndarray, only_baseline: np.ndarray, only_candidate: np.ndarray, margin: float = DEFAULT_MARGIN
) -> np.ndarray:
    """Tango's score statistic for H0: p_candidate - p_baseline = -margin, elementwise:
    Z = (c - b + n·margin) / sqrt(n·(2·q - margin·(1 + margin))), where b = only_baseline,
    c = only_candidate, n = pairs and q is the restricted maximum likelihood estimate of
    P(only_baseline) under H0 (then P(only_candidate) = q - margin), the root of
    2n·q² + B·q + C = 0 with B = -(b + c) - margin·(2n - c + b), C = b·margin·(1 + margin).
    Both roots are positive and the larger one is the estimate: it is never below
    margin, so the variance is at least n·margin·(1 - margin) > 0. NaN where n = 0."""
    _check_margin(margin)
    n, b, c = (np.asarray(a, dtype=float) for a in (pairs, only_baseline, only_candidate))
    m = margin
    with np.errstate(divide="ignore", invalid="ignore"):
        a2 = 2 * n
        big_b = -(b + c) - m * (2 * n - c + b)
        big_c = b * m * (1 + m)
        # B < 0 for n > 0, so -B + sqrt(...) adds two positive numbers (no cancellation).
        q = (-big_b + np.sqrt(np.maximum(big_b * big_b - 4 * a2 * big_c, 0.0))) / (2 * a2)
        q = np.maximum(q, m)
        z = (c - b + n * m) / np.sqrt(n * (2 * q - m * (1 + m)))
    return np.where(n > 0, z, np.nan)


def noninferiority_p_many(
    pairs: np.ndarray, only_baseline: np.ndarray, only_candidate: np.ndarray, margin: float = DEFAULT_MARGIN
) -> np.ndarray:
    """One-sided p-values of Tango's test, elementwise (1.0 where there are no pairs)."""
    from scipy import stats

    z = noninferiority_z_many(pairs, only_baseline, only_candidate, margin)
    return np.where(np.isnan(z), 1.0, stats.norm.sf(np.nan_to_num(z)))


def noninferiority_p(
    *, pairs: int, only_baseline: int, only_candidate: int, margin: float = DEFAULT_MARGIN
) -> float:
    """One-sided p-value for H0: p_candidate - p_baseline <= -margin against
    H1: > -margin on paired pass/fail (Tango's score test; see the module's docstring).
    1.0 for no pairs: nothing is shown."""
    _check_counts(pairs, only_baseline, only_candidate)
    return float(
        noninferiority_p_many(
            np.array([pairs]), np.array([only_baseline]), np.array([only_candidate]), margin
        )[0]
    )


def _resample_indices(pairs: int, resamples: int, seed: int) -> np.ndarray:
    """Rows of task indices drawn with replacement: each row is one bootstrap replay."""
    return np.random.default_rng(seed).integers(0, pairs, size=(resamples, pairs))


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_bootstrap_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    level: float = GUARDRAIL_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean per-task difference (candidate - baseline),
    resampling pairs: both arms of a task stay together, so what a task costs on both
    versions (its length, its difficulty) cancels out of the difference. (0.0, 0.0) for
    no pairs."""
    base, cand = _arms(baseline, candidate)
    _check_bootstrap(level, resamples)
    if not len(base):
        return 0.0, 0.0
    index = _resample_indices(len(base), resamples, seed)
    return _percentile_ci((cand - base)[index].mean(axis=1), level)


def _sigmas(discordance: float, margin: float, difference: float = 0.0) -> tuple[float, float]:
    """Per-pair standard deviations of (only_candidate - only_baseline): under H0 as
    Tango's test estimates it (its restricted estimate at the expected table) and under
    the true difference."""
    expected = (discordance - difference) / 2, (discordance + difference) / 2
    b, c = expected
    a2 = 2.0
    big_b = -(b + c) - margin * (2 - c + b)
    big_c = b * margin * (1 + margin)
    q = max((-big_b + math.sqrt(max(big_b * big_b - 4 * a2 * big_c, 0.0))) / (2 * a2), margin)
    return math.sqrt(2 * q - margin * (1 + margin)), math.sqrt(discordance - difference * difference)


def _check_planning(discordance: float, margin: float, alpha: float) -> None:
    _check_margin(margin)
    if not 0 <= discordance <= 1:
        raise ValueError(f"discordance must lie in [0, 1]: {discordance}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5): {alpha}")


def replay_sample_size(
    *,
    discordance: float = DEFAULT_DISCORDANCE,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> int:
    """Pairs to replay so that the non-inferiority test passes with `power` when the
    versions are truly equal and disagree on `discordance` of the pairs: the normal
    approximation n = ((z_(1-alpha)·sigma0 + z_power'·sigma1) / margin)², rounded up,
    with sigma0, sigma1 from `_sigmas` and power' = 1 - (1 - power)·(1 - POWER_SAFETY)
    (see there). 693 pairs for the defaults."""
    _check_planning(discordance, margin, alpha)
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1): {power}")
    planned = 1 - (1 - power) * (1 - POWER_SAFETY)
    sigma0, sigma1 = _sigmas(discordance, margin)
    from scipy import stats

    n = ((stats.norm.isf(alpha) * sigma0 + stats.norm.ppf(planned) * sigma1) / margin) ** 2
    # 1e-9: a product that lands on a whole number should not round up past it.
    return max(1, math.ceil(n - 1e-9))


def achieved_power(
    pairs: int,
    discordance: float = DEFAULT_DISCORDANCE,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
) -> float:
    """The power of the non-inferiority test on this many pairs when the versions are
    truly equal and disagree on `discordance` of the pairs (the normal approximation
    `replay_sample_size` inverts, without its safety). 0.0 for no pairs."""
    _check_planning(discordance, margin, alpha)
    if pairs <= 0:
        return 0.0
    sigma0, sigma1 = _sigmas(discordance, margin)
    from scipy import stats

    excess = math.sqrt(pairs) * margin - stats.norm.isf(alpha) * sigma0
    if sigma1 == 0:
        # Versions that never disagree: the statistic is sqrt(n·margin / (1 - margin)),
        # a certainty either way.
        return 1.0 if excess > 0 else 0.0
    return float(stats.norm.cdf(excess / sigma1))


@dataclass(frozen=True)
class ReplayStats:
    """Everything the replay gate reports. Rates are shares (0.81), guardrail changes
    are relative (0.40 for +40%), deltas are candidate - baseline per task."""

    pairs: int
    baseline_pass: int
    candidate_pass: int
    both_pass: int
    only_baseline: int
    only_candidate: int
    neither: int
    mcnemar_p: float
    noninferiority_margin: float
    noninferiority_p: float
    cost_delta_ci: tuple[float, float]
    latency_delta_ci: tuple[float, float]
    tokens_delta_ci: tuple[float, float]
    cost_delta_mean: float
    latency_delta_mean: float
    tokens_delta_mean: float
    cost_baseline_mean: float
    latency_baseline_mean: float
    tokens_baseline_mean: float
    discordance: float
    power: float
    # Per guardrail: limit, baseline_mean, candidate_mean, ci (the relative change's
    # interval, None when the baseline mean is 0), delta_ci (the absolute change's
    # interval) and regressed.
    guardrails: dict[str, dict[str, Any]]
    verdict: str
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """A plain dict of JSON types (tuples become lists)."""
        out = asdict(self)
        for key in ("cost_delta_ci", "latency_delta_ci", "tokens_delta_ci", "reasons"):
            out[key] = list(out[key])
        return out


def replay_stats(
    pairs: Sequence[Pair],
    *,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    guardrails: Mapping[str, float] = DEFAULT_GUARDRAILS,
    seed: int = 0,
    planned_discordance: float = DEFAULT_DISCORDANCE,
) -> ReplayStats:
    """The replay gate's figures and verdict: "pass" when non-inferiority is shown
    (noninferiority_p < alpha) and no guardrail regressed.

    A guardrail compares the per-task means of one measure. It regresses when the lower
    bound of the paired bootstrap interval of the relative change
    (mean(candidate) / mean(baseline) - 1, both means from the same resampled tasks)
    exceeds its limit. When the baseline's mean is 0 there is no relative change: the
    guardrail then regresses when the lower bound of the absolute change lies above 0,
    the candidate spending significantly more than nothing, because any rise from zero
    is beyond every relative limit; a measure neither version recorded (all zeros) never
    regresses. No pairs: "fail", with the reason "no pairs"."""
    _check_margin(margin)
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5): {alpha}")
    unknown = sorted(set(guardrails) - set(GUARDRAIL_FIELDS))
    if unknown:
        raise ValueError(f"unknown guardrails {unknown}: the guardrails are {sorted(GUARDRAIL_FIELDS)}")
    if any(limit < 0 for limit in guardrails.values()):
        raise ValueError(
            f"guardrail limits are relative increases and must be at least 0: {dict(guardrails)}"
        )

    n = len(pairs)
    base_pass = np.array([p.baseline_pass for p in pairs], dtype=bool)
    cand_pass = np.array([p.candidate_pass for p in pairs], dtype=bool)
    both = int(np.sum(base_pass & cand_pass))
    only_b = int(np.sum(base_pass & ~cand_pass))
    only_c = int(np.sum(~base_pass & cand_pass))
    p_ni = noninferiority_p(pairs=n, only_baseline=only_b, only_candidate=only_c, margin=margin)
    discordance = (only_b + only_c) / n if n else 0.0
    power = achieved_power(n, discordance or planned_discordance, margin, alpha)

    index = _resample_indices(n, BOOTSTRAP_RESAMPLES, seed) if n else None
    measures: dict[str, dict[str, Any]] = {}
    for name, (base_field, cand_field, _) in GUARDRAIL_FIELDS.items():
        base, cand = _arms([getattr(p, base_field) for p in pairs], [getattr(p, cand_field) for p in pairs])
        measures[name] = _measure(base, cand, index)

    guardrail_report: dict[str, dict[str, Any]] = {}
    for name, limit in guardrails.items():
        m = measures[name]
        relative_ci = m["relative_ci"]
        if relative_ci is not None:
            regressed = relative_ci[0] > limit
        else:
            regressed = m["delta_ci"][0] > 0
        guardrail_report[name] = {
            "limit": float(limit),
            "baseline_mean": m["baseline_mean"],
            "candidate_mean": m["candidate_mean"],
            "ci": None if relative_ci is None else list(relative_ci),
            "delta_ci": list(m["delta_ci"]),
            "regressed": bool(regressed),
        }

    passed = p_ni < alpha and not any(g["regressed"] for g in guardrail_report.values())
    if not n:
        reasons: tuple[str, ...] = ("no pairs",)
        passed = False
    else:
        reasons = (
            _noninferiority_reason(n, only_b, only_c, both, p_ni, margin, alpha, power, discordance),
            *(_guardrail_reason(name, guardrail_report[name]) for name in guardrails),
        )
    return ReplayStats(
        pairs=n,
        baseline_pass=both + only_b,
        candidate_pass=both + only_c,
        both_pass=both,
        only_baseline=only_b,
        only_candidate=only_c,
        neither=n - both - only_b - only_c,
        mcnemar_p=mcnemar_exact_p(only_b, only_c),
        noninferiority_margin=float(margin),
        noninferiority_p=p_ni,
        cost_delta_ci=measures["cost"]["delta_ci"],
        latency_delta_ci=measures["latency"]["delta_ci"],
        tokens_delta_ci=measures["tokens"]["delta_ci"],
        cost_delta_mean=measures["cost"]["delta_mean"],
        latency_delta_mean=measures["latency"]["delta_mean"],
        tokens_delta_mean=measures["tokens"]["delta_mean"],
        cost_baseline_mean=measures["cost"]["baseline_mean"],
        latency_baseline_mean=measures["latency"]["baseline_mean"],
        tokens_baseline_mean=measures["tokens"]["baseline_mean"],
        discordance=discordance,
        power=power,
        guardrails=guardrail_report,
        verdict="pass" if passed else "fail",
        reasons=reasons,
    )


def _measure(base: np.ndarray, cand: np.ndarray, index: np.ndarray | None) -> dict[str, Any]:
    """Means, the delta's interval and the relative change's interval of one measure,
    from the same resampled tasks as every other measure of the replay."""
    if index is None:
        return {
            "baseline_mean": 0.0,
            "candidate_mean": 0.0,
            "delta_mean": 0.0,
            "delta_ci": (0.0, 0.0),
            "relative_ci": None,
        }
    base_means = base[index].mean(axis=1)
    cand_means = cand[index].mean(axis=1)
    baseline_mean = float(base.mean())
    relative_ci = None
    if baseline_mean != 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(
                base_means != 0,
                cand_means / base_means - 1,
                np.where(cand_means > 0, RELATIVE_CHANGE_CAP, 0.0),
            )
        relative_ci = _percentile_ci(np.minimum(relative, RELATIVE_CHANGE_CAP), GUARDRAIL_LEVEL)
    return {
        "baseline_mean": baseline_mean,
        "candidate_mean": float(cand.mean()),
        "delta_mean": float((cand - base).mean()),
        "delta_ci": _percentile_ci(cand_means - base_means, GUARDRAIL_LEVEL),
        "relative_ci": relative_ci,
    }


def _p_text(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def _noninferiority_reason(
    n: int,
    only_b: int,
    only_c: int,
    both: int,
    p: float,
    margin: float,
    alpha: float,
    power: float,
    discordance: float,
) -> str:
    rates = (
        f"the candidate passes {(both + only_c) / n:.1%} vs {(both + only_b) / n:.1%} "
        f"on {n} replayed tasks, {_p_text(p)} against a {margin * 100:g}-point margin"
    )
    if p < alpha:
        return f"non-inferiority shown: {rates}"
    needed = replay_sample_size(discordance=discordance or DEFAULT_DISCORDANCE, margin=margin, alpha=alpha)
    return (
        f"non-inferiority not shown: {rates} (needs p < {alpha:g}); at this size the test had "
        f"{power:.0%} power for versions that are truly equal, about {needed} pairs give "
        f"{DEFAULT_POWER:.0%}"
    )


def _percent(x: float, sign: str = "") -> str:
    """Whole percents, with a decimal under 10% (so that +0.4% does not read +0%)."""
    return f"{x:{sign}.0%}" if abs(x) >= 0.095 else f"{x:{sign}.1%}"


def _guardrail_reason(name: str, g: dict[str, Any]) -> str:
    words = GUARDRAIL_FIELDS[name][2]
    limit = f"{g['limit']:.0%} limit"
    if g["ci"] is None:
        lo, hi = g["delta_ci"]
        if g["candidate_mean"] == 0 and not g["regressed"]:
            return f"{words}: none recorded on either version"
        verdict = "a significant rise from zero" if g["regressed"] else "not significantly above zero"
        return (
            f"{words}: none on the baseline, {g['candidate_mean']:.4g} on the candidate "
            f"({GUARDRAIL_LEVEL:.0%} CI {lo:+.4g} to {hi:+.4g}), {verdict}"
        )
    change = g["candidate_mean"] / g["baseline_mean"] - 1
    lo, hi = g["ci"]
    direction = "up" if change >= 0 else "down"
    head = f"{words} {direction} {_percent(abs(change))} ({GUARDRAIL_LEVEL:.0%} CI {_percent(lo, '+')} to {_percent(hi, '+')})"
    if g["regressed"]:
        return f"{head}, over its {limit}"
    if change > g["limit"]:
        return f"{head}, not significantly over its {limit}"
    return f"{head}, within its {limit}"


def flip_table(items: Sequence[tuple[object, bool, bool]]) -> dict[str, list[Any]]:
    """The tasks whose outcome flipped, in input order: "now_fail" passed on the baseline
    and fail on the candidate, "now_pass" the other way round. Items are
    (key, baseline_pass, candidate_pass)."""
    now_fail = [key for key, base, cand in items if base and not cand]
    now_pass = [key for key, base, cand in items if cand and not base]
    return {"now_fail": now_fail, "now_pass": now_pass}


def _arms(baseline: Sequence[float], candidate: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    base = np.asarray([float(x) for x in baseline], dtype=float)
    cand = np.asarray([float(x) for x in candidate], dtype=float)
    if base.shape != cand.shape:
        raise ValueError(f"baseline and candidate must pair up: {len(base)} vs {len(cand)} values")
    return base, cand


def _check_bootstrap(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1): {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1: {resamples}")


def _check_margin(margin: float) -> None:
    if not 0 < margin < 1:
        raise ValueError(f"margin must lie in (0, 1): {margin}")


def _check_counts(pairs: int, only_baseline: int, only_candidate: int) -> None:
    if only_baseline < 0 or only_candidate < 0 or only_baseline + only_candidate > pairs:
        raise ValueError(
            f"counts must be non-negative with only_baseline + only_candidate <= pairs: "
            f"{only_baseline} + {only_candidate} of {pairs}"
        )
