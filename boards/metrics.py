"""The line's Prometheus series (see kaizen_web/metrics.py for the design).

- ``model_calls_observe`` / ``inspections_observe``: the event counters and the
  OpenTelemetry GenAI histograms, fed by the services once the ledger rows and
  inspections they describe have committed.
- ``LineCollector``: the state of the line, read from the database at scrape time
  in a fixed number of queries (one per table, grouped in the database; none per
  board, column or task), so a scrape costs the same at 100 tasks or 100,000.

Labels are bounded by configuration, never by traffic: board (slug), column
(name), role, agent (name), tier, provider, model, kind, state. Never a task id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.db.models import Count, Min
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from andon.budgets import budget_statuses
from andon.models import Budget, CircuitBreaker, Escalation, LineStop
from boards.models import Agent, Board, Column, ModelCall, Task
from kaizen_web import metrics

# --- names for labels, in the processes that count events ------------------------------

# Ledger rows carry ids; labels carry names. A worker looks each board's slug and
# each agent's name up once (one query for the ones it has not seen) and keeps
# them: a rename shows under the new name from the next process start on.
_names_lock = threading.Lock()
_board_slugs: dict[int, str] = {}
_agent_names: dict[int, str] = {}


def _label_names(board_ids: set[int], agent_ids: set[int]) -> tuple[dict[int, str], dict[int, str]]:
    missing_boards = board_ids - _board_slugs.keys()
    missing_agents = agent_ids - _agent_names.keys()
    if missing_boards:
        found = dict(Board.objects.filter(pk__in=missing_boards).values_list("pk", "slug"))
        with _names_lock:
            _board_slugs.update(found)
    if missing_agents:
        found = dict(Agent.objects.filter(pk__in=missing_agents).values_list("pk", "name"))
        with _names_lock:
            _agent_names.update(found)
    return _board_slugs, _agent_names


def model_calls_observe(rows: Iterable[ModelCall]) -> None:
    """Count ledger rows that have committed (call from ``transaction.on_commit``:
    a batch rolled back and retried is counted once, as the ledger holds it)."""
    rows = list(rows)
    if not rows:
        return
    boards, agents = _label_names(
        {r.board_id for r in rows}, {r.agent_id for r in rows if r.agent_id is not None}
    )
    metrics.model_calls_observe(
        metrics.ModelCallSample(
            board=boards.get(r.board_id, ""),
            agent=agents.get(r.agent_id, "") if r.agent_id is not None else "",
            tier=str(r.tier) if r.tier is not None else "",
            source=r.source,
            provider=r.provider,
            model=r.model,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
            cost=float(r.cost),
            latency_ms=r.latency_ms,
            error_type=getattr(r, "error_type", "") or ("ProviderError" if r.error else ""),
        )
        for r in rows
    )


def inspections_observe(verdicts: Iterable[tuple[int, int | None, bool]]) -> None:
    """Count committed inspections: (board id, agent id, passed) each."""
    verdicts = list(verdicts)
    if not verdicts:
        return
    boards, agents = _label_names({b for b, _, _ in verdicts}, {a for _, a, _ in verdicts if a is not None})
    metrics.inspections_observe(
        (boards.get(b, ""), agents.get(a, "") if a is not None else "", passed) for b, a, passed in verdicts
    )


# --- the state of the line, at scrape time ----------------------------------------------


def budget_families(*, now: datetime, boards: dict[int, str], agents: dict[int, str]) -> Iterable[Metric]:
    """Each budget's state in its current day/week/month, from the running
    totals (andon.budgets): ``kaizen_budget_remaining`` (dollars or tokens left;
    negative past the limit, as runs in flight finish) and
    ``kaizen_budget_used_ratio`` (1 = reached). Two queries for all budgets."""
    labels = ["budget", "board", "agent", "period", "unit"]
    remaining = GaugeMetricFamily(
        "kaizen_budget_remaining",
        "What is left of each budget in its current period, in its unit (dollars or tokens).",
        labels=labels,
    )
    used = GaugeMetricFamily(
        "kaizen_budget_used_ratio", "Spend this period over the budget's limit (1 = reached).", labels=labels
    )
    for status in budget_statuses(list(Budget.objects.order_by("pk"))):
        budget = status.budget
        values = [
            budget.name,
            boards.get(budget.board_id, "") if budget.board_id else "",
            agents.get(budget.agent_id, "") if budget.agent_id else "",
            budget.period,
            budget.unit,
        ]
        remaining.add_metric(values, float(budget.limit - status.spent))
        used.add_metric(values, float(status.spent / budget.limit))
    yield remaining
    yield used


class LineCollector(Collector):
    """Gauges (and database-backed counters) of the line's state; nine queries per scrape (boards, agents, columns, tasks, escalations, line stops, breakers, budgets and their periods)."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        boards: dict[int, str] = {}
        board_paused = GaugeMetricFamily(
            "kaizen_board_paused", "1 when the board's line is paused.", labels=["board"]
        )
        for pk, slug, paused in Board.objects.order_by().values_list("pk", "slug", "paused"):
            boards[pk] = slug
            board_paused.add_metric([slug], 1 if paused else 0)
        agents: dict[int, str] = {}
        agent_paused = GaugeMetricFamily(
            "kaizen_agent_paused",
            "1 when the agent's line is paused (stopped, or paused by a person).",
            labels=["agent"],
        )
        for pk, name, paused in Agent.objects.order_by().values_list("pk", "name", "paused"):
            agents[pk] = name
            agent_paused.add_metric([name], 1 if paused else 0)
        yield board_paused
        yield agent_paused
        yield from self._columns(now, boards)
        yield from self._tasks(boards)
        yield from self._escalations(boards, agents)
        yield from self._line_stops(boards, agents)
        yield from self._breakers(boards, agents)
        yield from budget_families(now=now, boards=boards, agents=agents)

    @staticmethod
    def _columns(now: datetime, boards: dict[int, str]) -> Iterator[Metric]:
        labels = ["board", "column", "role"]
        wip = GaugeMetricFamily(
            "kaizen_column_wip",
            "Tasks in the column now (work in progress; Done is left out).",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "kaizen_column_wip_limit",
            "The column's WIP limit (columns without one have no series).",
            labels=[*labels, "hard"],
        )
        age = GaugeMetricFamily(
            "kaizen_column_oldest_item_age_seconds",
            "Age of the oldest task in the column, in seconds: since it was first claimed by an "
            "agent (entered In progress), or since it was created if it has not started; 0 when empty.",
            labels=labels,
        )
        rows = (
            Column.objects.exclude(role=Column.Role.DONE)
            .order_by()
            .annotate(items=Count("tasks"), oldest=Min(Coalesce("tasks__started_at", "tasks__created_at")))
            .values_list("board_id", "name", "role", "wip_limit", "hard_limit", "items", "oldest")
        )
        for board_id, name, role, wip_limit, hard, items, oldest in rows:
            key = [boards.get(board_id, ""), name, role]
            wip.add_metric(key, items)
            if wip_limit is not None:
                limit.add_metric([*key, "true" if hard else "false"], wip_limit)
            age.add_metric(key, max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
        yield from (wip, limit, age)

    @staticmethod
    def _tasks(boards: dict[int, str]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kaizen_board_tasks",
            "Tasks on the board by status. Throughput is the rise of status=done over time "
            '(delta(kaizen_board_tasks{status="done"}[1h])): finished items, as the flow pages count them.',
            labels=["board", "status"],
        )
        rows = Task.objects.order_by().values_list("board_id", "status").annotate(n=Count("pk"))
        for board_id, status, n in rows:
            family.add_metric([boards.get(board_id, ""), status], n)
        yield family

    @staticmethod
    def _escalations(boards: dict[int, str], agents: dict[int, str]) -> Iterator[Metric]:
        labels = ["board", "agent"]
        open_ = GaugeMetricFamily(
            "kaizen_escalations_open",
            "Escalations waiting for a person's decision (the andon inbox).",
            labels=labels,
        )
        raised = CounterMetricFamily(
            "kaizen_escalations_raised", "Escalations ever raised (defects sent to a person).", labels=labels
        )
        decided = CounterMetricFamily(
            "kaizen_escalations_decided",
            "Escalations decided, by outcome: approved, corrected (edited and approved), rejected, withdrawn.",
            labels=[*labels, "outcome"],
        )
        totals: dict[tuple[str, str], int] = {}
        rows = (
            Escalation.objects.order_by()
            .values_list("board_id", "agent_id", "status")
            .annotate(n=Count("pk"))
        )
        for board_id, agent_id, status, n in rows:
            key = (boards.get(board_id, ""), agents.get(agent_id, "") if agent_id is not None else "")
            totals[key] = totals.get(key, 0) + n
            if status == Escalation.Status.OPEN:
                open_.add_metric(list(key), n)
            else:
                decided.add_metric([*key, status], n)
        for key, n in totals.items():
            raised.add_metric(list(key), n)
        yield from (open_, raised, decided)

    @staticmethod
    def _line_stops(boards: dict[int, str], agents: dict[int, str]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kaizen_line_stops_active",
            'Line stops not yet restarted, for a board (agent="") or an agent (board=""), by kind.',
            labels=["board", "agent", "kind"],
        )
        rows = (
            LineStop.objects.filter(restarted_at__isnull=True)
            .order_by()
            .values_list("board_id", "agent_id", "kind")
            .annotate(n=Count("pk"))
        )
        for board_id, agent_id, kind, n in rows:
            board = boards.get(board_id, "") if board_id is not None else ""
            agent = agents.get(agent_id, "") if agent_id is not None else ""
            family.add_metric([board, agent, kind], n)
        yield family

    @staticmethod
    def _breakers(boards: dict[int, str], agents: dict[int, str]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kaizen_circuit_breaker_state",
            "Circuit breakers, one series per state, 1 for the breaker's current one: an agent's "
            "(scope=agent) or a provider model's on one board (scope=model, model=provider/model).",
            labels=["scope", "board", "agent", "model", "state"],
        )
        rows = CircuitBreaker.objects.order_by().values_list("scope", "board_id", "agent_id", "key", "state")
        for scope, board_id, agent_id, key, state in rows:
            board = boards.get(board_id, "") if board_id is not None else ""
            agent = agents.get(agent_id, "") if agent_id is not None else ""
            for candidate in CircuitBreaker.State.values:
                family.add_metric([scope, board, agent, key, candidate], 1 if candidate == state else 0)
        yield family
