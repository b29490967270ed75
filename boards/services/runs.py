"""A run and its outcome: a worker begins the runs it was sent (if their claims
are still current), and each ends completed (its output inspected, then to Done
or, as a defect, to Review), failed (back for another attempt, or failed for
good), or deferred (handed back untried when its models are out of service).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from django.db import transaction
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import jidoka, muda_rollups
from andon.inspection import Verdict
from boards import broadcast, metrics
from boards.agents import CallRecord, Output
from boards.agents.response_cache import settle_cache
from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent
from boards.services.enqueue import shadow_runs_enqueue
from boards.services.ledger import (
    budgets_charge,
    ledger_rows,
    ledger_save,
    stale_calls_record,
    task_calls_record,
    task_totals_add,
)
from boards.services.primitives import (
    PLACED_FIELDS,
    board_lock,
    column_required,
    task_event,
    task_place,
    task_return_or_fail,
    task_rows_update,
    tasks_worker_set,
)
from boards.services.pull import board_changed_on_commit
from experiments import line as experiment_line
from experiments import patterns
from experiments.models import ExperimentSample
from kaizen_web.prepared import Prepared, fields
from kaizen_web.rows import rows_insert

logger = logging.getLogger(__name__)

Role = Column.Role
Status = Task.Status


def task_run_begin(*, task_id: int, lease_token: uuid.UUID | str, worker: str = "") -> Task | None:
    """The claimed task with its agent (one query), or None when the claim is no
    longer current (the lease expired and the task went back, or it finished).
    ``worker``: the worker process beginning the run (boards.workers), recorded
    on the task, so that its heartbeat stopping hands the task back."""
    current = Task.objects.filter(pk=task_id, lease_token=lease_token, status=Status.RUNNING)
    if worker and not current.update(worker=worker):
        return None
    return current.select_related("agent").filter(agent__isnull=False).first()


def tasks_run_begin(*, claims: Iterable[tuple[int, uuid.UUID | str]], worker: str = "") -> dict[int, Task]:
    """task_run_begin for a batch of claims (a query, and an UPDATE with ``worker``):
    the tasks whose claim is still current, by id (a stale claim is simply absent)."""
    wanted = {int(task_id): str(token) for task_id, token in claims}
    if not wanted:
        return {}
    if worker:
        tasks_worker_set(wanted, worker=worker)
    tasks = _RUNNING_TASKS.instances(Task, ids=list(wanted))
    current = [task for task in tasks if str(task.lease_token) == wanted[task.pk]]
    _share_agents(current)
    return {task.pk: task for task in current}


def _share_agents(tasks: list[Task]) -> None:
    """Give a batch of tasks their agents, read once per agent (one query): a batch
    is usually one agent's, and an agent row (its cascade, checks and other JSON
    fields decoded) per task was a good part of a busy worker's CPU."""
    ids = {task.agent_id for task in tasks if task.agent_id}
    if not ids:
        return
    agents = {agent.pk: agent for agent in _AGENTS.instances(Agent, ids=list(ids))}
    for task in tasks:
        if task.agent_id in agents:
            task.agent = agents[task.agent_id]


def _current_run(task_id: int, lease_token: uuid.UUID | str) -> Task | None:
    task = (
        Task.objects.select_for_update(of=("self",), no_key=True)
        .select_related("column", "agent")
        .filter(pk=task_id)
        .first()
    )
    if task is None or task.status != Status.RUNNING or str(task.lease_token) != str(lease_token):
        # A late result from a run whose lease was reaped: the task belongs to
        # another run now (or is finished), so this one must not touch it.
        logger.info("ignoring stale result for task %s", task_id)
        return None
    return task


def task_complete(
    *,
    task_id: int,
    lease_token: uuid.UUID | str,
    output: Output | str,
    confidence: float | None = None,
    attempt: int | None = None,
) -> bool:
    """Record a run's output and its ledger rows, inspect the output, and move the
    task on: to Done when it passes, to Review with an escalation when it is a
    defect. ``output`` is the agent's Output (a plain string is an output with
    ``confidence`` and no ledger). False if the run was stale (its model calls
    are still recorded: they were made, and cost what they cost); ColumnMissing
    (nothing written) if the board has no Done column."""
    if isinstance(output, str):
        output = Output(text=output, confidence=confidence)
    result = RunResult(task_id=task_id, lease_token=lease_token, output=output, attempt=attempt)
    return tasks_complete(results=[result])[0]


@dataclass(frozen=True)
class RunResult:
    """A finished run, for tasks_complete."""

    task_id: int
    lease_token: uuid.UUID | str
    output: Output
    attempt: int | None = None


def tasks_complete(*, results: list[RunResult]) -> list[bool]:
    """task_complete for many runs in one transaction: a worker gathers the runs
    that finish within a few milliseconds of each other (boards.agents.runtime.Completer),
    so a busy line pays for one transaction, a few statements and one pull per
    batch rather than per task. Returns, for each result, whether it completed
    (False: stale, its calls still recorded). All or nothing: ColumnMissing if a
    task's board has no Done column, and the caller completes them one by one.

    Every output is inspected (andon.jidoka): a pass goes to Done; a defect goes
    to Review with an escalation for a reviewer, or to Done marked as a defect
    when the board has no Review column. Defects can stop an agent's line (a
    spike), and each run counts for its agent's and its models' circuit breakers."""
    with transaction.atomic():
        tasks, board_columns = _runs_lock(results)
        now = timezone.now()
        outcomes: list[bool] = []
        finished: list[jidoka.FinishedRun] = []
        rows: list[ModelCall] = []
        events: list[TaskEvent] = []
        stale: list[RunResult] = []
        # Per board: each board's model breakers count its own calls.
        calls: dict[int, list[CallRecord]] = {}
        changed: dict[int, set[int]] = {}
        for result in results:
            task = tasks.get(result.task_id)
            if task is not None:
                calls.setdefault(task.board_id, []).extend(result.output.calls)
            if (
                task is None
                or task.status != Status.RUNNING
                or str(task.lease_token) != str(result.lease_token)
            ):
                stale.append(result)  # its calls are recorded below, after the breakers
                outcomes.append(False)
                continue
            columns = board_columns.get(task.board_id, {})
            done = columns.get(Role.DONE) or column_required(task.board_id, Role.DONE)
            verdict, tokens_out = jidoka.inspect_run(task, result.output)
            review = columns.get(Role.REVIEW)
            target = done if verdict.passed or review is None else review
            rows += ledger_rows(task, result.output.calls, attempt=task.attempts)
            changed.setdefault(task.board_id, set()).update({task.column_id, target.pk})
            events.append(_finish(task, target, result.output, verdict))
            task.updated_at = now  # not saved through save(): auto_now does not run
            finished.append(
                jidoka.FinishedRun(
                    task=task,
                    output=result.output,
                    verdict=verdict,
                    tokens_out=tokens_out,
                    escalate=target is review,
                )
            )
            outcomes.append(True)
        ledger_save(rows)
        task_rows_update([run.task for run in finished], _COMPLETED_FIELDS)
        rows_insert(TaskEvent, events)
        _samples_record((run.task, run.verdict.passed) for run in finished)
        _shadows_enqueue(run.task for run in finished)
        andon = jidoka.finished_runs_handle(finished, calls=calls)
        # Locks in one order, as every writer takes them: the breakers (just
        # above), then the Muda hour rows (stale runs' calls, then the runs'
        # sums), then the budgets' periods (last). A stale run's calls recorded
        # before the breakers deadlocked with a failed attempt in another worker.
        stale_rows: list[ModelCall] = []
        for result in stale:
            stale_rows += stale_calls_record(
                result.task_id, result.output.calls, attempt=result.attempt, charge=False
            )
        # The knowledge base's rows of the outcomes known now (embedded later, off this path).
        patterns.runs_record(finished)
        verdicts = [(run.task.board_id, run.task.agent_id, run.verdict.passed) for run in finished]
        transaction.on_commit(partial(metrics.inspections_observe, verdicts))
        # The response cache takes a passed output's fresh answers, and drops the
        # entry a defect was served from, only once its inspection has committed.
        settles = [(run.output, run.verdict.passed) for run in finished if run.output.settles_cache]
        if settles:
            transaction.on_commit(partial(settle_cache, settles))
        # The Muda rollups, late in the transaction (their hour rows are locked
        # until the commit): the finished items, then the runs' sums.
        muda_rollups.finishes_refresh(tasks=[run.task for run in finished if run.task.status == Status.DONE])
        muda_rollups.runs_recorded(
            calls=rows, inspections=andon.inspection_rows, escalations=andon.escalation_rows
        )
        # Last, once for the batch: it locks the budgets' period rows (in one
        # order) until the commit.
        budgets_charge(rows + stale_rows)
        for board_id, column_ids in changed.items():
            board_changed_on_commit(board_id, column_ids, pull=True)
        _after_andon_commit(escalations=andon.escalations, agents=andon.agents, stops=andon.stops)
    return outcomes


def _runs_lock(results: list[RunResult]) -> tuple[dict[int, Task], dict[int, dict[str, Column]]]:
    """The tasks of these runs, locked, with their agents; and their boards' Done
    and Review columns, by board and role."""
    ids = sorted({r.task_id for r in results})
    if not ids:
        return {}, {}
    # Rows locked in id order, as two batches in two workers could otherwise deadlock.
    tasks = {task.pk: task for task in _TASKS_LOCK.instances(Task, ids=ids)}
    _share_agents(list(tasks.values()))
    board_ids = {task.board_id for task in tasks.values()}
    board_columns: dict[int, dict[str, Column]] = {}
    if not board_ids:
        return tasks, board_columns
    for column in _FINISH_COLUMNS.instances(Column, board_ids=list(board_ids)):
        board_columns.setdefault(column.board_id, {})[column.role] = column
    return tasks, board_columns


# The reads of every batch of runs begun and finished: compiled once per length
# of the batch, rounded up to a power of two (kaizen_web.prepared).
_RUNNING_TASKS = Prepared(
    lambda *, ids: (
        Task.objects.filter(pk__in=ids, status=Status.RUNNING, agent__isnull=False)
        .order_by()
        .values_list(*fields(Task))
    ),
    ids=list,
)
_AGENTS = Prepared(
    lambda *, ids: Agent.objects.filter(pk__in=ids).order_by().values_list(*fields(Agent)), ids=list
)
_TASKS_LOCK = Prepared(
    lambda *, ids: (
        Task.objects.select_for_update(of=("self",), no_key=True)
        .filter(pk__in=ids)
        .order_by("pk")
        .values_list(*fields(Task))
    ),
    ids=list,
)
_FINISH_COLUMNS = Prepared(
    lambda *, board_ids: (
        Column.objects.filter(board_id__in=board_ids, role__in=(Role.DONE, Role.REVIEW))
        .order_by()
        .values_list(*fields(Column))
    ),
    board_ids=list,
)


def _samples_record(outcomes: Iterable[tuple[Task, bool]]) -> None:
    """Each finished task's outcome (passed or not), for its experiment if it has one."""
    samples = experiment_line.sample_rows(outcomes)
    if samples:
        # A task completes once per stage for its experiment: a retry after a
        # rejection keeps the first outcome.
        ExperimentSample.objects.bulk_create(samples, ignore_conflicts=True)


def _shadows_enqueue(tasks: Iterable[Task]) -> None:
    """The candidate of a running shadow (experiments.genchi) also runs on the
    tasks it mirrors, after this commit, on the workers: never shipped."""
    picks = experiment_line.shadow_picks(tasks)
    if picks:
        transaction.on_commit(partial(shadow_runs_enqueue, picks))


def _after_andon_commit(
    *, escalations: Iterable[int] = (), agents: Iterable[int] = (), stops: bool = False
) -> None:
    """After commit: new escalations to the andon inbox; boards of agents whose line
    stopped or whose breaker changed get their banner and agents strip refreshed."""
    escalations, agents = list(escalations), set(agents)
    if escalations:
        transaction.on_commit(lambda: andon_broadcast.escalations_opened(escalations))
    if stops:
        transaction.on_commit(andon_broadcast.line_stops_changed)
    if agents:
        for board_id in Board.objects.filter(agents__in=agents).values_list("pk", flat=True).distinct():
            transaction.on_commit(partial(broadcast.columns_changed, board_id, []))


def _finish(task: Task, target: Column, output: Output, verdict: Verdict | None = None) -> TaskEvent:
    """Put a run's output on its task and the task in ``target`` (Done, or Review
    for a defect), adding the calls to its totals (nothing saved); returns the
    completion's event (not saved either)."""
    from_column_id = task.column_id
    task_totals_add(task, output.calls)
    task.output = output.text
    task.confidence = output.confidence
    task.confidence_source = output.confidence_source
    task.accepted_tier = output.tier
    task.reused_from_id = output.reused_from
    task.last_error = ""
    task_place(task, target)
    note = _outcome_note(output)
    kind = TaskEvent.Kind.COMPLETED
    if verdict is not None and not verdict.passed:
        if target.role == Role.REVIEW:
            kind = TaskEvent.Kind.ESCALATED
            note = "; ".join(n for n in (note, f"to Review: {verdict.summary()}") if n)
        else:
            note = "; ".join(
                n for n in (note, f"{verdict.summary()} (no Review column, so not escalated)") if n
            )
    else:
        # Done: a reviewer's feedback on an earlier output has been acted on.
        task.review_feedback = ""
    event = task_event(
        task,
        kind,
        to_column=target,
        from_status=Status.RUNNING,
        to_status=task.status,
        agent=task.agent,
        note=note,
    )
    event.from_column_id = from_column_id
    return event


# What completing a task changes (the rest of the row stays as the claim left it).
_COMPLETED_FIELDS = [
    "output",
    "review_feedback",
    "confidence",
    "confidence_source",
    "accepted_tier",
    "reused_from",
    "last_error",
    *PLACED_FIELDS,
    "cost",
    "tokens_in",
    "tokens_out",
    "model_calls",
    "cache_hits",
    "updated_at",
]


def _outcome_note(output: Output) -> str:
    if output.reused_from is not None:
        return f"reused the result of task {output.reused_from}: no model called"
    if output.tier is None:
        return ""
    models = [c.model for c in output.calls if c.source != ModelCall.Source.REUSE]
    tried = f" after {' → '.join(models[:-1])}" if len(models) > 1 else ""
    return f"tier {output.tier} ({models[-1] if models else '?'}) accepted{tried}"


def task_attempt_fail(
    *,
    task_id: int,
    lease_token: uuid.UUID | str,
    error: str,
    calls: tuple[CallRecord, ...] = (),
    attempt: int | None = None,
) -> bool:
    """A run failed (the provider erred): retry, or give up after max attempts.
    The calls it made go to the ledger either way."""
    with transaction.atomic():
        board_id = Task.objects.filter(pk=task_id).values_list("board_id", flat=True).first()
        if board_id is None:
            return False
        # The task may go back to Ready, whose hard limit is counted: under the
        # board lock, like every other move into a limited column, and taken
        # before the task's row lock, in the same order as task_move.
        board_lock(board_id)
        task = _current_run(task_id, lease_token)
        if task is None:
            stale_calls_record(task_id, calls, attempt=attempt)
            return False
        # The breakers first, then the calls (their Muda hour rows, then the
        # budgets' period rows): the order tasks_complete locks them in. The other
        # way round, a failed attempt and a batch completing in another worker
        # process each held what the other waited for (PostgreSQL: deadlock).
        breaker_agents = (
            jidoka.record_agent_outcomes(failed={task.agent_id: error}) if task.agent_id else set()
        )
        jidoka.record_model_calls(calls, board_id=task.board_id)
        task_calls_record(task, calls, attempt=task.attempts)
        changed = task_return_or_fail(task, kind=TaskEvent.Kind.ATTEMPT_FAILED, reason=error)
        if task.status == Status.FAILED:
            # Out of attempts: for its experiment, a task that never succeeded.
            _samples_record([(task, False)])
        board_changed_on_commit(task.board_id, changed, pull=True)
        _after_andon_commit(agents=breaker_agents)
    return True


def task_run_defer(*, task_id: int, lease_token: uuid.UUID | str, reason: str) -> bool:
    """A run that could not start its work (every model its agent calls is out of
    service behind an open circuit breaker) hands its task back: to Ready (or the
    Backlog) without spending an attempt, and without counting against the agent's
    breaker: nothing was tried. False if the run was stale."""
    with transaction.atomic():
        board_id = Task.objects.filter(pk=task_id).values_list("board_id", flat=True).first()
        if board_id is None:
            return False
        board_lock(board_id)
        task = _current_run(task_id, lease_token)
        if task is None:
            return False
        task.attempts = max(task.attempts - 1, 0)
        changed = task_return_or_fail(
            task,
            kind=TaskEvent.Kind.DEFERRED,
            reason=reason,
            note=f"not run, the attempt is not counted: {reason}",
        )
        board_changed_on_commit(task.board_id, changed, pull=False)
    return True
