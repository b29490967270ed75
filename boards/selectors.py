"""Reads for the live board: what the page, the htmx fragments and the websocket
pushes render. Each selector runs a fixed number of queries, whatever the
number of tasks, so a board with thousands of cards costs what an empty one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias, TypedDict, cast

from django.conf import settings
from django.db.models import (
    Avg,
    Case,
    Count,
    Exists,
    Expression,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    When,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from boards import flow, pull_rules
from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent, board_agent_ids
from kaizen_web.memo import KeyedTtl
from kaizen_web.prepared import Prepared, fields

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    from andon.models import Inspection, LineStop

    class _TaskCount(TypedDict):
        task_count: int

    class _Reviewed(TypedDict):
        reviewed: bool

    # A column annotated with its number of tasks (board_column_counts_get).
    CountedColumn: TypeAlias = WithAnnotations[Column, _TaskCount]
    # A done task whose output may be reused (task_reusable_get).
    ReusableTask: TypeAlias = WithAnnotations[Task, _Reviewed]

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
    # The column holds more tasks than the cap (count_cap()), which is then
    # ``count - 1``: not counted one by one (column_task_count).
    capped: bool = False

    @property
    def pk(self) -> int:
        return self.column.pk

    @property
    def count_label(self) -> str:
        """The count as the header shows it: ``10000+`` past the cap."""
        return count_label(self.count, capped=self.capped)

    @property
    def more(self) -> int:
        """Tasks in the column that are counted but not drawn (past the cap: at
        least this many)."""
        return (self.count - 1 if self.capped else self.count) - len(self.cards)

    @property
    def wip_state(self) -> str:
        return self.column.wip_state(self.count)

    @property
    def wip_state_label(self) -> str:
        """The Kanban state in words, so it never rests on colour alone."""
        limit = self.column.wip_limit
        state = self.wip_state
        if limit is None:  # state is UNLIMITED
            return "no limit"
        if state == Column.WipState.ONE_LEFT:
            return "one left"
        if state == Column.WipState.REACHED:
            return "limit reached"
        if state == Column.WipState.EXCEEDED:
            return f"over limit by {self.count - limit}"
        return f"{limit - self.count} free"


def first_claim_subquery(task_ref: str = "pk") -> Subquery:
    """When the task was first claimed (first entered In progress): the start of
    its cycle time and age. Task.started_at is the latest claim, not the first."""
    return Subquery(
        TaskEvent.objects.filter(task_id=OuterRef(task_ref), to_status=Task.Status.RUNNING)
        .exclude(from_status=Task.Status.RUNNING)
        .order_by("created_at", "pk")
        .values("created_at")[:1]
    )


def _in_flight(role: str) -> bool:
    return role in (Role.IN_PROGRESS, Role.REVIEW)


def _cards_query(role: str, limit: int) -> Prepared:
    def build(*, column_id: int) -> QuerySet:
        cards = Task.objects.filter(column_id=column_id)
        names = fields(Task)
        if _in_flight(role):
            # The cards in flight show their age: a subquery, not a query of its own.
            cards = cards.annotate(first_claimed_at=first_claim_subquery())
            names = [*names, "first_claimed_at"]
        order = CARD_ORDER.get(role, ("position", "created_at", "pk"))
        return cards.order_by(*order).values_list(*names)[:limit]

    return Prepared(build, column_id=int)


# A column's first cards, by the column's role and the card limit (a setting the
# tests change): compiled once each (kaizen_web.prepared), as the live updates
# read them for every change.
_CARDS: dict[tuple[str, int], Prepared] = {}


def _cards(column: Column, limit: int) -> list[Task]:
    key = (column.role, limit)
    query = _CARDS.get(key)
    if query is None:
        query = _CARDS.setdefault(key, _cards_query(column.role, limit))
    annotations = ["first_claimed_at"] if _in_flight(column.role) else []
    return query.instances(Task, annotations, column_id=column.pk)


# The service level expectation on the board's cards: the percentiles of the
# cycle times of the latest SLE_ITEMS items finished within SLE_DAYS days.
SLE_ITEMS = 500
SLE_DAYS = 30


def board_sle_get(*, board: Board, now: datetime | None = None) -> flow.Percentiles:
    """Nearest-rank percentiles of the board's recent cycle times: one query."""
    now = now or timezone.now()
    rows = (
        TaskEvent.objects.filter(
            board=board, to_status=Task.Status.DONE, created_at__gte=now - timedelta(days=SLE_DAYS)
        )
        .exclude(from_status=Task.Status.DONE)
        .annotate(first_claim=first_claim_subquery("task_id"))
        .order_by("-created_at", "-pk")
        .values_list("created_at", "first_claim")[:SLE_ITEMS]
    )
    return flow.percentiles((finished - started).total_seconds() for finished, started in rows if started)


# board_sle_get per board, read at most every 5 s per process. The live updates draw
# a busy board's in-flight cards many times a second, and the query reads up to
# SLE_ITEMS finished items with each one's first claim (5 ms a time on PostgreSQL at
# 500: bench/README.md, fifth stop). The percentiles of the latest 500 cycle times
# move slowly: a card turns amber or red at most 5 s late.
board_sle_recent: KeyedTtl[Board, flow.Percentiles] = KeyedTtl(5.0, lambda board: board_sle_get(board=board))


def cards_age_set(*, columns: list[ColumnView], sle: flow.Percentiles, now: datetime | None = None) -> None:
    """Put each in-flight card's age (seconds from its first claim) and level
    (ok, amber past the 70th percentile, red past the 85th) on it."""
    now = now or timezone.now()
    for view in columns:
        for card in view.cards:
            started = getattr(card, "first_claimed_at", None)
            if started is None or card.status not in (Task.Status.RUNNING, Task.Status.REVIEW):
                continue
            card.flow_age = flow.item_age(started, now)
            card.flow_age_level = flow.age_level(card.flow_age, sle)
            card.flow_sle = sle


def column_task_count(cap: int | None) -> Expression:
    """A column's number of tasks, for an annotation of Column.

    ``cap``: a column without a WIP limit (a Done column holding the board's whole
    history, a long Backlog) is counted up to ``cap + 1`` tasks: a count past
    ``cap`` says "more than ``cap``" (ColumnView.capped). Counting the rest read
    every one of them for every draw of the board: a Done column of a million
    tasks cost PostgreSQL 67-78 ms a draw (bench/README.md). A column with a WIP
    limit is counted exactly, as pulling and its header's state need: its limit
    bounds it. ``None``: every column exactly (the JSON API).

    A count per column in a subquery, not a join grouped by column: PostgreSQL
    counts each column's entries in the task index (an index-only scan) instead
    of joining every task of the board's history to its column. At 100,000 tasks,
    13 ms instead of 78 (bench/flow.py's board; EXPLAIN ANALYZE)."""
    tasks = Task.objects.filter(column=OuterRef("pk")).order_by()
    exact = Coalesce(Subquery(tasks.values("column").annotate(n=Count("pk")).values("n")), 0)
    if cap is None:
        return exact
    # The first cap + 1 of the column's index entries, counted: one read of at most
    # that many. Raw, as the ORM counts no sliced subquery; the column's table is
    # named as Django names it here (Column is the base table of the queries this
    # serves, never nested, so never aliased). The cap, an integer setting, is part
    # of the text: a constant parameter could be taken for one of the compiled
    # query's values (kaizen_web.prepared).
    capped = RawSQL(
        f'SELECT COUNT(*) FROM (SELECT 1 FROM "{Task._meta.db_table}" U0 '
        f'WHERE U0."{Task._meta.get_field("column").column}" = '
        f'"{Column._meta.db_table}"."{Column._meta.pk.column}" LIMIT {int(cap) + 1}) capped',
        (),
        output_field=IntegerField(),
    )
    return Case(When(wip_limit__isnull=True, then=capped), default=exact, output_field=IntegerField())


def count_cap() -> int:
    """KAIZEN_COLUMN_COUNT_CAP, and at least one more than the cards a column
    draws (KAIZEN_COLUMN_CARD_LIMIT): a capped column always has cards left to
    list under the ones drawn ("over N more")."""
    return max(settings.KAIZEN_COLUMN_COUNT_CAP, settings.KAIZEN_COLUMN_CARD_LIMIT + 1)


def count_label(count: int, *, capped: bool) -> str:
    """A column's count as the board shows it: past the cap (``count`` is then the
    cap + 1), ``10000+``."""
    return f"{count - 1}+" if capped else str(count)


def with_capped_counts(columns: Iterable[Column], cap: int) -> None:
    """Columns annotated with column_task_count(cap): a column without a WIP limit
    counted past the cap gets ``count_capped`` (its ``task_count`` is ``cap + 1``);
    each gets ``count_label``, its count as the board shows it (``10000+`` past
    the cap)."""
    for column in columns:
        count = column.task_count  # type: ignore[attr-defined]
        capped = column.wip_limit is None and count > cap
        column.count_capped = capped  # type: ignore[attr-defined]
        column.count_label = count_label(count, capped=capped)  # type: ignore[attr-defined]


def _column_counts_query(*, board_id: int, cap: int | None) -> QuerySet:
    return (
        Column.objects.filter(board_id=board_id)
        .annotate(task_count=column_task_count(cap))
        .order_by("position", "pk")
        .values_list(*fields(Column), "task_count")
    )


# Read for every live update of a board: compiled once per cap (a setting the
# tests change), or exact (kaizen_web.prepared).
_COLUMN_COUNTS: dict[int | None, Prepared] = {}


def board_column_counts_get(*, board: Board, exact: bool = False) -> list[CountedColumn]:
    """The board's columns in order, each annotated with ``task_count``: one query,
    whatever the number of tasks. A column without a WIP limit is counted up to
    count_cap() + 1 tasks unless ``exact`` (see column_task_count)."""
    cap = None if exact else count_cap()
    query = _COLUMN_COUNTS.get(cap)
    if query is None:
        query = _COLUMN_COUNTS.setdefault(
            cap, Prepared(lambda *, board_id: _column_counts_query(board_id=board_id, cap=cap), board_id=int)
        )
    columns = query.instances(Column, ["task_count"], board_id=board.pk)
    if cap is not None:
        with_capped_counts(columns, cap)
    return cast("list[CountedColumn]", columns)


def board_columns_get(
    *,
    board: Board,
    column_ids: set[int] | None = None,
    counted: list[CountedColumn] | None = None,
    agents: Iterable[Agent] = (),
) -> list[ColumnView]:
    """The board's columns in order, each with its task count and its first
    ``KAIZEN_COLUMN_CARD_LIMIT`` cards. ``column_ids`` narrows it to some columns
    (the live updates re-render only what changed); ``counted`` are the board's
    columns as board_column_counts_get gives them, and ``agents`` the board's,
    when the caller has them: a card's agent is one of them, but for a card of
    an agent that left the board.

    One query for the columns and their counts, then one per column for its
    cards, and one for the cards' agents the caller did not give: bounded by
    the number of columns, never by the number of tasks.
    """
    if counted is None:
        counted = board_column_counts_get(board=board)
    columns = [c for c in counted if column_ids is None or c.pk in column_ids]
    limit = settings.KAIZEN_COLUMN_CARD_LIMIT
    card_url = task_url_builder(board)
    views = []
    for column in columns:
        # The board is known: share it, so a card's URL does not query for it.
        column.board = board
        cards = _cards(column, limit) if column.task_count else []
        for card in cards:
            card.board = board
            card.column = column
            card.card_url = card_url(card.pk)
        capped = getattr(column, "count_capped", False)
        views.append(ColumnView(column=column, count=column.task_count, cards=cards, capped=capped))
    _cards_agents_set(views, agents)
    return views


def _cards_agents_set(views: list[ColumnView], agents: Iterable[Agent]) -> None:
    """Put each drawn card's agent on it (what select_related would have joined)."""
    by_pk = {agent.pk: agent for agent in agents}
    cards = [card for view in views for card in view.cards if card.agent_id is not None]
    missing = {card.agent_id for card in cards} - by_pk.keys()
    if missing:
        by_pk.update(Agent.objects.in_bulk(missing))
    for card in cards:
        card.agent = by_pk[cast(int, card.agent_id)]


# A task id no URL is built for: its place in a reversed URL is where each
# card's own id goes.
_URL_STAND_IN = 987654321


def task_url_builder(board: Board) -> Callable[[int], str]:
    """``boards-task-detail`` of this board's tasks, from one reverse(): a board
    draws up to KAIZEN_COLUMN_CARD_LIMIT cards a column, and reversing each
    card's URL cost more than the rest of its rendering."""
    head, tail = reverse("boards-task-detail", kwargs={"slug": board.slug, "pk": _URL_STAND_IN}).split(
        str(_URL_STAND_IN)
    )
    return lambda pk: f"{head}{pk}{tail}"


def column_neighbour_get(*, column: Column, direction: str) -> Column | None:
    """The column to the ``left`` or ``right`` of ``column`` on its board, as the
    board draws them (by position, then id); None at the edge."""
    ordered = list(Column.objects.filter(board_id=column.board_id).order_by("position", "pk"))
    index = next(i for i, c in enumerate(ordered) if c.pk == column.pk)
    index += -1 if direction == "left" else 1
    return ordered[index] if 0 <= index < len(ordered) else None


def board_breakers_get(*, board: Board) -> list:
    """The circuit breakers that are not closed of the board's agents, and of
    its models (a model's breaker is kept per board): one query. The agents'
    strip and the flow status both read them from here."""
    from andon.models import CircuitBreaker

    return _BREAKERS.instances(CircuitBreaker, board_id=board.pk)


def _breakers_query(*, board_id: int) -> QuerySet:
    from andon.models import CircuitBreaker  # andon's models import boards'

    return (
        CircuitBreaker.objects.exclude(state=CircuitBreaker.State.CLOSED)
        .filter(
            Q(scope=CircuitBreaker.Scope.AGENT, agent_id__in=board_agent_ids(board_id))
            | Q(scope=CircuitBreaker.Scope.MODEL, board_id=board_id)
        )
        .order_by("scope", "key", "pk")
        .values_list(*fields(CircuitBreaker))
    )


def _agents_query(*, board_id: int) -> QuerySet:
    # Counted in a subquery over this board's running tasks (an index on board
    # and status), not by joining each agent to every task it ever did.
    running = (
        Task.objects.filter(agent=OuterRef("pk"), board_id=board_id, status=Task.Status.RUNNING)
        .order_by()
        .values("agent")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        Agent.objects.filter(pk__in=board_agent_ids(board_id))
        .annotate(running=Coalesce(Subquery(running), 0))
        .order_by("name")
        .values_list(*fields(Agent), "running")
    )


# Read for every live update of a board: compiled once (kaizen_web.prepared).
_BREAKERS = Prepared(_breakers_query, board_id=int)
_AGENTS = Prepared(_agents_query, board_id=int)


def board_agents_get(
    *, board: Board, line_stops: list | None = None, breakers: list | None = None
) -> list[Agent]:
    """The board's agents, each with ``running`` (its tasks in flight on this
    board) and its andon state: ``line_stop`` (in force, or None), ``breaker``
    (its circuit breaker when not closed) and ``model_breakers`` (this board's
    breakers of its cascade's models that are not closed: a model's breaker is
    kept per board, see andon.models.CircuitBreaker).

    ``line_stops`` (board_line_stops_get) and ``breakers`` (board_breakers_get)
    save their queries when the caller has them: the board's live part reads
    each once for the agents' strip and the flow status."""
    from andon.jidoka import model_key
    from andon.models import CircuitBreaker

    agents = _AGENTS.instances(Agent, ["running"], board_id=board.pk)
    if line_stops is None:
        line_stops = board_line_stops_get(board=board)
    if breakers is None:
        breakers = board_breakers_get(board=board)
    # Newest first (board_line_stops_get's order): the one in force, should there be two.
    stops: dict[int, LineStop] = {}
    for stop in line_stops:
        if stop.agent_id is not None:
            stops.setdefault(stop.agent_id, stop)
    by_agent = {b.agent_id: b for b in breakers if b.scope == CircuitBreaker.Scope.AGENT}
    model_breakers = {
        b.key: b for b in breakers if b.scope == CircuitBreaker.Scope.MODEL and b.board_id == board.pk
    }
    for agent in agents:
        agent.line_stop = stops.get(agent.pk)
        # ``breaker`` is the agent's reverse one-to-one: assigning None to it does
        # not stick (reading it then queries the row, a closed breaker shown as
        # an alarm). Its cache is set instead, as a prefetch would.
        Agent.breaker.related.set_cached_value(agent, by_agent.get(agent.pk))
        keys = [] if agent.implementation else [model_key(t.provider, t.model) for t in agent.tiers]
        agent.model_breakers = [model_breakers[k] for k in dict.fromkeys(keys) if k in model_breakers]
    return agents


def _line_stops_query(*, board_id: int) -> QuerySet:
    from andon.models import LineStop  # andon's models import boards'

    return LineStop.objects.filter(
        Q(board_id=board_id) | Q(agent_id__in=board_agent_ids(board_id)), restarted_at__isnull=True
    ).values_list("until")


# Read for every live update of a board: compiled once (kaizen_web.prepared).
_LINE_STOPS = Prepared(_line_stops_query, board_id=int)


def board_line_stops_get(*, board: Board) -> list:
    """The line stops in force on this board: its own and its agents'.

    Most of the time there is none: a plain query (compiled once) says so, and
    only when one is in force are they read with what the banner names."""
    from andon.selectors import active_line_stops_get

    now = timezone.now()
    # A budget stop whose period has ended is out of force (LineStop.expired).
    if not any(until is None or until > now for (until,) in _LINE_STOPS.rows(board_id=board.pk)):
        return []
    return active_line_stops_get(board=board)


# Read for every page load of a board and every task the API adds with a
# capability: compiled once (kaizen_web.prepared).
_BOARD = Prepared(lambda *, slug: Board.objects.filter(slug=slug).values_list(*fields(Board))[:1], slug=str)
# What an agent's offered capabilities are read from (Agent.offered_capabilities;
# a custom agent class loads the rest if it asks), in the model's field order.
_CAPABILITY_FIELDS = [name for name in fields(Agent) if name in {"id", "capabilities", "implementation"}]
_BOARD_AGENTS_CAPABILITIES = Prepared(
    lambda *, board_id: Agent.objects.filter(pk__in=board_agent_ids(board_id)).values_list(
        *_CAPABILITY_FIELDS
    ),
    board_id=int,
)


def board_by_slug_get(*, slug: str) -> Board | None:
    """The board with this slug, or None."""
    return next(iter(_BOARD.instances(Board, slug=slug)), None)


def board_capabilities_get(*, board: Board) -> list[str]:
    """The capabilities a task on this board may ask for: those its agents offer."""
    return capabilities_offered(
        _BOARD_AGENTS_CAPABILITIES.instances(Agent, columns=_CAPABILITY_FIELDS, board_id=board.pk)
    )


def capabilities_offered(agents: Iterable[Agent]) -> list[str]:
    """The capabilities ``agents`` offer between them, sorted."""
    offered: set[str] = set()
    for agent in agents:
        offered.update(agent.offered_capabilities)
    return sorted(offered)


def board_list_get() -> list[Board]:
    """Every board with its columns (each with ``task_count`` and ``count_label``, a
    column without a WIP limit counted up to count_cap() + 1, as on the
    board) and ``agent_count``."""
    cap = count_cap()
    columns = Column.objects.annotate(task_count=column_task_count(cap)).order_by("position", "pk")
    boards: list[Board] = list(
        Board.objects.annotate(agent_count=Count("agents", distinct=True))
        .prefetch_related(Prefetch("columns", queryset=columns))
        .order_by("name")
    )
    for board in boards:
        with_capped_counts(board.columns.all(), cap)
    return boards


def task_events_get(*, task: Task) -> list[TaskEvent]:
    """A task's history, oldest first, with everything the page names."""
    return list(
        task.events.select_related("from_column", "to_column", "agent", "user").order_by("created_at", "pk")
    )


# --- the runtime and the ledger ----------------------------------------------------


# The newest identical answers looked at with two plain queries before the full
# search (one query, but its correlated subqueries cost the worker milliseconds of
# CPU to build and compile, at every run).
REUSE_CANDIDATES = 8


def task_reusable_get(*, task: Task) -> ReusableTask | None:
    """The newest task this task's agent completed (not failed) with the same
    normalised input, capability and prompt version, if reuse is allowed by both
    the agent and the task; None otherwise.

    Only an answer that passed inspection, or that a reviewer approved or
    corrected, is reused: never one waiting in Review (not Done), nor a defect
    sent to Done by a board without Review. ``reviewed`` on the result says a
    reviewer approved it (the reuse then carries the reviewer's word, see
    boards.agents.runtime.reused_output)."""
    return tasks_reusable_get(tasks=[task])[task.pk]


def tasks_reusable_get(*, tasks: Iterable[Task]) -> dict[int, ReusableTask | None]:
    """task_reusable_get for each of a batch of tasks, by id. Tasks that would
    reuse the same answers (same agent, normalised input, capability and prompt
    version: a bulk batch of identical tasks) are looked up once: two queries
    for a batch of one kind, one more for each further kind."""
    found: dict[int, ReusableTask | None] = {}
    kinds: dict[tuple[int, str, str, int | None], list[Task]] = {}
    for task in tasks:
        agent = task.agent
        if (
            agent is None
            or not task.allow_reuse
            or not agent.reuse_results
            or not task.input_key
            # A reviewer rejected this task's last output and asked for another.
            or task.review_feedback
        ):
            found[task.pk] = None
        else:
            kind = (agent.pk, task.input_key, task.capability, task.prompt_version)
            kinds.setdefault(kind, []).append(task)
    if not kinds:
        return found
    candidates = {kind: _reuse_candidates(members) for kind, members in kinds.items()}
    verdicts = _reuse_verdicts([c.pk for each in candidates.values() for c in each])
    for kind, members in kinds.items():
        earlier = _reuse_first(candidates[kind], verdicts)
        if earlier is None and len(candidates[kind]) == REUSE_CANDIDATES:
            # The newest answers all failed inspection, unreviewed: search the older ones.
            earlier = _reuse_search(_reuse_matches(members))
        for task in members:
            found[task.pk] = earlier
    return found


def _reuse_query(
    *, agent_id: int, input_key: str, capability: str, prompt_version: int | None, exclude: list[int]
) -> QuerySet[Task]:
    return (
        Task.objects.filter(
            agent_id=agent_id,
            input_key=input_key,
            status=Task.Status.DONE,
            capability=capability,
            prompt_version=prompt_version,
        )
        .exclude(pk__in=exclude)
        # Newest first, as the task_reuse_newest index reads them.
        .order_by("-finished_at", "-pk")
    )


def _reuse_of(tasks: list[Task]) -> dict:
    """What ``tasks`` (all of one kind) match earlier answers by."""
    task = tasks[0]
    return {
        "agent_id": task.agent_id,
        "input_key": task.input_key,
        "capability": task.capability,
        "prompt_version": task.prompt_version,
        "exclude": [t.pk for t in tasks],
    }


def _reuse_matches(tasks: list[Task]) -> QuerySet[Task]:
    """The done tasks whose answer ``tasks`` (all of one kind) could reuse, newest first."""
    return _reuse_query(**_reuse_of(tasks)).only(*_REUSE_FIELDS)


# What a reused answer is read with, in the model's field order.
_REUSE_FIELDS = [name for name in fields(Task) if name in {"id", "output", "confidence", "confidence_source"}]
# Looked up for every kind of task a worker begins (each task, when inputs differ):
# compiled once (kaizen_web.prepared).
_REUSE_CANDIDATES = Prepared(
    lambda **values: _reuse_query(**values).values_list(*_REUSE_FIELDS)[:REUSE_CANDIDATES],
    agent_id=int,
    input_key=str,
    capability=str,
    prompt_version=int,
    exclude=list,
)


def _reuse_candidates(tasks: list[Task]) -> list[Task]:
    """The newest REUSE_CANDIDATES of _reuse_matches(tasks)."""
    return _REUSE_CANDIDATES.instances(Task, columns=_REUSE_FIELDS, **_reuse_of(tasks))


def _reuse_verdicts_query(*, task_ids: list[int]) -> QuerySet:
    from andon.models import Inspection  # andon's models import boards'

    return (
        Inspection.objects.filter(task_id__in=task_ids)
        .order_by("task_id", "-created_at", "-pk")
        .values_list("task_id", "passed", "escalation__status")
    )


_REUSE_VERDICTS = Prepared(_reuse_verdicts_query, task_ids=list)


def _reuse_verdicts(task_ids: list[int]) -> dict[int, tuple[bool, bool]]:
    """For each task, the verdict on the output it holds (its latest inspection):
    whether it passed, and whether a reviewer approved or corrected it."""
    from andon.models import Escalation  # andon's models import boards'

    approved = (Escalation.Status.APPROVED, Escalation.Status.CORRECTED)
    verdicts: dict[int, tuple[bool, bool]] = {}
    if not task_ids:
        return verdicts
    for task_id, passed, decision in _REUSE_VERDICTS.rows(task_ids=task_ids):
        verdicts.setdefault(task_id, (passed, decision in approved))
    return verdicts


def _reuse_first(candidates: list[Task], verdicts: dict[int, tuple[bool, bool]]) -> ReusableTask | None:
    for candidate in candidates:
        # No inspection at all: done before jidoka, or by hand; as before.
        passed, reviewed = verdicts.get(candidate.pk, (True, False))
        if passed or reviewed:
            candidate.reviewed = reviewed  # type: ignore[attr-defined]
            return candidate  # type: ignore[return-value]
    return None


def _reuse_search(matches: QuerySet[Task]) -> ReusableTask | None:
    """The newest of ``matches`` that passed inspection or a review: one query,
    whose correlated subqueries look at every match."""
    from andon.models import Escalation, Inspection  # andon's models import boards'

    latest = Inspection.objects.filter(task=OuterRef("pk")).order_by("-created_at", "-pk")
    approved = Escalation.objects.filter(
        inspection=OuterRef("last_inspection"),
        status__in=(Escalation.Status.APPROVED, Escalation.Status.CORRECTED),
    )
    return (
        matches.annotate(
            last_inspection=Subquery(latest.values("pk")[:1]),
            last_passed=Subquery(latest.values("passed")[:1]),
            reviewed=Exists(approved),
        )
        .filter(Q(last_inspection__isnull=True) | Q(last_passed=True) | Q(reviewed=True))
        .first()
    )


def task_inspections_get(*, task: Task) -> list[Inspection]:
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


def agent_metrics_get(*, agent: Agent) -> dict:
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


# --- the agent pages (boards.agents.views.agent_list, agent_detail) -------------------------


def agent_list_get() -> list[Agent]:
    """Every agent with its boards: two queries, whatever the number of agents."""
    return list(Agent.objects.prefetch_related(Prefetch("boards", Board.objects.order_by("name"))))


def agent_model_calls_get(*, agent: Agent, limit: int = 20) -> list[ModelCall]:
    """An agent's latest ledger rows, newest first, with the tasks (and their boards)
    they link to, a reused result's too: one query. The tasks' long texts are left
    behind; the page shows titles."""
    return list(
        ModelCall.objects.filter(agent=agent)
        .select_related("task__board", "reused_from__board")
        .defer("task__input", "task__output", "reused_from__input", "reused_from__output")
        .order_by("-created_at", "-pk")[:limit]
    )


# --- why agents are not pulling: the board's flow status ---------------------------


def _running_counted(
    rows: Iterable[tuple[int, int | None, int]], *, doing: Column, agents: list[Agent]
) -> tuple[int, dict[int, int]]:
    """(tasks running in ``doing``, each of ``agents``' running tasks) from rows
    of (column, agent, running tasks)."""
    in_doing = 0
    running: dict[int, int] = {}
    ids = {agent.pk for agent in agents}
    for column_id, agent_id, n in rows:
        if column_id == doing.pk:
            in_doing += n
        if agent_id in ids:
            running[agent_id] = running.get(agent_id, 0) + n
    return in_doing, running


def _running_query(*, doing_id: int, agents: QuerySet | list[int]) -> QuerySet:
    """Running tasks grouped by (column, agent): those in ``doing_id`` and those
    of ``agents`` (ids, or a subquery of them) on any board."""
    return (
        Task.objects.filter(status=Task.Status.RUNNING)
        .filter(Q(column_id=doing_id) | Q(agent_id__in=agents))
        .values_list("column", "agent")
        .annotate(n=Count("pk"))
        .order_by()
    )


def _waiting_query(*, column_id: int) -> QuerySet:
    return (
        Task.objects.filter(column_id=column_id, blocked_at__isnull=True)
        .values_list("capability")
        .annotate(n=Count("pk"))
        .order_by()
    )


# Read for every live update of a board: compiled once (kaizen_web.prepared).
# Not prepared: the running tasks are a few rows of many, which a plan kept for
# every value of its status would not know (kaizen_web.prepared).
_RUNNING = Prepared(
    lambda *, doing_id, board_id: _running_query(doing_id=doing_id, agents=board_agent_ids(board_id)),
    prepare=False,
    doing_id=int,
    board_id=int,
)
_RUNNING_OF = Prepared(
    lambda *, doing_id, agent_ids: _running_query(doing_id=doing_id, agents=agent_ids),
    prepare=False,
    doing_id=int,
    agent_ids=list,
)
_WAITING = Prepared(_waiting_query, column_id=int)


def agents_running_get(*, doing: Column, agents: list[Agent]) -> tuple[int, dict[int, int]]:
    """Tasks running in ``doing`` and each agent's running tasks on any board (an
    agent's concurrency is shared by its boards): one grouped query, compiled
    once (kaizen_web.prepared). The pull (boards.services.pull) counts with it,
    for the agents it has locked: at least one (an empty list is refused)."""
    rows = _RUNNING_OF.rows(doing_id=doing.pk, agent_ids=sorted(agent.pk for agent in agents))
    return _running_counted(rows, doing=doing, agents=agents)


def board_agents_running_get(
    *, doing: Column, board: Board, agents: list[Agent]
) -> tuple[int, dict[int, int]]:
    """Tasks running in ``doing`` and each of ``agents``' (some of the board's)
    running tasks on any board (an agent's concurrency is shared by its boards):
    one grouped query that names the board instead of the agents (compiled once;
    what it counts for the board's other agents is left out). The flow status
    counts with it as the pull does with agents_running_get, which names the
    agents it has locked."""
    return _running_counted(_RUNNING.rows(doing_id=doing.pk, board_id=board.pk), doing=doing, agents=agents)


class HoldLevel:
    # Keeps agents from pulling work that waits: the line is stalled (for some work, or all).
    STOP = "stop"
    # Agents are at capacity: work waits its turn, nothing is wrong.
    BUSY = "busy"
    # The pull goes on, but people should know (a soft limit passed, an agent paused).
    SIGNAL = "signal"


@dataclass(frozen=True)
class PullHold:
    """One reason work waits, in words, with where to act on it."""

    kind: str
    text: str
    level: str = HoldLevel.STOP
    url: str = ""
    link_text: str = ""
    # What a Ready card says when this hold keeps it waiting (the text when empty).
    short: str = ""

    @property
    def card_text(self) -> str:
        return self.short or self.text


@dataclass
class BoardPullStatus:
    """Why agents are or are not pulling on a board, read as the pull decides
    (boards.pull_rules, andon.jidoka), for the flow status line and the Ready cards.

    ``state``: "stalled" (work waits and agents pull none of it, for a reason
    people must act on), "busy" (work waits for agents at capacity), "flowing"
    (the next pull takes work) or "idle" (nothing unblocked waits in Ready).
    """

    state: str
    waiting: int
    holds: list[PullHold]
    # The hold that keeps every task from being pulled, if one does (the first in the pull's order).
    board_hold: PullHold | None = None
    busy_hold: PullHold | None = None
    capability_holds: dict[str, PullHold] = field(default_factory=dict)
    # The agents that may take a task now, and how many each (for explain_cards).
    able: list[Agent] = field(default_factory=list)
    room: dict[int, int] = field(default_factory=dict)
    want: int = 0
    # While a breaker probes, the pull takes work not tried yet first (PullGate.candidate_order).
    probing: bool = False

    LABELS = {
        "stalled": "Agents are not pulling",
        "busy": "Agents are busy",
        "flowing": "Agents are pulling",
        "idle": "Nothing waits in Ready",
    }

    @property
    def label(self) -> str:
        return self.LABELS[self.state]

    @property
    def shown_holds(self) -> list[PullHold]:
        """What the status line says: every hold, but agents at capacity only
        when work waits on them."""
        return [h for h in self.holds if h.level != HoldLevel.BUSY or self.state == "busy"]

    @property
    def listed_holds(self) -> list[PullHold]:
        """The holds listed under the status line (those of agents at capacity
        go on the line itself, quietly)."""
        return [h for h in self.shown_holds if h.level != HoldLevel.BUSY]

    def explain_cards(self, columns: list[ColumnView]) -> None:
        """Set ``pull_hold`` on each drawn Ready card: why the next pull will not
        take it ("" when it will), and ``pull_hold_level`` (a HoldLevel). Cards
        are walked in the pull's order, each taking a slot of the agent that
        would take it, as _claim does."""
        room = dict(self.room)
        want = self.want
        for view in columns:
            if view.column.role != Role.READY:
                continue
            cards = view.cards
            if self.probing:
                # andon.jidoka.PullGate.candidate_order: untried first, then tried longest ago.
                cards = sorted(
                    cards,
                    key=lambda t: (t.started_at is not None, t.started_at or 0, t.position, t.created_at),
                )
            for card in cards:
                card.pull_hold, card.pull_hold_level = self._card_hold(card, room, want)
                if not card.pull_hold:
                    want -= 1

    def _card_hold(self, task: Task, room: dict[int, int], want: int) -> tuple[str, str]:
        if task.blocked_at is not None:
            return "Blocked: agents skip it until it is unblocked.", HoldLevel.STOP
        if self.board_hold is not None:
            return self.board_hold.card_text, HoldLevel.STOP
        hold = self.capability_holds.get(task.capability)
        if hold is not None and hold.level == HoldLevel.STOP:
            return hold.card_text, HoldLevel.STOP
        if want > 0:
            agent = pull_rules.pick_agent(task.capability, self.able, room)
            if agent is not None:
                room[agent.pk] -= 1
                return "", ""
        for busy in (self.busy_hold, hold):
            if busy is not None:
                return busy.card_text, HoldLevel.BUSY
        if self.probing:
            return "Waits its turn: a circuit breaker lets one probe task through at a time.", HoldLevel.BUSY
        return "Waits its turn: the agents that can do it are busy.", HoldLevel.BUSY


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _clock(moment) -> str:
    from django.utils import timezone

    return timezone.localtime(moment).strftime("%H:%M")


def board_pull_status_get(
    *,
    board: Board,
    columns: list[CountedColumn] | None = None,
    line_stops: list | None = None,
    agents: list[Agent] | None = None,
    breakers: list | None = None,
) -> BoardPullStatus:
    """Why agents are (not) pulling on ``board``, rule by rule as the pull
    (boards.services.board_pull and _claim) decides, read-only: the line stops
    as board_line_stops_get reads them (in force as jidoka.active_stops finds
    them), ``pull_gate(take_probes=False)``, and boards.pull_rules.

    ``columns`` (annotated with ``task_count``, as board_column_counts_get
    gives them), ``line_stops`` (board_line_stops_get), ``agents`` (the
    board's, as board_agents_get gives them) and ``breakers``
    (board_breakers_get) save their queries when the caller has them. A fixed
    number of queries, whatever the number of tasks or agents.
    """
    from andon import jidoka
    from andon.models import Escalation, LineStop

    if columns is None:
        columns = list(board_column_counts_get(board=board))
    by_role = {c.role: c for c in columns}
    ready, doing, review = by_role.get(Role.READY), by_role.get(Role.IN_PROGRESS), by_role.get(Role.REVIEW)
    holds: list[PullHold] = []
    board_hold: PullHold | None = None

    def stop(hold: PullHold) -> None:
        nonlocal board_hold
        holds.append(hold)
        if board_hold is None:
            board_hold = hold

    waiting_by_capability: dict[str, int] = {}
    if ready is not None:
        for capability, n in _WAITING.rows(column_id=ready.pk):
            waiting_by_capability[capability] = waiting_by_capability.get(capability, 0) + n
    waiting = sum(waiting_by_capability.values())

    # The board's own switches and shape (board_pull, then the top of _claim).
    if board.paused:
        stop(
            PullHold(
                "paused",
                "The board is paused: agents pull nothing until it is resumed.",
                short="Waits: the board is paused.",
            )
        )
    missing = [Role(role).label for role in (Role.READY, Role.IN_PROGRESS, Role.DONE) if role not in by_role]
    if missing:
        stop(
            PullHold(
                "columns",
                f"The board has no {' or '.join(missing)} column, so agents pull nothing: "
                "add it in the admin or the board's config file.",
                short=f"Waits: the board has no {' or '.join(missing)} column.",
            )
        )
    inbox_url = f"{reverse('andon-inbox')}?board={board.pk}"
    if review is not None and review.wip_limit is not None:
        count = review.task_count
        limit = review.wip_limit
        stops_pull = pull_rules.review_limit_stops_pull(review)
        if (stops_pull and pull_rules.review_full(review, count)) or count > limit:
            decisions = Escalation.objects.filter(board=board, status=Escalation.Status.OPEN).count()
            needed = f"{_plural(decisions, 'decision')} {'is' if decisions == 1 else 'are'} needed"
            if stops_pull and pull_rules.review_full(review, count):
                stop(
                    PullHold(
                        "review_full",
                        f"Waiting for review: {review.name} is full ({count}/{limit}), "
                        f"{needed} in the andon inbox.",
                        url=inbox_url,
                        link_text="Open the andon inbox",
                        short=f"Waits for review: {review.name} is full ({count}/{limit}).",
                    )
                )
            else:
                holds.append(
                    PullHold(
                        "review_over",
                        f"{review.name} is over its soft limit by {count - limit} ({count}/{limit}): "
                        f"{needed} in the andon inbox. Agents keep pulling.",
                        level=HoldLevel.SIGNAL,
                        url=inbox_url,
                        link_text="Open the andon inbox",
                    )
                )
    # Budgets (andon.budgets) stop the line with a LineStop of kind budget,
    # in force until the period ends: board_line_stops_get reads them as
    # jidoka.active_stops does for _claim (a stop past its ``until`` is out of
    # force), so the board says "Budget reached: …" exactly when no agent claims.

    # The agents, in the order _claim filters them.
    agents = sorted(agents, key=lambda a: a.pk) if agents is not None else list(board.agents.order_by("pk"))
    why_not: dict[int, str] = {}
    if not agents:
        stop(
            PullHold(
                "no_agents",
                "No agent serves this board: tasks wait in Ready until one does.",
                short="Waits: no agent serves this board.",
            )
        )
    for agent in agents:
        if agent.paused:
            why_not[agent.pk] = f"{agent.name} is paused"
    unpaused = [a for a in agents if not a.paused]
    if agents and not unpaused:
        stop(
            PullHold(
                "agents_paused",
                "Every agent of this board is paused: resume one on its page.",
                short="Waits: every agent is paused.",
            )
        )
    if line_stops is None:
        line_stops = board_line_stops_get(board=board)
    unpaused_ids = {a.pk for a in unpaused}
    board_stopped = any(s.board_id == board.pk for s in line_stops)
    stopped_ids = {s.agent_id for s in line_stops if s.agent_id in unpaused_ids}
    stops_by_agent = {s.agent_id: s for s in line_stops if s.agent_id}
    stops_url = reverse("andon-line-stops")
    if board_stopped:
        board_stop = next((s for s in line_stops if s.board_id), None)
        if board_stop is not None and board_stop.kind == LineStop.Kind.BUDGET:
            stop(
                PullHold(
                    "budget",
                    f"{board_stop.reason}. Agents pull nothing on this board until the period ends, "
                    "or a person raises the limit or restarts the line.",
                    url=f"{reverse('andon-budgets')}?board={board.pk}",
                    link_text="Budgets",
                    short=f"Waits: budget reached ({board_stop.budget.name if board_stop.budget else 'board'}).",
                )
            )
        else:
            reason = f": {board_stop.reason}" if board_stop is not None else ""
            stop(
                PullHold(
                    "line_stopped",
                    f"The line is stopped{reason}. A reviewer restarts it from the andon.",
                    url=f"{stops_url}#line-stop-{board_stop.pk}" if board_stop is not None else stops_url,
                    link_text="Line stops",
                    short="Waits: the line is stopped.",
                )
            )
    agent_holds: list[PullHold] = []
    for agent in unpaused:
        if agent.pk in stopped_ids:
            line_stop = stops_by_agent.get(agent.pk)
            if line_stop is not None and line_stop.kind == LineStop.Kind.BUDGET:
                why_not[agent.pk] = f"budget reached for {agent.name}"
                agent_holds.append(
                    PullHold(
                        "agent_budget",
                        f"{agent.name}: {line_stop.reason}. It pulls nothing until the period ends, "
                        "or a person raises the limit or restarts its line.",
                        url=f"{reverse('andon-budgets')}?agent={agent.pk}",
                        link_text="Budgets",
                    )
                )
                continue
            reason = line_stop.reason if line_stop is not None else "its line is stopped"
            why_not[agent.pk] = f"{agent.name} is stopped"
            agent_holds.append(
                PullHold(
                    "agent_stopped",
                    f"{agent.name} stopped: {reason}. Restart it from the andon.",
                    url=f"{stops_url}#line-stop-{line_stop.pk}" if line_stop is not None else stops_url,
                    link_text="Line stops",
                )
            )
    pulling = [a for a in unpaused if a.pk not in stopped_ids]
    gate = jidoka.pull_gate(pulling, board_id=board.pk, take_probes=False, breakers=breakers)
    held = [a for a in pulling if a.pk in gate.blocked]
    if held:
        agent_holds += _breaker_holds(board, held, gate, why_not, breakers)
    pulling = [a for a in pulling if a.pk not in gate.blocked]
    for agent in agents:
        if agent.paused:
            agent_holds.append(
                PullHold(
                    "agent_paused",
                    f"{agent.name} is paused: it takes no new tasks until resumed.",
                    level=HoldLevel.SIGNAL,
                    url=agent.get_absolute_url(),
                    link_text=agent.name,
                )
            )
    if unpaused and not pulling and not board_stopped and board_hold is None:
        # Every agent that is not paused is stopped or held by a breaker.
        board_hold = PullHold(
            "agents_held",
            "No agent can pull: " + "; ".join(why_not[a.pk] for a in unpaused) + ".",
            short="Waits: " + "; ".join(why_not[a.pk] for a in unpaused) + ".",
        )
    holds += agent_holds

    # Capacity: In progress and the agents' own.
    busy_hold: PullHold | None = None
    room: dict[int, int] = {}
    able: list[Agent] = []
    want = 0
    if doing is not None:
        in_doing, running = board_agents_running_get(doing=doing, board=board, agents=pulling)
        free = pull_rules.free_wip(doing, in_doing)
        room = pull_rules.agent_room(pulling, running=running, gate=gate)
        able = [a for a in pulling if room[a.pk] > 0]
        for agent in pulling:
            if room[agent.pk] > 0:
                continue
            if agent.pk in gate.limited or agent.pk in gate.probes:
                why_not[agent.pk] = f"{agent.name} is probing a circuit breaker with one task"
            else:
                why_not[agent.pk] = (
                    f"{agent.name} is busy ({running.get(agent.pk, 0)}/{agent.concurrency} running)"
                )
        if free is not None and free <= 0:
            busy_hold = PullHold(
                "in_progress_full",
                f"{doing.name} is full ({in_doing}/{doing.wip_limit}): the next task starts "
                "when one finishes.",
                level=HoldLevel.BUSY,
                short=f"Waits its turn: {doing.name} is full ({in_doing}/{doing.wip_limit}).",
            )
        elif pulling and not able:
            busy_hold = PullHold(
                "agents_busy",
                "Every agent is busy: " + "; ".join(why_not[a.pk] for a in pulling) + ".",
                level=HoldLevel.BUSY,
                short="Waits its turn: every agent is busy.",
            )
        total = sum(room[a.pk] for a in able)
        want = total if free is None else max(0, min(total, free))
        if busy_hold is not None:
            holds.append(busy_hold)

    # The work that waits, by the capability it asks for.
    capability_holds: dict[str, PullHold] = {}
    for capability, n in sorted(waiting_by_capability.items()):
        offering = [a for a in agents if a.can_do(capability)]
        tasks = f"{_plural(n, 'task')} {'waits' if n == 1 else 'wait'}"
        if not offering:
            capability_holds[capability] = PullHold(
                "no_capability",
                f"No agent on this board offers capability “{capability}”: {tasks} for one.",
                short=f"Waits: no agent on this board offers “{capability}”.",
            )
        elif not any(a in pulling for a in offering):
            # Every agent that could take it is paused, stopped or held by a breaker.
            label = f"“{capability}”" if capability else "these tasks"
            capability_holds[capability] = PullHold(
                "capability_held",
                f"No agent that can do {label} may pull ({tasks}): "
                + "; ".join(why_not.get(a.pk, a.name) for a in offering)
                + ".",
                short="Waits: " + "; ".join(why_not.get(a.pk, a.name) for a in offering) + ".",
            )
        elif any(a in able for a in offering) or busy_hold is not None:
            continue
        else:
            capability_holds[capability] = PullHold(
                "capability_busy",
                f"Every agent that can do “{capability}” is busy: "
                + "; ".join(why_not[a.pk] for a in offering if a.pk in why_not)
                + ".",
                level=HoldLevel.BUSY,
                short=f"Waits its turn: every agent that can do “{capability}” is busy.",
            )
    if board_hold is None:
        holds += capability_holds.values()

    # What _claim would do now: some waiting task that an able agent takes.
    would_claim = (
        board_hold is None
        and want > 0
        and any(pull_rules.pick_agent(capability, able, room) for capability in waiting_by_capability)
    )
    stuck = {c for c, hold in capability_holds.items() if hold.level == HoldLevel.STOP}
    # Ready full of blocked tasks lets nothing in from the Backlog (_replenish).
    backlog = by_role.get(Role.BACKLOG)
    ready_clogged = (
        not waiting
        and ready is not None
        and ready.wip_limit is not None
        and ready.task_count >= ready.wip_limit
        and backlog is not None
        and Task.objects.filter(column=backlog, blocked_at__isnull=True).exists()
    )
    if ready_clogged and ready is not None and backlog is not None:  # (implied; for the type checker)
        holds.append(
            PullHold(
                "ready_blocked",
                f"{ready.name} is full ({ready.task_count}/{ready.wip_limit}) of blocked tasks, so no "
                f"work comes in from the {backlog.name}: unblock one, or move it back.",
            )
        )
        state = "stalled"
    elif not waiting:
        state = "idle"
    elif would_claim:
        state = "flowing"
    elif board_hold is not None or set(waiting_by_capability) <= stuck:
        state = "stalled"
    else:
        state = "busy"
    if state == "stalled" and board_hold is not None and board_hold not in holds:
        holds.insert(0, board_hold)
    return BoardPullStatus(
        state=state,
        waiting=waiting,
        holds=holds,
        board_hold=board_hold,
        busy_hold=busy_hold,
        capability_holds=capability_holds,
        able=able,
        room=room,
        want=want,
        probing=bool(gate.probes or gate.limited),
    )


def _breaker_holds(
    board: Board, held: list[Agent], gate, why_not: dict[int, str], breakers: list | None = None
) -> list[PullHold]:
    """Why each of these agents is held back by a circuit breaker, with the time
    it will try again: one query for their breakers and the board's open models',
    none when the caller has read the breakers (board_breakers_get)."""
    from datetime import timedelta

    from andon import jidoka
    from andon.models import CircuitBreaker

    if breakers is None:
        rows = list(
            CircuitBreaker.objects.filter(
                Q(scope=CircuitBreaker.Scope.AGENT, agent__in=held)
                | Q(scope=CircuitBreaker.Scope.MODEL, board=board, key__in=list(gate.open_models))
            )
        )
    else:
        held_ids = {a.pk for a in held}
        rows = [
            b
            for b in breakers
            if (b.scope == CircuitBreaker.Scope.AGENT and b.agent_id in held_ids)
            or (
                b.scope == CircuitBreaker.Scope.MODEL and b.board_id == board.pk and b.key in gate.open_models
            )
        ]
    by_agent = {b.agent_id: b for b in rows if b.scope == CircuitBreaker.Scope.AGENT}
    by_model = {b.key: b for b in rows if b.scope == CircuitBreaker.Scope.MODEL}
    model_cooldown = jidoka.model_breaker_cooldown()
    holds = []
    for agent in held:
        breaker = by_agent.get(agent.pk)
        cooldown = timedelta(seconds=agent.breaker_cooldown_seconds)
        if breaker is not None and breaker.state != CircuitBreaker.State.CLOSED:
            if breaker.state == CircuitBreaker.State.HALF_OPEN and breaker.probe_started_at:
                text = (
                    f"{agent.name}'s breaker is half-open: one probe task is running; "
                    f"if it does not report back, the next try is at {_clock(breaker.probe_started_at + cooldown)}."
                )
            else:
                until = f" until {_clock(breaker.opened_at + cooldown)}" if breaker.opened_at else ""
                failures = _plural(breaker.consecutive_failures, "failed attempt")
                text = f"{agent.name}'s breaker is open{until} ({failures} in a row)."
            why_not[agent.pk] = f"{agent.name}'s breaker is open"
        else:
            models = []
            for tier in agent.tiers:
                key = jidoka.model_key(tier.provider, tier.model)
                model_breaker = by_model.get(key)
                if model_breaker is None or key in models:
                    continue
                since = model_breaker.probe_started_at or model_breaker.opened_at
                models.append(key + (f" until {_clock(since + model_cooldown)}" if since else ""))
            text = f"{agent.name}'s models are out of service: breaker open for {', '.join(models)}."
            why_not[agent.pk] = f"{agent.name}'s models are out of service"
        holds.append(
            PullHold("breaker_open", text, url=agent.get_absolute_url(), link_text=f"{agent.name}'s page")
        )
    return holds
