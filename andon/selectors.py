"""Reads for the andon inbox, the escalation page and the board's andon state."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Q, QuerySet, prefetch_related_objects
from django.utils import timezone

from andon.budgets import BudgetStatus, budget_statuses
from andon.models import (
    SIMULATED_REVIEWER,
    AgentRecord,
    Alert,
    AndonRecord,
    Budget,
    CircuitBreaker,
    Escalation,
    Inspection,
    LineStop,
    WasteThreshold,
)
from boards.models import Agent, Board
from kaizen_web.prepared import Prepared

INBOX_LIMIT = 200
# Open escalations read to group them: far more than Review ever holds on a
# working line, and a bound on what one inbox render reads.
GROUPING_LIMIT = 5000

GroupKey = tuple


def _with_members(leader: Escalation, members: list[Escalation]) -> Escalation:
    """``leader`` (the oldest open member: its row's id stays put while newer
    identical escalations join) with ``members`` (oldest first, the leader
    among them) and the union of their failed checks."""
    leader.members = members
    leader.member_ids = ",".join(str(m.pk) for m in members)
    seen: list[str] = []
    for member in members:
        for name in member.failed_checks:
            if name not in seen:
                seen.append(name)
    leader.group_checks = seen
    return leader


def _grouped(escalations: list[Escalation]) -> list[Escalation]:
    """Open escalations (newest first) as groups of identical ones: each group's
    leader, with its members, the group placed by its newest member."""
    groups: dict[GroupKey, list[Escalation]] = {}
    for escalation in escalations:
        groups.setdefault(escalation.group_key, []).append(escalation)
    leaders = []
    for members in groups.values():
        members = sorted(members, key=lambda e: (e.created_at, e.pk))
        leaders.append(_with_members(members[0], members))
    return leaders


def _keys_q(keys: set[GroupKey]) -> Q:
    """The open escalations of these groups, as a filter."""
    query = Q(pk__in=[key[1] for key in keys if key[0] == "one"])
    for key in keys:
        if key[0] != "one":
            board_id, agent_id, input_key, output = key
            query |= Q(board_id=board_id, agent_id=agent_id, task__input_key=input_key, output=output)
    return query


def inbox_groups_get(
    *,
    board_id: int | None = None,
    agent_id: int | None = None,
    check: str = "",
    keys: set[GroupKey] | None = None,
    details: bool = False,
) -> list[Escalation]:
    """The inbox's rows: groups of identical open escalations (see
    Escalation.group_key), newest activity first, at most INBOX_LIMIT. Each is
    its leader, the oldest member, with ``members``, ``member_ids`` and
    ``group_checks``. A group matches the check filter when any member failed
    that check (it is then shown whole). With ``keys``, only those groups."""
    queryset = Escalation.objects.filter(status=Escalation.Status.OPEN).select_related(
        "task", "board", "agent", "claimed_by"
    )
    if board_id:
        queryset = queryset.filter(board_id=board_id)
    if agent_id:
        queryset = queryset.filter(agent_id=agent_id)
    if keys is not None:
        queryset = queryset.filter(_keys_q(keys))
    escalations = list(queryset.order_by("-created_at", "-pk")[:GROUPING_LIMIT])
    leaders = _grouped(escalations)
    if check:
        leaders = [leader for leader in leaders if check in leader.group_checks]
    leaders = leaders[:INBOX_LIMIT]
    return escalation_details_get(leaders) if details else leaders


def escalation_group_get(*, escalation: Escalation) -> list[Escalation]:
    """The open escalations identical to ``escalation`` (itself included, if
    open), oldest first."""
    key = escalation.group_key
    if key[0] == "one":
        return [escalation] if escalation.is_open else []
    board_id, agent_id, input_key, output = key
    return list(
        Escalation.objects.filter(
            status=Escalation.Status.OPEN,
            board_id=board_id,
            agent_id=agent_id,
            task__input_key=input_key,
            output=output,
        )
        .select_related("task", "board", "agent", "claimed_by")
        .order_by("created_at", "pk")
    )


def inbox_escalations_get(
    *,
    board_id: int | None = None,
    agent_id: int | None = None,
    check: str = "",
    ids: list[int] | None = None,
    details: bool = False,
) -> list[Escalation]:
    """Open escalations, newest first (at most INBOX_LIMIT), filtered by board,
    agent and failed check; with ``details``, each with what an inbox row shows
    beyond its own columns (see escalation_details_get)."""
    queryset = Escalation.objects.filter(status=Escalation.Status.OPEN).select_related(
        "task", "board", "agent", "claimed_by"
    )
    if ids is not None:
        queryset = queryset.filter(pk__in=ids)
    if board_id:
        queryset = queryset.filter(board_id=board_id)
    if agent_id:
        queryset = queryset.filter(agent_id=agent_id)
    queryset = queryset.order_by("-created_at", "-pk")
    if check:
        # Failures are a JSON list, matched here so SQLite and PostgreSQL agree;
        # read in chunks until the page is full, so older matches are not cut off.
        escalations = []
        for escalation in queryset.iterator(chunk_size=500):
            if check in escalation.failed_checks:
                escalations.append(escalation)
                if len(escalations) >= INBOX_LIMIT:
                    break
    else:
        escalations = list(queryset[:INBOX_LIMIT])
    return escalation_details_get(escalations) if details else escalations


def escalation_details_get(escalations: list[Escalation]) -> list[Escalation]:
    """What an inbox row shows beyond the escalation's own columns: the task's
    model calls (one query for the whole list) and ``agent_record``, its agent's
    recent record (two queries per agent, not per row). The page and the live
    pushes both use it, so a pushed row is the row the page draws."""
    prefetch_related_objects(escalations, "task__model_call_rows")
    records: dict[int | None, AgentRecord | None] = {
        agent_id: agent_record_get(agent_id=agent_id)
        for agent_id in {e.agent_id for e in escalations if e.agent_id}
    }
    for escalation in escalations:
        escalation.agent_record = records.get(escalation.agent_id)
        # The task page's URL needs the task's board: it is the escalation's.
        escalation.task.board = escalation.board
    return escalations


def escalation_get(*, pk: int) -> Escalation | None:
    return (
        Escalation.objects.select_related("task", "board", "agent", "claimed_by", "decided_by")
        .filter(pk=pk)
        .first()
    )


def inbox_filter_choices_get() -> dict[str, list]:
    """Boards, agents and failed check names that open escalations have, for the filters."""
    open_ = Escalation.objects.filter(status=Escalation.Status.OPEN)
    checks: set[str] = set()
    for failures in open_.order_by("-created_at").values_list("failures", flat=True)[:1000]:
        checks.update(f.get("name", "") for f in failures or [] if isinstance(f, dict))
    return {
        "boards": list(Board.objects.order_by("name").values_list("pk", "name")),
        "agents": list(Agent.objects.order_by("name").values_list("pk", "name")),
        "checks": sorted(c for c in checks if c),
    }


def agent_record_get(*, agent_id: int | None, last: int = 50) -> AgentRecord | None:
    """The agent's recent record: of its last ``last`` outputs, how many were
    defects, and how reviewers decided its escalations among them."""
    if agent_id is None:
        return None
    recent = list(
        Inspection.objects.filter(agent_id=agent_id)
        .order_by("-created_at", "-pk")
        .values_list("pk", "passed")[:last]
    )
    passed = [p for _, p in recent]
    # The decisions on those outputs' escalations, not on every escalation the
    # agent ever had: the record shows both side by side.
    decisions = dict(
        Escalation.objects.filter(inspection_id__in=[pk for pk, p in recent if not p])
        .order_by()
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    return AgentRecord(
        outputs=len(passed),
        defects=sum(1 for p in passed if not p),
        approved=decisions.get(Escalation.Status.APPROVED, 0),
        corrected=decisions.get(Escalation.Status.CORRECTED, 0),
        rejected=decisions.get(Escalation.Status.REJECTED, 0),
    )


@dataclass(frozen=True)
class WarningTimes:
    """People's time to decision with a failure warning shown and without
    (andon.failure_warnings), over the last ``days``: the medians and how many
    decisions each is of. The demo's simulated reviewer's decisions are left
    out (``simulated`` counts them): a program's speed says nothing of people's."""

    days: int
    warned_median_s: float | None
    warned: int
    unwarned_median_s: float | None
    unwarned: int
    simulated: int


# The decisions read for the medians, at most (newest first).
WARNING_TIMES_LIMIT = 50_000


def warning_times_get(*, days: int = 30) -> WarningTimes:
    """Median seconds from an escalation opening to its decision, with a failure
    warning shown and without, over the last ``days``; escalations decided
    before the warning was recorded (``warned`` null) are not counted."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        Escalation.objects.filter(decided_at__gte=since, warned__isnull=False, decision_seconds__isnull=False)
        .exclude(status=Escalation.Status.WITHDRAWN)
        .order_by("-decided_at")
        .values_list("warned", "decision_seconds", "decided_by__username")[:WARNING_TIMES_LIMIT]
    )
    warned: list[float] = []
    unwarned: list[float] = []
    simulated = 0
    for shown, seconds, username in rows:
        if username == SIMULATED_REVIEWER:
            simulated += 1
        elif seconds is not None:  # always, by the filter; says so to the type checker
            (warned if shown else unwarned).append(seconds)
    return WarningTimes(
        days=days,
        warned_median_s=statistics.median(warned) if warned else None,
        warned=len(warned),
        unwarned_median_s=statistics.median(unwarned) if unwarned else None,
        unwarned=len(unwarned),
        simulated=simulated,
    )


@dataclass(frozen=True)
class InboxStats:
    open: int
    inspected: int
    escalated: int
    decided: int
    median_decision_s: float | None
    p90_decision_s: float | None
    window_hours: int
    warning_times: WarningTimes

    @property
    def escalation_rate(self) -> float | None:
        return self.escalated / self.inspected if self.inspected else None

    @property
    def target(self) -> float:
        return ESCALATION_TARGET

    @property
    def rate_ok(self) -> bool:
        rate = self.escalation_rate
        return rate is None or rate < ESCALATION_TARGET


# The escalation rate the line aims to stay under.
ESCALATION_TARGET = 0.05


def inbox_stats_get(*, hours: int = 24) -> InboxStats:
    """Escalation rate (escalations over inspected outputs) and time to decision,
    over the last ``hours``."""
    since = timezone.now() - timedelta(hours=hours)
    inspected = Inspection.objects.filter(created_at__gte=since).count()
    counts = Escalation.objects.aggregate(
        open=Count("pk", filter=Q(status=Escalation.Status.OPEN)),
        escalated=Count("pk", filter=Q(created_at__gte=since)),
    )
    waits = [
        (decided - created).total_seconds()
        for created, decided in Escalation.objects.filter(decided_at__gte=since)
        .exclude(status=Escalation.Status.WITHDRAWN)
        .values_list("created_at", "decided_at")[:5000]
        if decided is not None  # always, by the filter; says so to the type checker
    ]
    return InboxStats(
        open=counts["open"],
        inspected=inspected,
        escalated=counts["escalated"],
        decided=len(waits),
        median_decision_s=statistics.median(waits) if waits else None,
        p90_decision_s=statistics.quantiles(waits, n=10)[-1]
        if len(waits) >= 2
        else (waits[0] if waits else None),
        window_hours=hours,
        warning_times=warning_times_get(),
    )


def active_line_stops_get(*, board: Board | None = None) -> list[LineStop]:
    """Stops in force: all of them, or those that stop this board (the board's own
    and those of agents serving it)."""
    # A budget stop whose period has ended is out of force (LineStop.expired).
    stops = (
        LineStop.objects.filter(restarted_at__isnull=True)
        .filter(Q(until__isnull=True) | Q(until__gt=timezone.now()))
        .select_related("board", "agent", "stopped_by", "budget")
    )
    if board is not None:
        stops = stops.filter(Q(board=board) | Q(agent__boards=board)).distinct()
    return list(stops.order_by("-created_at"))


def line_stops_history_get(*, limit: int = 50) -> list[LineStop]:
    return list(
        LineStop.objects.select_related("board", "agent", "stopped_by", "restarted_by").order_by(
            "-created_at"
        )[:limit]
    )


def breakers_get(*, agent_ids: list[int]) -> tuple[dict[int, CircuitBreaker], list[CircuitBreaker]]:
    """The agents' breakers that are not closed, by agent, and the model breakers
    that are not closed."""
    rows = CircuitBreaker.objects.exclude(state=CircuitBreaker.State.CLOSED).filter(
        Q(agent_id__in=agent_ids) | Q(scope=CircuitBreaker.Scope.MODEL)
    )
    agents: dict[int, CircuitBreaker] = {}
    models: list[CircuitBreaker] = []
    for breaker in rows:
        # An agent's breaker came through agent_id__in: its agent_id is set.
        if breaker.scope == CircuitBreaker.Scope.AGENT and breaker.agent_id is not None:
            agents[breaker.agent_id] = breaker
        else:
            models.append(breaker)
    return agents, models


def recent_decisions_get(*, limit: int = 10) -> list[Escalation]:
    """The latest decisions (and withdrawals), newest first, with who made them."""
    return list(
        Escalation.objects.exclude(status=Escalation.Status.OPEN)
        .filter(decided_at__isnull=False)
        .select_related("task", "board", "decided_by")
        .order_by("-decided_at", "-pk")[:limit]
    )


# --- budgets and alerts ------------------------------------------------------------------


def open_alerts_get(*, limit: int = 50) -> list[Alert]:
    """Alerts not acknowledged yet, newest first (one query)."""
    return list(
        Alert.objects.filter(acknowledged_at__isnull=True)
        .select_related("board", "agent", "budget")
        .order_by("-created_at", "-pk")[:limit]
    )


def budget_list(*, board: Board | None = None, agent: Agent | None = None) -> list[Budget]:
    """Budgets, all of them or those of a board (its own and its agents') or of an agent."""
    budgets = Budget.objects.select_related("board", "agent")
    if board is not None:
        budgets = budgets.filter(Q(board=board) | Q(agent__boards=board)).distinct()
    if agent is not None:
        budgets = budgets.filter(agent=agent)
    return list(budgets.order_by("name", "pk"))


def budget_statuses_get(*, board: Board | None = None, agent: Agent | None = None) -> list[BudgetStatus]:
    """Each budget with its spend this period, from the running totals: two queries."""
    return budget_statuses(budget_list(board=board, agent=agent))


def budget_status_get(*, budget: Budget) -> BudgetStatus:
    return budget_statuses([budget])[0]


def _board_budgets_query(*, board_id: int) -> QuerySet:
    agents = Agent.boards.through.objects.filter(board_id=board_id).values("agent_id")
    return Budget.objects.filter(Q(board_id=board_id) | Q(agent_id__in=agents)).values_list("pk")[:1]


# Asked by every live update of a board: compiled once (kaizen_web.prepared).
_BOARD_BUDGETS = Prepared(_board_budgets_query, board_id=int)


def board_budgets_exist(*, board: Board) -> bool:
    """Whether the board or one of its agents has a budget: a plain query that
    spares most boards' live updates the read of their budgets' spend."""
    return bool(_BOARD_BUDGETS.rows(board_id=board.pk))


def budget_warnings_get(*, board: Board | None = None) -> list[BudgetStatus]:
    """The budgets at or past their warning level this period (for the banners)."""
    return [status for status in budget_statuses_get(board=board) if status.warned]


def budget_records_get(
    *, budget: Budget | None = None, board: Board | None = None, agent: Agent | None = None, limit: int = 50
) -> list[AndonRecord]:
    """The andon's record of budgets and alerts, newest first: all of it, or a
    budget's, or a board's (its own and its agents'), or an agent's."""
    records = AndonRecord.objects.select_related("budget", "user", "board", "agent", "alert")
    if budget is not None:
        records = records.filter(budget=budget)
    if board is not None:
        records = records.filter(Q(board=board) | Q(agent__boards=board)).distinct()
    if agent is not None:
        records = records.filter(agent=agent)
    return list(records.order_by("-created_at", "-pk")[:limit])


def waste_thresholds_get(*, board: Board | None = None, agent: Agent | None = None) -> list[WasteThreshold]:
    """The waste thresholds: all, or a board's (its own and its agents'), or an
    agent's; with their board and agent (one query)."""
    thresholds = WasteThreshold.objects.select_related("board", "agent")
    if board is not None:
        thresholds = thresholds.filter(Q(board=board) | Q(agent__boards=board)).distinct()
    if agent is not None:
        thresholds = thresholds.filter(agent=agent)
    return list(thresholds.order_by("waste", "pk"))


def threshold_records_get(
    *,
    threshold: WasteThreshold | None = None,
    board: Board | None = None,
    agent: Agent | None = None,
    limit: int = 50,
) -> list[AndonRecord]:
    """The andon's record of waste thresholds, newest first: all, or one's, or a
    board's (its own and its agents'), or an agent's."""
    Action = AndonRecord.Action
    actions = [
        Action.THRESHOLD_CREATED,
        Action.THRESHOLD_CHANGED,
        Action.THRESHOLD_DELETED,
        Action.THRESHOLD_CROSSED,
        Action.THRESHOLD_RECOVERED,
        Action.WASTE_LINE_STOPPED,
    ]
    records = AndonRecord.objects.select_related("user", "board", "agent").filter(
        Q(action__in=actions) | Q(action=Action.LINE_RESTARTED, threshold__isnull=False)
    )
    if threshold is not None:
        records = records.filter(threshold=threshold)
    if board is not None:
        records = records.filter(Q(board=board) | Q(agent__boards=board)).distinct()
    if agent is not None:
        records = records.filter(agent=agent)
    return list(records.order_by("-created_at", "-pk")[:limit])
