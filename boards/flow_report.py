"""The Flow page's and the API's numbers, put together from ``FlowData`` with the
pure measures of ``boards.flow``: one plain, JSON-ready dict, so the page, its
CSV downloads and ``GET /api/v1/boards/{slug}/flow`` say the same thing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError

from boards import flow
from boards.flow_selectors import FlowData, FlowFilter, flow_done_per_period_get, flow_line_counts
from boards.models import Board, Column

DEFINITIONS: dict[str, str] = {
    "start": "An item starts when an agent first claims it (it first enters In progress).",
    "finish": "An item finishes when it arrives in Done; a failed task is not finished work. "
    "An item sent back from Done and finished again counts again.",
    "cycle_time": "Cycle time: from the start (first claim) to the finish. "
    "An item put in Done without ever being claimed has no cycle time.",
    "lead_time": "Lead time: from the item's creation to its finish.",
    "age": "Work item age: from the start (first claim) to now, or to the end of the window, "
    "for items in In progress or Review. An item returned to Ready keeps its start. "
    "Items never claimed are not work in progress and have no age: their waiting counts in lead time only.",
    "wip": "WIP: items in In progress or Review at the end of each period.",
    "throughput": "Throughput: items arriving in Done per period (hour or day, UTC); "
    "periods with none are kept as zeros.",
    "percentiles": "Percentiles are nearest-rank: the p-th percentile is the smallest observed value "
    "with at least p% of the items at or below it (a real item's time). Never mean and standard "
    "deviation: flow times are skewed.",
    "sle": "Service level expectation (SLE): the 85th percentile of past cycle times. "
    "A card turns amber past the 70th percentile and red past the 85th.",
    "cfd": "Cumulative flow: the number of items in each status at the end of each period, "
    "reconstructed from the status changes in the event log (no snapshots).",
    "forecast": "Monte Carlo: 10,000 trials, each resampling the throughput of the periods in the "
    "sampling window (zero periods kept) with a seeded random generator. "
    "'How many by date D': an 85% chance of at least X items. "
    "'When will N items be done': an 85% chance within the date given.",
    "xmr": "XmR process behaviour chart: natural process limits at the mean ± 2.66 × the average "
    "moving range, upper range limit 3.268 × the average moving range. Predictable means no value "
    "outside the natural process limits and no moving range above its limit in the window. "
    "Cycle time: the latest 500 items finished in the window, in the order they finished; "
    "throughput: per day once the window holds a week, else per hour.",
    "first_pass_yield": "First-pass yield: items finished on a passing inspection that were never "
    "escalated, edited (corrected), rejected or returned to Ready, ÷ items finished.",
    "rework": "Rework: returns to Ready from In progress, Review, Done or Failed; by a person "
    "(a rejection in review, a move back) or by the line (a failed attempt, a lost run).",
    "escalation_rate": "Escalation rate: escalations ÷ inspected outputs.",
    "cost_per_item": "Cost per item: the ledger's cost of every model call in the window "
    "(failed attempts too) ÷ items finished.",
    "agent": "An item's agent is the last agent to claim it; ledger rows, inspections and "
    "escalations carry the agent that made them.",
}

FORECAST_PERIODS = {"hour": 3600, "day": 86400}
XMR_ITEMS = 500


@dataclass(frozen=True)
class ForecastAsk:
    """What the forecast form asks: N items or a date, over a sampling window."""

    items: int | None = None
    date: datetime | None = None
    period: str = "hour"
    sample_days: int = 7
    seed: int = 0


def _iso(index: int, step: int) -> str:
    return flow.period_start(index, step).isoformat()


def _series(grid: list[int], step: int, values: list[int]) -> dict[str, list]:
    return {"periods": [_iso(p, step) for p in grid], "values": values}


def _xmr(chart: flow.XmR, labels: list[str]) -> dict[str, Any]:
    return {
        "labels": labels,
        "values": chart.values,
        "moving_ranges": chart.moving_ranges,
        "mean": chart.mean,
        "mr_mean": chart.mr_mean,
        "lower": chart.lower,
        "upper": chart.upper,
        "range_upper": chart.range_upper,
        "predictable": chart.predictable,
        "outside": [{"index": i, "label": labels[i], "value": chart.values[i]} for i in chart.outside],
        "ranges_outside": [
            {"index": i, "label": labels[i], "value": chart.moving_ranges[i - 1]}
            for i in chart.ranges_outside
        ],
    }


def _line_row(measures: flow.LineMeasures) -> dict[str, Any]:
    return {
        "key": measures.key,
        "completed": measures.completed,
        "first_pass_yield": measures.first_pass_yield,
        "rework_agent": measures.rework_agent,
        "rework_human": measures.rework_human,
        "escalations": measures.escalations,
        "inspections": measures.inspections,
        "escalation_rate": measures.escalation_rate,
        "cost": round(measures.cost, 10),
        "cost_per_item": None if measures.cost_per_item is None else round(measures.cost_per_item, 10),
    }


def flow_report(data: FlowData, *, where: FlowFilter, now: datetime) -> dict[str, Any]:
    """Every measure of the window as plain values (seconds, counts, ISO times)."""
    step = data.step
    bands = flow.cfd(data.baseline, data.deltas, data.grid)
    wip = flow.wip(bands)
    hours = flow.period_grid(where.since, where.until, 3600)
    per_hour = [data.hourly_done.get(h, 0) for h in hours]
    days = flow.period_grid(where.since, where.until, 86400)
    per_day_map: dict[int, int] = {}
    for h, n in data.hourly_done.items():
        per_day_map[h * 3600 // 86400] = per_day_map.get(h * 3600 // 86400, 0) + n
    per_day = [per_day_map.get(d, 0) for d in days]
    # Each item's times once: a window may hold tens of thousands of items.
    cycle_times = data.finished.cycle_times()
    lead_times = data.finished.lead_times()
    cycle = flow.percentiles(c for c in cycle_times if c is not None)
    lead = flow.percentiles(lead_times)
    at = min(now, where.until)
    roles = {c.role: c for c in data.columns}
    status_role = {flow.RUNNING: Column.Role.IN_PROGRESS, flow.REVIEW: Column.Role.REVIEW}
    ages = []
    for item in data.in_flight:
        age = flow.item_age(item.started_at, at)
        column = roles.get(status_role.get(item.status, ""))
        ages.append(
            {
                "task": item.task_id,
                "title": item.title,
                "status": item.status,
                "column": column.name if column else item.status,
                "started_at": item.started_at.isoformat(),
                "age_s": age,
                "level": flow.age_level(age, cycle),
                "agent": data.agent_names.get(item.agent_id or 0),
                "capability": item.capability,
            }
        )
    # Throughput's XmR per day once the window holds a week, else per hour.
    by_day = len(days) >= 7
    tp_values, tp_grid, tp_step = (per_day, days, 86400) if by_day else (per_hour, hours, 3600)
    # An XmR chart reads a run of individual values: the latest XMR_ITEMS items
    # (tens of thousands of points would hide every signal, and weigh megabytes).
    cycle_items = [(t, c) for t, c in zip(data.finished.task_id, cycle_times, strict=True) if c is not None][
        -XMR_ITEMS:
    ]
    per_agent, per_capability = flow_line_counts(data)
    return {
        "window": {
            "since": where.since.isoformat(),
            "until": where.until.isoformat(),
            "step_s": step,
            "agent": data.agent_names.get(where.agent_id) if where.agent_id else None,
            "capability": where.capability,
            "measured_at": at.isoformat(),
        },
        "percentile_method": flow.PERCENTILE_METHOD,
        "definitions": DEFINITIONS,
        "cycle_time": cycle.as_dict(),
        "lead_time": lead.as_dict(),
        "wip": _series(data.grid, step, wip),
        "wip_limits": {
            c.name: c.wip_limit
            for c in data.columns
            if c.role in (Column.Role.IN_PROGRESS, Column.Role.REVIEW)
        },
        "throughput": {
            "per_hour": _series(hours, 3600, per_hour),
            "per_day": _series(days, 86400, per_day),
            "total": sum(per_hour),
        },
        "cfd": {
            "periods": [_iso(p, step) for p in data.grid],
            "bands": {status: bands[status] for status in flow.STATUSES},
        },
        "age": ages,
        "columns": [
            {"name": c.name, "role": c.role, "wip_limit": c.wip_limit}
            for c in data.columns
            if c.role in (Column.Role.IN_PROGRESS, Column.Role.REVIEW)
        ],
        # Columns, not rows: tens of thousands of items may have finished.
        "finished": {
            "task": data.finished.task_id,
            "finished_at": data.finished.finished,
            "cycle_time_s": cycle_times,
            "lead_time_s": lead_times,
        },
        "xmr": {
            "cycle_time": _xmr(
                flow.xmr([c for _, c in cycle_items]),
                [f"task {task_id}" for task_id, _ in cycle_items],
            ),
            "throughput": {
                "period": "day" if by_day else "hour",
                **_xmr(flow.xmr(tp_values), [_iso(p, tp_step) for p in tp_grid]),
            },
        },
        "agent_line": {
            "agents": [
                {**_line_row(flow.line_measures(k, v)), "simulated": k in data.simulated}
                for k, v in per_agent.items()
            ],
            "capabilities": [_line_row(flow.line_measures(k, v)) for k, v in per_capability.items()],
        },
    }


def flow_forecast(*, board: Board, where: FlowFilter, ask: ForecastAsk, now: datetime) -> dict[str, Any]:
    """The Monte Carlo answer to ``ask``, sampling the throughput per period of
    the ``sample_days`` before the end of the window (one query)."""
    period = FORECAST_PERIODS[ask.period]
    sample_until = min(now, where.until)
    sample_since = sample_until - timedelta(days=ask.sample_days)
    sampled = FlowFilter(
        since=sample_since, until=sample_until, agent_id=where.agent_id, capability=where.capability
    )
    counts = flow_done_per_period_get(board=board, where=sampled, step=period)
    # Whole periods only: a period cut by the window's edge would read as a slow one.
    first = math.ceil(sample_since.timestamp() / period)
    last = math.floor(sample_until.timestamp() / period) - 1
    samples = [counts.get(p, 0) for p in range(first, last + 1)]
    out: dict[str, Any] = {
        "period": ask.period,
        "sampling_window": {
            "since": flow.period_start(first, period).isoformat(),
            "until": flow.period_start(last + 1, period).isoformat(),
            "periods": len(samples),
            "items": sum(samples),
        },
        "samples": samples,
        "trials": flow.TRIALS,
        "seed": ask.seed,
        "start": now.isoformat(),
    }
    if not samples:
        out["error"] = "The sampling window holds no whole period: widen it."
        return out
    if ask.items is not None:
        when = flow.forecast_when(samples, items=ask.items, seed=ask.seed)
        out["when"] = {
            "items": ask.items,
            "table": [
                {
                    "confidence": c,
                    "periods": p,
                    "date": None if p is None else (now + timedelta(seconds=p * period)).isoformat(),
                }
                for c, p in when.periods.items()
            ],
            "horizon_periods": when.horizon,
        }
    if ask.date is not None:
        periods = max(0, math.floor((ask.date - now).total_seconds() / period))
        how = flow.forecast_how_many(samples, periods=periods, seed=ask.seed)
        out["how_many"] = {
            "date": ask.date.isoformat(),
            "periods": periods,
            "table": [{"confidence": c, "at_least": n} for c, n in how.items.items()],
        }
    return out


DEFAULT_WINDOW = timedelta(days=7)
MAX_SAMPLE_DAYS = 365
# The forecasts' horizon: further than this many periods is not forecast.
MAX_FORECAST_PERIODS = 10_000
MAX_FORECAST_ITEMS = 100_000


@dataclass(frozen=True)
class FlowQuery:
    where: FlowFilter
    step: int
    forecast: ForecastAsk | None


def flow_query_resolve(
    *,
    board: Board,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    agent: str | None = None,
    capability: str | None = None,
    resolution: str | None = None,
    forecast_items: int | None = None,
    forecast_date: datetime | None = None,
    forecast_period: str | None = None,
    sample_days: int | None = None,
) -> FlowQuery:
    """The window, slice and forecast asked for, checked: a ValidationError with a
    message per field when any is wrong (one query, for an agent's name)."""
    errors: dict[str, list[str]] = {}
    live = until is None or until >= now
    until = until or now
    if since is None:
        # DEFAULT_WINDOW, or since the board was made when that is later: a
        # new board's charts would otherwise be a week of nothing.
        since = until - DEFAULT_WINDOW
        if since < board.created_at < until:
            since = board.created_at.replace(second=0, microsecond=0)
    step: int | None = None
    if resolution:
        step = flow.STEPS.get(resolution)
        if step is None:
            errors["resolution"] = [f"Choose one of {', '.join(flow.STEPS)}."]
    for name, problems in flow.window_problems(since=since, until=until, step=step).items():
        errors.setdefault(name, []).extend(problems)
    if since > now:
        errors.setdefault("since", []).append("The window must start in the past.")
    agent_id = None
    if agent:
        agent_id = board.agents.filter(name=agent).values_list("pk", flat=True).first()
        if agent_id is None:
            errors["agent"] = [f"No agent named {agent!r} serves this board."]
    period = forecast_period or "hour"
    if period not in FORECAST_PERIODS:
        errors["forecast_period"] = ["Choose hour or day."]
    if sample_days is not None and not 1 <= sample_days <= MAX_SAMPLE_DAYS:
        errors["sample_days"] = [f"Give a sampling window of 1 to {MAX_SAMPLE_DAYS} days."]
    if forecast_items is not None and not 1 <= forecast_items <= MAX_FORECAST_ITEMS:
        errors["forecast_items"] = [f"Ask for 1 to {MAX_FORECAST_ITEMS:,} items."]
    if forecast_date is not None:
        if forecast_date <= now:
            errors["forecast_date"] = ["Give a date in the future."]
        elif period in FORECAST_PERIODS and (
            (forecast_date - now).total_seconds() / FORECAST_PERIODS[period] > MAX_FORECAST_PERIODS
        ):
            errors["forecast_date"] = [
                f"That is more than {MAX_FORECAST_PERIODS:,} {period}s ahead: choose a nearer date or "
                "forecast per day."
            ]
    if errors:
        raise ValidationError(errors)
    ask = None
    if forecast_items is not None or forecast_date is not None:
        ask = ForecastAsk(
            items=forecast_items, date=forecast_date, period=period, sample_days=sample_days or 7
        )
    where = FlowFilter(since=since, until=until, agent_id=agent_id, capability=capability or None, live=live)
    return FlowQuery(where=where, step=step or flow.default_step(since, until), forecast=ask)


CSV_CHARTS = (
    "aging",
    "cycle",
    "throughput",
    "wip",
    "cfd",
    "xmr-cycle",
    "xmr-throughput",
    "agents",
    "capabilities",
    "forecast",
)


def flow_csv_rows(report: dict[str, Any], chart: str) -> list[list[Any]]:
    """The data of one chart of the page as rows, header first."""
    if chart == "aging":
        return [["task", "title", "column", "status", "started_at", "age_s", "level"]] + [
            [a["task"], a["title"], a["column"], a["status"], a["started_at"], a["age_s"], a["level"]]
            for a in report["age"]
        ]
    if chart == "cycle":
        f = report["finished"]
        return [["task", "finished_at", "cycle_time_s", "lead_time_s"]] + [
            [task, datetime.fromtimestamp(at, tz=UTC).isoformat(), cycle, lead]
            for task, at, cycle, lead in zip(
                f["task"], f["finished_at"], f["cycle_time_s"], f["lead_time_s"], strict=True
            )
        ]
    if chart == "throughput":
        rows: list[list[Any]] = [["period", "period_start", "items_finished"]]
        for name in ("per_hour", "per_day"):
            series = report["throughput"][name]
            rows += [[name[4:], p, v] for p, v in zip(series["periods"], series["values"], strict=True)]
        return rows
    if chart == "wip":
        wip = report["wip"]
        return [["period_start", "wip"]] + [
            [p, v] for p, v in zip(wip["periods"], wip["values"], strict=True)
        ]
    if chart == "cfd":
        bands = report["cfd"]["bands"]
        return [["period_start", *flow.STATUSES]] + [
            [p, *(bands[s][i] for s in flow.STATUSES)] for i, p in enumerate(report["cfd"]["periods"])
        ]
    if chart in ("xmr-cycle", "xmr-throughput"):
        data = report["xmr"]["cycle_time" if chart == "xmr-cycle" else "throughput"]
        outside = {o["index"] for o in data["outside"]}
        ranges_outside = {o["index"] for o in data["ranges_outside"]}
        rows = [["label", "value", "moving_range", "mean", "lower", "upper", "range_upper", "signal"]]
        for i, (label, value) in enumerate(zip(data["labels"], data["values"], strict=True)):
            signal = "outside" if i in outside else ("range above limit" if i in ranges_outside else "")
            rows.append(
                [
                    label,
                    value,
                    data["moving_ranges"][i - 1] if i else "",
                    data["mean"],
                    data["lower"],
                    data["upper"],
                    data["range_upper"],
                    signal,
                ]
            )
        return rows
    if chart in ("agents", "capabilities"):
        keys = [
            "key",
            "completed",
            "first_pass_yield",
            "rework_agent",
            "rework_human",
            "escalations",
            "inspections",
            "escalation_rate",
            "cost",
            "cost_per_item",
        ]
        return [keys] + [[row[k] for k in keys] for row in report["agent_line"][chart]]
    if chart == "forecast":
        forecast = report.get("forecast") or {}
        rows = [["question", "confidence", "answer"]]
        for row in forecast.get("when", {}).get("table", []):
            rows.append([f"when {forecast['when']['items']} items", row["confidence"], row["date"]])
        for row in forecast.get("how_many", {}).get("table", []):
            rows.append([f"how many by {forecast['how_many']['date']}", row["confidence"], row["at_least"]])
        return rows
    raise ValueError(f"unknown chart {chart!r}")
