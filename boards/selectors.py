"""Reads for the live board: what the page, the htmx fragments and the websocket
pushes render. Each selector runs a fixed number of queries, whatever the
number of tasks, so a board with thousands of cards costs what an empty one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Avg, Count, Exists, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum

from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent

Role = Column.Role

# How each column's cards are ordered on the board: the Backlog by urgency, Ready
# as the queue agents pull from, In progress by when the work started, Review by
# how long it has waited, Done with the latest first.
CARD_ORDER: dict[str, tuple[str, ...]] = {
    Role.BACKLOG: ("-priority", "position", "created_at", "pk"),
    Role.READY: ("position", "created_at", "pk"),
    Role.IN_PROGRESS: ("started_at", "pk"),
    Role.REVIEW: ("updated_at", "pk"),
    Role.DONE: ("-finished_at", "-pk"),
}


@dataclass
class ColumnView:
    """A column as the board draws it: its header numbers and its first cards."""

    column: Column
    count: int
    cards: list[Task] = field(default_factory=list)

    @property
    def pk(self) -> int:
        return self.column.pk

    @property
    def more(self) -> int:
        """Tasks in the column that are counted but not drawn."""
        return self.count - len(self.cards)

    @property
    def wip_state(self) -> str:
        return self.column.wip_state(self.count)

    @property
    def wip_state_label(self) -> str:
        """The Kanban state in words, so it never rests on colour alone."""
        limit = self.column.wip_limit
        state = self.wip_state
        if state == Column.WipState.UNLIMITED:
            return "no limit"
        if state == Column.WipState.ONE_LEFT:
            return "one left"
        if state == Column.WipState.REACHED:
            return "limit reached"
        if state == Column.WipState.EXCEEDED:
            return f"over limit by {self.count - limit}"
        return f"{limit - self.count} free"


def _cards(column: Column, limit: int) -> QuerySet[Task]:
    return (
        Task.objects.filter(column=column)
        .select_related("agent")
        .order_by(*CARD_ORDER.get(column.role, ("position", "created_at", "pk")))[:limit]
    )


def board_columns_with_counts(*, board: Board) -> QuerySet[Column]:
    """The board's columns in order, each annotated with ``task_count``: one grouped
    query, whatever the number of tasks."""
    return board.columns.annotate(task_count=Count("tasks")).order_by("position", "pk")


def board_columns_get(*, board: Board, column_ids: set[int] | None = None) -> list[ColumnView]:
    """The board's columns in order, each with its task count and its first
    ``KAIZEN_COLUMN_CARD_LIMIT`` cards. ``column_ids`` narrows it to some columns
    (the live updates re-render only what changed).

    One query for the columns and their counts, then one per column for its
    cards: bounded by the number of columns, never by the number of tasks.
    """
    columns = board_columns_with_counts(board=board)
    if column_ids is not None:
        columns = columns.filter(pk__in=column_ids)
    limit = settings.KAIZEN_COLUMN_CARD_LIMIT
    views = []
    for column in columns:
        # The board is known: share it, so a card's URL does not query for it.
        column.board = board
        cards = list(_cards(column, limit)) if column.task_count else []
        for card in cards:
            card.board = board
            card.column = column
        views.append(ColumnView(column=column, count=column.task_count, cards=cards))
    return views


def board_agents_get(*, board: Board) -> list[Agent]:
    """The board's agents, each with ``running`` (its tasks in flight on this
    board) and its andon state: ``line_stop`` (in force, or None), ``breaker``
    (its circuit breaker when not closed) and ``model_breakers`` (this board's
    breakers of its cascade's models that are not closed: a model's breaker is
    kept per board, see andon.models.CircuitBreaker)."""
    from andon.jidoka import model_key
    from andon.models import CircuitBreaker, LineStop

    not_closed = CircuitBreaker.objects.exclude(state=CircuitBreaker.State.CLOSED)
    agents = list(
        board.agents.annotate(
            running=Count(
                "tasks", filter=Q(tasks__board=board, tasks__status=Task.Status.RUNNING), distinct=True
            )
        )
        # ``breaker`` is the agent's reverse one-to-one: assigning None to it does
        # not stick (reading it then queries the row, a closed breaker shown as
        # an alarm). A filtered prefetch caches the breaker, or its absence.
        .prefetch_related(Prefetch("breaker", queryset=not_closed))
        .order_by("name")
    )
    ids = [agent.pk for agent in agents]
    stops = {
        stop.agent_id: stop for stop in LineStop.objects.filter(agent_id__in=ids, restarted_at__isnull=True)
    }
    model_breakers = {
        breaker.key: breaker for breaker in not_closed.filter(scope=CircuitBreaker.Scope.MODEL, board=board)
    }
    for agent in agents:
        agent.line_stop = stops.get(agent.pk)
        keys = [] if agent.implementation else [model_key(t.provider, t.model) for t in agent.tiers]
        agent.model_breakers = [model_breakers[k] for k in dict.fromkeys(keys) if k in model_breakers]
    return agents


def board_line_stops_get(*, board: Board) -> list:
    """The line stops in force on this board: its own and its agents'."""
    from andon.selectors import active_line_stops_get

    return active_line_stops_get(board=board)


def board_capabilities_get(*, board: Board) -> list[str]:
    """The capabilities a task on this board may ask for: those its agents offer."""
    offered: set[str] = set()
    for agent in board.agents.all():
        offered.update(agent.offered_capabilities)
    return sorted(offered)


def board_list_get() -> list[Board]:
    """Every board with its columns (each with ``task_count``) and ``agent_count``."""
    columns = Column.objects.annotate(task_count=Count("tasks")).order_by("position", "pk")
    return list(
        Board.objects.annotate(agent_count=Count("agents", distinct=True))
        .prefetch_related(Prefetch("columns", queryset=columns))
        .order_by("name")
    )


def task_events_get(*, task: Task) -> list[TaskEvent]:
    """A task's history, oldest first, with everything the page names."""
    return list(
        task.events.select_related("from_column", "to_column", "agent", "user").order_by("created_at", "pk")
    )


# --- the runtime and the ledger ----------------------------------------------------


def reusable_task(*, task: Task) -> Task | None:
    """The newest task this task's agent completed (not failed) with the same
    normalised input, capability and prompt version, if reuse is allowed by both
    the agent and the task; None otherwise.

    Only an answer that passed inspection, or that a reviewer approved or
    corrected, is reused: never one waiting in Review (not Done), nor a defect
    sent to Done by a board without Review. ``reviewed`` on the result says a
    reviewer approved it (the reuse then carries the reviewer's word, see
    boards.runtime.reused_output)."""
    from andon.models import Escalation, Inspection  # andon's models import boards'

    agent = task.agent
    if agent is None or not task.allow_reuse or not agent.reuse_results or not task.input_key:
        return None
    if task.review_feedback:
        # A reviewer rejected this task's last output and asked for another.
        return None
    # The verdict on the output the task holds: its latest inspection.
    latest = Inspection.objects.filter(task=OuterRef("pk")).order_by("-created_at", "-pk")
    approved = Escalation.objects.filter(
        inspection=OuterRef("last_inspection"),
        status__in=(Escalation.Status.APPROVED, Escalation.Status.CORRECTED),
    )
    return (
        Task.objects.filter(
            agent=agent,
            input_key=task.input_key,
            status=Task.Status.DONE,
            capability=task.capability,
            prompt_version=task.prompt_version,
        )
        .exclude(pk=task.pk)
        .annotate(
            last_inspection=Subquery(latest.values("pk")[:1]),
            last_passed=Subquery(latest.values("passed")[:1]),
            reviewed=Exists(approved),
        )
        # No inspection at all: done before jidoka, or by hand; as before.
        .filter(Q(last_inspection__isnull=True) | Q(last_passed=True) | Q(reviewed=True))
        .only("pk", "output", "confidence", "confidence_source")
        .order_by("-finished_at", "-pk")
        .first()
    )


def task_inspections_get(*, task: Task) -> list:
    """A task's inspection verdicts, oldest first, each with ``escalation_or_none``
    (the escalation it opened, with who decided it)."""
    from andon.models import Escalation, Inspection

    inspections = list(Inspection.objects.filter(task=task).order_by("created_at", "pk"))
    escalations = {
        e.inspection_id: e for e in Escalation.objects.filter(task=task).select_related("decided_by")
    }
    for inspection in inspections:
        inspection.escalation_or_none = escalations.get(inspection.pk)
    return inspections


def task_model_calls_get(*, task: Task) -> list[ModelCall]:
    """A task's ledger rows, oldest first."""
    return list(task.model_call_rows.select_related("reused_from").order_by("created_at", "pk"))


def agent_metrics(*, agent: Agent) -> dict:
    """What the ledger and the tasks say of an agent's work: two grouped queries."""
    calls = ModelCall.objects.filter(agent=agent)
    by_source = dict(calls.values_list("source").annotate(n=Count("pk")))
    totals = calls.aggregate(
        cost=Sum("cost"),
        tokens_in=Sum("tokens_in"),
        tokens_out=Sum("tokens_out"),
        errors=Count("pk", filter=~Q(error="")),
        latency=Avg("latency_ms", filter=Q(source=ModelCall.Source.MODEL, error="")),
    )
    accepted = dict(
        calls.filter(accepted=True, tier__isnull=False).values_list("tier").annotate(n=Count("pk"))
    )
    tasks = Task.objects.filter(agent=agent).aggregate(
        done=Count("pk", filter=Q(status=Task.Status.DONE)),
        failed=Count("pk", filter=Q(status=Task.Status.FAILED)),
        running=Count("pk", filter=Q(status=Task.Status.RUNNING)),
    )
    return {
        "tasks_done": tasks["done"],
        "tasks_failed": tasks["failed"],
        "tasks_running": tasks["running"],
        "model_calls": by_source.get(ModelCall.Source.MODEL, 0),
        "cache_hits": by_source.get(ModelCall.Source.CACHE, 0),
        "reused": by_source.get(ModelCall.Source.REUSE, 0),
        "errors": totals["errors"],
        "cost": totals["cost"] or 0,
        "tokens_in": totals["tokens_in"] or 0,
        "tokens_out": totals["tokens_out"] or 0,
        "mean_latency_ms": round(totals["latency"], 1) if totals["latency"] is not None else None,
        # How often each tier's output was the one taken (1 = cheapest).
        "accepted_by_tier": dict(sorted(accepted.items())),
    }


# --- the agent pages (boards.views.agent_list, agent_detail) -------------------------


def agent_list_get() -> list[Agent]:
    """Every agent with its boards: two queries, whatever the number of agents."""
    return list(Agent.objects.prefetch_related(Prefetch("boards", Board.objects.order_by("name"))))


def agent_model_calls_recent(*, agent: Agent, limit: int = 20) -> list[ModelCall]:
    """An agent's latest ledger rows, newest first, with the tasks (and their boards)
    they link to, a reused result's too: one query. The tasks' long texts are left
    behind; the page shows titles."""
    return list(
        ModelCall.objects.filter(agent=agent)
        .select_related("task__board", "reused_from__board")
        .defer("task__input", "task__output", "reused_from__input", "reused_from__output")
        .order_by("-created_at", "-pk")[:limit]
    )
