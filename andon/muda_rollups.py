"""The Muda rollups: what the seven wastes sum, kept as the line records it, so that
the Muda page, its API and the waste thresholds read a few hundred rows a week
instead of every ledger row, inspection and event (andon.muda reads them).

Four tables (andon.models):

- ``MudaHour``: per board, agent and clock hour (UTC), the sums of the facts of
  runs (a run: one task's attempt, its ledger rows, inspections and escalations);
- ``MudaContextHour``: a histogram of context-window use, per board, agent, model
  and hour;
- ``MudaFinish``: a row per task entering Done, with its queue times and calls;
- ``MudaRepeat``: a row per model call that repeats an identical earlier one.

A run's facts are computed by one pure function, ``run_facts``, from all of the
run's rows; each fact keeps the time of the row it comes from (a call's, an
inspection's, an escalation's), so a window's partial hours at its edges can be
computed from the rows themselves, the same way. A late fact (a reviewer
rejecting a draft, which makes its tokens waste; a stale run's calls) is written
as a difference: the run's facts after, minus before.

Where they are written, in the transaction that writes what they summarise:

- a batch of completed runs (boards.services.runs.tasks_complete): ``runs_recorded``
  (from the rows in hand, no read), ``repeats_record``, ``finishes_refresh``;
- calls recorded apart from a completion (a failed attempt, a stale run):
  ``calls_added`` (reads the runs' earlier rows, writes the difference);
- a reviewer's decision (andon.services): ``escalation_decided``; the approval's
  move to Done: ``finishes_refresh``; a person moving a task to Done
  (boards.services.moves): ``finishes_refresh``.

``rebuild`` recomputes everything from the rows (``manage.py muda_rollups_rebuild``).

Imports no service and no selector: the line's services and andon.muda call it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import connection
from django.db.models import Q

from andon.models import Escalation, Inspection, MudaContextHour, MudaFinish, MudaHour, MudaRepeat
from boards.models import ModelCall, Task, TaskEvent
from kaizen_web.prepared import Prepared
from kaizen_web.rows import rows_insert

HOUR = timedelta(hours=1)
Source = ModelCall.Source
Status = Task.Status
Kind = TaskEvent.Kind
QUEUE_STATUSES = (Status.BACKLOG, Status.READY, Status.REVIEW)
DECISIONS = (Kind.APPROVED, Kind.CORRECTED, Kind.REJECTED)

# MudaHour's sums, in its column order.
HOUR_FIELDS = tuple(
    f.name for f in MudaHour._meta.concrete_fields if f.name not in ("id", "board", "agent", "hour")
)
FLOAT_FIELDS = frozenset(
    f.name for f in MudaHour._meta.concrete_fields if f.get_internal_type() == "FloatField"
)
ESCALATION_STATUS_FIELDS: dict[str, str] = {
    Escalation.Status.OPEN: "escalations_open",
    Escalation.Status.APPROVED: "escalations_approved",
    Escalation.Status.CORRECTED: "escalations_corrected",
    Escalation.Status.REJECTED: "escalations_rejected",
}
FINISH_FIELDS = ("backlog_s", "ready_s", "review_s", "decision_s", "blocked_s", "lead_s")


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def context_bucket(share: float) -> int:
    """The histogram bucket of a context-window use (percent), by its lower bound:
    5 points wide below 50%, 1 point to 100%, 10 points above. A percentile read
    from it is the largest use in its bucket: never below the exact one, and at
    most the bucket's width above it."""
    if share < 50:
        return int(share // 5) * 5
    if share < 100:
        return int(share)
    return 100 + int((share - 100) // 10) * 10


# --- rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    pk: int
    task_id: int
    board_id: int
    agent_id: int | None
    attempt: int
    tier: int | None
    source: str
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

    @property
    def run(self) -> tuple[int, int]:
        return (self.task_id, self.attempt)

    @property
    def context_share(self) -> float | None:
        """Prompt tokens over the tier's context window, in percent (model calls only)."""
        if self.source != Source.MODEL or not self.context_window or not self.tokens_in:
            return None
        return 100.0 * self.tokens_in / self.context_window


@dataclass(frozen=True)
class Check:
    """An inspection."""

    pk: int
    task_id: int
    board_id: int
    agent_id: int | None
    attempt: int
    passed: bool
    waste_tokens: int
    at: datetime

    @property
    def run(self) -> tuple[int, int]:
        return (self.task_id, self.attempt)


@dataclass(frozen=True)
class Decision:
    """An escalation, with its status now."""

    pk: int
    task_id: int
    board_id: int
    agent_id: int | None
    inspection_id: int
    attempt: int
    status: str
    at: datetime

    @property
    def run(self) -> tuple[int, int]:
        return (self.task_id, self.attempt)


CALL_FIELDS = (
    "pk",
    "task_id",
    "board_id",
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
CHECK_FIELDS = ("pk", "task_id", "board_id", "agent_id", "attempt", "passed", "waste_tokens", "created_at")
DECISION_FIELDS = (
    "pk",
    "task_id",
    "board_id",
    "agent_id",
    "inspection_id",
    "attempt",
    "status",
    "created_at",
)


def _call(row: tuple) -> Call:
    return Call(*row[:11], float(row[11]), row[12], row[13], bool(row[14]), *row[15:])  # type: ignore[call-arg]


def calls_of(queryset) -> list[Call]:
    return [_call(row) for row in queryset.values_list(*CALL_FIELDS)]


def call_of(row: ModelCall) -> Call:
    return Call(
        row.pk,
        row.task_id,
        row.board_id,
        row.agent_id,
        row.attempt,
        row.tier,
        row.source,
        row.provider,
        row.model,
        row.tokens_in,
        row.tokens_out,
        float(row.cost),
        row.accepted,
        row.stale,
        bool(row.error),
        row.request_key,
        row.context_window,
        row.would_pass,
        row.created_at,
    )


def checks_of(queryset) -> list[Check]:
    return [Check(*row) for row in queryset.values_list(*CHECK_FIELDS)]


def check_of(row: Inspection) -> Check:
    return Check(
        row.pk,
        row.task_id,
        row.board_id,
        row.agent_id,
        row.attempt,
        row.passed,
        row.waste_tokens,
        row.created_at,
    )


def decisions_of(queryset) -> list[Decision]:
    return [Decision(*row) for row in queryset.values_list(*DECISION_FIELDS)]


def decision_of(row: Escalation) -> Decision:
    return Decision(
        row.pk,
        row.task_id,
        row.board_id,
        row.agent_id,
        row.inspection_id,
        row.attempt,
        row.status,
        row.created_at,
    )


# --- a run's facts ---------------------------------------------------------------------

# (board, agent or 0, when, field, amount)
Fact = tuple[int, int, datetime, str, float]


def run_facts(calls: Sequence[Call], checks: Sequence[Check], decisions: Sequence[Decision]) -> list[Fact]:
    """Everything one run (a task's attempt) adds to the wastes, each fact at the
    time of the row it comes from. The definitions are andon.muda's, per run:
    overproduction (its calls' output tokens: passed over, of a draft a reviewer
    rejected, or beyond the inspection's estimate), over-processing, defects'
    retries and cost, the inspections' and escalations' counts."""
    facts: list[Fact] = []

    def add(row: Call | Check | Decision, name: str, amount: float = 1) -> None:
        if amount:
            facts.append((row.board_id, row.agent_id or 0, row.at, name, amount))

    calls = sorted(calls, key=lambda c: (c.at, c.pk))
    checks = sorted(checks, key=lambda i: (i.at, i.pk))
    rejected = any(d.status == Escalation.Status.REJECTED for d in decisions)
    # As andon.muda.overproduction: the run's latest inspection's estimate.
    excess_tokens = checks[-1].waste_tokens if checks else 0
    for call in calls:
        if call.error:
            add(call, "provider_errors")
        if call.source == Source.CACHE:
            add(call, "served_from_cache")
            continue
        if call.source == Source.REUSE:
            add(call, "reused_results")
            continue
        add(call, "model_calls")
        add(call, "output_tokens", call.tokens_out)
        if not call.accepted:
            add(call, "passed_over_tokens", call.tokens_out)
            add(call, "overproduction_cost", call.cost)
        elif rejected:
            add(call, "rejected_tokens", call.tokens_out)
            add(call, "overproduction_cost", call.cost)
        else:
            over = min(excess_tokens, call.tokens_out)
            if over:
                add(call, "excess_tokens", over)
                add(call, "overproduction_cost", call.cost * over / (call.tokens_in + call.tokens_out))
    if calls:
        first = calls[0]
        if first.attempt > 1:
            add(first, "retries")
        accepted = [c for c in calls if c.accepted and not c.stale]
        if accepted:
            add(first, "answers_taken")
            tier = accepted[-1].tier or 1
            if tier > 1:
                add(first, "taken_above_tier_1")
                cheaper = [c for c in calls if c.tier is not None and c.tier < tier and not c.error]
                passing = [c.tier for c in cheaper if c.would_pass and c.tier is not None]
                if passing:
                    add(first, "with_cheaper_verdict")
                    add(first, "over_processed")
                    cheapest = min(passing)
                    for call in calls:
                        if call.tier is not None and call.tier > cheapest:
                            add(call, "over_processing_cost", call.cost)
                elif cheaper and all(c.would_pass is False for c in cheaper):
                    add(first, "with_cheaper_verdict")
        failed = any(not i.passed for i in checks)
        gave_output = any(c.accepted for c in calls) or bool(checks)
        if failed or not gave_output:
            for call in calls:
                add(call, "defect_cost", call.cost)
    escalated = {d.inspection_id for d in decisions}
    for check in checks:
        add(check, "inspected")
        if not check.passed:
            add(check, "failed_inspection")
            if check.pk not in escalated:
                add(check, "unreviewed_defects")
    for decision in decisions:
        add(decision, "escalations")
        if decision.status in ESCALATION_STATUS_FIELDS:
            add(decision, ESCALATION_STATUS_FIELDS[decision.status])
    return facts


def runs_facts(calls: Iterable[Call], checks: Iterable[Check], decisions: Iterable[Decision]) -> list[Fact]:
    """``run_facts`` of every run these rows belong to."""
    runs: dict[tuple[int, int], tuple[list[Call], list[Check], list[Decision]]] = defaultdict(
        lambda: ([], [], [])
    )
    for call in calls:
        runs[call.run][0].append(call)
    for check in checks:
        runs[check.run][1].append(check)
    for decision in decisions:
        runs[decision.run][2].append(decision)
    facts: list[Fact] = []
    for run_calls, run_checks, run_decisions in runs.values():
        facts += run_facts(run_calls, run_checks, run_decisions)
    return facts


# --- writing ---------------------------------------------------------------------------


def _db_time(at: datetime) -> Any:
    # Raw SQL gets what the ORM would store (SQLite keeps text in its own format).
    return connection.ops.adapt_datetimefield_value(at)


def _upsert(
    table: str, key: Sequence[str], columns: Sequence[str], rows: list[tuple], merge: dict[str, str]
) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE, in key order (two transactions
    lock the same rows in the same order: no deadlock). ``merge``: column -> how
    to combine the row's value with the new one (``{old}``, ``{new}``)."""
    if not rows:
        return
    rows.sort(key=lambda row: row[: len(key)])
    names = (*key, *columns)
    placeholders = "(" + ", ".join(["%s"] * len(names)) + ")"
    updates = ", ".join(f"{c} = " + merge[c].format(old=f"{table}.{c}", new=f"excluded.{c}") for c in columns)
    sql = (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES {', '.join([placeholders] * len(rows))} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


def facts_write(facts: Iterable[Fact], *, sign: int = 1) -> None:
    """Add facts (or, with sign -1, take them away) to their hours."""
    sums: dict[tuple[int, int, datetime], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for board_id, agent, at, name, amount in facts:
        sums[(board_id, agent, hour_of(at))][name] += sign * amount
    rows = []
    for (board_id, agent, hour), values in sums.items():
        if not any(values.values()):
            continue
        rows.append(
            (
                board_id,
                agent,
                _db_time(hour),
                *(
                    values.get(name, 0.0) if name in FLOAT_FIELDS else round(values.get(name, 0))
                    for name in HOUR_FIELDS
                ),
            )
        )
    table = MudaHour._meta.db_table
    _upsert(
        table, ("board_id", "agent", "hour"), HOUR_FIELDS, rows, dict.fromkeys(HOUR_FIELDS, "{old} + {new}")
    )


def contexts_write(calls: Iterable[Call]) -> None:
    """Count model calls' context-window use into their hours' histograms."""
    sums: dict[tuple, list[float]] = {}
    for call in calls:
        share = call.context_share
        if share is None:
            continue
        key = (
            call.board_id,
            call.agent_id or 0,
            call.provider,
            call.model,
            hour_of(call.at),
            context_bucket(share),
        )
        if key in sums:
            sums[key][0] += 1
            sums[key][1] = max(sums[key][1], share)
        else:
            sums[key] = [1, share]
    rows = [(*key[:4], _db_time(key[4]), key[5], int(n), peak) for key, (n, peak) in sums.items()]
    greatest = "GREATEST({old}, {new})" if connection.vendor == "postgresql" else "MAX({old}, {new})"
    _upsert(
        MudaContextHour._meta.db_table,
        ("board_id", "agent", "provider", "model", "hour", "bucket"),
        ("calls", "peak"),
        rows,
        {"calls": "{old} + {new}", "peak": greatest},
    )


def runs_recorded(
    *, calls: Sequence[ModelCall], inspections: Sequence[Inspection], escalations: Sequence[Escalation]
) -> None:
    """A batch of completed runs, from the rows just written (new runs: nothing
    of theirs was recorded before, so nothing is read)."""
    rows = [call_of(c) for c in calls]
    facts_write(runs_facts(rows, [check_of(i) for i in inspections], [decision_of(e) for e in escalations]))
    contexts_write(rows)
    repeats_record(rows)


def calls_added(calls: Sequence[ModelCall]) -> None:
    """Calls recorded apart from a completion (a failed attempt's, a stale run's),
    whose runs may have rows already: their facts change by the difference. A
    finished task's late calls change its transport."""
    if not calls:
        return
    new = [call_of(c) for c in calls]
    runs = {c.run for c in new}
    tasks = {task for task, _ in runs}
    new_pks = {c.pk for c in new}
    before = [
        c
        for c in calls_of(ModelCall.objects.filter(task_id__in=tasks))
        if c.run in runs and c.pk not in new_pks
    ]
    checks = [i for i in checks_of(Inspection.objects.filter(task_id__in=tasks)) if i.run in runs]
    decisions = [d for d in decisions_of(Escalation.objects.filter(task_id__in=tasks)) if d.run in runs]
    if before or checks or decisions:
        facts_write(runs_facts(before, checks, decisions), sign=-1)
    facts_write(runs_facts(before + new, checks, decisions))
    contexts_write(new)
    repeats_record(new)
    finishes_refresh(tasks=Task.objects.filter(pk__in=tasks, status=Status.DONE).only("board_id", "agent_id"))


def escalation_decided(escalation: Escalation, *, status_before: str) -> None:
    """A reviewer decided an escalation (saved with its new status): its status
    counts move, and a rejection makes its run's taken answer waste."""
    run = (escalation.task_id, escalation.attempt)
    calls = [c for c in calls_of(ModelCall.objects.filter(task_id=escalation.task_id)) if c.run == run]
    checks = [i for i in checks_of(Inspection.objects.filter(task_id=escalation.task_id)) if i.run == run]
    after = [d for d in decisions_of(Escalation.objects.filter(task_id=escalation.task_id)) if d.run == run]
    before = [_with_status(d, status_before) if d.pk == escalation.pk else d for d in after]
    facts_write(run_facts(calls, checks, before), sign=-1)
    facts_write(run_facts(calls, checks, after))


def _with_status(decision: Decision, status: str) -> Decision:
    return Decision(
        decision.pk,
        decision.task_id,
        decision.board_id,
        decision.agent_id,
        decision.inspection_id,
        decision.attempt,
        status,
        decision.at,
    )


# --- finishes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    pk: int
    task_id: int
    kind: str
    from_status: str
    to_status: str
    at: datetime


def is_finish(event: Event) -> bool:
    return event.to_status == Status.DONE and event.from_status != Status.DONE


class Timed(Protocol):
    """What queue_times reads of an event (an Event here, andon.muda's EventRow)."""

    @property
    def kind(self) -> str: ...

    @property
    def to_status(self) -> str: ...

    @property
    def at(self) -> datetime: ...


def queue_times(events: Sequence[Timed], done_at: datetime) -> dict[str, float]:
    """Seconds in each queue, blocked, and in all, from the first event to
    ``done_at``: the walk over one item's events, oldest first, that the rollups
    and andon.muda.waiting (the row-based reference) both take."""
    totals = dict.fromkeys(("backlog", "ready", "review", "decision", "blocked", "lead"), 0.0)
    status = ""
    blocked = deciding = False
    previous: datetime | None = None
    for event in events:
        if event.at > done_at:
            break
        if previous is not None:
            seconds = (event.at - previous).total_seconds()
            totals["lead"] += seconds
            if blocked:
                totals["blocked"] += seconds
            elif status == Status.REVIEW and deciding:
                totals["decision"] += seconds
            elif status in QUEUE_STATUSES:
                totals[status] += seconds
        previous = event.at
        if event.kind == Kind.BLOCKED:
            blocked = True
        elif event.kind == Kind.UNBLOCKED:
            blocked = False
        elif event.kind == Kind.ESCALATED:
            deciding = True
        elif event.kind in DECISIONS:
            deciding = False
        if event.to_status:
            if event.to_status != status:
                deciding = deciding and event.to_status == Status.REVIEW
            status = event.to_status
    return totals


def transport_of(calls: Sequence[Call]) -> tuple[int, float]:
    """An item's model calls (all of them) and what those beyond the taken answer cost."""
    model = [c for c in calls if c.source == Source.MODEL]
    taken = max((c for c in calls if c.accepted), key=lambda c: (c.attempt, c.at), default=None)
    return len(model), sum(c.cost for c in model if c is not taken)


def finish_rows(
    task_id: int, board_id: int, agent_id: int | None, events: Sequence[Event], calls: Sequence[Call]
) -> list[MudaFinish]:
    """A MudaFinish for each time the task entered Done."""
    events = sorted(events, key=lambda e: (e.at, e.pk))
    finishes = [e.at for e in events if is_finish(e)]
    if not finishes:
        return []
    model_calls, extra_cost = transport_of(sorted(calls, key=lambda c: (c.at, c.pk)))
    rows = []
    for n, done_at in enumerate(finishes):
        times = queue_times(events, done_at)
        rows.append(
            MudaFinish(
                task_id=task_id,
                board_id=board_id,
                agent=agent_id or 0,
                finished_at=done_at,
                superseded_at=finishes[n + 1] if n + 1 < len(finishes) else None,
                model_calls=model_calls,
                extra_cost=extra_cost,
                **{
                    f"{name}_s": times[name]
                    for name in ("backlog", "ready", "review", "decision", "blocked", "lead")
                },
            )
        )
    return rows


EVENT_FIELDS = ("pk", "task_id", "kind", "from_status", "to_status", "created_at")


def events_of(queryset) -> list[Event]:
    return [Event(*row) for row in queryset.values_list(*EVENT_FIELDS)]


def finishes_refresh(*, tasks: Iterable[Task]) -> None:
    """(Re)write the finishes of these tasks from their events and calls: after a
    task entered Done, or a finished task's calls changed. The tasks are as saved
    (their board and agent are not read again)."""
    owners = {task.pk: (task.board_id, task.agent_id) for task in tasks}
    ids = sorted(owners)
    if not ids:
        return
    events: dict[int, list[Event]] = defaultdict(list)
    for event in _TASKS_EVENTS.rows(ids=ids):
        events[event[1]].append(Event(*event))
    calls: dict[int, list[Call]] = defaultdict(list)
    for row in _TASKS_CALLS.rows(ids=ids):
        call = _call(row)
        calls[call.task_id].append(call)
    rows: list[MudaFinish] = []
    for task_id in ids:
        board_id, agent_id = owners[task_id]
        rows += finish_rows(task_id, board_id, agent_id, events[task_id], calls[task_id])
    finishes_write(rows)


# What finishes_refresh reads, for every batch of runs a worker completes:
# compiled once per length of the batch, rounded up to a power of two
# (kaizen_web.prepared), in events_of's and calls_of's shapes.
_TASKS_EVENTS = Prepared(
    lambda *, ids: TaskEvent.objects.filter(task_id__in=ids).order_by().values_list(*EVENT_FIELDS),
    ids=list,
)
_TASKS_CALLS = Prepared(
    lambda *, ids: ModelCall.objects.filter(task_id__in=ids).order_by().values_list(*CALL_FIELDS), ids=list
)


def finishes_write(rows: list[MudaFinish]) -> None:
    if rows:
        # One statement of a fixed shape (kaizen_web.rows): a completion batch writes these.
        rows_insert(
            MudaFinish,
            rows,
            unique_fields=["task", "finished_at"],
            update_fields=[
                "agent",
                "superseded_at",
                *(f"{name}" for name in FINISH_FIELDS),
                "model_calls",
                "extra_cost",
            ],
        )


# --- repeats (motion) ---------------------------------------------------------------------


def repeat_rows(calls: Sequence[Call], *, judge: Callable[[Call], bool], horizon: float) -> list[MudaRepeat]:
    """MudaRepeat rows for the model calls ``judge`` picks among ``calls`` (every
    call, failed ones excepted, with one request key or more, in time order with
    what came before them): whether the same task made the call before, and the
    seconds since the last identical call on the board and of the agent, within
    ``horizon``."""
    rows = []
    seen_in_task: set[tuple[int, str]] = set()
    last_on_board: dict[tuple[int, str], datetime] = {}
    last_of_agent: dict[tuple[int, str], datetime] = {}
    for call in sorted(calls, key=lambda c: (c.at, c.pk)):
        if not call.request_key or call.error:
            continue
        key = call.request_key
        if call.source == Source.MODEL and judge(call):
            in_task = (call.task_id, key) in seen_in_task
            gaps = []
            for last, scope in ((last_on_board, call.board_id), (last_of_agent, call.agent_id or 0)):
                earlier = last.get((scope, key))
                gap = None if earlier is None else (call.at - earlier).total_seconds()
                gaps.append(gap if gap is not None and gap < horizon else None)
            if in_task or gaps[0] is not None or gaps[1] is not None:
                rows.append(
                    MudaRepeat(
                        call_id=call.pk,
                        board_id=call.board_id,
                        agent=call.agent_id or 0,
                        at=call.at,
                        in_task=in_task,
                        board_gap_s=gaps[0],
                        agent_gap_s=gaps[1],
                        cost=call.cost,
                    )
                )
        seen_in_task.add((call.task_id, key))
        last_on_board[(call.board_id, key)] = call.at
        last_of_agent[(call.agent_id or 0, key)] = call.at
    return rows


def repeats_record(calls: Sequence[Call]) -> None:
    """Find which of these new calls repeat an earlier identical one (and which
    later calls, recorded before them, now repeat them): one read by the request
    key's index, over the response cache's lifetime and the calls' own tasks."""
    keyed = [c for c in calls if c.request_key and not c.error]
    if not keyed:
        return
    horizon = float(settings.KAIZEN_RESPONSE_CACHE_SECONDS)
    start = min(c.at for c in keyed)
    near = [
        _call(row)
        for row in _NEAR_CALLS.rows(
            keys={c.request_key for c in keyed},
            since=start - timedelta(seconds=horizon),
            task_ids={c.task_id for c in keyed},
        )
    ]
    rows = repeat_rows(near, judge=lambda c: c.at >= start, horizon=horizon)
    if rows:
        rows_insert(
            MudaRepeat, rows, unique_fields=["call"], update_fields=["in_task", "board_gap_s", "agent_gap_s"]
        )


# What repeats_record reads, for every batch of runs a worker completes: compiled
# once per number of keys and of tasks, each rounded up to a power of two
# (kaizen_web.prepared).
_NEAR_CALLS = Prepared(
    lambda *, keys, since, task_ids: (
        ModelCall.objects.filter(request_key__in=keys, error="")
        .filter(Q(created_at__gte=since) | Q(task_id__in=task_ids))
        .order_by()
        .values_list(*CALL_FIELDS)
    ),
    keys=list[str],
    since=datetime,
    task_ids=list,
)


# --- rebuilding ------------------------------------------------------------------------------


def rebuild(*, chunk: int = 2000, progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute every rollup from the rows they summarise (history written
    straight to the tables, a rollup in doubt). Tasks a chunk at a time; then the
    repeats, by request key. Returns how many tasks it read."""
    MudaHour.objects.all().delete()
    MudaContextHour.objects.all().delete()
    MudaFinish.objects.all().delete()
    MudaRepeat.objects.all().delete()
    task_ids = list(Task.objects.order_by("pk").values_list("pk", flat=True))
    total = len(task_ids)
    for start in range(0, total, chunk):
        ids = task_ids[start : start + chunk]
        lo, hi = ids[0], ids[-1]
        calls = calls_of(ModelCall.objects.filter(task_id__gte=lo, task_id__lte=hi).order_by())
        facts_write(
            runs_facts(
                calls,
                checks_of(Inspection.objects.filter(task_id__gte=lo, task_id__lte=hi).order_by()),
                decisions_of(Escalation.objects.filter(task_id__gte=lo, task_id__lte=hi).order_by()),
            )
        )
        contexts_write(calls)
        events: dict[int, list[Event]] = defaultdict(list)
        for event in events_of(TaskEvent.objects.filter(task_id__gte=lo, task_id__lte=hi).order_by()):
            events[event.task_id].append(event)
        by_task: dict[int, list[Call]] = defaultdict(list)
        for call in calls:
            by_task[call.task_id].append(call)
        rows: list[MudaFinish] = []
        for task_id, board_id, agent_id in Task.objects.filter(pk__gte=lo, pk__lte=hi).values_list(
            "pk", "board_id", "agent_id"
        ):
            if events[task_id]:
                rows += finish_rows(task_id, board_id, agent_id, events[task_id], by_task[task_id])
        MudaFinish.objects.bulk_create(rows, batch_size=1000)
        if progress:
            progress(start + len(ids), total)
    # Repeats: every keyed call, a request key's calls together.
    horizon = float(settings.KAIZEN_RESPONSE_CACHE_SECONDS)
    batch: list[Call] = []
    key = None
    queryset = ModelCall.objects.exclude(request_key="").filter(error="").order_by("request_key")
    rows_out: list[MudaRepeat] = []
    for call in _iterate_calls(queryset):
        if call.request_key != key and batch:
            if len(batch) > 1:
                rows_out += repeat_rows(batch, judge=lambda c: True, horizon=horizon)
            batch = []
            if len(rows_out) >= 1000:
                MudaRepeat.objects.bulk_create(rows_out)
                rows_out = []
        key = call.request_key
        batch.append(call)
    if len(batch) > 1:
        rows_out += repeat_rows(batch, judge=lambda c: True, horizon=horizon)
    MudaRepeat.objects.bulk_create(rows_out, batch_size=1000)
    return total


def _iterate_calls(queryset) -> Iterable[Call]:
    for row in queryset.values_list(*CALL_FIELDS).iterator(chunk_size=5000):
        yield _call(row)


# --- reading helpers for andon.muda ------------------------------------------------------------


def period_index(starts: Sequence[datetime], at: datetime) -> int:
    """The period (by the sorted starts) that ``at`` falls in; -1 before the first."""
    return bisect.bisect_right(starts, at) - 1
