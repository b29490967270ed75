"""Muda: the seven wastes of the line, per board and per agent, over a time window,
with their cost in dollars, a target and a trend.

Everything is computed from what the line already records: the ledger
(``ModelCall``: every call, its tier, source, tokens, cost, request key, context
window and, for an output the cascade passed over, whether it would have passed
inspection), the inspections, the escalations and the task event log.

Three parts:

- pure functions over plain rows (``CallRow``, ``InspectionRow``, ``EscalationRow``,
  ``EventRow``, ``ColumnRow``), one per waste, tested against values worked out by
  hand: ``overproduction``, ``waiting``, ``transport``, ``over_processing``,
  ``inventory``, ``motion``, ``defects`` (and ``token_efficiency``,
  ``escalation_rate`` from them), ``report`` and ``trend``; with
  ``muda_history_get``, which reads those rows for a window, they are the
  reference (every row of the window read into Python: seconds for a busy week);
- ``muda_report_get``, what the page, the API and the thresholds read: the same
  report from the rollups the line keeps as it records (andon.muda_rollups: sums
  per board, agent and hour, a row per finished item and per repeated call),
  with the parts of an hour at the window's edges computed from their rows by
  the same per-run function, in a fixed number of queries and about 0.1 s for a
  week of 100,000 tasks (bench/muda.py). Where they differ, and why: a call is
  joined to its run's inspection and escalation whenever they came (the
  reference joins only those in the window), a call repeating one from before
  the window is redundant too, and context-window percentiles are read from a
  histogram (andon.muda_rollups.context_bucket), at most a bucket's width above
  the exact one;
- ``waste_value`` and ``waste_measure`` give one number for the budgets and
  thresholds (``last_outputs``: over the last N inspected outputs).

The trend's periods are clock hours (windows up to 48 hours) or days (UTC), the
first from the window's start to the next boundary.

Values are percentages (unit ``%``) except transport (model calls per finished
item). Percentiles are nearest-rank. Costs are dollars, as floats.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models import Case, Count, IntegerField, Max, Min, Q, Sum, Value, When
from django.utils import timezone

from andon import muda_rollups
from andon.models import Escalation, Inspection, MudaContextHour, MudaFinish, MudaHour, MudaRepeat
from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent

WASTES = ("overproduction", "waiting", "transport", "over_processing", "inventory", "motion", "defects")
MEASURES = ("token_efficiency", "escalation_rate")
NAMES = WASTES + MEASURES

# The window when none is given, and the longest one asked for.
DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=366)
# Up to this window the trend is per hour, beyond it per day.
HOURLY_UP_TO = timedelta(hours=48)

Status = Task.Status
ACTIVE_STATUSES = (Status.BACKLOG, Status.READY, Status.RUNNING, Status.REVIEW)


# --- rows ----------------------------------------------------------------------------


class CallRow(NamedTuple):
    """One ledger row (ModelCall), as the wastes read it."""

    task_id: int
    agent_id: int | None
    attempt: int
    tier: int | None
    source: str  # model, cache, reuse
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    cost: float
    accepted: bool
    stale: bool
    error: bool
    request_key: str
    context_window: int | None
    would_pass: bool | None
    at: datetime


class InspectionRow(NamedTuple):
    pk: int
    task_id: int
    agent_id: int | None
    attempt: int
    passed: bool
    waste_tokens: int
    tokens_out: int
    at: datetime


class EscalationRow(NamedTuple):
    task_id: int
    agent_id: int | None
    inspection_id: int
    attempt: int
    status: str
    at: datetime


class EventRow(NamedTuple):
    task_id: int
    kind: str
    from_status: str
    to_status: str
    at: datetime


class ColumnRow(NamedTuple):
    """A column now: its WIP limit, the items in it and the oldest one's age start."""

    pk: int
    name: str
    role: str
    wip_limit: int | None
    items: int
    oldest: datetime | None


@dataclass(frozen=True)
class History:
    """What the wastes are computed from, for one board (or every board) and
    maybe one agent, over [since, until)."""

    since: datetime
    until: datetime
    calls: Sequence[CallRow] = ()
    inspections: Sequence[InspectionRow] = ()
    escalations: Sequence[EscalationRow] = ()
    # Every event of each item that finished (entered Done) in the window, oldest first.
    finished_events: Sequence[EventRow] = ()
    # Every ledger row of each item that finished in the window (any time).
    finished_calls: Sequence[CallRow] = ()
    # The board's columns now (empty for a window in the past, or every board).
    columns: Sequence[ColumnRow] = ()
    agent_names: dict[int, str] = field(default_factory=dict)
    # Now: the age of items above a WIP limit is measured to here.
    now: datetime | None = None
    # How long an identical call is within reach of the response cache, in seconds.
    cache_seconds: int = 0


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Waste:
    """One waste (or measure): its value (None: no data in the window), unit, the
    dollars it cost (None: it spends no model money), target, which way is
    better, whether the target is met, a definition and its parts."""

    name: str
    label: str
    value: float | None
    unit: str
    cost: float | None
    target: float
    better: str  # "lower" or "higher": the target is met strictly below or above it
    definition: str
    parts: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value < self.target if self.better == "lower" else self.value > self.target


@dataclass(frozen=True)
class AgentContext:
    """Context-window utilisation of one agent's calls: prompt tokens over the
    tier's window, in percent."""

    agent_id: int | None
    name: str
    calls: int
    peak: float
    p95: float
    models: tuple[tuple[str, str], ...]  # (provider, model)


@dataclass(frozen=True)
class WipExcess:
    """A column holding more items than its WIP limit, now."""

    column: str
    role: str
    count: int
    limit: int
    excess: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class TrendPoint:
    start: datetime
    values: dict[str, float | None]


@dataclass(frozen=True)
class MudaReport:
    since: datetime
    until: datetime
    period: str  # "hour" or "day"
    wastes: tuple[Waste, ...]  # the seven, in WASTES order
    token_efficiency: Waste
    escalation_rate: Waste
    trend: tuple[TrendPoint, ...]
    context_by_agent: tuple[AgentContext, ...]
    wip_excess: tuple[WipExcess, ...]
    # Outputs that failed inspection and reached Done without a person's decision
    # (a board without a Review column): the seed's target is zero.
    unreviewed_defects: int

    def waste(self, name: str) -> Waste:
        for item in (*self.wastes, self.token_efficiency, self.escalation_rate):
            if item.name == name:
                return item
        raise KeyError(name)


# --- definitions (shown on the page and in the API) -------------------------------------

DEFINITIONS = {
    "overproduction": (
        "Output tokens that did not reach a finished output, as a share of all output tokens the "
        "models produced in the window: outputs of cascade tiers passed over by early exit (and of "
        "runs whose lease had run out), drafts a reviewer rejected, and tokens of taken outputs "
        "beyond the inspection's estimate of the optimal length (its token-waste check). The cost "
        "is what those calls cost, whole for a passed-over or rejected output (its prompt was paid "
        "for nothing), and for excess tokens their share of the call's tokens."
    ),
    "waiting": (
        "Time items spent waiting in a queue (Backlog, Ready, Review and waiting for a person's "
        "decision on an escalation) as a share of their lead time (created to Done), over the items "
        "that finished in the window: one minus flow efficiency. Blocked time is shown apart and "
        "left out of the queues. Waiting spends no model money: its cost is delay, not dollars."
    ),
    "transport": (
        "Model calls per finished item: every call made for the items that finished in the window, "
        "on every attempt (cache hits and reused results are not calls). One is the least a model "
        "answer takes. The cost is what the calls beyond the one whose answer was taken cost."
    ),
    "over_processing": (
        "Items whose answer was taken from a stronger tier (k > 1) while a cheaper tier's answer, "
        "passed over by the cascade, would have passed the same inspection, as a share of the "
        "answers taken in the window. Counted only where the data shows it: each passed-over "
        "answer is inspected as it is made (custom checks excepted, so those are unknown). The "
        "cost is what the tiers above the cheapest passing one cost."
    ),
    "inventory": (
        "Context-window utilisation: a model call's prompt tokens over its tier's context window, "
        "95th percentile (nearest rank) of the window's calls, with the peak and each agent's "
        "beside it; prompts near the window crowd out the answer and get cut. Items above their "
        "column's WIP limit, and the age of the oldest, are shown beside it for now: hard limits "
        "keep them at zero, so a share of time would say little. No model money is counted here."
    ),
    "motion": (
        "Redundant model calls, as a share of all model calls in the window: a call identical to "
        "an earlier one (same provider, model, rendered prompt and parameters, by request key) in "
        "the same task, or in another task within the response cache's lifetime, made again "
        "instead of being served from the cache. Results served from the cache or reused from an "
        "identical task are motion avoided, shown beside it. The cost is what the redundant calls cost."
    ),
    "defects": (
        "Outputs that failed inspection, as a share of the outputs inspected in the window, with "
        "retries (attempts after the first), provider errors, escalations and reviewers' "
        "decisions (approved as is, edited, rejected) beside it. The cost is what the attempts "
        "whose output failed inspection, or that gave no output, cost."
    ),
    "token_efficiency": (
        "Output tokens that reached a finished output, as a share of all output tokens: one minus "
        "overproduction."
    ),
    "escalation_rate": (
        "Escalations to a person (the andon inbox) as a share of the outputs inspected in the window."
    ),
}

LABELS = {
    "overproduction": "Overproduction",
    "waiting": "Waiting",
    "transport": "Transport",
    "over_processing": "Over-processing",
    "inventory": "Inventory",
    "motion": "Motion",
    "defects": "Defects",
    "token_efficiency": "Token efficiency",
    "escalation_rate": "Human escalation rate",
}

# name -> (target, better, unit). Why each target:
TARGETS: dict[str, tuple[float, str, str]] = {
    # The seed's token efficiency above 80%.
    "overproduction": (20.0, "lower", "%"),
    # Knowledge work commonly runs at 15-40% flow efficiency; a line of agents,
    # which wait on no meeting, should spend most of an item's time on it.
    "waiting": (50.0, "lower", "%"),
    # A two-tier cascade that sends one item in two to its second tier makes 1.5.
    "transport": (1.5, "lower", "calls/item"),
    "over_processing": (5.0, "lower", "%"),
    # Past about 80% of the window a prompt leaves little room for the answer.
    "inventory": (80.0, "lower", "%"),
    "motion": (5.0, "lower", "%"),
    # As the escalation rate: a defect is what a person would otherwise see.
    "defects": (5.0, "lower", "%"),
    "token_efficiency": (80.0, "higher", "%"),
    "escalation_rate": (5.0, "lower", "%"),
}


def _waste(name: str, value: float | None, cost: float | None, **parts: float | int | None) -> Waste:
    target, better, unit = TARGETS[name]
    return Waste(
        name=name,
        label=LABELS[name],
        value=None if value is None else round(value, 4),
        unit=unit,
        cost=None if cost is None else round(cost, 10),
        target=target,
        better=better,
        definition=DEFINITIONS[name],
        parts=parts,
    )


def _percent(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): the smallest value with at least q%
    of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _groups(calls: Iterable[CallRow]) -> dict[tuple[int, int], list[CallRow]]:
    """Calls by run: (task, attempt)."""
    runs: dict[tuple[int, int], list[CallRow]] = defaultdict(list)
    for call in calls:
        runs[(call.task_id, call.attempt)].append(call)
    return runs


# --- the seven wastes ---------------------------------------------------------------------


def overproduction(
    calls: Sequence[CallRow], inspections: Sequence[InspectionRow], escalations: Sequence[EscalationRow]
) -> Waste:
    rejected = {(e.task_id, e.attempt) for e in escalations if e.status == Escalation.Status.REJECTED}
    excess_by_run = {(i.task_id, i.attempt): i.waste_tokens for i in inspections}
    total = discarded = rejected_tokens = excess = 0
    cost = 0.0
    for call in calls:
        if call.source != ModelCall.Source.MODEL:
            continue
        total += call.tokens_out
        run = (call.task_id, call.attempt)
        if not call.accepted:
            discarded += call.tokens_out
            cost += call.cost
        elif run in rejected:
            rejected_tokens += call.tokens_out
            cost += call.cost
        else:
            over = min(excess_by_run.get(run, 0), call.tokens_out)
            if over:
                excess += over
                cost += call.cost * over / (call.tokens_in + call.tokens_out)
    wasted = discarded + rejected_tokens + excess
    return _waste(
        "overproduction",
        _percent(wasted, total),
        cost,
        output_tokens=total,
        wasted_tokens=wasted,
        passed_over_tokens=discarded,
        rejected_tokens=rejected_tokens,
        excess_tokens=excess,
    )


def token_efficiency(over: Waste) -> Waste:
    value = None if over.value is None else 100.0 - over.value
    return _waste("token_efficiency", value, over.cost, **over.parts)


def waiting(events: Sequence[EventRow], since: datetime, until: datetime) -> Waste:
    """Over the items whose (last) entry into Done falls in [since, until)."""
    by_task: dict[int, list[EventRow]] = defaultdict(list)
    for event in events:
        by_task[event.task_id].append(event)
    totals = dict.fromkeys(("backlog", "ready", "review", "decision", "blocked", "lead"), 0.0)
    items = 0
    for task_events in by_task.values():
        task_events.sort(key=lambda e: e.at)
        done_at = None
        for event in task_events:
            if (
                event.to_status == Status.DONE
                and event.from_status != Status.DONE
                and since <= event.at < until
            ):
                done_at = event.at
        if done_at is None:
            continue
        items += 1
        for name, seconds in muda_rollups.queue_times(task_events, done_at).items():
            totals[name] += seconds
    queued = totals["backlog"] + totals["ready"] + totals["review"] + totals["decision"]
    per_item = {f"{name}_s_per_item": (totals[name] / items if items else None) for name in totals}
    return _waste("waiting", _percent(queued, totals["lead"]), None, finished_items=items, **per_item)


def transport(finished_calls: Sequence[CallRow]) -> Waste:
    items: dict[int, list[CallRow]] = defaultdict(list)
    for call in finished_calls:
        items[call.task_id].append(call)
    calls = extra_cost = 0.0
    for rows in items.values():
        model = [r for r in rows if r.source == ModelCall.Source.MODEL]
        calls += len(model)
        taken = max(
            (r for r in rows if r.accepted),
            key=lambda r: (r.attempt, r.at),
            default=None,
        )
        extra_cost += sum(r.cost for r in model if r is not taken)
    value = calls / len(items) if items else None
    return _waste("transport", value, extra_cost, finished_items=len(items), model_calls=int(calls))


def over_processing(calls: Sequence[CallRow]) -> Waste:
    taken = above_first = known = over = 0
    cost = 0.0
    for rows in _groups(calls).values():
        accepted = [r for r in rows if r.accepted and not r.stale]
        if not accepted:
            continue
        taken += 1
        tier = accepted[-1].tier or 1
        if tier <= 1:
            continue
        above_first += 1
        cheaper = [r for r in rows if r.tier is not None and r.tier < tier and not r.error]
        passing = [r.tier for r in cheaper if r.would_pass and r.tier is not None]
        if passing:
            known += 1
            over += 1
            cheapest = min(passing)
            cost += sum(r.cost for r in rows if r.tier is not None and r.tier > cheapest)
        elif cheaper and all(r.would_pass is False for r in cheaper):
            known += 1
    return _waste(
        "over_processing",
        _percent(over, taken),
        cost,
        answers_taken=taken,
        taken_above_tier_1=above_first,
        with_cheaper_verdict=known,
        over_processed=over,
    )


def context_by_agent(calls: Sequence[CallRow], names: dict[int, str]) -> tuple[AgentContext, ...]:
    shares: dict[int | None, list[float]] = defaultdict(list)
    models: dict[int | None, set[tuple[str, str]]] = defaultdict(set)
    for call in calls:
        if call.source == ModelCall.Source.MODEL and call.context_window and call.tokens_in:
            shares[call.agent_id].append(100.0 * call.tokens_in / call.context_window)
            models[call.agent_id].add((call.provider, call.model))
    return tuple(
        AgentContext(
            agent_id=agent_id,
            name=names.get(agent_id, "no agent") if agent_id is not None else "no agent",
            calls=len(values),
            peak=round(max(values), 4),
            p95=round(percentile(values, 95) or 0.0, 4),
            models=tuple(sorted(models[agent_id])),
        )
        for agent_id, values in sorted(shares.items(), key=lambda item: names.get(item[0] or 0, ""))
    )


def wip_excess(columns: Sequence[ColumnRow], now: datetime | None) -> tuple[WipExcess, ...]:
    return tuple(
        WipExcess(
            column=c.name,
            role=c.role,
            count=c.items,
            limit=c.wip_limit,
            excess=c.items - c.wip_limit,
            oldest_age_s=(now - c.oldest).total_seconds() if now and c.oldest else None,
        )
        for c in columns
        if c.wip_limit is not None and c.items > c.wip_limit
    )


def inventory(calls: Sequence[CallRow], columns: Sequence[ColumnRow], now: datetime | None) -> Waste:
    shares = [
        100.0 * c.tokens_in / c.context_window
        for c in calls
        if c.source == ModelCall.Source.MODEL and c.context_window and c.tokens_in
    ]
    excess = wip_excess(columns, now)
    ages = [e.oldest_age_s for e in excess if e.oldest_age_s is not None]
    return _waste(
        "inventory",
        percentile(shares, 95),
        None,
        calls_measured=len(shares),
        peak=round(max(shares), 4) if shares else None,
        items_above_wip_limits=sum(e.excess for e in excess),
        oldest_above_limit_age_s=max(ages) if ages else None,
    )


def redundant_calls(calls: Sequence[CallRow], cache_seconds: int) -> dict[CallRow, str]:
    """Which model calls repeat an earlier identical one (by request key): "task"
    when the same task made it before, "cache" when another task did within the
    cache's lifetime. Failed calls neither count nor are counted against."""
    found: dict[CallRow, str] = {}
    seen_in_task: set[tuple[int, str]] = set()
    last_seen: dict[str, datetime] = {}
    for call in sorted(calls, key=lambda c: c.at):
        if not call.request_key or call.error:
            continue
        if call.source == ModelCall.Source.MODEL:
            earlier = last_seen.get(call.request_key)
            if (call.task_id, call.request_key) in seen_in_task:
                found[call] = "task"
            elif earlier is not None and (call.at - earlier).total_seconds() < cache_seconds:
                found[call] = "cache"
        seen_in_task.add((call.task_id, call.request_key))
        last_seen[call.request_key] = call.at
    return found


def motion(
    calls: Sequence[CallRow], cache_seconds: int, redundant: dict[CallRow, str] | None = None
) -> Waste:
    """``redundant``: the verdicts of ``redundant_calls`` over a longer stretch (a
    trend's period is judged with the calls of the periods before it)."""
    if redundant is None:
        redundant = redundant_calls(calls, cache_seconds)
    sources: dict[str, int] = defaultdict(int)
    kinds: dict[str, int] = defaultdict(int)
    cost = 0.0
    for call in calls:
        sources[call.source] += 1
        kind = redundant.get(call)
        if kind is not None:
            kinds[kind] += 1
            cost += call.cost
    model_calls = sources[ModelCall.Source.MODEL]
    return _waste(
        "motion",
        _percent(kinds["task"] + kinds["cache"], model_calls),
        cost,
        model_calls=model_calls,
        redundant_calls=kinds["task"] + kinds["cache"],
        redundant_in_task=kinds["task"],
        redundant_in_cache_window=kinds["cache"],
        served_from_cache=sources[ModelCall.Source.CACHE],
        reused_results=sources[ModelCall.Source.REUSE],
    )


def defects(
    calls: Sequence[CallRow], inspections: Sequence[InspectionRow], escalations: Sequence[EscalationRow]
) -> Waste:
    failed_runs = {(i.task_id, i.attempt) for i in inspections if not i.passed}
    inspected_runs = {(i.task_id, i.attempt) for i in inspections}
    cost = 0.0
    retries = 0
    for run, rows in _groups(calls).items():
        if run[1] > 1:
            retries += 1
        gave_output = any(r.accepted for r in rows) or run in inspected_runs
        if run in failed_runs or not gave_output:
            cost += sum(r.cost for r in rows)
    statuses: dict[str, int] = defaultdict(int)
    for escalation in escalations:
        statuses[escalation.status] += 1
    failed = len([i for i in inspections if not i.passed])
    return _waste(
        "defects",
        _percent(failed, len(inspections)),
        cost,
        inspected=len(inspections),
        failed_inspection=failed,
        retries=retries,
        provider_errors=sum(1 for c in calls if c.error),
        escalations=len(escalations),
        approved=statuses[Escalation.Status.APPROVED],
        edited=statuses[Escalation.Status.CORRECTED],
        rejected=statuses[Escalation.Status.REJECTED],
        open=statuses[Escalation.Status.OPEN],
    )


def escalation_rate(inspections: Sequence[InspectionRow], escalations: Sequence[EscalationRow]) -> Waste:
    return _waste(
        "escalation_rate",
        _percent(len(escalations), len(inspections)),
        None,
        escalations=len(escalations),
        inspected=len(inspections),
    )


def unreviewed_defects(inspections: Sequence[InspectionRow], escalations: Sequence[EscalationRow]) -> int:
    escalated = {e.inspection_id for e in escalations}
    return sum(1 for i in inspections if not i.passed and i.pk not in escalated)


# --- the report and its trend -------------------------------------------------------------


def wastes_of(
    history: History, redundant: dict[CallRow, str] | None = None, whole: History | None = None
) -> dict[str, Waste]:
    """Every waste of ``history``. A trend's period passes the whole window as
    ``whole``: its calls' inspections and rejections may fall in the next period."""
    joins = whole or history
    over = overproduction(history.calls, joins.inspections, joins.escalations)
    return {
        "overproduction": over,
        "waiting": waiting(history.finished_events, history.since, history.until),
        "transport": transport(history.finished_calls),
        "over_processing": over_processing(history.calls),
        "inventory": inventory(history.calls, history.columns, history.now),
        "motion": motion(history.calls, history.cache_seconds, redundant),
        "defects": defects(history.calls, history.inspections, history.escalations),
        "token_efficiency": token_efficiency(over),
        "escalation_rate": escalation_rate(history.inspections, history.escalations),
    }


def period_of(since: datetime, until: datetime) -> str:
    return "hour" if until - since <= HOURLY_UP_TO else "day"


def period_starts(since: datetime, until: datetime, period: str) -> list[datetime]:
    """The trend's periods: clock hours or days (UTC), the first from ``since`` to
    the next boundary when it falls between two (so that a period's sums come
    from the hourly rollups, andon.muda_rollups), the last ending at ``until``."""
    step = timedelta(hours=1) if period == "hour" else timedelta(days=1)
    boundary = muda_rollups.hour_of(since)
    if period == "day":
        boundary = boundary.replace(hour=0)
    starts, at = [since], boundary + step
    while at < until:
        starts.append(at)
        at += step
    return starts


def trend(history: History, period: str) -> tuple[TrendPoint, ...]:
    """Each waste per period: the window's rows split by time (items by when they
    finished), each part computed as the whole window is. WIP now is not in it."""
    starts = period_starts(history.since, history.until, period)

    def split(rows: Iterable, key=lambda r: r.at) -> list[list]:
        buckets: list[list] = [[] for _ in starts]
        for row in rows:
            at = key(row)
            if history.since <= at < history.until:
                buckets[muda_rollups.period_index(starts, at)].append(row)
        return buckets

    calls, inspections, escalations = (
        split(history.calls),
        split(history.inspections),
        split(history.escalations),
    )
    # An item's events and calls go to the period it finished in.
    finished_at: dict[int, datetime] = {}
    for event in history.finished_events:
        if (
            event.to_status == Status.DONE
            and event.from_status != Status.DONE
            and history.since <= event.at < history.until
        ):
            finished_at[event.task_id] = max(event.at, finished_at.get(event.task_id, event.at))
    events = split(
        (e for e in history.finished_events if e.task_id in finished_at), key=lambda e: finished_at[e.task_id]
    )
    item_calls = split(
        (c for c in history.finished_calls if c.task_id in finished_at), key=lambda c: finished_at[c.task_id]
    )
    # Judged over the whole window: a call repeating one from an earlier period is redundant too.
    redundant = redundant_calls(history.calls, history.cache_seconds)
    points = []
    for i, start in enumerate(starts):
        part = History(
            since=start,
            until=starts[i + 1] if i + 1 < len(starts) else history.until,
            calls=calls[i],
            inspections=inspections[i],
            escalations=escalations[i],
            finished_events=events[i],
            finished_calls=item_calls[i],
            cache_seconds=history.cache_seconds,
        )
        values = {n: w.value for n, w in wastes_of(part, redundant, history).items()}
        points.append(TrendPoint(start=start, values=values))
    return tuple(points)


def report(history: History, *, with_trend: bool = True) -> MudaReport:
    wastes = wastes_of(history)
    period = period_of(history.since, history.until)
    return MudaReport(
        since=history.since,
        until=history.until,
        period=period,
        wastes=tuple(wastes[name] for name in WASTES),
        token_efficiency=wastes["token_efficiency"],
        escalation_rate=wastes["escalation_rate"],
        trend=trend(history, period) if with_trend else (),
        context_by_agent=context_by_agent(history.calls, history.agent_names),
        wip_excess=wip_excess(history.columns, history.now),
        unreviewed_defects=unreviewed_defects(history.inspections, history.escalations),
    )


# --- reading ---------------------------------------------------------------------------------

_CALL_FIELDS = (
    "task_id",
    "agent_id",
    "attempt",
    "tier",
    "source",
    "provider",
    "model",
    "tokens_in",
    "tokens_out",
    "cost",
    "accepted",
    "stale",
    "error",
    "request_key",
    "context_window",
    "would_pass",
    "created_at",
)


def _call_rows(queryset) -> list[CallRow]:
    return [
        CallRow(t, a, n, tier, src, prov, mod, ti, to, float(cost), acc, stale, bool(err), key, win, wp, at)
        for (
            t,
            a,
            n,
            tier,
            src,
            prov,
            mod,
            ti,
            to,
            cost,
            acc,
            stale,
            err,
            key,
            win,
            wp,
            at,
        ) in queryset.values_list(*_CALL_FIELDS)
    ]


def _scope(
    board: Board | None, agent: Agent | None, *, board_field: str = "board", agent_field: str = "agent"
) -> Q:
    q = Q()
    if board is not None:
        q &= Q(**{board_field: board})
    if agent is not None:
        q &= Q(**{agent_field: agent})
    return q


def window_problems(since: datetime | None, until: datetime | None) -> dict[str, list[str]]:
    """What is wrong with a window asked for (by the page's form and the API), per field."""
    problems: dict[str, list[str]] = {}
    for name, value in (("since", since), ("until", until)):
        # The trend steps an hour or a day past the end: the last year has no room for it.
        if value is not None and value.year >= 9999:
            problems[name] = ["Give a date before the year 9999."]
    if problems:
        return problems
    if until is not None and since is None:
        try:
            until - DEFAULT_WINDOW
        except OverflowError:
            problems["until"] = ["The end of the window is out of range: give a date after the year 1."]
    if since is not None and until is not None:
        if since >= until:
            problems["until"] = ["The end of the window must come after its start."]
        elif until - since > MAX_WINDOW:
            problems["since"] = [f"Ask for at most {MAX_WINDOW.days} days at a time."]
    elif since is not None and until is None and timezone.now() - since > MAX_WINDOW:
        problems["since"] = [f"Ask for at most {MAX_WINDOW.days} days at a time (the window ends now)."]
    elif since is not None and until is None and since >= timezone.now():
        problems["since"] = ["The start of the window is in the future: nothing has happened yet."]
    return problems


def muda_window_get(
    *,
    since: datetime | None,
    until: datetime | None,
    now: datetime | None = None,
    board: Board | None = None,
) -> tuple[datetime, datetime]:
    """The window asked for, with the defaults: until now, since DEFAULT_WINDOW
    before it, or since the board was made when that is later (a new board's
    charts would otherwise be a week of nothing with its life squeezed into
    the last pixels)."""
    now = now or timezone.now()
    until = until or now
    if since is None:
        since = until - DEFAULT_WINDOW
        if board is not None and since < board.created_at < until:
            since = board.created_at.replace(second=0, microsecond=0)
    return since, until


def _columns_get(board: Board | None, *, until: datetime, now: datetime) -> list[ColumnRow]:
    """The board's columns now, with their items (whatever the agent: a WIP limit
    is the column's); none for a window that ends in the past (WIP is known now only)."""
    if board is None or until < now - timedelta(minutes=1):
        return []
    # The items in flight, by the board-and-status index: a column's finished
    # items (nearly all of a long history) are never read.
    items = {
        column_id: (n, oldest)
        for column_id, n, oldest in Task.objects.filter(board=board, status__in=ACTIVE_STATUSES)
        .values("column")
        .annotate(n=Count("pk"), oldest=Min("created_at"))
        .values_list("column", "n", "oldest")
        .order_by()
    }
    return [
        ColumnRow(column.pk, column.name, column.role, column.wip_limit, *items.get(column.pk, (0, None)))
        for column in Column.objects.filter(board=board).order_by("position")
    ]


def muda_history_get(
    *,
    board: Board | None = None,
    agent: Agent | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> History:
    """The rows the wastes need, in at most seven queries whatever the history's
    size (but each as long as the window is busy): with ``report``, the reference
    that the rollups (``muda_report_get``) are tested against."""
    now = timezone.now()
    since, until = muda_window_get(since=since, until=until, now=now, board=board)
    in_window = Q(created_at__gte=since, created_at__lt=until)
    scope = _scope(board, agent)
    calls = _call_rows(ModelCall.objects.filter(scope & in_window).order_by("created_at", "pk"))
    inspections = [
        InspectionRow(*row)
        for row in Inspection.objects.filter(scope & in_window)
        .order_by("created_at", "pk")
        .values_list(
            "pk", "task_id", "agent_id", "attempt", "passed", "waste_tokens", "tokens_out", "created_at"
        )
    ]
    escalations = [
        EscalationRow(*row)
        for row in Escalation.objects.filter(scope & in_window)
        .order_by("created_at", "pk")
        .values_list("task_id", "agent_id", "inspection_id", "attempt", "status", "created_at")
    ]
    # The items that finished in the window: entered Done (from another status).
    finished = (
        TaskEvent.objects.filter(
            _scope(board, agent, agent_field="task__agent"),
            in_window,
            to_status=Status.DONE,
        )
        .exclude(from_status=Status.DONE)
        .values("task_id")
    )
    finished_events = [
        EventRow(*row)
        for row in TaskEvent.objects.filter(task_id__in=finished)
        .order_by("created_at", "pk")
        .values_list("task_id", "kind", "from_status", "to_status", "created_at")
    ]
    # The finished items' calls: those already read (in the window and scope), and
    # the others (before the window, or another agent's), read apart so that a
    # busy window's rows are not read and converted twice.
    finished_ids = {event.task_id for event in finished_events}
    finished_calls = [call for call in calls if call.task_id in finished_ids]
    finished_calls += _call_rows(
        ModelCall.objects.filter(task_id__in=finished).exclude(scope & in_window).order_by("created_at", "pk")
    )
    columns = _columns_get(board, until=until, now=now)
    agent_ids = {c.agent_id for c in calls if c.agent_id is not None}
    names = dict(Agent.objects.filter(pk__in=agent_ids).values_list("pk", "name")) if agent_ids else {}
    return History(
        since=since,
        until=until,
        calls=calls,
        inspections=inspections,
        escalations=escalations,
        finished_events=finished_events,
        finished_calls=finished_calls,
        columns=columns,
        agent_names=names,
        now=now,
        cache_seconds=settings.KAIZEN_RESPONSE_CACHE_SECONDS,
    )


# --- from the rollups ---------------------------------------------------------------------


@dataclass
class Sums:
    """What the wastes sum over a period, from the rollups (andon.muda_rollups)."""

    hour: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    finish: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    redundant_in_task: int = 0
    redundant_in_cache_window: int = 0
    redundant_cost: float = 0.0
    # (agent or 0, provider, model) -> bucket -> [calls, peak]
    context: dict[tuple[int, str, str], dict[int, list[float]]] = field(
        default_factory=lambda: defaultdict(dict)
    )

    def add_context(self, key: tuple[int, str, str], bucket: int, calls: float, peak: float) -> None:
        buckets = self.context[key]
        if bucket in buckets:
            buckets[bucket][0] += calls
            buckets[bucket][1] = max(buckets[bucket][1], peak)
        else:
            buckets[bucket] = [calls, peak]

    def merge(self, other: Sums) -> None:
        for name, value in other.hour.items():
            self.hour[name] += value
        for name, value in other.finish.items():
            self.finish[name] += value
        self.redundant_in_task += other.redundant_in_task
        self.redundant_in_cache_window += other.redundant_in_cache_window
        self.redundant_cost += other.redundant_cost
        for key, buckets in other.context.items():
            for bucket, (calls, peak) in buckets.items():
                self.add_context(key, bucket, calls, peak)


def _histogram_percentile(buckets: dict[int, list[float]], q: float) -> float | None:
    """Nearest rank over a histogram: the largest value in the bucket that holds
    the rank (andon.muda_rollups.context_bucket says how wide a bucket is)."""
    total = sum(calls for calls, _ in buckets.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0.0
    for bucket in sorted(buckets):
        seen += buckets[bucket][0]
        if seen >= rank:
            return buckets[bucket][1]
    return None  # pragma: no cover: the ranks add up to the total


def _merged(histograms: Iterable[dict[int, list[float]]]) -> dict[int, list[float]]:
    merged: dict[int, list[float]] = {}
    for buckets in histograms:
        for bucket, (calls, peak) in buckets.items():
            if bucket in merged:
                merged[bucket][0] += calls
                merged[bucket][1] = max(merged[bucket][1], peak)
            else:
                merged[bucket] = [calls, peak]
    return merged


def wastes_from(
    sums: Sums, columns: Sequence[ColumnRow] = (), now: datetime | None = None
) -> dict[str, Waste]:
    """Every waste from a period's sums: the same definitions, parts and rounding
    as the row functions above (``wastes_of``)."""
    h = sums.hour

    def n(name: str) -> int:
        return round(h[name])

    wasted = n("passed_over_tokens") + n("rejected_tokens") + n("excess_tokens")
    over = _waste(
        "overproduction",
        _percent(wasted, n("output_tokens")),
        h["overproduction_cost"],
        output_tokens=n("output_tokens"),
        wasted_tokens=wasted,
        passed_over_tokens=n("passed_over_tokens"),
        rejected_tokens=n("rejected_tokens"),
        excess_tokens=n("excess_tokens"),
    )
    f = sums.finish
    items = round(f["items"])
    queued = f["backlog_s"] + f["ready_s"] + f["review_s"] + f["decision_s"]
    per_item = {
        f"{name}_s_per_item": (f[f"{name}_s"] / items if items else None)
        for name in ("backlog", "ready", "review", "decision", "blocked", "lead")
    }
    histogram = _merged(sums.context.values())
    measured = round(sum(calls for calls, _ in histogram.values()))
    excess = wip_excess(columns, now)
    ages = [e.oldest_age_s for e in excess if e.oldest_age_s is not None]
    redundant = sums.redundant_in_task + sums.redundant_in_cache_window
    statuses = {
        "approved": n("escalations_approved"),
        "edited": n("escalations_corrected"),
        "rejected": n("escalations_rejected"),
        "open": n("escalations_open"),
    }
    return {
        "overproduction": over,
        "waiting": _waste("waiting", _percent(queued, f["lead_s"]), None, finished_items=items, **per_item),
        "transport": _waste(
            "transport",
            f["model_calls"] / items if items else None,
            f["extra_cost"],
            finished_items=items,
            model_calls=round(f["model_calls"]),
        ),
        "over_processing": _waste(
            "over_processing",
            _percent(n("over_processed"), n("answers_taken")),
            h["over_processing_cost"],
            answers_taken=n("answers_taken"),
            taken_above_tier_1=n("taken_above_tier_1"),
            with_cheaper_verdict=n("with_cheaper_verdict"),
            over_processed=n("over_processed"),
        ),
        "inventory": _waste(
            "inventory",
            _histogram_percentile(histogram, 95),
            None,
            calls_measured=measured,
            peak=round(max(peak for _, peak in histogram.values()), 4) if histogram else None,
            items_above_wip_limits=sum(e.excess for e in excess),
            oldest_above_limit_age_s=max(ages) if ages else None,
        ),
        "motion": _waste(
            "motion",
            _percent(redundant, n("model_calls")),
            sums.redundant_cost,
            model_calls=n("model_calls"),
            redundant_calls=redundant,
            redundant_in_task=sums.redundant_in_task,
            redundant_in_cache_window=sums.redundant_in_cache_window,
            served_from_cache=n("served_from_cache"),
            reused_results=n("reused_results"),
        ),
        "defects": _waste(
            "defects",
            _percent(n("failed_inspection"), n("inspected")),
            h["defect_cost"],
            inspected=n("inspected"),
            failed_inspection=n("failed_inspection"),
            retries=n("retries"),
            provider_errors=n("provider_errors"),
            escalations=n("escalations"),
            **statuses,
        ),
        "token_efficiency": token_efficiency(over),
        "escalation_rate": _waste(
            "escalation_rate",
            _percent(n("escalations"), n("inspected")),
            None,
            escalations=n("escalations"),
            inspected=n("inspected"),
        ),
    }


def _rollup_scope(board: Board | None, agent: Agent | None) -> Q:
    q = Q()
    if board is not None:
        q &= Q(board=board)
    if agent is not None:
        q &= Q(agent=agent.pk)
    return q


def _period_of(name: str, starts: Sequence[datetime]) -> Case:
    """The number of the period (by the sorted ``starts``) that the field ``name`` falls in, in SQL."""
    last = len(starts) - 1
    whens = [When(**{f"{name}__lt": starts[i + 1]}, then=Value(i)) for i in range(last)]
    return Case(*whens, default=Value(last), output_field=IntegerField())


def muda_sums_get(
    *,
    board: Board | None,
    agent: Agent | None,
    since: datetime,
    until: datetime,
    starts: Sequence[datetime],
    cache_seconds: int,
) -> list[Sums]:
    """Each period's sums (periods from ``starts``; the last ends at ``until``), in
    a fixed number of queries: the rollups' whole hours in the window, and for the
    parts of an hour at its edges, the rows of the runs they touch, through the
    same ``run_facts`` the rollups were written with."""
    periods = [Sums() for _ in starts]
    scope = _rollup_scope(board, agent)

    def period(at: datetime) -> Sums:
        return periods[muda_rollups.period_index(starts, at)]

    first_hour = muda_rollups.hour_of(since)
    if first_hour < since:
        first_hour += muda_rollups.HOUR
    last_hour = muda_rollups.hour_of(until)
    edges: list[tuple[datetime, datetime]] = []
    if first_hour < last_hour:
        hours = scope & Q(hour__gte=first_hour, hour__lt=last_hour)
        for row in (
            MudaHour.objects.filter(hours)
            .values("hour")
            .annotate(**{name: Sum(name) for name in muda_rollups.HOUR_FIELDS})
            .order_by()
        ):
            row_sums: dict[str, Any] = dict(row)
            hour_sums = period(row_sums.pop("hour")).hour
            for name, value in row_sums.items():
                hour_sums[name] += value or 0
        # Summed per period in SQL: a week is thousands of hour rows, a few hundred of these.
        for index, agent_id, provider, model, bucket, calls, peak in (
            MudaContextHour.objects.filter(hours)
            .annotate(period=_period_of("hour", starts))
            .values_list("period", "agent", "provider", "model", "bucket")
            .annotate(Sum("calls"), Max("peak"))
            .order_by()
        ):
            periods[index].add_context((agent_id, provider, model), bucket, calls, peak)
        edges = [(a, b) for a, b in ((since, first_hour), (last_hour, until)) if a < b]
    else:
        edges = [(since, until)]
    if edges:
        _edges_add(periods, starts, edges, board=board, agent=agent)
    # Finishes: each item's last in the window.
    finish_fields = (*muda_rollups.FINISH_FIELDS, "model_calls", "extra_cost")
    for finished in (
        MudaFinish.objects.filter(scope, finished_at__gte=since, finished_at__lt=until)
        .filter(Q(superseded_at__isnull=True) | Q(superseded_at__gte=until))
        .annotate(period=_period_of("finished_at", starts))
        .values("period")
        .annotate(items=Count("pk"), **{name: Sum(name) for name in finish_fields})
        .order_by()
    ):
        finish_row: dict[str, Any] = dict(finished)
        finish_sums = periods[finish_row.pop("period")].finish
        for name, value in finish_row.items():
            finish_sums[name] += value or 0
    # Repeats: judged by the response cache's lifetime now.
    gap = "agent_gap_s" if agent is not None else "board_gap_s"
    for at, in_task, cost in (
        MudaRepeat.objects.filter(scope, at__gte=since, at__lt=until)
        .filter(Q(in_task=True) | Q(**{f"{gap}__lt": cache_seconds}))
        .values_list("at", "in_task", "cost")
    ):
        repeat = period(at)
        if in_task:
            repeat.redundant_in_task += 1
        else:
            repeat.redundant_in_cache_window += 1
        repeat.redundant_cost += cost
    return periods


def _edges_add(
    periods: list[Sums],
    starts: Sequence[datetime],
    edges: list[tuple[datetime, datetime]],
    *,
    board: Board | None,
    agent: Agent | None,
) -> None:
    """Add the facts of the parts of hours at the window's edges, from the rows of
    the runs that have a row in them (six queries, over an hour or two of rows)."""
    when = Q()
    for a, b in edges:
        when |= Q(created_at__gte=a, created_at__lt=b)
    where = _scope(board, agent) & when
    runs: set[tuple[int, int]] = set()
    for model in (ModelCall, Inspection, Escalation):
        runs.update(model.objects.filter(where).values_list("task_id", "attempt").order_by())
    if not runs:
        return
    tasks = {task for task, _ in runs}
    calls = [
        c
        for c in muda_rollups.calls_of(ModelCall.objects.filter(task_id__in=tasks).order_by())
        if c.run in runs
    ]
    checks = [
        i
        for i in muda_rollups.checks_of(Inspection.objects.filter(task_id__in=tasks).order_by())
        if i.run in runs
    ]
    decisions = [
        d
        for d in muda_rollups.decisions_of(Escalation.objects.filter(task_id__in=tasks).order_by())
        if d.run in runs
    ]

    def kept(board_id: int, agent_id: int, at: datetime) -> bool:
        return (
            (board is None or board_id == board.pk)
            and (agent is None or agent_id == agent.pk)
            and any(a <= at < b for a, b in edges)
        )

    for board_id, agent_id, at, name, amount in muda_rollups.runs_facts(calls, checks, decisions):
        if kept(board_id, agent_id, at):
            periods[muda_rollups.period_index(starts, at)].hour[name] += amount
    for call in calls:
        share = call.context_share
        if share is not None and kept(call.board_id, call.agent_id or 0, call.at):
            periods[muda_rollups.period_index(starts, call.at)].add_context(
                (call.agent_id or 0, call.provider, call.model), muda_rollups.context_bucket(share), 1, share
            )


def _context_by_agent(sums: Sums) -> tuple[AgentContext, ...]:
    by_agent: dict[int, list[tuple[tuple[str, str], dict[int, list[float]]]]] = defaultdict(list)
    for (agent_id, provider, model), buckets in sums.context.items():
        by_agent[agent_id].append(((provider, model), buckets))
    ids = [a for a in by_agent if a]
    names = dict(Agent.objects.filter(pk__in=ids).values_list("pk", "name")) if ids else {}
    result = []
    for agent_id, parts in by_agent.items():
        histogram = _merged(buckets for _, buckets in parts)
        result.append(
            AgentContext(
                agent_id=agent_id or None,
                name=names.get(agent_id, "no agent") if agent_id else "no agent",
                calls=round(sum(calls for calls, _ in histogram.values())),
                peak=round(max(peak for _, peak in histogram.values()), 4),
                p95=round(_histogram_percentile(histogram, 95) or 0.0, 4),
                models=tuple(sorted(model for model, _ in parts)),
            )
        )
    return tuple(sorted(result, key=lambda c: names.get(c.agent_id or 0, "")))


def muda_report_get(
    *,
    board: Board | None = None,
    agent: Agent | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    with_trend: bool = True,
) -> MudaReport:
    """The seven wastes, the two measures and their trend, for a board (or every
    board), maybe one agent, over [since, until) (default: the last 7 days), from
    the rollups (andon.muda_rollups) in a fixed number of queries."""
    now = timezone.now()
    since, until = muda_window_get(since=since, until=until, now=now, board=board)
    period = period_of(since, until)
    starts = period_starts(since, until, period)
    periods = muda_sums_get(
        board=board,
        agent=agent,
        since=since,
        until=until,
        starts=starts,
        cache_seconds=settings.KAIZEN_RESPONSE_CACHE_SECONDS,
    )
    whole = Sums()
    for sums in periods:
        whole.merge(sums)
    columns = _columns_get(board, until=until, now=now)
    wastes = wastes_from(whole, columns, now)
    trend_points = (
        tuple(
            TrendPoint(start=start, values={name: w.value for name, w in wastes_from(sums).items()})
            for start, sums in zip(starts, periods, strict=True)
        )
        if with_trend
        else ()
    )
    return MudaReport(
        since=since,
        until=until,
        period=period,
        wastes=tuple(wastes[name] for name in WASTES),
        token_efficiency=wastes["token_efficiency"],
        escalation_rate=wastes["escalation_rate"],
        trend=trend_points,
        context_by_agent=_context_by_agent(whole),
        wip_excess=wip_excess(columns, now),
        unreviewed_defects=round(whole.hour["unreviewed_defects"]),
    )


@dataclass(frozen=True)
class Measured:
    """One waste over a window, as ``waste_measure`` computed it: the Waste (its
    value, definition and the counts it came from), the window, and how many
    inspected outputs fell in it."""

    waste: Waste
    since: datetime
    until: datetime
    outputs: int


def waste_measure(
    name: str,
    *,
    board: Board | None = None,
    agent: Agent | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    last_outputs: int | None = None,
) -> Measured | None:
    """One waste (or measure) with its evidence, for thresholds. ``name``: one of
    NAMES. ``last_outputs``: over the last N inspected outputs of the board or
    agent (the window then starts at the Nth newest inspection, and ``since`` is
    ignored). None when the board or agent has no inspected output at all in
    a last-outputs window."""
    if name not in NAMES:
        raise ValueError(f"unknown waste {name!r}; one of {', '.join(NAMES)}")
    if last_outputs is not None:
        if last_outputs < 1:
            raise ValueError("last_outputs must be at least 1")
        inspections = Inspection.objects.filter(_scope(board, agent)).order_by("-created_at", "-pk")
        if until is not None:
            inspections = inspections.filter(created_at__lt=until)
        oldest = list(inspections.values_list("created_at", flat=True)[last_outputs - 1 : last_outputs])
        if not oldest:
            # Fewer than N outputs: all of them.
            first = inspections.order_by("created_at").values_list("created_at", flat=True).first()
            if first is None:
                return None
            oldest = [first]
        since = oldest[0]
        until = until or timezone.now() + timedelta(seconds=1)
    result = muda_report_get(board=board, agent=agent, since=since, until=until, with_trend=False)
    return Measured(
        result.waste(name), result.since, result.until, round(result.escalation_rate.parts["inspected"] or 0)
    )


def waste_value(
    name: str,
    *,
    board: Board | None = None,
    agent: Agent | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    last_outputs: int | None = None,
) -> float | None:
    """One waste's (or measure's) value, as the Muda page and the API give it, for
    budgets and thresholds (``waste_measure``, its value). None when there is no data."""
    measured = waste_measure(
        name, board=board, agent=agent, since=since, until=until, last_outputs=last_outputs
    )
    return None if measured is None else measured.waste.value
