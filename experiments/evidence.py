"""Model selection and parameter tuning from evidence (issue 14, use 5): what each
tier of an agent's cascade, and each generation setting it has run with, has
delivered, per capability. Read by the agent page (its "Tiers and settings, from
evidence" section) and by the tuning planners of the kaizen cycle
(experiments.tuning).

Two sources, each read once, newest first and capped:

- the knowledge base's Pattern rows (one per finished attempt, with its verdict,
  the tier and model whose answer was taken, the parameters it was called with,
  its cost, latency and tokens): the **tiers** (answers taken from each tier of
  the active prompt version) and the **settings** (each temperature, top_p and
  max_tokens tried, on every version in the window);
- the ledger (boards.models.ModelCall) of the active version's attempts: every
  tier's answer, the one taken and the ones passed over, with whether a passed-over
  answer would have passed inspection (``would_pass``). From it, the **depths**:
  the cascade stopped after tier k, on the same tasks.

An attempt *passes* when its verdict is ``passed`` (inspection) or ``approved`` (a
reviewer took it as it was). ``corrected`` does not pass (the reviewer had to
rewrite it: the page counts those apart), nor do ``rejected`` and ``defect``.

Why the depths, and not the tiers, make the frontier. The tiers' own pass rates
compare different tasks: a dearer tier gets only what a cheaper one was unsure
of, the harder tasks, so it looks worse than it is. The depths compare like with
like: for every attempt, "stop after tier k" scores the answer the cascade took
where it stopped at or before k, and tier k's own answer where it went on (its
``would_pass``; an error fails). A passed-over answer's ``would_pass`` is the
line's cheap inspection only (what a reviewer would have said of it is not
known), so a shallower depth is credited with inspection passes where the full
cascade may also have reviewers' approvals: the comparison leans towards keeping
tiers. A depth for which over a fifth of the attempts have no known outcome
(``would_pass`` unknown, e.g. under custom checks, or the tier's breaker open) is
left out: the rest would be the easy tasks only.

Everything is aggregated in Python from two bounded queries (at most
MAX_PATTERNS patterns and their calls): percentiles and Wilson intervals need the
rows, and one narrow query of a few thousand rows costs less than grouping
several times in the database and fetching the latencies anyway.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import numpy as np
from django.db.models import FloatField, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from boards.agents.simulated import SIMULATED_PROFILES
from boards.agents.spec import ConfigError, Tier, parse_cascade
from boards.models import Agent, ModelCall
from experiments.models import Pattern

# The page's window; the kaizen cycle passes its own (a week).
WINDOW = timedelta(days=30)
# The newest patterns read per agent: a busy agent's month can be large, and the
# latest few thousand say what a tier or a setting delivers. The agent page reads
# fewer (2,000 give a pass rate within about 2 points) to answer in its budget.
MAX_PATTERNS = 5000
PAGE_PATTERNS = 2000
# Ledger rows read per pattern of the active version, at most (a cascade's tiers,
# one call each; a few more for retried calls).
CALLS_PER_PATTERN = 4
# How long before its pattern an attempt's calls may have been made (a run is cut
# off after KAIZEN_RUN_TIMEOUT_SECONDS, 10 minutes by default).
CALLS_BEFORE_PATTERN = timedelta(hours=1)
# A depth is left out when more of its attempts than this have no known outcome.
MAX_UNKNOWN_SHARE = 0.2
CONFIDENCE = 0.95
PASSING = frozenset({Pattern.Verdict.PASSED, Pattern.Verdict.APPROVED})
NO_CAPABILITY = "(no capability)"


def wilson(passes: int, n: int, level: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a pass rate (scipy's), None with no trials."""
    if n <= 0:
        return None
    from scipy import stats  # at first use: see experiments.stats

    ci = stats.binomtest(passes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Rate:
    """``passes`` of ``n``, with its Wilson 95% interval."""

    passes: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.passes / self.n if self.n else None

    @cached_property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.passes, self.n)

    @property
    def low(self) -> float | None:
        return self.interval[0] if self.interval else None

    @property
    def high(self) -> float | None:
        return self.interval[1] if self.interval else None


@dataclass(frozen=True)
class Figures:
    """What a group of attempts delivered: pass rate, corrections, and per task
    (every call of the attempt counted) the mean cost, the median and 95th
    percentile latency and the mean output tokens."""

    rate: Rate
    corrected: int
    cost: float
    latency_p50_ms: float
    latency_p95_ms: float
    tokens_out: float

    @property
    def n(self) -> int:
        return self.rate.n


def figures_of(rows: Sequence[Mapping[str, Any]]) -> Figures:
    latencies = np.array([float(r["latency_ms"]) for r in rows]) if rows else np.zeros(1)
    return Figures(
        rate=Rate(sum(1 for r in rows if r["verdict"] in PASSING), len(rows)),
        corrected=sum(1 for r in rows if r["verdict"] == Pattern.Verdict.CORRECTED),
        cost=sum(r["spent"] or 0.0 for r in rows) / len(rows) if rows else 0.0,
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p95_ms=float(np.percentile(latencies, 95)),
        tokens_out=float(np.mean([r["tokens_out"] for r in rows])) if rows else 0.0,
    )


@dataclass(frozen=True)
class TierFigures:
    """The attempts whose answer was taken from this tier (of the active version)."""

    tier: int | None
    model: str
    simulated: bool
    figures: Figures


@dataclass(frozen=True)
class SettingFigures:
    """The attempts whose answer came from this tier and model called with these
    generation parameters (None: not set, the provider's default)."""

    tier: int | None
    model: str
    simulated: bool
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    versions: tuple[int, ...]
    figures: Figures

    @property
    def sampling(self) -> tuple[float | None, float | None]:
        return (self.temperature, self.top_p)


@dataclass(frozen=True)
class Depth:
    """The cascade stopped after tier ``tier``, on the same attempts: its pass rate
    and its cost per task (the calls up to that tier). ``dominated``: a shallower
    depth passed at least as often for less (point estimates)."""

    tier: int
    model: str
    simulated: bool
    rate: Rate
    cost: float
    unknown: int
    dominated: bool = False


@dataclass(slots=True)
class Call:
    """One tier's answer in an attempt (a ledger row)."""

    tier: int
    provider: str
    model: str
    accepted: bool
    would_pass: bool | None
    confidence: float | None
    cost: float
    cached: bool
    error: bool
    tokens_out: int


@dataclass(slots=True)
class Attempt:
    """A finished attempt of the active version, with its verdict (its pattern)
    and its calls by tier (the ledger). ``spent`` is what its calls cost up to and
    including each tier it called (the depths read it for every tier)."""

    task_id: int
    attempt: int
    capability: str
    verdict: str
    tier: int | None
    model: str
    params: Mapping[str, Any]
    calls: Mapping[int, Call]
    passed: bool = False
    spent: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.passed = self.verdict in PASSING
        total = 0.0
        for tier in sorted(self.calls):
            total += self.calls[tier].cost
            self.spent[tier] = total

    def answer(self, tier: int) -> bool | None:
        """Whether tier ``tier``'s own answer passed (the taken one) or would have
        (one passed over); False for an error; None when not known."""
        if tier == self.tier:
            return self.passed
        call = self.calls.get(tier)
        if call is None or call.accepted:
            return None
        return False if call.error else call.would_pass

    def outcome(self, depth: int) -> bool | None:
        """Whether the cascade stopped after tier ``depth`` would have passed."""
        if self.tier is None:
            return None
        if self.tier <= depth:
            return self.passed
        return self.answer(depth)

    def cost_to(self, depth: int) -> float:
        last = depth if self.tier is None else min(depth, self.tier)
        return max((spent for tier, spent in self.spent.items() if tier <= last), default=0.0)

    @property
    def output_tokens(self) -> int | None:
        """The taken answer's length in tokens (its call's), None when not known
        (a cache hit spends no tokens)."""
        call = self.calls.get(self.tier) if self.tier is not None else None
        return call.tokens_out if call is not None and call.tokens_out > 0 else None


@dataclass
class CapabilityEvidence:
    """One capability's evidence (``capability`` None: all of the agent's work)."""

    capability: str | None
    patterns: int
    tiers: list[TierFigures]
    settings: list[SettingFigures]
    depths: list[Depth]
    # Depths left out: too many of their attempts had no known outcome.
    unknown_depths: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.capability is None:
            return "all capabilities"
        return self.capability or NO_CAPABILITY

    @property
    def frontier(self) -> list[Depth]:
        return sorted((d for d in self.depths if not d.dominated), key=lambda d: (d.cost, d.tier))

    @property
    def empty(self) -> bool:
        return not (self.tiers or self.settings or self.depths)


@dataclass
class TuningEvidence:
    """An agent's evidence since ``since``: ``rows``, every pattern read, and
    ``attempts``, the active version's joined with their calls (what the planners
    read); per capability and pooled, aggregated when first asked for (the page
    asks for the capabilities, the planners for neither)."""

    agent: Agent
    since: datetime
    version: int
    patterns: int
    capped: bool
    attempts: list[Attempt]
    rows: list[Mapping[str, Any]]
    tiers: list[Tier]
    models: _Models

    @property
    def days(self) -> int:
        return max(1, round((timezone.now() - self.since).total_seconds() / 86400))

    @property
    def empty(self) -> bool:
        return not self.rows

    @cached_property
    def capabilities(self) -> list[CapabilityEvidence]:
        rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for row in self.rows:
            rows[row["capability"]].append(row)
        attempts: dict[str, list[Attempt]] = defaultdict(list)
        for attempt in self.attempts:
            attempts[attempt.capability].append(attempt)
        return [
            _capability(name, group, self.version, attempts[name], self.tiers, self.models)
            for name, group in sorted(rows.items(), key=lambda item: (-len(item[1]), item[0]))
        ]

    @cached_property
    def overall(self) -> CapabilityEvidence:
        return _capability(None, self.rows, self.version, self.attempts, self.tiers, self.models)


# --- reading --------------------------------------------------------------------------


def _patterns(agent: Agent, since: datetime) -> QuerySet[Pattern]:
    return Pattern.objects.filter(agent=agent, created_at__gte=since).order_by("-created_at", "-pk")


def _pattern_rows(agent: Agent, since: datetime, limit: int) -> list[Mapping[str, Any]]:
    return list(
        _patterns(agent, since)
        # Means need no exact decimals: a float is read without a Decimal per row.
        .annotate(spent=Cast("cost", FloatField()))
        .values(
            "task_id",
            "attempt",
            "capability",
            "prompt_version",
            "tier",
            "model",
            "params",
            "verdict",
            "spent",
            "latency_ms",
            "tokens_out",
        )[:limit]
    )


def _call_rows(agent: Agent, version: int, since: datetime, limit: int) -> list[Mapping[str, Any]]:
    """The calls of the version's newest ``limit`` patterns' tasks (one query: the
    patterns are a subquery)."""
    tasks = _patterns(agent, since).filter(prompt_version=version).values("task_id")[:limit]
    return list(
        ModelCall.objects.filter(
            task_id__in=tasks,
            agent=agent,
            prompt_version=version,
            created_at__gte=since - CALLS_BEFORE_PATTERN,
            source__in=(ModelCall.Source.MODEL, ModelCall.Source.CACHE),
            stale=False,
            tier__isnull=False,
        )
        .order_by("-created_at", "-pk")
        .annotate(spent=Cast("cost", FloatField()))
        .values(
            "task_id",
            "attempt",
            "tier",
            "provider",
            "model",
            "source",
            "accepted",
            "would_pass",
            "confidence",
            "spent",
            "error",
            "tokens_out",
        )[: limit * CALLS_PER_PATTERN]
    )


def _attempts(rows: Iterable[Mapping[str, Any]], calls: Iterable[Mapping[str, Any]]) -> list[Attempt]:
    by_attempt: dict[tuple[int, int], dict[int, Call]] = defaultdict(dict)
    # Newest first: an attempt's latest call of a tier is its answer there.
    for row in calls:
        tiers = by_attempt[(row["task_id"], row["attempt"])]
        tiers.setdefault(
            row["tier"],
            Call(
                tier=row["tier"],
                provider=row["provider"],
                model=row["model"],
                accepted=row["accepted"],
                would_pass=row["would_pass"],
                confidence=row["confidence"],
                cost=row["spent"] or 0.0,
                cached=row["source"] == ModelCall.Source.CACHE,
                error=bool(row["error"]),
                tokens_out=row["tokens_out"],
            ),
        )
    return [
        Attempt(
            task_id=row["task_id"],
            attempt=row["attempt"],
            capability=row["capability"],
            verdict=row["verdict"],
            tier=row["tier"],
            model=row["model"],
            params=row["params"] if isinstance(row["params"], dict) else {},
            calls=by_attempt.get((row["task_id"], row["attempt"]), {}),
        )
        for row in rows
    ]


# --- aggregating ----------------------------------------------------------------------


class _Models:
    """Whether a model is the simulated one: as the ledger recorded its provider,
    else as the agent's cascade names it, else by the simulated models' names."""

    def __init__(self, tiers: Sequence[Tier], calls: Iterable[Mapping[str, Any]]) -> None:
        self.providers = {tier.model: tier.provider for tier in tiers}
        self.providers.update({row["model"]: row["provider"] for row in calls})

    def simulated(self, model: str) -> bool:
        provider = self.providers.get(model)
        return provider == "simulated" if provider else model in SIMULATED_PROFILES


def setting_of(params: Any) -> tuple[Any, Any, Any]:
    """(temperature, top_p, max_tokens) as a pattern's parameters record them (None: not set)."""
    params = params if isinstance(params, dict) else {}
    return params.get("temperature"), params.get("top_p"), params.get("max_tokens")


def _tiers(rows: Sequence[Mapping[str, Any]], models: _Models) -> list[TierFigures]:
    groups: dict[tuple[int | None, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["tier"], row["model"])].append(row)
    return [
        TierFigures(tier=tier, model=model, simulated=models.simulated(model), figures=figures_of(group))
        for (tier, model), group in sorted(groups.items(), key=lambda item: (item[0][0] or 0, item[0][1]))
    ]


def _settings(rows: Sequence[Mapping[str, Any]], models: _Models) -> list[SettingFigures]:
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["tier"], row["model"], *setting_of(row["params"]))].append(row)
    settings = [
        SettingFigures(
            tier=tier,
            model=model,
            simulated=models.simulated(model),
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            versions=tuple(sorted({r["prompt_version"] for r in group if r["prompt_version"] is not None})),
            figures=figures_of(group),
        )
        for (tier, model, temperature, top_p, max_tokens), group in groups.items()
    ]
    return sorted(settings, key=lambda s: (s.tier or 0, s.model, -s.figures.n))


def dominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (cost, rate), whether another point is at least as good on both and
    better on one (the cost / pass-rate Pareto frontier is the rest)."""
    return [
        any((c <= cost and r >= rate) and (c < cost or r > rate) for j, (c, r) in enumerate(points) if j != i)
        for i, (cost, rate) in enumerate(points)
    ]


def _depths(
    attempts: Sequence[Attempt], tiers: Sequence[Tier], models: _Models
) -> tuple[list[Depth], list[int]]:
    deepest = max([len(tiers), *(t for a in attempts for t in a.calls)], default=0)
    depths: list[Depth] = []
    left_out: list[int] = []
    answered = [a for a in attempts if a.calls]
    for depth in range(1, deepest + 1):
        # Counted, not listed: a few thousand attempts a depth, a page view.
        passes = scored = 0
        spent = 0.0
        for attempt in answered:
            outcome = attempt.outcome(depth)
            if outcome is None:
                continue
            scored += 1
            passes += outcome
            spent += attempt.cost_to(depth)
        unknown = len(answered) - scored
        if not scored:
            continue
        if unknown > MAX_UNKNOWN_SHARE * len(answered):
            left_out.append(depth)
            continue
        model = tiers[depth - 1].model if depth <= len(tiers) else ""
        if not model:
            model = next((a.calls[depth].model for a in answered if depth in a.calls), "")
        depths.append(
            Depth(
                tier=depth,
                model=model,
                simulated=models.simulated(model),
                rate=Rate(passes, scored),
                cost=spent / scored,
                unknown=unknown,
            )
        )
    flags = dominated([(d.cost, d.rate.rate or 0.0) for d in depths])
    return [
        Depth(**{**d.__dict__, "dominated": flag}) if flag else d
        for d, flag in zip(depths, flags, strict=True)
    ], left_out


def _capability(
    capability: str | None,
    rows: Sequence[Mapping[str, Any]],
    version: int,
    attempts: Sequence[Attempt],
    tiers: Sequence[Tier],
    models: _Models,
) -> CapabilityEvidence:
    current = [r for r in rows if r["prompt_version"] == version]
    depths, left_out = _depths(attempts, tiers, models)
    return CapabilityEvidence(
        capability=capability,
        patterns=len(rows),
        tiers=_tiers(current, models),
        settings=_settings(rows, models),
        depths=depths,
        unknown_depths=left_out,
    )


def agent_tuning_evidence_get(
    agent: Agent, *, since: datetime | None = None, limit: int = MAX_PATTERNS
) -> TuningEvidence:
    """The agent's tiers, settings and depths since ``since`` (the last 30 days by
    default), per capability and pooled: two queries, at most ``limit`` patterns."""
    since = since if since is not None else timezone.now() - WINDOW
    version = agent.prompt_version
    rows = _pattern_rows(agent, since, limit)
    current = [r for r in rows if r["prompt_version"] == version]
    calls = _call_rows(agent, version, since, len(current)) if current else []
    try:
        tiers = parse_cascade(agent.cascade)
    except ConfigError:
        tiers = []
    return TuningEvidence(
        agent=agent,
        since=since,
        version=version,
        patterns=len(rows),
        capped=len(rows) == limit,
        attempts=_attempts(current, calls),
        rows=rows,
        tiers=tiers,
        models=_Models(tiers, calls),
    )


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else math.nan
