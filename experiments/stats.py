"""The statistics of the kaizen loop: when an experiment promotes, rolls back or stops.

Pure functions (numpy + scipy, no models). The product calls `evaluate` at every look;
the benchmark (`bench/stats.py`) calls `evaluate_many`, the vectorised core that
`evaluate` itself wraps, so both run the same rules with the same boundaries.

The test, at each look k with information fraction t_k = min(n_control, n_treatment) / max_n:

- Statistic: the pooled two-proportion z (the score statistic), Z = (p_t - p_c) / SE0
  with SE0^2 = p(1-p)·(1/n_t + 1/n_c), p the rate of both arms together. Pooled because
  the error rates to hold are those at p_t = p_c, where this SE is the right one: over
  4 million simulated A/A experiments (70%, 20 looks to 2,000 per arm) the boundaries
  below promote 0.02501 of them with the pooled z and 0.02513 (± 0.00008) with the
  unpooled Wald z, whose SE is never larger at equal arms. Away from H0 the two differ
  by about 0.1% at 70% vs 74%, so power is the same.
- Interval: the repeated confidence interval diff ± boundary·SE with the unpooled SE,
  which is right for the difference wherever it lies. At equal arms the pooled SE is at
  least the unpooled one, so a promotion's interval lies above 0 and a rollback's below.
- Promote (efficacy): Z_k >= c_k, with c_k from Lan-DeMets O'Brien-Fleming-type alpha
  spending at one-sided ALPHA, computed exactly for the looks actually taken.
- Roll back (harm): Z_k <= -h_k, with h_k from Pocock-type spending at one-sided
  ALPHA_HARM (see there). The canary looks only for harm.
- Futility (efficacy stage only, non-binding): from t >= 0.5, stop when the conditional
  power under the design alternative is below FUTILITY_POWER; and at t = 1 without a
  crossing, the experiment is over.
- No decision below MIN_PER_ARM per arm; never promote while the treatment's exact
  one-sided 97.5% lower bound is below the control's rate minus PROMOTE_MARGIN; pause on
  a sample-ratio mismatch (chi-square p < SRM_P).

Both boundaries are computed as one-sided problems, ignoring the other boundary: a
stop at the other boundary can only lower the chance of a false crossing, so alpha
stays an upper bound whatever the product does after a rollback or a futility stop.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

# SciPy is imported where it is used, not here: importing it costs about 0.7 s of
# CPU, which every web server, worker and management command paid at start
# (experiments.plans imports this module) whether or not it ever looked at an
# experiment.

ALPHA = 0.025
# A rollback is the safe direction: the control is the prompt that ran before, and a
# change rolled back by mistake can be proposed again, while a harmful change that is
# not rolled back keeps failing live tasks. So the harm test may err twice as often as
# the promotion test (a neutral change is rolled back in 5% of experiments, a harmful
# one is caught sooner: the Pocock boundary over 20 looks is about 2.3 instead of 2.6).
ALPHA_HARM = 0.05
MIN_PER_ARM = 100
DEFAULT_MAX_N = 2000
PROMOTE_MARGIN = 0.05
SRM_P = 0.001
# Futility: conditional power under the design alternative, the effect that a
# fixed-size test at max_n per arm detects with DESIGN_POWER (drift z_{1-alpha} +
# z_{DESIGN_POWER} at t = 1), checked from FUTILITY_FROM on.
DESIGN_POWER = 0.90
FUTILITY_POWER = 0.10
FUTILITY_FROM = 0.5
# The unadjusted 95% interval's multiplier, for looks below MIN_PER_ARM.
# scipy.stats.norm.isf(0.025), written out (tests/experiments/test_stats.py checks it).
Z_975 = 1.9599639845400545

STAGES = ("canary", "efficacy")
DECISIONS = ("continue", "promote", "rollback", "futility", "pause_srm")
CONTINUE, PROMOTE, ROLLBACK, FUTILITY, PAUSE_SRM = range(len(DECISIONS))

# The numerical integration's grid: Simpson's rule on [GRID_LOW, min(c, GRID_HIGH)] in z
# (under H0 the mass outside is below 1e-15), odd points GRID_STEP apart (K = 5
# boundaries to 1e-5 against the multivariate normal). Finer when two looks are so
# close that the normal kernel between them is narrow next to that spacing: a kernel
# narrower than the grid multiplies the density instead of spreading it. Jennison &
# Turnbull's grid (2000, §19.2), with logarithmic tails, diverges after about 80 looks
# 0.0015 apart for that reason. At most GRID_POINTS_MAX odd points, so one step's kernel
# matrix stays under 3,000² doubles (72 MB).
GRID_LOW = -8.0
GRID_HIGH = 12.0
GRID_STEP = 0.05
GRID_POINTS_MAX = 1500
# Kernel terms further than this many sd are left out: phi(12) = 5e-32, below the
# smallest densities the early O'Brien-Fleming looks need (about 1e-25).
KERNEL_REACH = 12.0
# A boundary that no data can cross (no alpha left to spend at that look).
BOUNDARY_CAP = 40.0


def obf_spending(t: float, alpha: float = ALPHA) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending: 2 - 2·Phi(z_{1-alpha/2} / sqrt(t))."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    # 2·Phi(-x) rather than 2 - 2·Phi(x): early looks spend about 1e-23, which the
    # subtraction would round to 0.
    from scipy import stats

    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t)))


def pocock_spending(t: float, alpha: float) -> float:
    """Lan-DeMets Pocock-type spending: alpha·ln(1 + (e - 1)·t)."""
    if t <= 0:
        return 0.0
    return float(alpha * math.log1p((math.e - 1) * min(t, 1.0)))


_SPENDING = {"obf": obf_spending, "pocock": pocock_spending}


def boundaries(
    fractions: tuple[float, ...], spending: str = "obf", alpha: float = ALPHA
) -> tuple[float, ...]:
    """One-sided upper boundaries c_1..c_K on the z scale for looks at these information
    fractions: c_k solves P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k | H0) =
    alpha(t_k) - alpha(t_{k-1}) for the canonical joint distribution of the Z's
    (corr(Z_i, Z_j) = sqrt(t_i / t_j)). By symmetry -c_k is the lower boundary of the
    same spending. Cached per schedule; a schedule that extends a cached one costs one
    more step of the recursion."""
    fractions = tuple(float(t) for t in fractions)
    if spending not in _SPENDING:
        raise ValueError(f"spending must be one of {sorted(_SPENDING)}, not {spending!r}")
    if (
        not fractions
        or fractions[0] <= 0
        or fractions[-1] > 1
        or any(b <= a for a, b in zip(fractions, fractions[1:], strict=False))
    ):
        raise ValueError(f"fractions must increase strictly within (0, 1]: {fractions}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1): {alpha}")
    return _boundaries(fractions, spending, float(alpha))


@lru_cache(maxsize=4096)
def _boundaries(fractions: tuple[float, ...], spending: str, alpha: float) -> tuple[float, ...]:
    # Each look in order, so that every step finds its predecessor in the cache and the
    # recursion never goes deeper than one level.
    bounds = []
    for k in range(1, len(fractions) + 1):
        bounds.append(_look(fractions[:k], spending, alpha, _resolution(fractions, k - 1))[0])
    return tuple(bounds)


def _resolution(fractions: tuple[float, ...], k: int) -> int:
    """Grid points per unit of z at look k (0-based): the kernels into and out of this
    look must span several points (Simpson's points are half the odd spacing apart)."""
    t = fractions[k]
    widths = []
    if k > 0:
        widths.append(math.sqrt((t - fractions[k - 1]) / t))
    if k + 1 < len(fractions):
        widths.append(math.sqrt((fractions[k + 1] - t) / t))
    step = min([GRID_STEP] + [w / 1.5 for w in widths])
    return math.ceil(1 / step - 1e-9)


def _grid(upper: float, per_unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and Simpson's rule weights on [GRID_LOW, upper]: odd points 1/per_unit
    apart (fewer if that makes more than GRID_POINTS_MAX), midpoints between them."""
    upper = min(upper, GRID_HIGH)
    intervals = max(1, min(GRID_POINTS_MAX, math.ceil((upper - GRID_LOW) * per_unit)))
    x = np.linspace(GRID_LOW, upper, intervals + 1)
    z = np.empty(2 * intervals + 1)
    z[0::2] = x
    z[1::2] = (x[:-1] + x[1:]) / 2
    d = (upper - GRID_LOW) / intervals
    w = np.full(len(z), 2 * d / 6)
    w[1::2] = 4 * d / 6
    w[0] = w[-1] = d / 6
    return z, w


@lru_cache(maxsize=2048)
def _look(
    fractions: tuple[float, ...], spending: str, alpha: float, per_unit: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """The boundary at the last of these looks, and the grid and weighted sub-density of
    Z_K on its continuation region (-inf, c_K) (Armitage, McPherson & Rowe 1969)."""
    from scipy import optimize, special, stats

    spend = _SPENDING[spending]
    t = fractions[-1]
    increment = spend(t, alpha) - (spend(fractions[-2], alpha) if len(fractions) > 1 else 0.0)
    if len(fractions) == 1:
        c = float(stats.norm.isf(increment)) if increment > 0 else BOUNDARY_CAP
        c = min(c, BOUNDARY_CAP)
        z, w = _grid(c, per_unit)
        return c, z, w * stats.norm.pdf(z)

    t_prev = fractions[-2]
    _, z_prev, h_prev = _look(fractions[:-1], spending, alpha, _resolution(fractions, len(fractions) - 2))
    # On the Brownian scale B(t) = Z·sqrt(t) the increment from t_prev to t is N(0, dt).
    b_prev = z_prev * math.sqrt(t_prev)
    sd = math.sqrt(t - t_prev)

    def crossing(c: float) -> float:
        return float(h_prev @ special.ndtr((b_prev - c * math.sqrt(t)) / sd))

    if increment <= 0 or crossing(BOUNDARY_CAP) >= increment:
        c = BOUNDARY_CAP
    else:
        c = optimize.brentq(lambda c: crossing(c) - increment, -BOUNDARY_CAP, BOUNDARY_CAP, xtol=1e-10)
    z, w = _grid(c, per_unit)
    # Density of Z_K at the new grid points: the sub-density at the previous look
    # propagated through the normal kernel, d/dz of P(B(t) <= z·sqrt(t)).
    return c, z, w * _propagate(z * math.sqrt(t), b_prev, h_prev, sd) * math.sqrt(t)


def _propagate(b: np.ndarray, b_prev: np.ndarray, h_prev: np.ndarray, sd: float) -> np.ndarray:
    """sum_j h_prev[j]·phi((b[i] - b_prev[j]) / sd) / sd for each point b[i] (both
    sorted), over the b_prev within KERNEL_REACH sd: a band of the kernel matrix, which
    close looks make narrow."""
    lo = np.searchsorted(b_prev, b - KERNEL_REACH * sd)
    hi = np.searchsorted(b_prev, b + KERNEL_REACH * sd)
    j = lo[:, None] + np.arange(max(1, int((hi - lo).max())))[None, :]
    inside = j < hi[:, None]
    j = np.minimum(j, len(b_prev) - 1)
    u = (b[:, None] - b_prev[j]) / sd
    terms = np.where(inside, h_prev[j] * np.exp(-0.5 * u * u), 0.0)
    return terms.sum(axis=1) / (sd * math.sqrt(2 * math.pi))


@dataclass(frozen=True)
class ArmCounts:
    n: int
    successes: int

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.successes <= self.n:
            raise ValueError(f"an arm needs 0 <= successes <= n, got {self.successes} of {self.n}")

    @property
    def rate(self) -> float:
        return self.successes / self.n if self.n else 0.0


@dataclass(frozen=True)
class Look:
    """One evaluation, kept in the look history. The interval (ci_low, ci_high) is the
    repeated confidence interval of p_t - p_c at this look: in the efficacy stage
    [diff - c_k·SE, diff + h_k·SE], which lies above 0 when the test promotes and below 0
    when it rolls back (at equal arms); in the canary diff ± h_k·SE; below MIN_PER_ARM,
    when no boundary applies, the unadjusted diff ± 1.96·SE."""

    stage: str
    n_control: int
    n_treatment: int
    s_control: int
    s_treatment: int
    fraction: float
    z: float | None
    efficacy_boundary: float | None
    harm_boundary: float | None
    diff: float
    ci_low: float
    ci_high: float
    treatment_lower: float
    srm_p: float | None
    decision: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Look:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class LookArrays:
    """`evaluate_many`'s result: one entry per experiment (NaN where `Look` has None)."""

    fraction: np.ndarray
    z: np.ndarray
    efficacy_boundary: np.ndarray
    harm_boundary: np.ndarray
    diff: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    treatment_lower: np.ndarray
    srm_p: np.ndarray
    conditional_power: np.ndarray
    guard_blocked: np.ndarray
    decision: np.ndarray  # indices into DECISIONS


def srm_pvalue(n_control: int, n_treatment: int, expected_share: float) -> float:
    """Chi-square goodness-of-fit p-value of the arms' counts against the expected
    treatment share (NaN while an expected count is below 5, where the chi-square
    approximation does not hold)."""
    return float(_srm_pvalues(np.array([n_control]), np.array([n_treatment]), expected_share)[0])


def _srm_pvalues(n_control: np.ndarray, n_treatment: np.ndarray, expected_share: float) -> np.ndarray:
    if not 0 < expected_share < 1:
        raise ValueError(f"expected_share must lie in (0, 1): {expected_share}")
    total = n_control + n_treatment
    expected = np.stack([total * (1 - expected_share), total * expected_share]).astype(float)
    observed = np.stack([n_control, n_treatment]).astype(float)
    valid = expected.min(axis=0) >= 5
    p = np.full(total.shape, np.nan)
    if valid.any():
        from scipy import stats

        p[valid] = stats.chisquare(observed[:, valid], expected[:, valid], axis=0).pvalue
    return p


def treatment_lower_bound(successes: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Exact (Clopper-Pearson) one-sided 97.5% lower bound of a success rate: the guard
    is a "never", so it uses the interval that never covers less than it says."""
    from scipy import special

    successes = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    lower = np.zeros(np.broadcast(successes, n).shape)
    some = successes > 0
    lower[some] = special.betaincinv(successes[some], (n - successes)[some] + 1, 0.025)
    return lower


def promotion_guard(control: ArmCounts, treatment: ArmCounts) -> tuple[bool, float]:
    """Whether a promotion is allowed (the treatment's one-sided 97.5% lower bound is at
    least the control's rate minus PROMOTE_MARGIN), and that lower bound.

    `evaluate` applies it to its own promotions, but at equal arms of 100 or more an
    efficacy crossing implies it: Z >= c > 1.96 puts p_t - 1.96·SE_t above p_c, and the
    exact bound lies at most 0.037 below that normal one (at 100/100). It is public for
    the promotion a person asks for, which needs no crossing (after a canary, say)."""
    lower = float(treatment_lower_bound(np.array([treatment.successes]), np.array([treatment.n]))[0])
    return lower >= control.rate - PROMOTE_MARGIN, lower


def _schedule(history: tuple[float, ...], t: float, max_n: int) -> tuple[float, ...]:
    """The looks that were tests: earlier fractions from the first one with MIN_PER_ARM
    per arm (smaller looks decided nothing and spent no alpha), then this one. A look
    with no new data since the last (the same fraction) is that look again."""
    first = MIN_PER_ARM / max_n
    return tuple(sorted({f for f in history if first <= f < t})) + (t,)


def evaluate_many(
    stage: str,
    n_control: np.ndarray,
    s_control: np.ndarray,
    n_treatment: np.ndarray,
    s_treatment: np.ndarray,
    *,
    history: tuple[float, ...] = (),
    max_n: int = DEFAULT_MAX_N,
    expected_share: float = 0.5,
) -> LookArrays:
    """`evaluate` for many experiments at once, all at the same look history."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    if max_n < MIN_PER_ARM:
        raise ValueError(f"max_n must be at least {MIN_PER_ARM} per arm, got {max_n}")
    n_c, s_c, n_t, s_t = (
        np.atleast_1d(np.asarray(a, dtype=float)) for a in (n_control, s_control, n_treatment, s_treatment)
    )
    shape = n_c.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        p_c = np.where(n_c > 0, s_c / n_c, 0.0)
        p_t = np.where(n_t > 0, s_t / n_t, 0.0)
        both = (n_c > 0) & (n_t > 0)
        diff = np.where(both, p_t - p_c, 0.0)
        pooled = (s_c + s_t) / (n_c + n_t)
        se_pooled = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
        # 0 only when every outcome in both arms is the same, and then so is the rate.
        z = np.where(both, np.where(se_pooled > 0, diff / se_pooled, 0.0), np.nan)
        se = np.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
        # An arm at 0% or 100% makes its own term 0; with both arms so, fall back on the
        # pooled SE rather than an interval of no width.
        se = np.where(both, np.where(se > 0, se, se_pooled), np.nan)

    fraction = np.minimum(np.minimum(n_c, n_t) / max_n, 1.0)
    tested = np.minimum(n_c, n_t) >= MIN_PER_ARM
    efficacy = np.full(shape, np.nan)
    harm = np.full(shape, np.nan)
    final = np.full(shape, np.nan)  # the efficacy boundary at t = 1 after these looks
    for t in np.unique(fraction[tested]):
        at = tested & (fraction == t)
        schedule = _schedule(tuple(history), float(t), max_n)
        harm[at] = boundaries(schedule, "pocock", ALPHA_HARM)[-1]
        if stage == "efficacy":
            efficacy[at] = boundaries(schedule, "obf", ALPHA)[-1]
            if FUTILITY_FROM <= t < 1:
                final[at] = boundaries(schedule + (1.0,), "obf", ALPHA)[-1]

    # Conditional power under the design alternative (drift theta at t = 1): the chance
    # that B(1) = B(t) + theta·(1 - t) + N(0, 1 - t) ends above the final boundary, taken
    # as if the only look left were at t = 1, the lowest final boundary any later
    # schedule could have, so the rule never stops an experiment too eagerly.
    from scipy import stats

    theta = stats.norm.isf(ALPHA) + stats.norm.ppf(DESIGN_POWER)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = 1 - fraction
        cp = stats.norm.sf((final - z * np.sqrt(fraction) - theta * rest) / np.sqrt(rest))

    lower = treatment_lower_bound(s_t, n_t)
    srm_p = _srm_pvalues(n_c, n_t, expected_share)

    if stage == "efficacy":
        ci_low = diff - efficacy * se
        ci_high = diff + harm * se
    else:
        ci_low = diff - harm * se
        ci_high = diff + harm * se
    ci_low = np.where(tested, ci_low, diff - Z_975 * se)
    ci_high = np.where(tested, ci_high, diff + Z_975 * se)

    crosses_up = tested & (z >= efficacy)
    blocked = crosses_up & (lower < p_c - PROMOTE_MARGIN)
    decision = np.full(shape, CONTINUE, dtype=np.int8)
    # Later assignments win: SRM first (the counts cannot be trusted), then harm.
    if stage == "efficacy":
        decision[tested & (fraction >= 1)] = FUTILITY
        decision[tested & (cp < FUTILITY_POWER)] = FUTILITY
        decision[crosses_up & ~blocked] = PROMOTE
        decision[blocked] = CONTINUE
    decision[tested & (z <= -harm)] = ROLLBACK
    decision[srm_p < SRM_P] = PAUSE_SRM
    return LookArrays(
        fraction=fraction,
        z=z,
        efficacy_boundary=efficacy,
        harm_boundary=harm,
        diff=diff,
        ci_low=np.where(both, ci_low, -1.0),
        ci_high=np.where(both, ci_high, 1.0),
        treatment_lower=lower,
        srm_p=srm_p,
        conditional_power=cp,
        guard_blocked=blocked,
        decision=decision,
    )


def evaluate(
    stage: str,
    control: ArmCounts,
    treatment: ArmCounts,
    *,
    history: tuple[float, ...] = (),
    max_n: int = DEFAULT_MAX_N,
    expected_share: float = 0.5,
) -> Look:
    """The decision at one look. `history` holds the information fractions of this
    stage's earlier looks (`Look.fraction`), so the boundaries are those of the schedule
    actually followed. `max_n` is the stage's planned size of its smaller arm: the
    information fraction is min(n_control, n_treatment) / max_n, capped at 1. A canary
    only continues, rolls back or pauses; when it has run long enough is the caller's
    business. `expected_share` is the treatment's share of the traffic (0.05 in the
    canary)."""
    a = evaluate_many(
        stage,
        np.array([control.n]),
        np.array([control.successes]),
        np.array([treatment.n]),
        np.array([treatment.successes]),
        history=history,
        max_n=max_n,
        expected_share=expected_share,
    )

    def opt(values: np.ndarray) -> float | None:
        return None if np.isnan(values[0]) else float(values[0])

    decision = DECISIONS[int(a.decision[0])]
    z, c, h, srm_p = opt(a.z), opt(a.efficacy_boundary), opt(a.harm_boundary), opt(a.srm_p)
    look: dict[str, Any] = dict(
        stage=stage,
        n_control=int(control.n),
        n_treatment=int(treatment.n),
        s_control=int(control.successes),
        s_treatment=int(treatment.successes),
        fraction=float(a.fraction[0]),
        z=z,
        efficacy_boundary=c,
        harm_boundary=h,
        diff=float(a.diff[0]),
        ci_low=float(a.ci_low[0]),
        ci_high=float(a.ci_high[0]),
        treatment_lower=float(a.treatment_lower[0]),
        srm_p=srm_p,
        decision=decision,
    )
    return Look(
        **look,
        reason=_reason(
            control,
            treatment,
            look,
            float(a.conditional_power[0]),
            bool(a.guard_blocked[0]),
            max_n,
            expected_share,
        ),
    )


def _reason(
    control: ArmCounts,
    treatment: ArmCounts,
    look: dict[str, Any],
    cp: float,
    blocked: bool,
    max_n: int,
    expected_share: float,
) -> str:
    def arm(counts: ArmCounts, name: str) -> str:
        # An arm with no tasks has no rate (0/0 is not 0%).
        if not counts.n:
            return f"no tasks yet ({name})"
        return f"{counts.rate:.1%} ({name}, {counts.successes}/{counts.n})"

    rates = f"success {arm(treatment, 'treatment')} vs {arm(control, 'control')}"
    interval = (
        f"difference {look['diff'] * 100:+.1f} points, "
        f"adjusted interval [{look['ci_low'] * 100:+.1f}, {look['ci_high'] * 100:+.1f}]"
    )
    where = f"at t = {look['fraction']:.3f}"
    z, c, h = look["z"], look["efficacy_boundary"], look["harm_boundary"]
    decision = look["decision"]
    if decision == "pause_srm":
        return (
            f"sample ratio mismatch: {control.n} control vs {treatment.n} treatment where "
            f"{expected_share:.0%} treatment was expected (chi-square p = {look['srm_p']:.2g} < {SRM_P}); "
            "pause and check the assignment"
        )
    if h is None:
        return (
            f"{min(control.n, treatment.n)} per arm so far: no decision before {MIN_PER_ARM} per arm; {rates}"
        )
    if decision == "rollback":
        return f"treatment worse: z = {z:.2f} <= -{h:.2f}, the harm boundary {where}; {rates}; {interval}"
    if decision == "promote":
        return f"treatment better: z = {z:.2f} >= {c:.2f}, the efficacy boundary {where}; {rates}; {interval}"
    if blocked:
        return (
            f"z = {z:.2f} crossed the efficacy boundary {c:.2f} {where} but promote blocked by the "
            f"guard: the treatment's 97.5% lower bound {look['treatment_lower']:.1%} is below the "
            f"control's {control.rate:.1%} minus {PROMOTE_MARGIN * 100:.0f} points; {rates}"
        )
    if decision == "futility" and look["fraction"] >= 1:
        return (
            f"reached {max_n} per arm without crossing the efficacy boundary "
            f"(z = {z:.2f} < {c:.2f}); {rates}; {interval}"
        )
    if decision == "futility":
        return (
            f"futility: conditional power {cp:.1%} < {FUTILITY_POWER:.0%} under the design "
            f"alternative {where} (z = {z:.2f}); {rates}; {interval}"
        )
    bounds = f"between -{h:.2f} and {c:.2f}" if c is not None else f"above the harm boundary -{h:.2f}"
    return f"z = {z:.2f} {bounds} {where}; {rates}; {interval}"
