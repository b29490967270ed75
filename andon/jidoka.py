"""What the line does on its own: inspect every output, open an escalation for a
defect, stop an agent's line when its defects spike, and keep the circuit breakers.

Called by ``boards.services`` inside a run's completion (``finished_runs_handle``,
once for a batch of finished runs) or failed attempt transaction, and by the pull
(``boards.services.pull``) to decide who may pull; the runtime asks it which
models' breakers are open (per board: see CircuitBreaker). It imports no service
module, so both ``boards.services`` and ``andon.services`` can use it.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from andon.inspection import CheckSpec, InspectionContext, Verdict, inspect, parse_checks
from andon.models import CircuitBreaker, Escalation, Inspection, LineStop
from boards.agents.spec import ConfigError
from boards.models import Agent, Task
from kaizen_web.memo import KeyedTtl
from kaizen_web.prepared import Prepared, fields
from kaizen_web.rows import rows_insert

logger = logging.getLogger(__name__)

Breaker = CircuitBreaker
State = CircuitBreaker.State


# --- inspection ------------------------------------------------------------------


@lru_cache(maxsize=512)
def _parsed_checks(raw: str) -> tuple[CheckSpec, ...]:
    return tuple(parse_checks(json.loads(raw)))


def checks_for(agent: Agent | None) -> tuple[CheckSpec, ...] | None:
    """The agent's checks, parsed once per distinct configuration; None when the
    stored value is malformed (a row written around ``clean``)."""
    if agent is None:
        return ()
    try:
        return _parsed_checks(json.dumps(agent.quality_checks, sort_keys=True))
    except (ConfigError, TypeError, ValueError) as exc:
        logger.error("agent %s has malformed quality checks: %s", agent.pk, exc)
        return None


class _OptimalLengths:
    """The estimated optimal output length of each agent, for the token-waste
    check: the median length of what reviewers corrected its outputs to when
    there are a few corrections, else the lower quartile of its passed outputs
    (the concise end of what was acceptable). Read at most once a minute per
    agent and process: it moves slowly, and inspection is on the hot path."""

    TTL = 60.0
    MIN_CORRECTIONS = 3
    MIN_PASSED = 20

    def __init__(self) -> None:
        self._kept: KeyedTtl[int, int | None] = KeyedTtl(self.TTL, self._estimate)

    def get(self, agent_id: int) -> int | None:
        return self._kept.get(agent_id)

    def clear(self) -> None:
        self._kept.clear()

    def _estimate(self, agent_id: int) -> int | None:
        corrected = list(
            Escalation.objects.filter(agent_id=agent_id, status=Escalation.Status.CORRECTED)
            .order_by("-decided_at")
            .values_list("corrected_output", flat=True)[:50]
        )
        if len(corrected) >= self.MIN_CORRECTIONS:
            return max(1, round(statistics.median(estimate_tokens(text) for text in corrected)))
        lengths = list(
            Inspection.objects.filter(agent_id=agent_id, passed=True, tokens_out__gt=0)
            .order_by("-created_at")
            .values_list("tokens_out", flat=True)[:200]
        )
        if len(lengths) < self.MIN_PASSED:
            return None
        return max(1, round(statistics.quantiles(lengths, n=4)[0]))


optimal_lengths = _OptimalLengths()


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def inspect_run(task: Task, output) -> tuple[Verdict, int]:
    """The verdict on a run's output (boards.agents.Output) and its length in tokens."""
    accepted = [c for c in output.calls if c.accepted]
    tokens_out = (
        accepted[-1].tokens_out if accepted and accepted[-1].tokens_out else estimate_tokens(output.text)
    )
    specs = checks_for(task.agent)
    if specs is None:
        return (
            Verdict(
                failures=(
                    _failure(
                        "configuration",
                        "the agent's quality checks are malformed, so the output could not be inspected",
                    ),
                )
            ),
            tokens_out,
        )
    if not specs:
        return Verdict(), tokens_out
    needs_optimal = any(
        spec.kind == "token_waste" and not spec.params.get("optimal_tokens") for spec in specs
    )
    context = InspectionContext(
        title=task.title,
        input=task.input,
        tokens_out=tokens_out,
        optimal_tokens=optimal_lengths.get(task.agent_id) if needs_optimal and task.agent_id else None,
    )
    try:
        verdict = inspect(output.text, confidence=output.confidence, checks=list(specs), context=context)
    except Exception as exc:  # jidoka: an inspection that cannot run is a reason to stop
        logger.exception("inspecting the output of task %s failed", task.pk)
        verdict = Verdict(failures=(_failure("inspection", f"inspection crashed: {exc!r}"),))
    return verdict, tokens_out


def output_would_pass(task: Task, text: str, *, confidence: float | None, tokens_out: int) -> bool | None:
    """Whether an output the cascade passed over (below its tier's threshold) would
    have passed the agent's inspection, for the over-processing waste (andon.muda).
    None when it cannot be told cheaply or safely: malformed checks, or a custom
    check (user code, which may be slow or count what it sees). Never records
    anything: only the accepted output is inspected for the line."""
    specs = checks_for(task.agent)
    if specs is None or any(spec.kind == "custom" for spec in specs):
        return None
    if not specs:
        return True
    needs_optimal = any(
        spec.kind == "token_waste" and not spec.params.get("optimal_tokens") for spec in specs
    )
    context = InspectionContext(
        title=task.title,
        input=task.input,
        tokens_out=tokens_out or estimate_tokens(text),
        optimal_tokens=optimal_lengths.get(task.agent_id) if needs_optimal and task.agent_id else None,
    )
    try:
        return inspect(text, confidence=confidence, checks=list(specs), context=context).passed
    except Exception:
        logger.exception("inspecting a passed-over output of task %s failed", task.pk)
        return None


def _failure(name: str, reason: str):
    from andon.inspection import Failure

    return Failure(name=name, check=name, reason=reason)


def inspection_row(task: Task, verdict: Verdict, tokens_out: int) -> Inspection:
    return Inspection(
        task_id=task.pk,
        board_id=task.board_id,
        agent_id=task.agent_id,
        prompt_version=task.prompt_version,
        attempt=max(task.attempts, 1),
        passed=verdict.passed,
        failures=verdict.failures_json(),
        waste_tokens=verdict.waste_tokens,
        tokens_out=tokens_out,
        notes=list(verdict.notes),
    )


def escalation_row(task: Task, inspection: Inspection, output) -> Escalation:
    return Escalation(
        task_id=task.pk,
        board_id=task.board_id,
        agent_id=task.agent_id,
        inspection=inspection,
        prompt_version=task.prompt_version,
        attempt=max(task.attempts, 1),
        output=output.text,
        confidence=output.confidence,
        confidence_source=output.confidence_source,
        failures=inspection.failures,
        cost=task.cost,
    )


# --- a batch of finished runs -----------------------------------------------------


@dataclass(frozen=True)
class FinishedRun:
    """A run the line has completed, its task already moved: to Review when
    ``escalate`` (a reviewer decides the defect), else to Done."""

    task: Task
    output: Any  # boards.agents.Output
    verdict: Verdict
    tokens_out: int
    escalate: bool


@dataclass(frozen=True)
class FinishedRunsHandled:
    """What the andon did for a batch of finished runs, for the live updates
    after commit."""

    escalations: list[int]  # opened
    agents: set[int]  # whose line stopped, or whose breaker changed state
    stops: bool  # a line stopped
    # The rows written, for the Muda rollups (andon.muda_rollups.runs_recorded).
    inspection_rows: list[Inspection] = field(default_factory=list)
    escalation_rows: list[Escalation] = field(default_factory=list)


def finished_runs_handle(runs: list[FinishedRun], *, calls: dict[int, list]) -> FinishedRunsHandled:
    """The line's side of the andon for a batch of completed runs (the verdicts
    from ``inspect_run``), inside the completion's transaction: record each
    inspection, open an escalation for each run sent to Review, stop the line of
    agents whose defects spiked, and count the runs for their agents' circuit
    breakers and the model calls (CallRecords, per board: ``calls``, stale runs'
    included) for the models' breakers."""
    inspections = [inspection_row(run.task, run.verdict, run.tokens_out) for run in runs]
    # Their ids are the escalations' (one INSERT of a fixed shape, kaizen_web.rows).
    rows_insert(Inspection, inspections, returning=True)
    escalations = Escalation.objects.bulk_create(
        [
            escalation_row(run.task, inspection, run.output)
            for run, inspection in zip(runs, inspections, strict=True)
            if run.escalate
        ]
    )
    defects_of = {run.task.agent_id for run in runs if not run.verdict.passed and run.task.agent_id}
    stops = spike_stops(defects_of) if defects_of else []
    succeeded = {run.task.agent_id for run in runs if run.task.agent_id}
    # The agents' and the boards' model breakers with something to reset, in one read.
    agent_breakers, model_breakers = _breakers_to_reset(
        agent_ids=sorted(succeeded), board_ids=sorted(b for b, made in calls.items() if _model_outcomes(made))
    )
    breaker_agents = record_agent_outcomes(succeeded=succeeded, to_reset=agent_breakers)
    # In board order, as the breaker rows are locked: two batches cannot deadlock.
    for board_id in sorted(calls):
        record_model_calls(
            calls[board_id],
            board_id=board_id,
            to_reset=None if model_breakers is None else model_breakers.get(board_id),
        )
    return FinishedRunsHandled(
        escalations=[escalation.pk for escalation in escalations],
        # Spike stops are agents' stops: each has its agent_id.
        agents={stop.agent_id for stop in stops if stop.agent_id is not None} | breaker_agents,
        stops=bool(stops),
        inspection_rows=inspections,
        escalation_rows=escalations,
    )


# --- stopping the line ------------------------------------------------------------


def spike_stops(agent_ids: Iterable[int]) -> list[LineStop]:
    """Stop the line of each agent whose defects spiked: ``spike_defects`` or more
    among its last ``spike_window`` inspected outputs. Call inside the transaction
    that recorded the defects; returns the stops it made."""
    stops = []
    for agent in Agent.objects.filter(pk__in=set(agent_ids)).order_by("pk"):
        if LineStop.objects.filter(agent=agent, restarted_at__isnull=True).exists():
            continue
        inspections = Inspection.objects.filter(agent=agent)
        # The defects that stopped the line were dealt with when a reviewer
        # restarted it: counted again, the next defect would stop it at once.
        restarted = LineStop.objects.filter(
            agent=agent, kind=LineStop.Kind.DEFECT_SPIKE, restarted_at__isnull=False
        ).aggregate(at=Max("restarted_at"))["at"]
        if restarted is not None:
            inspections = inspections.filter(created_at__gt=restarted)
        recent = list(
            inspections.order_by("-created_at", "-pk").values_list("passed", flat=True)[: agent.spike_window]
        )
        defects = sum(1 for passed in recent if not passed)
        if defects < agent.spike_defects:
            continue
        reason = (
            f"defect spike: {defects} defects in {agent.name}'s last {len(recent)} outputs "
            f"(the limit is {agent.spike_defects} in {agent.spike_window})"
        )
        # A savepoint, and the error caught outside it: a concurrent stop of the
        # same agent wins, and after a failed INSERT PostgreSQL runs no other
        # statement until the savepoint is rolled back.
        try:
            with transaction.atomic():
                stop = LineStop.objects.create(agent=agent, kind=LineStop.Kind.DEFECT_SPIKE, reason=reason)
        except IntegrityError:
            if LineStop.objects.filter(agent=agent, restarted_at__isnull=True).exists():
                continue
            raise
        logger.warning("line stopped for agent %s: %s", agent.pk, reason)
        stops.append(stop)
    return stops


# The stops not restarted of a board and of some agents, at every pull.
_STOPS = Prepared(
    lambda *, board_id, agent_ids: (
        LineStop.objects.filter(restarted_at__isnull=True)
        .filter(Q(board_id=board_id) | Q(agent_id__in=agent_ids))
        .order_by()
        .values_list("pk", "board_id", "agent_id", "until")
    ),
    board_id=int,
    agent_ids=list,
)


def active_stops(
    *, board_id: int, agent_ids: Iterable[int], expired: list[int] | None = None
) -> tuple[bool, set[int]]:
    """Whether the board's line is stopped, and which of these agents' lines are
    (at least one agent: the pull asks for those it has locked; an empty list
    is refused).

    A budget stop is in force until its period ends (``LineStop.until``), even
    before anything records it as restarted; the board's flow status
    (boards.selectors) reads stops the same way, so they agree. The ids of such
    ended stops are appended to ``expired`` when given (the pull lifts them:
    andon.budgets).

    One query, compiled once (kaizen_web.prepared)."""
    now = timezone.now()
    board_stopped = False
    agents: set[int] = set()
    rows = _STOPS.rows(board_id=board_id, agent_ids=sorted(set(agent_ids)))
    for pk, stop_board, stop_agent, until in rows:
        if until is not None and until <= now:
            if expired is not None:
                expired.append(pk)
            continue
        if stop_board is not None:
            board_stopped = True
        if stop_agent is not None:
            agents.add(stop_agent)
    return board_stopped, agents


# --- circuit breakers --------------------------------------------------------------


def model_key(provider: str, model: str) -> str:
    return f"{provider}/{model}"


def model_breaker_threshold() -> int:
    return settings.KAIZEN_MODEL_BREAKER_THRESHOLD


def model_breaker_cooldown() -> timedelta:
    return timedelta(seconds=settings.KAIZEN_MODEL_BREAKER_COOLDOWN_SECONDS)


@dataclass(frozen=True)
class PullGate:
    """Which agents may pull, and how many tasks each, as the breakers see it."""

    blocked: frozenset[int]
    # Agents whose half-open probe this pull may claim: at most one task each.
    probes: frozenset[int]
    # Models whose breakers are open (for agents whose every tier is open).
    open_models: frozenset[str]
    # Agents whose every tier's model is out of service but one of them is due a
    # probe call: one task each, so a model coming back is probed by one run
    # instead of a batch of runs failing their attempts on the refused calls.
    limited: frozenset[int] = frozenset()

    def candidate_order(self) -> tuple:
        """The order a pull takes Ready's tasks in: the queue's, except while a
        breaker is probed. A probe decides whether the breaker closes, and the task
        tried last is the one whose failure opened it: probed again and again, a
        task whose failure always recurs kept the breaker open while healthy work
        waited. So a probe takes work not tried yet (in queue order), then work
        tried longest ago; the task that just failed comes last."""
        return PROBE_ORDER if self.probes or self.limited else QUEUE_ORDER


# The orders of PullGate.candidate_order, each one object (a pull's compiled
# query is kept per order).
QUEUE_ORDER = ("position", "created_at")
PROBE_ORDER = (F("started_at").asc(nulls_first=True), "position", "created_at")


# Read at every pull: compiled once (kaizen_web.prepared).
_PULL_BREAKERS = Prepared(
    lambda *, agent_ids, board_id: (
        CircuitBreaker.objects.filter(
            Q(scope=Breaker.Scope.AGENT, agent_id__in=agent_ids)
            | Q(scope=Breaker.Scope.MODEL, board_id=board_id, state__in=[State.OPEN, State.HALF_OPEN])
        )
        .exclude(state=State.CLOSED)
        .order_by()
        .values_list(*fields(CircuitBreaker))
    ),
    agent_ids=list,
    board_id=int,
)


def pull_gate(
    agents: list[Agent],
    *,
    board_id: int,
    take_probes: bool = True,
    breakers: Iterable[CircuitBreaker] | None = None,
) -> PullGate:
    """Read the breakers of these agents and the board's model breakers that are
    not closed (one query), and let a half-open probe through where an open
    breaker's cool-down has passed. Call under the board and agent locks in the
    pull's transaction.

    With ``take_probes`` the probes are marked as let through at once; a caller
    that passes False calls ``probes_taken`` with the agents whose probe it
    actually claimed, so that a pull claiming nothing (In progress full, say)
    does not spend a probe for a whole cool-down.

    ``breakers``, when the caller has read them already (the board's flow
    status, which only reads: boards.selectors.board_breakers_get), are the breakers
    that are not closed, of these agents and the board's models at least: no
    query then."""
    now = timezone.now()
    if breakers is None:
        rows = (
            _PULL_BREAKERS.instances(CircuitBreaker, agent_ids=[a.pk for a in agents], board_id=board_id)
            if agents
            else []
        )
    else:
        ids = {agent.pk for agent in agents}
        rows = [
            b
            for b in breakers
            if b.state in (State.OPEN, State.HALF_OPEN)
            and (
                (b.scope == Breaker.Scope.AGENT and b.agent_id in ids)
                or (b.scope == Breaker.Scope.MODEL and b.board_id == board_id)
            )
        ]
    cooldown = model_breaker_cooldown()
    # Models the cascade will not call now: open and cooling down, or half-open
    # with the one probe call in flight (every other call is refused meanwhile,
    # so a run whose every tier is such a model could only fail its attempt).
    open_models = {
        b.key
        for b in rows
        if b.scope == Breaker.Scope.MODEL
        and (
            (b.state == State.OPEN and b.opened_at is not None and now - b.opened_at < cooldown)
            or (
                b.state == State.HALF_OPEN
                and b.probe_started_at is not None
                and now - b.probe_started_at < cooldown
            )
        )
    }
    # Models out of service whose cool-down is over: the next call probes them.
    due = {b.key for b in rows if b.scope == Breaker.Scope.MODEL and b.key not in open_models}
    blocked: set[int] = set()
    limited: set[int] = set()
    for agent in agents:
        if agent.implementation:
            continue
        keys = {model_key(t.provider, t.model) for t in agent.tiers}
        if keys and keys <= open_models:
            blocked.add(agent.pk)
        elif keys and keys <= open_models | due:
            limited.add(agent.pk)
    by_agent = {b.agent_id: b for b in rows if b.scope == Breaker.Scope.AGENT}
    probes: set[int] = set()
    for agent in agents:
        breaker = by_agent.get(agent.pk)
        if breaker is None or agent.pk in blocked:
            # An agent held back by its models must not spend its probe on a pull
            # that cannot give it a task.
            continue
        agent_cooldown = timedelta(seconds=agent.breaker_cooldown_seconds)
        since = breaker.probe_started_at if breaker.state == State.HALF_OPEN else breaker.opened_at
        if since is not None and now - since >= agent_cooldown:
            # Cool-down over (or the last probe never reported back): one probe.
            probes.add(agent.pk)
        else:
            blocked.add(agent.pk)
    if take_probes:
        probes_taken(probes)
    return PullGate(
        frozenset(blocked), frozenset(probes), frozenset(open_models), frozenset(limited - blocked)
    )


def probes_taken(agent_ids: Iterable[int]) -> None:
    """Half-open the breakers of these agents, whose probe task a pull has just
    claimed: no other task is let through until it reports back (or the cool-down
    passes again). Call in the pull's transaction."""
    ids = sorted(set(agent_ids))
    if ids:
        now = timezone.now()
        CircuitBreaker.objects.filter(scope=Breaker.Scope.AGENT, agent_id__in=ids).update(
            state=State.HALF_OPEN, probe_started_at=now, updated_at=now
        )


# Read at every batch of runs completed: compiled once (kaizen_web.prepared).
_AGENT_BREAKERS_TO_RESET = Prepared(
    lambda *, agent_ids: (
        CircuitBreaker.objects.filter(agent_id__in=agent_ids)
        .exclude(state=State.CLOSED, consecutive_failures=0)
        .order_by("agent_id")
        .values_list(*fields(CircuitBreaker))
    ),
    agent_ids=list,
)
_MODEL_BREAKERS_TO_RESET = Prepared(
    lambda *, board_id: (
        CircuitBreaker.objects.filter(scope=Breaker.Scope.MODEL, board_id=board_id)
        .exclude(state=State.CLOSED, consecutive_failures=0)
        .order_by()
        .values_list(*fields(CircuitBreaker))
    ),
    board_id=int,
)


# The two above in one statement, for a batch of runs completed: its agents' and its
# boards' model breakers to reset (both lists not empty).
_BREAKERS_TO_RESET = Prepared(
    lambda *, agent_ids, board_ids: (
        CircuitBreaker.objects.filter(
            Q(agent_id__in=agent_ids) | Q(scope=Breaker.Scope.MODEL, board_id__in=board_ids)
        )
        .exclude(state=State.CLOSED, consecutive_failures=0)
        .order_by()
        .values_list(*fields(CircuitBreaker))
    ),
    agent_ids=list,
    board_ids=list,
)


def _breakers_to_reset(
    *, agent_ids: list[int], board_ids: list[int]
) -> tuple[list[CircuitBreaker] | None, dict[int, list[CircuitBreaker]] | None]:
    """What ``_AGENT_BREAKERS_TO_RESET`` and ``_MODEL_BREAKERS_TO_RESET`` give for
    these agents (in agent order) and for each of these boards, in one statement.
    Both None unless both are asked (the usual batch): then each
    ``record_*`` function reads its own, and one of them has nothing to do."""
    if not (agent_ids and board_ids):
        return None, None
    read = list(_BREAKERS_TO_RESET.instances(CircuitBreaker, agent_ids=agent_ids, board_ids=board_ids))
    by_board: dict[int, list[CircuitBreaker]] = {board_id: [] for board_id in board_ids}
    for breaker in read:
        if breaker.scope == Breaker.Scope.MODEL and breaker.board_id in by_board:
            by_board[breaker.board_id].append(breaker)
    agents = sorted((b for b in read if b.agent_id is not None), key=lambda b: b.agent_id or 0)
    return agents, by_board


def record_agent_outcomes(
    *,
    succeeded: Iterable[int] = (),
    failed: dict[int, str] | None = None,
    to_reset: list[CircuitBreaker] | None = None,
) -> set[int]:
    """Count runs of agents: a completed run closes the agent's breaker, a failed
    attempt adds to its consecutive failures and opens it at the agent's
    threshold (or at once, from half-open). Returns the agents whose breaker
    changed state (their boards' agent strips need a refresh). ``to_reset``: the
    succeeded agents' breakers with something to reset, if the caller read them
    (``_breakers_to_reset``)."""
    failed = failed or {}
    succeeded = set(succeeded) - set(failed)
    changed: set[int] = set()
    now = timezone.now()
    if succeeded:
        if to_reset is None:
            to_reset = list(_AGENT_BREAKERS_TO_RESET.instances(CircuitBreaker, agent_ids=sorted(succeeded)))
        # Only rows with something to reset are touched: most completions find none.
        # In agent order, as every writer of breaker rows takes them: two batches
        # completing at once cannot lock the same two rows in opposite orders.
        for breaker in to_reset:
            if breaker.agent_id not in succeeded:
                continue
            # Every row here has its agent_id (agent_id__in in the query).
            if breaker.state != State.CLOSED and breaker.agent_id is not None:
                changed.add(breaker.agent_id)
            CircuitBreaker.objects.filter(pk=breaker.pk).update(
                state=State.CLOSED,
                consecutive_failures=0,
                opened_at=None,
                probe_started_at=None,
                updated_at=now,
            )
    if failed:
        thresholds = dict(Agent.objects.filter(pk__in=failed).values_list("pk", "breaker_threshold"))
        for agent_id, error in sorted(failed.items()):
            if agent_id not in thresholds:
                continue
            breaker, _ = CircuitBreaker.objects.select_for_update().get_or_create(
                scope=Breaker.Scope.AGENT, agent_id=agent_id
            )
            breaker.consecutive_failures += 1
            breaker.last_error = error[:2000]
            if breaker.state == State.HALF_OPEN or (
                breaker.state == State.CLOSED and breaker.consecutive_failures >= thresholds[agent_id]
            ):
                breaker.state = State.OPEN
                breaker.opened_at = now
                breaker.probe_started_at = None
                changed.add(agent_id)
                logger.warning("circuit breaker of agent %s opened: %s", agent_id, error)
            breaker.save()
    return changed


def _model_outcomes(calls: Iterable) -> dict[str, list[str]]:
    """The errors ("" for an answer) of model calls (CallRecords) per provider model."""
    outcomes: dict[str, list[str]] = {}
    for call in calls:
        if call.source != "model" or not call.provider:
            continue
        outcomes.setdefault(model_key(call.provider, call.model), []).append(call.error)
    return outcomes


def record_model_calls(
    calls: Iterable, *, board_id: int, to_reset: list[CircuitBreaker] | None = None
) -> set[str]:
    """Count model calls (CallRecords, in the order they were made) for a board's
    tasks, per provider model: an answer closes the model's breaker on that board,
    an error adds to its consecutive errors and opens it at
    KAIZEN_MODEL_BREAKER_THRESHOLD. Returns the models whose breaker changed state.
    ``to_reset``: the board's model breakers with something to reset, if the
    caller read them (``_breakers_to_reset``)."""
    outcomes = _model_outcomes(calls)
    if not outcomes:
        return set()
    errored = {key for key, errors in outcomes.items() if any(errors)}
    if to_reset is None:
        to_reset = list(_MODEL_BREAKERS_TO_RESET.instances(CircuitBreaker, board_id=board_id))
    # The board's model breakers with something to reset (a few rows at most: one
    # per model its agents call), of these models.
    existing = {b.key: b for b in to_reset if b.key in outcomes}
    # Nothing to count: no errors, and no breaker with errors to reset (the usual case).
    if not errored and not existing:
        return set()
    changed: set[str] = set()
    now = timezone.now()
    threshold = model_breaker_threshold()
    for key in sorted(outcomes):
        if key not in errored and key not in existing:
            continue
        breaker, _ = CircuitBreaker.objects.select_for_update().get_or_create(
            scope=Breaker.Scope.MODEL, board_id=board_id, key=key
        )
        before = breaker.state
        for error in outcomes[key]:
            if error:
                breaker.consecutive_failures += 1
                breaker.last_error = error[:2000]
                if breaker.state == State.HALF_OPEN or (
                    breaker.state == State.CLOSED and breaker.consecutive_failures >= threshold
                ):
                    breaker.state = State.OPEN
                    breaker.opened_at = now
                    breaker.probe_started_at = None
            else:
                breaker.state = State.CLOSED
                breaker.consecutive_failures = 0
                breaker.opened_at = None
                breaker.probe_started_at = None
        breaker.save()
        if breaker.state != before:
            changed.add(key)
            logger.warning("circuit breaker of model %s on board %s is now %s", key, board_id, breaker.state)
    return changed


class _OpenModels:
    """The models whose breakers are open, by (board, provider/model), as the
    runtime sees them: read at most once a second per process, so a cascade does
    not query for every call."""

    TTL = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._rows: dict[tuple[int, str], tuple[str, datetime | None, datetime | None, int]] = {}

    def get(self) -> dict[tuple[int, str], tuple[str, datetime | None, datetime | None, int]]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < self.TTL:
                return self._rows
        rows = {
            (board_id, key): (state, opened, probe, pk)
            for board_id, key, state, opened, probe, pk in CircuitBreaker.objects.filter(
                scope=Breaker.Scope.MODEL, state__in=[State.OPEN, State.HALF_OPEN]
            ).values_list("board_id", "key", "state", "opened_at", "probe_started_at", "pk")
        }
        with self._lock:
            self._rows, self._read_at = rows, now
        return rows

    def peek(self) -> dict[tuple[int, str], tuple[str, datetime | None, datetime | None, int]] | None:
        """The rows as last read if they are fresh, else None: never reads."""
        with self._lock:
            return self._rows if time.monotonic() - self._read_at < self.TTL else None

    def clear(self) -> None:
        with self._lock:
            self._read_at = -1e9


open_models = _OpenModels()


def model_call_known_allowed(provider: str, model: str, *, board_id: int) -> bool:
    """True when the process's fresh snapshot of open breakers (``open_models``)
    shows this model's breaker on the board closed, without reading anything;
    False means "ask ``model_call_allowed``" (stale snapshot, or a breaker open
    or half-open). For a caller that must not touch the database (an event loop)."""
    rows = open_models.peek()
    return rows is not None and (board_id, model_key(provider, model)) not in rows


def model_call_allowed(provider: str, model: str, *, board_id: int) -> bool:
    """May the cascade call this model now, for a task of this board? Yes when
    the model's breaker on the board is closed; no while it is open and cooling
    down; after the cool-down, yes for the one call that takes the half-open probe
    (an atomic UPDATE decides which)."""
    row = open_models.get().get((board_id, model_key(provider, model)))
    if row is None:
        return True
    state, opened_at, probe_started_at, pk = row
    now = timezone.now()
    cooldown = model_breaker_cooldown()
    since = probe_started_at if state == State.HALF_OPEN else opened_at
    if since is None or now - since < cooldown:
        return False
    taken = (
        CircuitBreaker.objects.filter(pk=pk, state=state)
        .filter(Q(probe_started_at__isnull=True) | Q(probe_started_at__lte=now - cooldown))
        .update(state=State.HALF_OPEN, probe_started_at=now, updated_at=now)
    )
    open_models.clear()
    if taken:
        return True
    # Another call took the probe, or the breaker closed after it was read (an
    # answer elsewhere): read it afresh rather than refuse a model that is back.
    return (board_id, model_key(provider, model)) not in open_models.get()
