"""The kaizen cycle's tuning planners (issue 14, use 5): changes to the cascade and
the generation parameters that an agent's own evidence supports
(experiments.evidence), each proposed as any plan is (experiments.pdca: a
proposal, its gates, its experiment).

- ``max_tokens``: the 95th percentile of the lengths of the answers that passed
  (inspection, or a reviewer's approval as they were), the largest of all of them
  pooled and of each tier's (its longest while it has fewer than 30), plus a 20%
  margin, rounded up to 10 tokens; proposed only when it cuts the
  current cap by a quarter or more (or sets one where none is), and never when an
  answer that failed had reached its cap (a sign the cap cuts answers short). The
  one planner of max_tokens: pdca's ``verbose`` plan asks for brevity only.
- ``tier1_threshold``: the lowest tier-1 threshold whose newly taken answers
  (tier 1's answers the cascade passed over, with confidence from the new threshold
  up to the current one) would have passed inspection about as often as the
  answers it takes today: the Wilson 95% lower bound of that band's pass rate at
  least the current rate minus 5 points (the replay gate's margin). The threshold
  walks down from the current one in steps of 0.01 and stops at the first band that
  falls short (a fixed sequence of tests, so the bound holds for the threshold
  chosen without a correction for the steps tried); a band too small for even one
  as good as today's to pass (``planned_band``, at least 30) is not a test yet.
  Never below the lowest confidence seen in the band, nor the confidence inspection
  asks for. What it cuts is over-processing: the escalations whose tier-1 answer
  would have passed.
- ``tier_order``: drop the upper tiers when the cascade stopped before them passes
  at least as often, on the same tasks, as the whole cascade (with 20 or more
  tasks having gone on past that point, and 30 scored); else swap two neighbouring
  tiers when the later one costs less per call and its answers pass at least as
  often on the tasks both answered.
- ``sampling``: temperature and top_p. Among the versions that differ from the
  active one in their generation parameters only (the same template, variables,
  models and thresholds), the answers a tier gave under each (temperature, top_p)
  tried: a setting whose pass rate is higher than the current one's by Fisher's
  exact test (p below 0.05 divided by the number of settings compared, 30 answers
  or more each) at a cost per task no more than 10% higher is proposed for that
  tier.

Each returns None when the evidence is thin or says nothing should change, and
never proposes the agent's own fields.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from andon.inspection import parse_checks
from boards.agents.spec import (
    GENERATION_PARAMETERS,
    ConfigError,
    Tier,
    cascade_json,
    parse_cascade,
    parse_parameters,
)
from boards.models import Agent
from experiments.charts import money
from experiments.evidence import (
    Attempt,
    Rate,
    TuningEvidence,
    agent_tuning_evidence_get,
    percentile,
    setting_of,
    wilson,
)
from experiments.models import PromptVersion, normal_prompt_fields
from experiments.paired import mcnemar_exact_p
from experiments.planning import Plan, Window, current_fields

# max_tokens
MIN_LENGTHS = 30
LENGTH_PERCENTILE = 95
LENGTH_MARGIN = 0.20
MAX_TOKENS_STEP = 10
MAX_TOKENS_FLOOR = 64
# Proposed only when the new cap is at least this much below the current one.
SUBSTANTIAL_CUT = 0.25

# tier1_threshold
MIN_ACCEPTED = 30
MIN_BAND = 30
BAND_MARGIN = 0.05
THRESHOLD_STEP = 0.01

# tier_order
MIN_SCORED = 30
MIN_WENT_ON = 20

# sampling
MIN_SETTING = 30
ALPHA = 0.05
COST_TOLERANCE = 0.10


def _evidence(window: Window) -> TuningEvidence:
    """The window's evidence, read once for all the planners of a cycle."""
    if "tuning" not in window.memo:
        window.memo["tuning"] = agent_tuning_evidence_get(window.agent, since=window.since)
    return window.memo["tuning"]


def _parsed(agent: Agent) -> tuple[dict[str, Any], list[Tier]] | None:
    try:
        return parse_parameters(agent.parameters), parse_cascade(agent.cascade)
    except ConfigError:
        return None


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def _interval(rate: Rate) -> str:
    return f"{_pct(rate.rate)}; 95% interval {_pct(rate.low)}–{_pct(rate.high)}"


def _rate_json(rate: Rate) -> dict[str, Any]:
    return {
        "passes": rate.passes,
        "n": rate.n,
        "rate": rate.rate,
        "low": rate.low,
        "high": rate.high,
    }


def _where(window: Window, evidence: TuningEvidence) -> str:
    return f"in the last {window.days} days (version {evidence.version})"


# --- max_tokens ----------------------------------------------------------------------


def _cut_short(attempt: Attempt) -> bool:
    """An answer that failed (or was corrected) at its max_tokens: maybe cut short."""
    cap = attempt.params.get("max_tokens")
    tokens = attempt.output_tokens
    if attempt.passed or not isinstance(cap, int) or tokens is None:
        return False
    return tokens >= cap


def plan_max_tokens(window: Window) -> Plan | None:
    agent = window.agent
    parsed = _parsed(agent)
    if parsed is None:
        return None
    parameters, tiers = parsed
    evidence = _evidence(window)
    measured = [a for a in evidence.attempts if a.output_tokens is not None]
    passing = [a for a in measured if a.passed]
    if len(passing) < MIN_LENGTHS or any(_cut_short(a) for a in measured):
        return None
    lengths = [a.output_tokens or 0 for a in passing]
    pooled = percentile(lengths, LENGTH_PERCENTILE)
    by_tier: dict[int, list[int]] = defaultdict(list)
    for attempt in passing:
        if attempt.tier is not None:
            by_tier[attempt.tier].append(attempt.output_tokens or 0)
    # Each tier's 95th percentile, or its longest passing answer while it has too few
    # for a percentile: a cap fitted to the cheap tier's short answers would cut a
    # dearer one's.
    longest: dict[int, float] = {
        tier: percentile(group, LENGTH_PERCENTILE) if len(group) >= MIN_LENGTHS else max(group)
        for tier, group in sorted(by_tier.items())
    }
    per_tier = [
        {
            "tier": tier,
            "model": tiers[tier - 1].model if tier <= len(tiers) else "",
            "measure": "p95" if len(by_tier[tier]) >= MIN_LENGTHS else "longest",
            "tokens": round(tokens, 1),
            "n": len(by_tier[tier]),
        }
        for tier, tokens in longest.items()
    ]
    top = max([pooled, *longest.values()])
    cap = max(MAX_TOKENS_FLOOR, math.ceil(top * (1 + LENGTH_MARGIN) / MAX_TOKENS_STEP) * MAX_TOKENS_STEP)
    current = parameters.get("max_tokens")
    fields = current_fields(agent)
    changes: list[str] = []
    lower_agent = current is None or cap <= (1 - SUBSTANTIAL_CUT) * current
    if lower_agent:
        fields["parameters"] = {**parameters, "max_tokens": cap}
        changes.append(
            f"set max_tokens to {cap} (unset today: the provider's default)"
            if current is None
            else f"lower max_tokens from {current} to {cap} ({_pct(1 - cap / current)} less)"
        )
    cascade = cascade_json(tiers)
    lowered = []
    for number, tier in enumerate(cascade, start=1):
        own = tier["parameters"].get("max_tokens")
        # A tier's own max_tokens overrides the agent's: lowered with it, or on its
        # own when it is far above what passing answers use.
        if own and own > cap and (lower_agent or cap <= (1 - SUBSTANTIAL_CUT) * own):
            tier["parameters"]["max_tokens"] = cap
            lowered.append({"tier": number, "model": tier["model"], "from": own})
    if lowered:
        fields["cascade"] = cascade
        changes.append(
            "lower "
            + ", ".join(f"tier {t['tier']}'s ({t['model']}) own max_tokens from {t['from']}" for t in lowered)
            + f" to {cap}"
        )
    if not changes:
        return None
    longer_passing = sum(1 for n in lengths if n > cap)
    longer = [a for a in measured if (a.output_tokens or 0) > cap]
    evidence_json = {
        "kind": "max_tokens",
        "window_days": window.days,
        "version": evidence.version,
        "answers_measured": len(measured),
        "passing_answers": len(passing),
        "p95_tokens": round(pooled, 1),
        "by_tier": per_tier,
        "margin": LENGTH_MARGIN,
        "max_tokens": {"current": current, "proposed": cap},
        "tiers_lowered": lowered,
        "longer_than_proposed": {"passing": longer_passing, "all": len(longer)},
        "failed_at_their_cap": 0,
    }
    tier_words = "; ".join(
        f"tier {t['tier']}, {t['model']}: "
        + (
            f"{t['tokens']:g} over {t['n']}"
            if t["measure"] == "p95"
            else f"the longest of {t['n']}, {t['tokens']:g}"
        )
        for t in per_tier
    )
    rationale = (
        f"max_tokens from the answers that passed: {_where(window, evidence)}, {len(passing)} answers passed "
        f"(inspection, or a reviewer's approval as they were); 95% of them were at most {pooled:.0f} tokens"
        + (f" ({tier_words})" if tier_words else "")
        + f". With a {LENGTH_MARGIN:.0%} margin, rounded up: {cap}. No answer that failed, was corrected or "
        f"rejected had reached its max_tokens, so none looks cut short; {longer_passing} of the "
        f"{len(passing)} passing answers ({_pct(longer_passing / len(passing))}) and {len(longer)} of all "
        f"{len(measured)} were longer than {cap} tokens. Proposed: " + "; ".join(changes) + "."
    )
    return Plan(
        "max_tokens", fields, rationale, evidence_json, strength=len(longer) / max(window.n, len(measured))
    )


# --- tier 1's threshold --------------------------------------------------------------


def _pass_bar(agent: Agent) -> float | None:
    """The confidence an output needs to pass inspection (the strictest confidence check)."""
    try:
        checks = parse_checks(agent.quality_checks)
    except ConfigError:
        return None
    minimums = [spec.params["min"] for spec in checks if spec.kind == "confidence"]
    return max(minimums) if minimums else None


def planned_band(rate: float, *, margin: float = BAND_MARGIN, most: int = 100_000) -> int:
    """The fewest answers a band passing as often as ``rate`` needs for its Wilson
    lower bound to reach ``rate - margin`` (at least MIN_BAND): smaller bands are not
    tested, so the sequence is not stopped by a test that could not have passed. It
    depends on the taken answers' rate and the bands' sizes, never on the bands'
    outcomes, so the fixed sequence keeps its level."""

    def enough(n: int) -> bool:
        bound = wilson(round(rate * n), n)
        return bound is not None and bound[0] >= rate - margin

    low, high = MIN_BAND, most
    if not enough(high):
        return most
    while low < high:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle + 1
    return low


def plan_tier1_threshold(window: Window) -> Plan | None:
    agent = window.agent
    parsed = _parsed(agent)
    if parsed is None:
        return None
    _, tiers = parsed
    if len(tiers) < 2 or tiers[0].threshold is None:
        return None
    threshold = tiers[0].threshold
    evidence = _evidence(window)
    answered = [
        (a, a.calls[1])
        for a in evidence.attempts
        if 1 in a.calls and not a.calls[1].error and a.calls[1].confidence is not None and a.tier is not None
    ]
    taken = [a for a, call in answered if call.accepted and a.tier == 1]
    if len(taken) < MIN_ACCEPTED:
        return None
    today = Rate(sum(1 for a in taken if a.passed), len(taken))
    assert today.rate is not None
    passed_over = [
        (call.confidence or 0.0, bool(call.would_pass), a)
        for a, call in answered
        if not call.accepted and call.would_pass is not None and (call.confidence or 0.0) < threshold
    ]
    bar = _pass_bar(agent)
    floor = max(bar or 0.0, THRESHOLD_STEP)
    planned = planned_band(today.rate)
    chosen: tuple[float, Rate, list] | None = None
    steps = 0
    step = 1
    while True:
        candidate = round(threshold - step * THRESHOLD_STEP, 4)
        step += 1
        if candidate < floor - 1e-9:
            break
        band = [p for p in passed_over if p[0] >= candidate - 1e-9]
        if len(band) < planned:
            # Not a test yet: too few answers for even a band as good as today's to pass.
            continue
        steps += 1
        rate = Rate(sum(1 for p in band if p[1]), len(band))
        if rate.low is None or rate.low < today.rate - BAND_MARGIN:
            break
        # No lower than the band's own answers reach: below them nothing was seen.
        lowest = math.floor(round(min(p[0] for p in band) / THRESHOLD_STEP, 6)) * THRESHOLD_STEP
        chosen = (round(max(candidate, lowest), 4), rate, band)
    if chosen is None:
        return None
    new_threshold, band_rate, band = chosen
    needless = [a for _, would, a in band if would]
    upper_cost = sum(sum(c.cost for t, c in a.calls.items() if t >= 2) for a in needless)
    to_review = len(band) - len(needless)
    after = Rate(today.passes + band_rate.passes, today.n + band_rate.n)
    fields = current_fields(agent)
    cascade = cascade_json(tiers)
    cascade[0]["threshold"] = new_threshold
    fields["cascade"] = cascade
    evidence_json = {
        "kind": "tier1_threshold",
        "window_days": window.days,
        "version": evidence.version,
        "tier1_threshold": {"current": threshold, "proposed": new_threshold},
        "pass_confidence": bar,
        "taken_today": _rate_json(today),
        "band": {"from": new_threshold, "to": threshold, **_rate_json(band_rate)},
        "margin": BAND_MARGIN,
        "steps_tested": steps,
        "planned_band": planned,
        "passed_over": len(passed_over),
        "needless_escalations": len(needless),
        "upper_tier_cost_needless": round(upper_cost, 6),
        "to_review_instead": to_review,
        "taken_after": _rate_json(after),
    }
    rationale = (
        f"Tier 1's threshold from the ledger: {_where(window, evidence)}, tier 1 ({tiers[0].model}) "
        f"had {len(taken)} of its answers taken at confidence {threshold:g} or more, and {today.passes} of "
        f"them passed ({_pct(today.rate)}). Of the {len(passed_over)} it passed over to a dearer tier, the "
        f"{len(band)} with confidence from {new_threshold:g} up to {threshold:g} would have passed inspection "
        f"{band_rate.passes} times ({_interval(band_rate)}): the lower bound is within "
        f"{BAND_MARGIN * 100:.0f} points of today's {_pct(today.rate)} (stepping down from {threshold:g} by "
        f"{THRESHOLD_STEP:g}, stopping at the first band that fell short). Those {len(needless)} escalations "
        f"were over-processing: {money(upper_cost)} on the dearer tiers. Proposed: lower tier 1's threshold "
        f"from {threshold:g} to {new_threshold:g}; estimated saving {money(upper_cost)} per {window.days} "
        f"days, {to_review} answer{'s' if to_review != 1 else ''} of the band going to Review instead of "
        f"a dearer tier, tier 1's taken answers passing {_pct(after.rate)} (today {_pct(today.rate)})."
    )
    return Plan(
        "tier1_threshold", fields, rationale, evidence_json, strength=len(needless) / max(window.n, 1)
    )


# --- tier order ----------------------------------------------------------------------


def _mean_call_cost(attempts: Sequence[Attempt], tier: int) -> tuple[float, int]:
    costs = [
        a.calls[tier].cost
        for a in attempts
        if tier in a.calls and not a.calls[tier].cached and not a.calls[tier].error
    ]
    return (sum(costs) / len(costs), len(costs)) if costs else (0.0, 0)


def _drop_upper(window: Window, evidence: TuningEvidence, tiers: list[Tier]) -> Plan | None:
    attempts = [a for a in evidence.attempts if a.calls]
    deepest = len(tiers)
    for depth in range(1, deepest):
        scored = [
            (a, a.outcome(depth), a.outcome(deepest))
            for a in attempts
            if a.outcome(depth) is not None and a.outcome(deepest) is not None
        ]
        went_on = [a for a, _, _ in scored if (a.tier or 0) > depth]
        if len(scored) < MIN_SCORED or len(went_on) < MIN_WENT_ON:
            continue
        rescued = sum(1 for _, short, full in scored if full and not short)
        lost = sum(1 for _, short, full in scored if short and not full)
        if rescued > lost:
            continue
        short_rate = Rate(sum(1 for _, short, _ in scored if short), len(scored))
        full_rate = Rate(sum(1 for _, _, full in scored if full), len(scored))
        short_cost = sum(a.cost_to(depth) for a, _, _ in scored) / len(scored)
        full_cost = sum(a.cost_to(deepest) for a, _, _ in scored) / len(scored)
        upper_cost = sum(a.cost_to(deepest) - a.cost_to(depth) for a, _, _ in scored)
        dropped = tiers[depth:]
        cascade = cascade_json(tiers)[:depth]
        # The last tier takes every answer: its threshold would only mislead.
        cascade[-1]["threshold"] = None
        fields = current_fields(window.agent)
        fields["cascade"] = cascade
        names = ", ".join(f"tier {depth + i + 1} ({t.model})" for i, t in enumerate(dropped))
        p_value = mcnemar_exact_p(lost, rescued)
        evidence_json = {
            "kind": "tier_order",
            "change": "drop",
            "window_days": window.days,
            "version": evidence.version,
            "keep_tiers": depth,
            "dropped": [{"tier": depth + i + 1, "model": t.model} for i, t in enumerate(dropped)],
            "scored": len(scored),
            "went_on": len(went_on),
            "stopped": _rate_json(short_rate),
            "full": _rate_json(full_rate),
            "rescued": rescued,
            "lost": lost,
            "mcnemar_p": p_value,
            "cost_per_task": {"stopped": round(short_cost, 8), "full": round(full_cost, 8)},
            "upper_tier_cost": round(upper_cost, 6),
        }
        rationale = (
            f"The dearer tiers buy nothing: {_where(window, evidence)}, {len(scored)} tasks were scored, "
            f"{len(went_on)} of which went on past tier {depth} ({tiers[depth - 1].model}). Stopped after tier "
            f"{depth}, the cascade would have passed {short_rate.passes} of them ({_pct(short_rate.rate)}); "
            f"in full it passed {full_rate.passes} ({_pct(full_rate.rate)}): the tiers after it rescued "
            f"{rescued} and lost {lost} (McNemar p = {p_value:.2f}), for {money(upper_cost)} in all "
            f"({money(short_cost)} per task stopped there, {money(full_cost)} in full). Proposed: drop {names}; "
            f"tier {depth} then takes every answer."
        )
        return Plan("tier_order", fields, rationale, evidence_json, strength=len(went_on) / max(window.n, 1))
    return None


def _swap(window: Window, evidence: TuningEvidence, tiers: list[Tier]) -> Plan | None:
    attempts = [a for a in evidence.attempts if a.calls]
    for first in range(1, len(tiers)):
        second = first + 1
        cost_first, n_first = _mean_call_cost(attempts, first)
        cost_second, n_second = _mean_call_cost(attempts, second)
        if min(n_first, n_second) < MIN_SCORED or cost_second >= cost_first:
            continue
        both = [
            (a.answer(first), a.answer(second))
            for a in attempts
            if a.answer(first) is not None and a.answer(second) is not None
        ]
        if len(both) < MIN_SCORED:
            continue
        better = sum(1 for one, two in both if two and not one)
        worse = sum(1 for one, two in both if one and not two)
        if better < worse:
            continue
        cascade = cascade_json(tiers)
        a, b = cascade[first - 1], cascade[second - 1]
        # A threshold belongs to its place in the cascade (the last takes every answer).
        a["threshold"], b["threshold"] = b["threshold"], a["threshold"]
        cascade[first - 1], cascade[second - 1] = b, a
        fields = current_fields(window.agent)
        fields["cascade"] = cascade
        first_rate = Rate(sum(1 for one, _ in both if one), len(both))
        second_rate = Rate(sum(1 for _, two in both if two), len(both))
        evidence_json = {
            "kind": "tier_order",
            "change": "swap",
            "window_days": window.days,
            "version": evidence.version,
            "swap": [first, second],
            "models": [tiers[first - 1].model, tiers[second - 1].model],
            "cost_per_call": [round(cost_first, 8), round(cost_second, 8)],
            "both_answered": len(both),
            "passes": [_rate_json(first_rate), _rate_json(second_rate)],
        }
        rationale = (
            f"The cascade is out of order: {_where(window, evidence)}, tier {second} "
            f"({tiers[second - 1].model}) cost {money(cost_second)} a call against tier {first}'s "
            f"({tiers[first - 1].model}) {money(cost_first)}, and on the {len(both)} tasks both answered its "
            f"answers passed {second_rate.passes} times ({_pct(second_rate.rate)}) against "
            f"{first_rate.passes} ({_pct(first_rate.rate)}). Proposed: try {tiers[second - 1].model} before "
            f"{tiers[first - 1].model} (each place keeps its threshold)."
        )
        return Plan("tier_order", fields, rationale, evidence_json, strength=len(both) / max(window.n, 1))
    return None


def plan_tier_order(window: Window) -> Plan | None:
    parsed = _parsed(window.agent)
    if parsed is None or len(parsed[1]) < 2:
        return None
    tiers = parsed[1]
    evidence = _evidence(window)
    return _drop_upper(window, evidence, tiers) or _swap(window, evidence, tiers)


# --- temperature and top_p -----------------------------------------------------------


def _without_generation(fields: Mapping[str, Any]) -> tuple:
    """A version's fields with its generation parameters left out: two versions equal
    here differ in how they sample, nothing else."""
    normal = normal_prompt_fields(fields)

    def keep(parameters: Any) -> dict[str, Any]:
        return {k: v for k, v in (parameters or {}).items() if k not in GENERATION_PARAMETERS}

    cascade = normal["cascade"] if isinstance(normal["cascade"], list) else []
    return (
        normal["prompt_template"],
        normal["prompt_variables"],
        keep(normal["parameters"]),
        [
            {**tier, "parameters": keep(tier.get("parameters"))} if isinstance(tier, dict) else tier
            for tier in cascade
        ],
        normal["implementation"],
    )


def _comparable_versions(agent: Agent, numbers: set[int]) -> set[int]:
    ours = _without_generation(current_fields(agent))
    others = PromptVersion.objects.filter(agent=agent, number__in=numbers - {agent.prompt_version}).values(
        "number", *PromptVersion.FIELDS
    )
    return {agent.prompt_version} | {v["number"] for v in others if _without_generation(v) == ours}


def _mean_cost(rows: Sequence[Mapping[str, Any]]) -> float:
    return sum(r["spent"] or 0.0 for r in rows) / len(rows) if rows else 0.0


def _value(value: float | None) -> str:
    return "unset" if value is None else f"{value:g}"


def plan_sampling(window: Window) -> Plan | None:
    agent = window.agent
    parsed = _parsed(agent)
    if parsed is None:
        return None
    parameters, tiers = parsed
    evidence = _evidence(window)
    numbers = {r["prompt_version"] for r in evidence.rows if r["prompt_version"] is not None}
    if len(numbers) < 2:
        return None
    versions = _comparable_versions(agent, numbers)
    rows = [r for r in evidence.rows if r["prompt_version"] in versions]
    for number, tier in enumerate(tiers, start=1):
        merged = {**parameters, **tier.parameters}
        current = (merged.get("temperature"), merged.get("top_p"))
        groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["tier"] == number and row["model"] == tier.model:
                groups[setting_of(row["params"])[:2]].append(row)
        today = groups.get(current, [])
        if len(today) < MIN_SETTING:
            continue
        alternatives = [(s, g) for s, g in groups.items() if s != current and len(g) >= MIN_SETTING]
        today_rate = Rate(sum(1 for r in today if r["verdict"] in ("passed", "approved")), len(today))
        today_cost = _mean_cost(today)
        found = []
        for setting, group in alternatives:
            rate = Rate(sum(1 for r in group if r["verdict"] in ("passed", "approved")), len(group))
            cost = _mean_cost(group)
            if (rate.rate or 0) <= (today_rate.rate or 0) or cost > today_cost * (1 + COST_TOLERANCE) + 1e-12:
                continue
            table = [
                [rate.passes, rate.n - rate.passes],
                [today_rate.passes, today_rate.n - today_rate.passes],
            ]
            from scipy import stats  # at first use: see experiments.stats

            p_value = float(stats.fisher_exact(table).pvalue)
            if p_value < ALPHA / len(alternatives):
                found.append((rate.rate or 0, setting, rate, cost, p_value, group))
        # The best supported setting this tier can say in its own parameters.
        for _, setting, rate, cost, p_value, group in sorted(found, key=lambda f: -f[0]):
            own = dict(tier.parameters)
            expressible = True
            for key, value in zip(("temperature", "top_p"), setting, strict=True):
                if value == parameters.get(key):
                    own.pop(key, None)
                elif value is None:
                    # Unset on one tier while the agent sets it: a tier cannot say that.
                    expressible = False
                else:
                    own[key] = value
            if not expressible:
                continue
            cascade = cascade_json(tiers)
            cascade[number - 1]["parameters"] = own
            fields = current_fields(agent)
            fields["cascade"] = cascade
            if normal_prompt_fields(fields) == normal_prompt_fields(current_fields(agent)):
                continue
            changed = [
                f"{key} from {_value(old)} to {_value(new)}"
                for key, old, new in zip(("temperature", "top_p"), current, setting, strict=True)
                if old != new
            ]
            tried = sorted({r["prompt_version"] for r in group} | {r["prompt_version"] for r in today})
            evidence_json = {
                "kind": "sampling",
                "window_days": window.days,
                "tier": number,
                "model": tier.model,
                "versions": tried,
                "current": {"temperature": current[0], "top_p": current[1], **_rate_json(today_rate)},
                "proposed": {"temperature": setting[0], "top_p": setting[1], **_rate_json(rate)},
                "fisher_p": p_value,
                "settings_compared": len(alternatives),
                "cost_per_task": {"current": round(today_cost, 8), "proposed": round(cost, 8)},
            }
            rationale = (
                f"Sampling settings compared: on tier {number} ({tier.model}), in the last {window.days} days, "
                f"versions {', '.join(str(v) for v in tried)} (the same prompt and cascade, other generation "
                f"parameters) had {today_rate.n} answers taken with temperature {_value(current[0])}, top_p "
                f"{_value(current[1])} (today's), {today_rate.passes} passing ({_interval(today_rate)}), and "
                f"{rate.n} with temperature {_value(setting[0])}, top_p {_value(setting[1])}, "
                f"{rate.passes} passing ({_interval(rate)}). Fisher's exact test: p = {p_value:.3g}, below "
                f"{ALPHA:g} / {len(alternatives)} setting{'s' if len(alternatives) != 1 else ''} compared; "
                f"cost per task {money(cost)} against {money(today_cost)}. Proposed: set tier {number}'s "
                + " and ".join(changed)
                + "."
            )
            return Plan(
                "sampling", fields, rationale, evidence_json, strength=today_rate.n / max(window.n, 1)
            )
    return None


PLANNERS = (plan_max_tokens, plan_tier1_threshold, plan_tier_order, plan_sampling)
