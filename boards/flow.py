"""Flow measures of a board, as pure functions over plain records (no ORM).

The records come from the event log (``TaskEvent``) and the ledger
(``ModelCall``), read by ``boards.flow_selectors``; nothing here reads a
snapshot of the board. Definitions (shown on the Flow page and in the API):

- **Start** of an item: its first claim by an agent, i.e. the first time it
  entered In progress. An item returned to Ready after a start stays started.
- **Finish**: arrival in Done (status done; a failed task is not finished work).
  An item sent back from Done and finished again counts again in throughput.
- **Cycle time**: start to finish. **Lead time**: created to finish. An item put
  in Done by hand without ever being claimed has a lead time but no cycle time.
- **Work item age**: now (or the end of the window) minus the start, for items
  started and not finished. Items never claimed are not work in progress and
  have no age: their waiting counts in their lead time only.
- **WIP**: items in In progress or Review at the end of each period.
- **Percentiles**: nearest-rank (the smallest observed value with at least p%
  of the values at or below it), so each one is a real item's time and "85% of
  items finished within the 85th percentile" holds exactly. Never mean and
  standard deviation: flow times are skewed.
- **Periods** are fixed-length steps counted from the Unix epoch (UTC), so an
  hour or a day starts on the UTC hour or midnight; periods with no
  completion are kept as zeros (they are part of the line's behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np

PERCENTILES: tuple[int, ...] = (50, 70, 85, 95)
PERCENTILE_METHOD = "nearest-rank"
TRIALS = 10_000

# Task statuses (the values of boards.models.Task.Status; repeated here so this
# module stays pure).
BACKLOG, READY, RUNNING, REVIEW, DONE, FAILED = "backlog", "ready", "running", "review", "done", "failed"
STATUSES: tuple[str, ...] = (BACKLOG, READY, RUNNING, REVIEW, DONE, FAILED)
IN_FLIGHT_STATUSES: tuple[str, ...] = (RUNNING, REVIEW)
TERMINAL: tuple[str, ...] = (DONE, FAILED)

# Natural process limits (Wheeler): X̄ ± 2.66·mR̄; upper range limit 3.268·mR̄.
XMR_SCALE = 2.66
MR_SCALE = 3.268


# --- percentiles -----------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank percentiles of a set of values (seconds for flow times)."""

    values: dict[int, float | None]
    count: int

    def get(self, p: int) -> float | None:
        return self.values.get(p)

    # For templates: ``values.70`` finds its int key only after a failed string
    # key and attribute lookup, and Django answers a failed lookup with a dir()
    # of the dict (twice a card in flight, on the board).
    @property
    def p70(self) -> float | None:
        return self.values.get(70)

    @property
    def p85(self) -> float | None:
        return self.values.get(85)

    def as_dict(self, unit: str = "s") -> dict[str, float | int | str | None]:
        out: dict[str, float | int | str | None] = {f"p{p}": v for p, v in self.values.items()}
        out["unit"] = unit
        out["count"] = self.count
        return out


def nearest_rank(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0 < p <= 100) of already sorted values, nearest-rank:
    the value at rank ceil(p/100 * n) (1-based)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * n))
    return float(sorted_values[rank - 1])


def percentiles(values: Iterable[float], ps: Sequence[int] = PERCENTILES) -> Percentiles:
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return Percentiles(values={p: None for p in ps}, count=0)
    return Percentiles(values={p: nearest_rank(ordered, p) for p in ps}, count=len(ordered))


# --- items -------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishedItem:
    """One arrival in Done: the task, when it was created, first claimed (None if
    never) and finished, who worked it and what it needed. Times are seconds
    since the Unix epoch: a window may hold tens of thousands of items, and
    making a datetime of each was most of the cost of reading them."""

    task_id: int
    created: float
    started: float | None
    finished: float
    agent_id: int | None = None
    capability: str = ""
    # Finished on a passing inspection, never sent back (is_first_pass).
    first_pass: bool = False

    @property
    def cycle_time(self) -> float | None:
        if self.started is None:
            return None
        return max(0.0, self.finished - self.started)

    @property
    def lead_time(self) -> float:
        return max(0.0, self.finished - self.created)

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, UTC)

    @property
    def started_at(self) -> datetime | None:
        return None if self.started is None else datetime.fromtimestamp(self.started, UTC)

    @property
    def finished_at(self) -> datetime:
        return datetime.fromtimestamp(self.finished, UTC)


@dataclass
class FinishedItems:
    """Many finished items as columns (one list a field, in the order they
    finished): a window may hold tens of thousands, and an object each cost more
    than reading them. Iterating gives FinishedItem objects."""

    task_id: list[int] = field(default_factory=list)
    created: list[float] = field(default_factory=list)
    started: list[float | None] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    agent_id: list[int | None] = field(default_factory=list)
    capability: list[str] = field(default_factory=list)
    first_pass: list[bool] = field(default_factory=list)

    FIELDS: ClassVar[tuple[str, ...]] = (
        "task_id",
        "created",
        "started",
        "finished",
        "agent_id",
        "capability",
        "first_pass",
    )

    @classmethod
    def of_rows(cls, rows: Sequence[Sequence[Any]]) -> FinishedItems:
        """From rows of (task_id, created, started, finished, agent_id, capability,
        first_pass), turned into columns at C speed."""
        if not rows:
            return cls()
        columns = [list(column) for column in zip(*rows, strict=True)]
        columns[6] = [bool(v) for v in columns[6]]
        return cls(*columns)

    @classmethod
    def of(cls, items: Iterable[FinishedItem]) -> FinishedItems:
        return cls.of_rows(
            [
                (i.task_id, i.created, i.started, i.finished, i.agent_id, i.capability, i.first_pass)
                for i in items
            ]
        )

    def extend(self, other: FinishedItems) -> None:
        for name in self.FIELDS:
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.task_id)

    def __iter__(self) -> Iterator[FinishedItem]:
        for values in zip(*(getattr(self, name) for name in self.FIELDS), strict=True):
            yield FinishedItem(*values)

    def cycle_times(self) -> list[float | None]:
        """Each item's cycle time (None if never claimed), in order."""
        return [
            None if s is None else max(0.0, f - s) for s, f in zip(self.started, self.finished, strict=True)
        ]

    def lead_times(self) -> list[float]:
        return [max(0.0, f - c) for c, f in zip(self.created, self.finished, strict=True)]


@dataclass(frozen=True)
class InFlightItem:
    """An item started and not finished at the moment measured: its status then
    (which column role it sat in) and its first claim."""

    task_id: int
    title: str
    status: str
    started_at: datetime
    agent_id: int | None = None
    capability: str = ""


def cycle_times(items: Iterable[FinishedItem]) -> list[float]:
    return [c for c in (item.cycle_time for item in items) if c is not None]


def lead_times(items: Iterable[FinishedItem]) -> list[float]:
    return [item.lead_time for item in items]


def item_age(started_at: datetime, at: datetime) -> float:
    """Work item age in seconds at ``at`` (from the first claim)."""
    return max(0.0, (at - started_at).total_seconds())


def age_level(age: float, sle: Percentiles) -> str:
    """ "ok", "amber" (past the 70th percentile of past cycle times) or "red" (past
    the 85th, the service level expectation); "ok" when there is no history."""
    p85, p70 = sle.get(85), sle.get(70)
    if p85 is not None and age > p85:
        return "red"
    if p70 is not None and age > p70:
        return "amber"
    return "ok"


# --- periods -------------------------------------------------------------------------


def period_of(at: datetime, step: int) -> int:
    """The index of the period of ``step`` seconds holding ``at`` (from the epoch)."""
    return math.floor(at.timestamp() / step)


def period_start(index: int, step: int) -> datetime:
    return datetime.fromtimestamp(index * step, tz=UTC)


def period_grid(since: datetime, until: datetime, step: int) -> list[int]:
    """Every period index from the one holding ``since`` to the last one that
    starts before ``until`` (the window is [since, until)): zero periods are
    part of the series."""
    first, last = period_of(since, step), math.ceil(until.timestamp() / step) - 1
    return list(range(first, last + 1))


# --- status changes, CFD, throughput, WIP ----------------------------------------------


@dataclass(frozen=True)
class StatusChange:
    """One change of a task's status (its creation has from_status "")."""

    at: datetime
    from_status: str
    to_status: str


Deltas = Mapping[tuple[int, str, str], int]


def aggregate_changes(
    changes: Iterable[StatusChange], *, since: datetime, step: int
) -> tuple[dict[str, int], dict[tuple[int, str, str], int]]:
    """What the database aggregates for the CFD: the number of items in each
    status just before ``since`` (the baseline), and the count of each
    (period, from, to) change from ``since`` on. The same in Python, for tests."""
    baseline: dict[str, int] = {}
    deltas: dict[tuple[int, str, str], int] = {}
    for change in changes:
        if change.from_status == change.to_status:
            continue
        if change.at < since:
            if change.to_status:
                baseline[change.to_status] = baseline.get(change.to_status, 0) + 1
            if change.from_status:
                baseline[change.from_status] = baseline.get(change.from_status, 0) - 1
        else:
            key = (period_of(change.at, step), change.from_status, change.to_status)
            deltas[key] = deltas.get(key, 0) + 1
    return baseline, deltas


def cfd(baseline: Mapping[str, int], deltas: Deltas, grid: Sequence[int]) -> dict[str, list[int]]:
    """Items in each status at the end of each period of ``grid`` (a cumulative
    flow diagram's bands, reconstructed from status changes: a past state of the
    board is the baseline plus the changes up to then)."""
    index = {p: i for i, p in enumerate(grid)}
    net = np.zeros((len(STATUSES), len(grid)), dtype=np.int64)
    row = {s: i for i, s in enumerate(STATUSES)}
    for (period, from_status, to_status), n in deltas.items():
        col = index.get(period)
        if col is None or from_status == to_status:
            continue
        if to_status in row:
            net[row[to_status], col] += n
        if from_status in row:
            net[row[from_status], col] -= n
    counts = np.cumsum(net, axis=1)
    for status, i in row.items():
        counts[i] += baseline.get(status, 0)
    return {status: [int(v) for v in counts[row[status]]] for status in STATUSES}


def throughput(deltas: Deltas, grid: Sequence[int]) -> list[int]:
    """Arrivals in Done per period of ``grid`` (zeros kept)."""
    index = {p: i for i, p in enumerate(grid)}
    out = [0] * len(grid)
    for (period, from_status, to_status), n in deltas.items():
        if to_status == DONE and from_status != DONE and period in index:
            out[index[period]] += n
    return out


def throughput_from_times(finishes: Iterable[datetime], grid: Sequence[int], step: int) -> list[int]:
    index = {p: i for i, p in enumerate(grid)}
    out = [0] * len(grid)
    for at in finishes:
        i = index.get(period_of(at, step))
        if i is not None:
            out[i] += 1
    return out


def wip(bands: Mapping[str, Sequence[int]]) -> list[int]:
    """Items in flight (In progress + Review) at the end of each period."""
    running, review = bands.get(RUNNING, []), bands.get(REVIEW, [])
    return [int(a) + int(b) for a, b in zip(running, review, strict=True)]


def rebin(values: Sequence[int], factor: int) -> list[int]:
    """Sums of consecutive groups of ``factor`` periods (hours into days, given a
    grid that starts on a group's first period)."""
    return [int(sum(values[i : i + factor])) for i in range(0, len(values), factor)]


# --- Monte Carlo forecasts ---------------------------------------------------------------


@dataclass(frozen=True)
class HowManyForecast:
    """ "How many items by date D": for each confidence c, at least ``items[c]``
    items with probability c (the conservative reading)."""

    periods: int
    items: dict[int, int]
    trials: int


@dataclass(frozen=True)
class WhenForecast:
    """ "When will the next N items be done": for each confidence c, within
    ``periods[c]`` periods with probability c (None: not within the horizon)."""

    items: int
    periods: dict[int, int | None]
    trials: int
    horizon: int


def _check_samples(samples: Sequence[int]) -> np.ndarray:
    data = np.asarray(samples, dtype=np.int64)
    if data.size == 0:
        raise ValueError("no throughput history to sample: widen the sampling window")
    if (data < 0).any():
        raise ValueError("throughput cannot be negative")
    return data


def forecast_how_many(
    samples: Sequence[int], *, periods: int, seed: int = 0, trials: int = TRIALS
) -> HowManyForecast:
    """Resample the throughput per period ``periods`` times, ``trials`` times
    (numpy Generator, ``seed``); the table gives, per confidence c, the largest X
    with P(total >= X) >= c."""
    data = _check_samples(samples)
    rng = np.random.default_rng(seed)
    if periods <= 0:
        return HowManyForecast(periods=0, items={c: 0 for c in PERCENTILES}, trials=trials)
    totals = np.zeros(trials, dtype=np.int64)
    # In chunks of periods, so a long horizon never holds trials x periods at once.
    remaining = periods
    while remaining:
        chunk = min(remaining, 512)
        totals += rng.choice(data, size=(trials, chunk), replace=True).sum(axis=1)
        remaining -= chunk
    totals.sort()
    items = {c: int(totals[math.floor((1 - c / 100) * trials)]) for c in PERCENTILES}
    return HowManyForecast(periods=periods, items=items, trials=trials)


def forecast_when(
    samples: Sequence[int], *, items: int, seed: int = 0, trials: int = TRIALS, horizon: int = 5_000
) -> WhenForecast:
    """Resample the throughput per period until ``items`` are done, ``trials``
    times; per confidence c the nearest-rank c-th percentile of the periods
    needed. Trials not done within ``horizon`` periods count as never."""
    data = _check_samples(samples)
    rng = np.random.default_rng(seed)
    if items <= 0:
        return WhenForecast(items=0, periods={c: 0 for c in PERCENTILES}, trials=trials, horizon=horizon)
    if int(data.max()) == 0:
        # Nothing was ever finished in the sampling window: no trial ever ends.
        return WhenForecast(
            items=items, periods={c: None for c in PERCENTILES}, trials=trials, horizon=horizon
        )
    done_at = np.full(trials, np.iinfo(np.int64).max, dtype=np.int64)
    totals = np.zeros(trials, dtype=np.int64)
    elapsed = 0
    mean = float(data.mean())
    # Periods drawn at a time: enough for most trials to finish in one go, few
    # enough that trials x chunk stays a few million numbers.
    chunk = max(1, min(256, horizon, math.ceil(items / mean * 1.5) + 8))
    while elapsed < horizon:
        open_ = done_at == np.iinfo(np.int64).max
        if not open_.any():
            break
        size = min(chunk, horizon - elapsed)
        draws = rng.choice(data, size=(int(open_.sum()), size), replace=True)
        cumulative = totals[open_][:, None] + np.cumsum(draws, axis=1)
        reached = cumulative >= items
        hit = reached.any(axis=1)
        first = np.argmax(reached, axis=1)
        idx = np.flatnonzero(open_)
        done_at[idx[hit]] = elapsed + first[hit] + 1
        totals[idx] = cumulative[:, -1]
        elapsed += size
    ordered = np.sort(done_at)
    periods: dict[int, int | None] = {}
    for c in PERCENTILES:
        value = int(ordered[max(1, math.ceil(c / 100 * trials)) - 1])
        periods[c] = None if value == np.iinfo(np.int64).max else value
    return WhenForecast(items=items, periods=periods, trials=trials, horizon=horizon)


# --- XmR process behaviour charts ----------------------------------------------------------


@dataclass(frozen=True)
class XmR:
    """An XmR chart's limits and signals: X̄ ± 2.66·mR̄ (natural process limits)
    and 3.268·mR̄ (upper range limit). Predictable: no value outside the natural
    process limits and no moving range above the upper range limit."""

    values: list[float]
    moving_ranges: list[float]
    mean: float | None
    mr_mean: float | None
    lower: float | None
    upper: float | None
    range_upper: float | None
    outside: list[int] = field(default_factory=list)
    ranges_outside: list[int] = field(default_factory=list)

    @property
    def predictable(self) -> bool | None:
        if self.mean is None or self.mr_mean is None:
            return None
        return not self.outside and not self.ranges_outside


def xmr(values: Sequence[float]) -> XmR:
    """The XmR chart of ``values``; indexes of moving ranges are those of the
    second value of each pair. Fewer than two values have no limits."""
    xs = [float(v) for v in values]
    ranges = [abs(b - a) for a, b in zip(xs, xs[1:], strict=False)]
    if len(xs) < 2:
        return XmR(xs, ranges, None, None, None, None, None)
    mean = sum(xs) / len(xs)
    mr_mean = sum(ranges) / len(ranges)
    lower, upper = mean - XMR_SCALE * mr_mean, mean + XMR_SCALE * mr_mean
    range_upper = MR_SCALE * mr_mean
    outside = [i for i, x in enumerate(xs) if x > upper or x < lower]
    ranges_outside = [i + 1 for i, r in enumerate(ranges) if r > range_upper]
    return XmR(xs, ranges, mean, mr_mean, lower, upper, range_upper, outside, ranges_outside)


# --- the agent line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LineCounts:
    """What the agent-line measures are computed from, for one agent or capability."""

    completed: int = 0
    first_pass: int = 0
    rework_agent: int = 0
    rework_human: int = 0
    escalations: int = 0
    inspections: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class LineMeasures:
    key: str
    completed: int
    first_pass_yield: float | None
    rework_agent: int
    rework_human: int
    escalations: int
    inspections: int
    escalation_rate: float | None
    cost: float
    cost_per_item: float | None


def line_measures(key: str, counts: LineCounts) -> LineMeasures:
    """First-pass yield = items finished first time ÷ items finished; escalation
    rate = escalations ÷ inspected outputs; cost per item = ledger cost ÷ items
    finished (every call counts, also those of failed attempts)."""
    return LineMeasures(
        key=key,
        completed=counts.completed,
        first_pass_yield=counts.first_pass / counts.completed if counts.completed else None,
        rework_agent=counts.rework_agent,
        rework_human=counts.rework_human,
        escalations=counts.escalations,
        inspections=counts.inspections,
        escalation_rate=counts.escalations / counts.inspections if counts.inspections else None,
        cost=counts.cost,
        cost_per_item=counts.cost / counts.completed if counts.completed else None,
    )


@dataclass(frozen=True)
class TaskHistory:
    """The kinds of events of one finished item that decide whether it passed
    first time (plain counts, as the selector aggregates them)."""

    completed_passing: bool
    escalated: int = 0
    corrected: int = 0
    rejected: int = 0
    returns: int = 0


def is_first_pass(history: TaskHistory) -> bool:
    """Finished on a passing inspection, never escalated, edited (corrected),
    rejected, or returned to Ready."""
    return (
        history.completed_passing
        and not history.escalated
        and not history.corrected
        and not history.rejected
        and not history.returns
    )


# --- the window -------------------------------------------------------------------------------

MAX_POINTS = 2000
# The throughput is counted per hour over the whole window: a window of a few
# centuries (an API call's since) was millions of hourly points, minutes of CPU.
MAX_WINDOW = timedelta(days=366)
STEPS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "6h": 6 * 3600,
    "1d": 86400,
    "1w": 7 * 86400,
}


def window_problems(
    *, since: datetime | None, until: datetime | None, step: int | None = None
) -> dict[str, list[str]]:
    """What is wrong with a window, by field (empty when it is usable)."""
    problems: dict[str, list[str]] = {}
    if since is not None and until is not None and since >= until:
        problems["until"] = ["The end of the window must be after its start."]
    elif since is not None and until is not None and until - since > MAX_WINDOW:
        problems["since"] = [f"Ask for at most {MAX_WINDOW.days} days at a time."]
    if step is not None and since is not None and until is not None and since < until:
        points = (until - since).total_seconds() / step
        if points > MAX_POINTS:
            problems["resolution"] = [
                f"The window holds {int(points):,} periods at this resolution; at most "
                f"{MAX_POINTS:,} are drawn: choose a coarser resolution or a shorter window."
            ]
    return problems


def default_step(since: datetime, until: datetime) -> int:
    """The finest resolution that keeps the window within a few hundred points."""
    span = (until - since).total_seconds()
    for step in sorted(STEPS.values()):
        if span / step <= 400:
            return step
    return max(STEPS.values())
