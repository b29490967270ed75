"""Reading what the flow measures need (``boards.flow``) from the event log
(TaskEvent), the ledger (ModelCall) and the andon's inspections and escalations.

A fixed number of queries whatever the number of tasks: counts per period are
grouped in the database (periods are epoch-aligned buckets, ``EpochBucket``),
and only the items finished in the window and the items in flight come back
one row each. The hours a board's rollups hold (FlowHour, FlowLineHour,
FlowItem: boards.services.flow_fold sums each hour once it is over) are read
from them, and only the rest from the log (``window_cut``): a week of a busy
board is a few thousand rollup rows instead of hundreds of thousands of events
and ledger rows, and the figures are the same either way.

What the existing fields mean, and why some are not used:
- ``Task.started_at`` is the *latest* claim (every claim overwrites it), so the
  first claim is read from the events (the first change to status running).
- A task reaches Done by a passing run (event ``completed``), by a reviewer's
  decision in Review (``approved``, ``corrected``) or by a person's move
  (``moved``); a run that fails for good is marked ``failed`` and placed in the
  Done column: it is not finished work.
- Rework is a return to Ready from In progress, Review, Done or Failed: by a
  person (actor user: a rejection in review, a move back) or by the line (actor
  agent or system: a failed attempt, a lost run).
- The agent of an item is the task's agent (the last to claim it); ledger rows,
  inspections and escalations carry their own agent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import (
    Count,
    Exists,
    F,
    FloatField,
    IntegerField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.expressions import Func
from django.utils import timezone

from andon.models import Escalation, Inspection
from boards import flow
from boards.models import Agent, Board, Column, FlowHour, FlowItem, FlowLineHour, ModelCall, Task, TaskEvent

Status = Task.Status
Kind = TaskEvent.Kind

# Statuses a return to Ready comes from (a move within Backlog/Ready is not rework).
_REWORK_FROM = [Status.RUNNING, Status.REVIEW, Status.DONE, Status.FAILED]


class EpochBucket(Func):
    """The index of the ``step``-second period holding a datetime, counted from the
    Unix epoch (UTC): floor(epoch seconds / step)."""

    output_field = IntegerField()

    def __init__(self, expression: Any, step: int) -> None:
        self.step = int(step)
        super().__init__(expression)

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:  # type: ignore[override]
        return super().as_sql(
            compiler,
            connection,
            template=f"CAST(FLOOR(EXTRACT(EPOCH FROM %(expressions)s) / {self.step}) AS BIGINT)",
            **extra,
        )

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # Stored as UTC text; strftime('%s') is whole seconds, and every period is too.
        return super().as_sql(
            compiler,
            connection,
            template=f"(CAST(strftime('%%%%s', %(expressions)s) AS INTEGER) / {self.step})",
            **extra,
        )


class Epoch(Func):
    """A datetime as seconds since the Unix epoch (a float): far cheaper to read
    back than a datetime (the driver parses each one from text), which counts
    when tens of thousands of items finished in the window."""

    output_field = FloatField()

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:  # type: ignore[override]
        return super().as_sql(
            compiler,
            connection,
            template="CAST(EXTRACT(EPOCH FROM %(expressions)s) AS DOUBLE PRECISION)",
            **extra,
        )

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return super().as_sql(
            # To the millisecond: julianday() (a double of days) carries no finer.
            compiler,
            connection,
            template="ROUND((julianday(%(expressions)s) - 2440587.5) * 86400.0, 3)",
            **extra,
        )


def _fetch(rows: QuerySet[Any]) -> list[tuple[Any, ...]]:
    """A values_list queryset's rows straight from the database cursor: Django's
    per-row converters were most of the cost of tens of thousands of finished
    items (every value here is a number or text the driver gives as is)."""
    compiler = rows.query.get_compiler(using=rows.db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        return []
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


@dataclass(frozen=True)
class FlowFilter:
    """The window and the slice of the board a measure is taken over."""

    since: datetime
    until: datetime
    agent_id: int | None = None
    capability: str | None = None
    # The window ends now (no end was given, or one not in the past): what is in
    # flight is read from the tasks' statuses rather than reconstructed.
    live: bool = False

    def tasks(self, prefix: str = "task__") -> Q:
        q = Q()
        if self.agent_id is not None:
            q &= Q(**{f"{prefix}agent_id": self.agent_id})
        if self.capability is not None:
            q &= Q(**{f"{prefix}capability": self.capability})
        return q

    def own_agent(self) -> Q:
        """For rows that carry their own agent (ledger, inspections, escalations)."""
        q = Q()
        if self.agent_id is not None:
            q &= Q(agent_id=self.agent_id)
        if self.capability is not None:
            q &= Q(task__capability=self.capability)
        return q


@dataclass
class FlowData:
    """Everything the Flow page and the API draw, as plain records for ``boards.flow``."""

    columns: list[Column]
    step: int
    grid: list[int]
    baseline: dict[str, int]
    deltas: dict[tuple[int, str, str], int]
    hourly_done: dict[int, int]
    finished: flow.FinishedItems
    in_flight: list[flow.InFlightItem]
    line: dict[tuple[int | None, str], dict[str, float]] = field(default_factory=dict)
    agent_names: dict[int, str] = field(default_factory=dict)
    # Names of the agents whose model is the simulated one (labelled so wherever shown).
    simulated: set[str] = field(default_factory=set)


def _changes(board: Board, where: FlowFilter) -> QuerySet[TaskEvent]:
    """Status changes on the board (a block or a reorder changes no status)."""
    return (
        TaskEvent.objects.filter(board=board)
        .filter(where.tasks())
        .exclude(from_status=F("to_status"))
        .order_by()
    )


# --- where the rollups answer ---------------------------------------------------------

Span = tuple[datetime, datetime]


def _within(spans: Iterable[Span], field: str = "created_at") -> Q:
    """Rows whose ``field`` falls in one of ``spans`` (none at all: no span)."""
    q = Q(pk__in=[])
    for since, until in spans:
        if since < until:
            q |= Q(**{f"{field}__gte": since, f"{field}__lt": until})
    return q


@dataclass(frozen=True)
class WindowCut:
    """A window cut where the rollups can answer: whole periods ``rolled`` (a span,
    or None) from them, the ``raw`` spans (its edges, and what is not folded yet)
    from the event log itself."""

    rolled: Span | None
    raw: tuple[Span, ...]

    @property
    def hours(self) -> tuple[int, int]:
        """The rolled span as [first, last) hour numbers."""
        assert self.rolled is not None
        return int(self.rolled[0].timestamp()) // HOUR, int(self.rolled[1].timestamp()) // HOUR


HOUR = 3600


def window_cut(board: Board, since: datetime, until: datetime, step: int = HOUR) -> WindowCut:
    """Cut [since, until) at whole periods of ``step`` seconds (a multiple of an
    hour: the rollups hold hours) that the board's rollups hold."""
    folded = board.flow_folded_until
    if folded is None or step % HOUR:
        return WindowCut(None, ((since, until),))
    first = math.ceil(since.timestamp() / step) * step
    last = min(math.floor(until.timestamp() / step), math.floor(folded.timestamp() / step)) * step
    if last <= first:
        return WindowCut(None, ((since, until),))
    a, b = _at(first), _at(last)
    return WindowCut((a, b), ((since, a), (b, until)))


def _rolled_hours(board: Board, where: FlowFilter, cut: WindowCut) -> QuerySet[FlowHour]:
    first, last = cut.hours
    return (
        FlowHour.objects.filter(board=board, hour__gte=first, hour__lt=last)
        .filter(where.tasks(prefix=""))
        .order_by()
    )


def _signed(target: dict[str, int], from_status: str, to_status: str, n: int) -> None:
    if to_status:
        target[to_status] = target.get(to_status, 0) + n
    if from_status:
        target[from_status] = target.get(from_status, 0) - n


def flow_cfd_get(
    *, board: Board, where: FlowFilter, step: int
) -> tuple[dict[str, int], dict[tuple[int, str, str], int]]:
    """The items in each status just before the window (from every change
    before it) and the (period, from, to) counts inside it: at most five grouped
    queries, each over rollup hours or an hour or so of the event log."""
    changes = _changes(board, where)
    baseline: dict[str, int] = {}
    folded = board.flow_folded_until
    if folded is None:
        before = changes.filter(created_at__lt=where.since)
    else:
        # Every folded hour before the window's, then the log up to its start.
        hour = min(int(folded.timestamp()), int(where.since.timestamp())) // HOUR
        rolled = (
            FlowHour.objects.filter(board=board, hour__lt=hour)
            .filter(where.tasks(prefix=""))
            .order_by()
            .values_list("from_status", "to_status")
            .annotate(n=Sum("changes"))
        )
        for from_status, to_status, n in rolled:
            _signed(baseline, from_status, to_status, n)
        before = changes.filter(created_at__gte=_at(hour * HOUR), created_at__lt=where.since)
    for from_status, to_status, n in before.values_list("from_status", "to_status").annotate(n=Count("pk")):
        _signed(baseline, from_status, to_status, n)
    cut = window_cut(board, where.since, where.until, step)
    deltas: dict[tuple[int, str, str], int] = {}
    inside = (
        changes.filter(_within(cut.raw))
        .annotate(period=EpochBucket("created_at", step))
        .values_list("period", "from_status", "to_status")
        .annotate(n=Count("pk"))
    )
    for p, f, t, n in inside:
        deltas[int(p), f, t] = deltas.get((int(p), f, t), 0) + n
    if cut.rolled is not None:
        hours = (
            _rolled_hours(board, where, cut)
            .values_list("hour", "from_status", "to_status")
            .annotate(n=Sum("changes"))
        )
        for h, f, t, n in hours:
            key = (h * HOUR // step, f, t)
            deltas[key] = deltas.get(key, 0) + n
    return baseline, deltas


def flow_done_per_period_get(
    *, board: Board, where: FlowFilter, step: int, since: datetime | None = None
) -> dict[int, int]:
    """Arrivals in Done per period of ``step`` seconds (only periods with some)."""
    cut = window_cut(board, since or where.since, where.until, step)
    rows = (
        _changes(board, where)
        .filter(_within(cut.raw), to_status=Status.DONE)
        .annotate(period=EpochBucket("created_at", step))
        .values_list("period")
        .annotate(n=Count("pk"))
    )
    done = {int(p): n for p, n in rows}
    if cut.rolled is not None:
        hours = (
            _rolled_hours(board, where, cut)
            .filter(to_status=Status.DONE)
            .values_list("hour")
            .annotate(n=Sum("changes"))
        )
        for h, n in hours:
            done[h * HOUR // step] = done.get(h * HOUR // step, 0) + n
    return done


def _first_claim(task_ref: str = "task_id") -> Subquery:
    return Subquery(
        TaskEvent.objects.filter(task_id=OuterRef(task_ref), to_status=Status.RUNNING)
        .exclude(from_status=Status.RUNNING)
        .order_by("created_at", "pk")
        .values("created_at")[:1]
    )


def _histories(finishes: QuerySet[TaskEvent]) -> dict[int, tuple[float | None, bool]]:
    """For each task arriving in Done among ``finishes``: its first claim, and
    whether it passed first time (flow.is_first_pass). One grouped query over
    those tasks' events."""
    rows = (
        TaskEvent.objects.filter(task_id__in=finishes.values("task_id"))
        .order_by()
        .values_list("task_id")
        .annotate(
            first_claim=Min(
                Epoch("created_at"), filter=Q(to_status=Status.RUNNING) & ~Q(from_status=Status.RUNNING)
            ),
            passing=Count("pk", filter=Q(kind=Kind.COMPLETED, to_status=Status.DONE)),
            escalated=Count("pk", filter=Q(kind=Kind.ESCALATED)),
            corrected=Count("pk", filter=Q(kind=Kind.CORRECTED)),
            rejected=Count("pk", filter=Q(kind=Kind.REJECTED)),
            returns=Count("pk", filter=Q(to_status=Status.READY, from_status__in=_REWORK_FROM)),
            done=Count("pk", filter=Q(to_status=Status.DONE) & ~Q(from_status=Status.DONE)),
        )
    )
    out: dict[int, tuple[float | None, bool]] = {}
    for task_id, first_claim, passing, escalated, corrected, rejected, returns, done in rows:
        history = flow.TaskHistory(
            # Finished each time by a passing run (a person's move to Done is not one).
            completed_passing=passing > 0 and passing == done,
            escalated=escalated,
            corrected=corrected,
            rejected=rejected,
            returns=returns,
        )
        out[task_id] = (first_claim, flow.is_first_pass(history))
    return out


def flow_finished_raw_get(*, board: Board, where: FlowFilter, since: datetime) -> flow.FinishedItems:
    """Every arrival in Done in [since, where.until) read from the event log, with
    its task's creation, agent and capability, its first claim and whether it
    passed first time: two queries."""
    finishes = _changes(board, where).filter(
        to_status=Status.DONE, created_at__gte=since, created_at__lt=where.until
    )
    histories = _histories(finishes)
    rows = (
        finishes.annotate(created=Epoch("task__created_at"), finished=Epoch("created_at"))
        .values_list("task_id", "created", "finished", "task__agent_id", "task__capability")
        .order_by("created_at", "pk")
    )
    out = []
    for task_id, created, finished, agent_id, capability in _fetch(rows):
        first_claim, first_pass = histories.get(task_id, (None, False))
        out.append((task_id, created, first_claim, finished, agent_id, capability, first_pass))
    return flow.FinishedItems.of_rows(out)


def flow_finished_get(*, board: Board, where: FlowFilter) -> flow.FinishedItems:
    """Every arrival in Done in the window, in the order they finished: from the
    rollup's items up to where the board is folded (one query), then from the
    event log."""
    folded = board.flow_folded_until
    items = flow.FinishedItems()
    raw_since = where.since
    if folded is not None and folded > where.since:
        raw_since = min(folded, where.until)
        rows = (
            FlowItem.objects.filter(board=board, finished_at__gte=where.since, finished_at__lt=raw_since)
            .filter(where.tasks(prefix=""))
            .annotate(created=Epoch("created_at"), started=Epoch("started_at"), finished=Epoch("finished_at"))
            .values_list("task_id", "created", "started", "finished", "agent_id", "capability", "first_pass")
            .order_by("finished_at", "pk")
        )
        items = flow.FinishedItems.of_rows(_fetch(rows))
    if raw_since < where.until:
        items.extend(flow_finished_raw_get(board=board, where=where, since=raw_since))
    return items


def flow_in_flight_get(*, board: Board, where: FlowFilter) -> list[flow.InFlightItem]:
    """Items in In progress or Review at the end of the window, with their first
    claim. For a window ending now, the tasks in those statuses; for a past one,
    the tasks whose last status change before its end took them there."""
    statuses = [Status.RUNNING, Status.REVIEW]
    rows: Iterable[tuple[int, str, str, datetime | None, int | None, str]]
    if where.live or where.until >= timezone.now():
        rows = (
            Task.objects.filter(board=board, status__in=statuses)
            .filter(where.tasks(prefix=""))
            .annotate(first_claim=_first_claim("pk"))
            .values_list("pk", "title", "status", "first_claim", "agent_id", "capability")
            .order_by("pk")
        )
    else:
        # The last status change before the end took the task into flight.
        later = TaskEvent.objects.filter(
            task_id=OuterRef("task_id"), created_at__gt=OuterRef("created_at"), created_at__lt=where.until
        ).exclude(from_status=F("to_status"))
        rows = (
            _changes(board, where)
            .filter(to_status__in=statuses, created_at__lt=where.until)
            .filter(~Exists(later))
            .annotate(first_claim=_first_claim())
            .values_list(
                "task_id", "task__title", "to_status", "first_claim", "task__agent_id", "task__capability"
            )
            .order_by("task_id")
        )
    return [
        flow.InFlightItem(
            task_id=pk,
            title=title,
            status=status,
            started_at=started,
            agent_id=agent_id,
            capability=capability,
        )
        for pk, title, status, started, agent_id, capability in rows
        if started is not None
    ]


def flow_line_get(*, board: Board, where: FlowFilter) -> dict[tuple[int | None, str], dict[str, float]]:
    """Per (agent, capability): returns to Ready by cause, escalations, inspected
    outputs and ledger cost in the window: four grouped queries over its edges
    and what is not folded, two over the rollup hours."""
    cut = window_cut(board, where.since, where.until)
    window = _within(cut.raw)
    line: dict[tuple[int | None, str], dict[str, float]] = {}

    def add(key: tuple[int | None, str], name: str, value: float) -> None:
        line.setdefault(key, {})[name] = line.get(key, {}).get(name, 0) + value

    returns = (
        _changes(board, where)
        .filter(window, to_status=Status.READY, from_status__in=_REWORK_FROM)
        .values_list("task__agent_id", "task__capability", "actor")
        .annotate(n=Count("pk"))
    )
    for agent_id, capability, actor, n in returns:
        add((agent_id, capability), "rework_human" if actor == TaskEvent.Actor.USER else "rework_agent", n)
    for model, name in ((Escalation, "escalations"), (Inspection, "inspections")):
        rows = (
            model.objects.filter(window, board=board)
            .filter(where.own_agent())
            .order_by()
            .values_list("agent_id", "task__capability")
            .annotate(n=Count("pk"))
        )
        for agent_id, capability, n in rows:
            add((agent_id, capability), name, n)
    costs = (
        ModelCall.objects.filter(window, board=board)
        .filter(where.own_agent())
        .order_by()
        .values_list("agent_id", "task__capability")
        .annotate(cost=Sum("cost"))
    )
    for agent_id, capability, cost in costs:
        add((agent_id, capability), "cost", float(cost or Decimal(0)))
    if cut.rolled is None:
        return line
    rolled_returns = (
        _rolled_hours(board, where, cut)
        .filter(to_status=Status.READY, from_status__in=_REWORK_FROM)
        .values_list("agent_id", "capability", "by_person")
        .annotate(n=Sum("changes"))
    )
    for agent_id, capability, by_person, n in rolled_returns:
        add((agent_id, capability), "rework_human" if by_person else "rework_agent", n)
    first, last = cut.hours
    rolled_line = (
        FlowLineHour.objects.filter(board=board, hour__gte=first, hour__lt=last)
        .filter(where.tasks(prefix=""))
        .order_by()
        .values_list("agent_id", "capability")
        .annotate(escalations=Sum("escalations"), inspections=Sum("inspections"), cost=Sum("cost"))
    )
    for agent_id, capability, escalations, inspections, cost in rolled_line:
        for name, value in (("escalations", escalations), ("inspections", inspections)):
            if value:
                add((agent_id, capability), name, value)
        if cost:
            add((agent_id, capability), "cost", float(cost))
    return line


def flow_data_get(*, board: Board, where: FlowFilter, step: int) -> FlowData:
    """What the Flow page draws: at most sixteen queries, whatever the number of tasks."""
    columns = list(board.columns.order_by("position", "pk"))
    baseline, deltas = flow_cfd_get(board=board, where=where, step=step)
    finished = flow_finished_get(board=board, where=where)
    agent_ids = {a for a in set(finished.agent_id) if a}
    line = flow_line_get(board=board, where=where)
    agent_ids |= {a for a, _ in line if a}
    agents = list(Agent.objects.filter(pk__in=agent_ids)) if agent_ids else []
    names = {a.pk: a.name for a in agents}
    return FlowData(
        columns=columns,
        step=step,
        grid=flow.period_grid(where.since, where.until, step),
        baseline=baseline,
        deltas=deltas,
        hourly_done=flow_done_per_period_get(board=board, where=where, step=3600),
        finished=finished,
        in_flight=flow_in_flight_get(board=board, where=where),
        line=line,
        agent_names=names,
        simulated={a.name for a in agents if a.is_simulated},
    )


def flow_line_counts(data: FlowData) -> tuple[dict[str, flow.LineCounts], dict[str, flow.LineCounts]]:
    """The agent-line counts per agent name and per capability."""
    per_agent: dict[str, dict[str, float]] = {}
    per_capability: dict[str, dict[str, float]] = {}

    def name(agent_id: int | None) -> str:
        return data.agent_names.get(agent_id, f"agent {agent_id}") if agent_id else "(no agent)"

    def bump(target: dict[str, dict[str, float]], key: str, values: Iterable[tuple[str, float]]) -> None:
        row = target.setdefault(key, {})
        for k, v in values:
            row[k] = row.get(k, 0) + v

    # Counted per (agent, capability) first: a window may hold tens of thousands.
    f = data.finished
    tally = Counter(zip(f.agent_id, f.capability, f.first_pass, strict=True))
    for (agent_id, capability, first_pass), n in tally.items():
        finished = [("completed", float(n)), ("first_pass", float(n if first_pass else 0))]
        bump(per_agent, name(agent_id), finished)
        bump(per_capability, capability or "(none)", finished)
    for (agent_id, capability), values in data.line.items():
        bump(per_agent, name(agent_id), values.items())
        bump(per_capability, capability or "(none)", values.items())

    def counts(row: dict[str, float]) -> flow.LineCounts:
        return flow.LineCounts(
            completed=int(row.get("completed", 0)),
            first_pass=int(row.get("first_pass", 0)),
            rework_agent=int(row.get("rework_agent", 0)),
            rework_human=int(row.get("rework_human", 0)),
            escalations=int(row.get("escalations", 0)),
            inspections=int(row.get("inspections", 0)),
            cost=float(row.get("cost", 0.0)),
        )

    return (
        {k: counts(v) for k, v in sorted(per_agent.items())},
        {k: counts(v) for k, v in sorted(per_capability.items())},
    )
