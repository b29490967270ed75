"""Every change to the line goes through these functions.

Each one validates, writes inside a transaction, records a TaskEvent, and
schedules the live update (and the next pull) for after commit. Views, the API,
consumers, admin actions and Celery tasks only call them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import jidoka
from andon.inspection import Verdict
from andon.models import Escalation, Inspection
from boards import broadcast, demo_feed, pull_rules, workers
from boards.agent_config import cascade_json, parse_cascade, parse_parameters, parse_variables
from boards.agents import CallRecord, Output
from boards.models import Agent, ApiToken, Board, Column, ModelCall, Task, TaskEvent
from boards.selectors import agents_running_get, column_neighbour_get
from boards.task_files import TaskRow
from boards.text import MAX_INPUT, MAX_PRIORITY, MAX_TITLE, MIN_PRIORITY, input_key, task_fields_errors
from experiments import line as experiment_line
from experiments.models import AuditEntry, ExperimentSample, PromptVersion

logger = logging.getLogger(__name__)

column_neighbour = column_neighbour_get  # a selector now; the old name, for its callers

Role = Column.Role
Status = Task.Status

STATUS_FOR_ROLE = {
    Role.BACKLOG: Status.BACKLOG,
    Role.READY: Status.READY,
    Role.IN_PROGRESS: Status.RUNNING,
    Role.REVIEW: Status.REVIEW,
    Role.DONE: Status.DONE,
}

# Where a person may drag a card. In progress belongs to the agents: a task enters
# it only when an agent pulls it, and leaves it when the run ends or its lease runs out.
# A task in Review with an open escalation leaves it only by a reviewer's decision
# in the andon inbox (EscalationOpen); these moves are for one that has none.
MANUAL_MOVES: dict[str, set[str]] = {
    Role.BACKLOG: {Role.READY, Role.DONE},
    Role.READY: {Role.BACKLOG, Role.DONE},
    Role.REVIEW: {Role.READY, Role.DONE, Role.BACKLOG},
    Role.DONE: {Role.READY, Role.BACKLOG},
    Role.IN_PROGRESS: set(),
}

POSITION_GAP = 1024


class WipLimitReached(ValidationError):
    """A hard WIP limit refused a task."""


class MoveNotAllowed(ValidationError):
    """The board's rules do not allow this move."""


class EscalationOpen(MoveNotAllowed):
    """The task waits in Review on a reviewer's decision: only the andon decisions
    (approve, edit and approve, reject) take it out. ``escalation_url`` is where
    that decision is made, for a caller that can show a link."""

    def __init__(self, task: Task, escalation: Escalation) -> None:
        self.escalation = escalation
        self.escalation_url = escalation.get_absolute_url()
        super().__init__(
            f"“{task.title}” waits in Review for a reviewer's decision: only approving, editing or "
            f"rejecting it in the andon inbox takes it out of Review ({self.escalation_url})."
        )


class ColumnMissing(ValidationError):
    """The board lacks a column the line needs (a Done column to finish tasks in)."""


# --- helpers -----------------------------------------------------------------


def _event(
    task: Task,
    kind: str,
    *,
    from_column: Column | None = None,
    to_column: Column | None = None,
    from_status: str = "",
    to_status: str = "",
    user: AbstractBaseUser | None = None,
    agent: Agent | None = None,
    note: str = "",
) -> TaskEvent:
    if user is not None:
        actor = TaskEvent.Actor.USER
    elif agent is not None:
        actor = TaskEvent.Actor.AGENT
    else:
        actor = TaskEvent.Actor.SYSTEM
    return TaskEvent(
        task=task,
        board_id=task.board_id,
        kind=kind,
        from_column=from_column,
        to_column=to_column,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        agent=agent,
        user=user,
        note=note,
    )


def _after_commit(board_id: int, column_ids: Iterable[int], *, pull: bool) -> None:
    """Send the changed columns to browsers and, if capacity may have changed,
    pull, once the transaction has committed."""
    ids = set(column_ids)
    transaction.on_commit(lambda: broadcast.columns_changed(board_id, ids))
    if pull:
        transaction.on_commit(lambda: request_pull(board_id=board_id))


class _PullCoalescer:
    """Within one process, concurrent requests to pull the same board become one
    pull plus at most one more. Every commit that frees capacity asks for a pull;
    under load (a hundred worker threads finishing runs) most of those pulls would
    queue on the board lock only to find nothing left to claim. A thread that
    finds a pull of its board already running marks it and returns at once; the
    running pull repeats once for all the marks, so no request is lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._again: set[int] = set()

    def pull(self, board_id: int) -> None:
        with self._lock:
            if board_id in self._running:
                self._again.add(board_id)
                return
            self._running.add(board_id)
        try:
            while True:
                board_pull(board_id=board_id)
                with self._lock:
                    if board_id not in self._again:
                        return
                    self._again.discard(board_id)
        finally:
            with self._lock:
                self._running.discard(board_id)
                self._again.discard(board_id)


_pulls = _PullCoalescer()


class _PullFlag:
    """A Redis key that says a pull of a board has been asked of the workers and
    has not started yet, so a burst of intake sends one message, not one per task.
    The worker clears it just before pulling, so a change committed after that
    point sends a new one; it expires on its own if the message is lost."""

    TTL_MS = 2000
    _client = None

    def __init__(self, board_id: int) -> None:
        self.key = f"kaizen:pull-requested:{board_id}"

    @classmethod
    def _redis(cls):
        if cls._client is None:
            import redis

            cls._client = redis.Redis.from_url(settings.REDIS_URL)
        return cls._client

    def set(self, *, nx: bool) -> bool:
        return bool(self._redis().set(self.key, b"1", nx=nx, px=self.TTL_MS))

    def clear(self) -> None:
        self._redis().delete(self.key)


def _pull_flag(board_id: int) -> _PullFlag:
    return _PullFlag(board_id)


def pull_requested_run(*, board_id: int) -> None:
    """A worker answering a pull asked by another process (boards.tasks.pull_board).
    A worker that is stopping leaves it: it would claim runs it is not going to
    run. The other workers pull at their next change or periodic pull, and a
    worker that starts pulls every board (boards.runtime.worker_ready)."""
    _pull_flag(board_id).clear()
    if _stopping:
        return
    _pulls.pull(board_id)


# Set in Celery worker processes (boards.tasks connects it to worker_init), and
# the other way when the worker stops (boards.runtime.worker_handover).
_in_worker = False
_stopping = False


def mark_worker_process() -> None:
    global _in_worker
    _in_worker = True


def mark_worker_stopping() -> None:
    """This worker process hands its work back and stops: from now on it pulls
    nothing and records no runs; the pulls its last changes ask for go to the
    other workers (see request_pull)."""
    global _in_worker, _stopping
    _in_worker = False
    _stopping = True


def in_worker_process() -> bool:
    return _in_worker


def request_pull(*, board_id: int) -> None:
    """Pull for a board, after commit so the capacity the trigger freed is visible.

    A worker pulls at once, in-process, where its finished runs' pulls coalesce.
    Anywhere else (a web request, a command) the pull is handed to the workers:
    they are where the claimed runs go anyway, and the request does not queue on
    the board lock behind every finishing run."""
    try:
        if _in_worker:
            _pulls.pull(board_id)
        elif _pull_flag(board_id).set(nx=True):
            from boards.tasks import pull_board

            pull_board.delay(board_id)
    except Exception:
        # The periodic pull catches up; a failed trigger must not fail the
        # change that caused it, which has already committed.
        logger.exception("pull for board %s failed", board_id)


def _required_column(board_id: int, role: str, columns: dict[str, Column] | None = None) -> Column:
    """The board's column with ``role`` (from ``columns`` when the caller has read
    them already), or a ColumnMissing that names the board and the role."""
    if columns is None:
        # At most one column per role (a unique constraint); no ordering, which
        # would join the board for Column's default order.
        column = Column.objects.filter(board_id=board_id, role=role).order_by().first()
    else:
        column = columns.get(role)
    if column is None:
        name = Board.objects.filter(pk=board_id).values_list("name", flat=True).first()
        label = Role(role).label
        raise ColumnMissing(
            f"Board {name!r} has no {label} column: add a column with the role "
            f"{label} to the board (in the admin or its config file)."
        )
    return column


def _intake_column(board: Board) -> Column:
    columns = {c.role: c for c in board.columns.filter(role__in=[Role.BACKLOG, Role.READY])}
    column = columns.get(Role.BACKLOG) or columns.get(Role.READY)
    if column is None:
        raise ValidationError(f"Board {board.name!r} has neither a Backlog nor a Ready column.")
    return column


def _count(column: Column) -> int:
    return Task.objects.filter(column=column).count()


def _check_wip(column: Column, *, adding: int = 1) -> str:
    """Refuse a task a hard limit has no room for; return a note when a soft
    limit is exceeded."""
    if column.wip_limit is None:
        return ""
    count = _count(column)
    if count + adding <= column.wip_limit:
        return ""
    if column.hard_limit:
        raise WipLimitReached(
            f"{column.name} is at its hard WIP limit ({count}/{column.wip_limit}): "
            "finish or move a task out of it first."
        )
    return f"{column.name} is over its soft WIP limit ({count + adding}/{column.wip_limit})."


def _slot_before(column: Column, before: Task | None, *, exclude_pk: int | None = None) -> int:
    """A position that puts a task just before ``before`` (or last) in ``column``."""
    others = Task.objects.filter(column=column)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    if before is None:
        last = others.aggregate(m=Max("position"))["m"]
        return (last or 0) + POSITION_GAP
    previous = others.filter(position__lt=before.position).aggregate(m=Max("position"))["m"]
    low = previous if previous is not None else before.position - 2 * POSITION_GAP
    if before.position - low >= 2:
        return (low + before.position) // 2
    # No room left between the two: spread the column out again, then retry.
    _renumber(column)
    before.refresh_from_db(fields=["position"])
    return _slot_before(column, before, exclude_pk=exclude_pk)


def _renumber(column: Column) -> None:
    tasks = list(Task.objects.filter(column=column).order_by("position", "created_at", "pk"))
    for index, task in enumerate(tasks, start=1):
        task.position = index * POSITION_GAP
    Task.objects.bulk_update(tasks, ["position"], batch_size=500)


def _slot_by_priority(column: Column, priority: int) -> int:
    """Where a task entering ``column`` goes: after every task of its priority or
    higher, before the first of lower priority. People may reorder afterwards."""
    first_lower = Task.objects.filter(column=column, priority__lt=priority).order_by("position").first()
    return _slot_before(column, first_lower)


def _place(task: Task, column: Column, *, position: int | None = None) -> None:
    """Put ``task`` in ``column`` (not saved). Keeps status and timestamps in step."""
    task.column = column
    task.status = STATUS_FOR_ROLE[column.role]
    if position is not None:
        task.position = position
    elif column.role == Role.DONE:
        # Done shows the newest first.
        task.position = -int(timezone.now().timestamp() * 1000)
    else:
        task.position = _slot_by_priority(column, task.priority)
    if column.role == Role.DONE:
        task.finished_at = timezone.now()
    elif column.role in (Role.BACKLOG, Role.READY):
        task.finished_at = None
    if column.role != Role.IN_PROGRESS:
        task.lease_token = None
        task.lease_expires_at = None
        task.worker = ""


def _lock_board(board_id: int) -> Board:
    # Every change that adds to a WIP-limited column takes this lock first, so
    # the count it checks cannot change under it, whatever the number of workers.
    # FOR NO KEY UPDATE, not FOR UPDATE: inserting a TaskEvent or saving a Task
    # takes a KEY SHARE lock on its board through the foreign key, which FOR
    # UPDATE would block. A run finishing (holding its task row, inserting its
    # event) would then wait on the board while a board-lock holder waits on that
    # task row: a deadlock. The two lock modes still exclude each other.
    return Board.objects.select_for_update(no_key=True).get(pk=board_id)


# --- intake --------------------------------------------------------------------


def task_create(
    *,
    board: Board,
    title: str,
    input: str = "",
    capability: str = "",
    priority: int = 0,
    allow_reuse: bool = True,
    user: AbstractBaseUser | None = None,
) -> Task:
    title = (title or "").strip()
    capability = (capability or "").strip()
    offered = sorted({c for a in board.agents.all() for c in a.offered_capabilities}) if capability else []
    errors = task_fields_errors(
        title=title, input=input, capability=capability, priority=priority, offered=offered
    )
    if errors:
        raise ValidationError(errors)

    with transaction.atomic():
        column = _intake_column(board)
        if column.wip_limit is not None:
            # Only a limited intake needs its count held still while we add to it.
            _lock_board(board.pk)
        note = _check_wip(column)
        task = Task(
            board=board,
            title=title,
            input=input,
            capability=capability,
            priority=priority,
            allow_reuse=allow_reuse,
            input_key=input_key(input),
        )
        _place(task, column)
        task.save()
        _event(
            task, TaskEvent.Kind.CREATED, to_column=column, to_status=task.status, user=user, note=note
        ).save()
        _after_commit(board.pk, [column.pk], pull=True)
    return task


# --- the pull ------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    task_id: int
    lease_token: uuid.UUID


def board_pull(*, board_id: int) -> list[Claim]:
    """Refill Ready from the Backlog, then let agents claim Ready tasks up to the
    free WIP of In progress and of each agent. Runs in one transaction under the
    board lock; the claimed runs are enqueued after commit."""
    # Most pulls in a busy worker follow a finished run and find nothing waiting:
    # a plain read first spares them the board and agent locks. A task that
    # arrives after this read asks for its own pull once it commits.
    waiting = Task.objects.filter(
        board_id=board_id, status__in=(Status.BACKLOG, Status.READY), blocked_at__isnull=True
    )
    if not waiting.exists():
        return []
    with transaction.atomic():
        board = _lock_board(board_id)
        if board.paused:
            return []
        columns = {c.role: c for c in board.columns.all()}
        changed: set[int] = set()
        _replenish(board, columns, changed)
        claims = _claim(board, columns, changed)
        if changed:
            transaction.on_commit(lambda: broadcast.columns_changed(board_id, changed))
        if claims:
            transaction.on_commit(lambda: _enqueue_runs(claims))
    return claims


def _replenish(board: Board, columns: dict[str, Column], changed: set[int]) -> None:
    backlog, ready = columns.get(Role.BACKLOG), columns.get(Role.READY)
    if backlog is None or ready is None:
        return
    if ready.wip_limit is None:
        room = None
    else:
        room = ready.wip_limit - _count(ready)
        if room <= 0:
            return
    candidates = Task.objects.filter(column=backlog, blocked_at__isnull=True).order_by(
        "-priority", "position", "created_at"
    )
    if room is not None:
        candidates = candidates[:room]
    events = []
    for task in candidates.select_for_update(skip_locked=True, of=("self",), no_key=True):
        _place(task, ready)
        task.save(
            update_fields=[
                "column",
                "status",
                "position",
                "finished_at",
                "lease_token",
                "lease_expires_at",
                "updated_at",
            ]
        )
        events.append(
            _event(
                task,
                TaskEvent.Kind.MOVED,
                from_column=backlog,
                to_column=ready,
                from_status=Status.BACKLOG,
                to_status=Status.READY,
                note="pulled into Ready",
            )
        )
    if events:
        TaskEvent.objects.bulk_create(events)
        changed.update({backlog.pk, ready.pk})


def _claim(board: Board, columns: dict[str, Column], changed: set[int]) -> list[Claim]:
    ready, doing = columns.get(Role.READY), columns.get(Role.IN_PROGRESS)
    if ready is None or doing is None:
        return []
    if Role.DONE not in columns:
        # A run could not finish anywhere: its output would be lost and its
        # attempts spent. The tasks wait in Ready until the board has a Done column.
        logger.warning("board %s has no Done column: its agents pull nothing", board.pk)
        return []
    # Agent rows are locked too (in pk order, after the board: no deadlocks), as an
    # agent serving several boards has one concurrency across all of them.
    review = columns.get(Role.REVIEW)
    if pull_rules.review_limit_stops_pull(review) and pull_rules.review_full(review, _count(review)):
        # Jidoka: Review is at its hard limit, so the line waits for reviewers
        # rather than pile up more unchecked work. (A soft limit is a signal:
        # the board says so, and the pull goes on.)
        return []
    agents = list(
        board.agents.filter(paused=False).order_by("pk").select_for_update(of=("self",), no_key=True)
    )
    if not agents:
        return []
    board_stopped, stopped_agents = jidoka.active_stops(board_id=board.pk, agent_ids=[a.pk for a in agents])
    if board_stopped:
        return []
    agents = [a for a in agents if a.pk not in stopped_agents]
    if not agents:
        return []
    # Probes are marked taken only for agents that claim one (below): a pull that
    # claims nothing must not spend an agent's probe for a whole cool-down.
    gate = jidoka.pull_gate(agents, board_id=board.pk, take_probes=False)
    agents = [a for a in agents if a.pk not in gate.blocked]
    if not agents:
        return []
    in_doing, running = agents_running_get(doing=doing, agents=agents)
    free_wip = pull_rules.free_wip(doing, in_doing)
    if free_wip is not None and free_wip <= 0:
        return []
    free_agent = pull_rules.agent_room(agents, running=running, gate=gate)
    agents = [a for a in agents if free_agent[a.pk] > 0]
    if not agents:
        return []
    total_free = sum(free_agent[a.pk] for a in agents)
    want = total_free if free_wip is None else min(total_free, free_wip)
    offered = {c for a in agents for c in a.offered_capabilities}
    experiments = experiment_line.running_experiments(agents)
    candidates = (
        Task.objects.filter(column=ready, blocked_at__isnull=True)
        .filter(Q(capability="") | Q(capability__in=offered))
        .order_by(*gate.candidate_order())
        .select_for_update(skip_locked=True, of=("self",), no_key=True)
    )
    now = timezone.now()
    expires = now + timedelta(seconds=settings.KAIZEN_LEASE_SECONDS)
    claimed: list[Task] = []
    # A few more rows than wanted are read: some may ask for a capability whose
    # agents are all busy.
    events = []
    for task in candidates[: want + 20]:
        agent = pull_rules.pick_agent(task.capability, agents, free_agent)
        if agent is None:
            continue
        free_agent[agent.pk] -= 1
        task.column = doing
        task.status = Status.RUNNING
        task.agent = agent
        # The active version, or the arm's of the agent's experiment.
        experiment_line.assign(task, agent, experiments)
        task.attempts += 1
        task.lease_token = uuid.uuid4()
        task.lease_expires_at = expires
        task.started_at = now
        # bulk_update does not run auto_now: set it, or the claim looks stale.
        task.updated_at = now
        task.position = int(now.timestamp() * 1000) + len(claimed)
        claimed.append(task)
        events.append(
            _event(
                task,
                TaskEvent.Kind.CLAIMED,
                from_column=ready,
                to_column=doing,
                from_status=Status.READY,
                to_status=Status.RUNNING,
                agent=agent,
                note=f"attempt {task.attempts}",
            )
        )
        if len(claimed) >= want:
            break
    if not claimed:
        return []
    jidoka.probes_taken(gate.probes & {task.agent_id for task in claimed})
    _update_rows(
        claimed,
        [
            "column",
            "status",
            "agent",
            "prompt_version",
            "experiment",
            "arm",
            "attempts",
            "lease_token",
            "lease_expires_at",
            "started_at",
            "position",
            "updated_at",
        ],
    )
    TaskEvent.objects.bulk_create(events)
    changed.update({ready.pk, doing.pk})
    return [Claim(t.pk, t.lease_token) for t in claimed]


def _update_rows(tasks: list[Task], field_names: list[str]) -> None:
    """Write ``field_names`` of each task: one UPDATE statement run for every row
    (executemany). Django's bulk_update builds a CASE per row and field, which
    cost milliseconds of CPU per row while the board lock was held."""
    if not tasks:
        return
    fields = [Task._meta.get_field(name) for name in field_names]
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(Task._meta.db_table),
        ", ".join(f"{quote(f.column)} = %s" for f in fields),
        quote(Task._meta.pk.column),
    )
    rows = [
        [f.get_db_prep_save(getattr(task, f.attname), connection) for f in fields] + [task.pk]
        for task in tasks
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _enqueue_runs(claims: list[Claim]) -> None:
    """One Celery message per KAIZEN_RUN_BATCH claimed runs, which the worker that
    takes it runs side by side (boards.runtime.run_batch): a message costs the
    worker's consumer more CPU than a run's own bookkeeping, so a pull that
    claims a thousand tasks sends twenty messages, not a thousand."""
    from boards.tasks import run_task, run_tasks

    size = settings.KAIZEN_RUN_BATCH
    for first in range(0, len(claims), size):
        chunk = claims[first : first + size]
        if len(chunk) == 1:
            run_task.delay(chunk[0].task_id, str(chunk[0].lease_token))
        else:
            run_tasks.delay([[claim.task_id, str(claim.lease_token)] for claim in chunk])


# --- a run's outcome -----------------------------------------------------------


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
    if worker:
        # Lease tokens are unique, so matching ids and tokens as two sets matches the pairs.
        Task.objects.filter(pk__in=wanted, lease_token__in=wanted.values(), status=Status.RUNNING).update(
            worker=worker
        )
    tasks = Task.objects.filter(pk__in=wanted, status=Status.RUNNING, agent__isnull=False)
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
    agents = {agent.pk: agent for agent in Agent.objects.filter(pk__in=ids)}
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
    that finish within a few milliseconds of each other (boards.runtime.Completer),
    so a busy line pays for one transaction, a few statements and one pull per
    batch rather than per task. Returns, for each result, whether it completed
    (False: stale, its calls still recorded). All or nothing: ColumnMissing if a
    task's board has no Done column, and the caller completes them one by one.

    Every output is inspected (andon.jidoka): a pass goes to Done; a defect goes
    to Review with an escalation for a reviewer, or to Done marked as a defect
    when the board has no Review column. Defects can stop an agent's line (a
    spike), and each run counts for its agent's and its models' circuit breakers."""
    with transaction.atomic():
        ids = sorted({r.task_id for r in results})
        # Rows locked in id order, as two batches in two workers could otherwise deadlock.
        tasks = {
            task.pk: task
            for task in Task.objects.select_for_update(of=("self",), no_key=True)
            .filter(pk__in=ids)
            .order_by("pk")
        }
        _share_agents(list(tasks.values()))
        board_ids = {task.board_id for task in tasks.values()}
        board_columns: dict[int, dict[str, Column]] = {}
        for column in Column.objects.filter(
            board_id__in=board_ids, role__in=(Role.DONE, Role.REVIEW)
        ).order_by():
            board_columns.setdefault(column.board_id, {})[column.role] = column
        now = timezone.now()
        outcomes: list[bool] = []
        rows: list[ModelCall] = []
        events: list[TaskEvent] = []
        finished: list[Task] = []
        inspections: list[Inspection] = []
        escalated: list[tuple[Task, Inspection, Output]] = []
        defects_of: set[int] = set()
        succeeded: set[int] = set()
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
                _record_stale_calls(result.task_id, result.output.calls, attempt=result.attempt)
                outcomes.append(False)
                continue
            columns = board_columns.get(task.board_id, {})
            done = columns.get(Role.DONE) or _required_column(task.board_id, Role.DONE)
            verdict, tokens_out = jidoka.inspect_run(task, result.output)
            inspection = jidoka.inspection_row(task, verdict, tokens_out)
            inspections.append(inspection)
            review = columns.get(Role.REVIEW)
            target = done if verdict.passed or review is None else review
            rows += _ledger_rows(task, result.output.calls, attempt=task.attempts)
            changed.setdefault(task.board_id, set()).update({task.column_id, target.pk})
            events.append(_finish(task, target, result.output, verdict))
            if target is review:
                escalated.append((task, inspection, result.output))
            if not verdict.passed and task.agent_id:
                defects_of.add(task.agent_id)
            if task.agent_id:
                succeeded.add(task.agent_id)
            task.updated_at = now  # not saved through save(): auto_now does not run
            finished.append(task)
            outcomes.append(True)
        if rows:
            ModelCall.objects.bulk_create(rows)
        _update_rows(finished, _COMPLETED_FIELDS)
        TaskEvent.objects.bulk_create(events)
        Inspection.objects.bulk_create(inspections)
        samples = experiment_line.sample_rows(
            (task, inspection.passed) for task, inspection in zip(finished, inspections, strict=True)
        )
        if samples:
            # A task completes once per stage for its experiment: a retry after a
            # rejection keeps the first outcome.
            ExperimentSample.objects.bulk_create(samples, ignore_conflicts=True)
        escalations = Escalation.objects.bulk_create(
            [jidoka.escalation_row(task, inspection, output) for task, inspection, output in escalated]
        )
        stops = jidoka.spike_stops(defects_of) if defects_of else []
        breaker_agents = jidoka.record_agent_outcomes(succeeded=succeeded)
        # In board order, as the breaker rows are locked: two batches cannot deadlock.
        for board_id in sorted(calls):
            jidoka.record_model_calls(calls[board_id], board_id=board_id)
        for board_id, column_ids in changed.items():
            _after_commit(board_id, column_ids, pull=True)
        _after_andon_commit(
            escalations=[e.pk for e in escalations],
            agents={stop.agent_id for stop in stops} | breaker_agents,
            stops=bool(stops),
        )
    return outcomes


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
            transaction.on_commit(lambda board_id=board_id: broadcast.columns_changed(board_id, []))


def _finish(task: Task, target: Column, output: Output, verdict: Verdict | None = None) -> TaskEvent:
    """Put a run's output on its task and the task in ``target`` (Done, or Review
    for a defect), adding the calls to its totals (nothing saved); returns the
    completion's event (not saved either)."""
    from_column_id = task.column_id
    _add_totals(task, output.calls)
    task.output = output.text
    task.confidence = output.confidence
    task.confidence_source = output.confidence_source
    task.accepted_tier = output.tier
    task.reused_from_id = output.reused_from
    task.last_error = ""
    _place(task, target)
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
    event = _event(
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
    "column",
    "status",
    "position",
    "finished_at",
    "lease_token",
    "lease_expires_at",
    "worker",
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


def _ledger_rows(
    task: Task, calls: Iterable[CallRecord], *, attempt: int | None, stale: bool = False
) -> list[ModelCall]:
    now = timezone.now()
    return [
        ModelCall(
            task_id=task.pk,
            board_id=task.board_id,
            agent_id=task.agent_id,
            prompt_version=task.prompt_version,
            attempt=attempt if attempt is not None else max(task.attempts, 1),
            tier=call.tier,
            source=call.source,
            provider=call.provider,
            model=call.model,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cost=call.cost,
            latency_ms=call.latency_ms,
            confidence=call.confidence,
            confidence_source=call.confidence_source,
            # A stale run's output was not taken, whatever its cascade decided.
            accepted=call.accepted and not stale,
            stale=stale,
            error=call.error,
            reused_from_id=call.reused_from,
            created_at=call.at or now,
        )
        for call in calls
    ]


def _totals(calls: Iterable[CallRecord]) -> dict[str, int | Decimal]:
    totals: dict[str, int | Decimal] = {
        "cost": Decimal(0),
        "tokens_in": 0,
        "tokens_out": 0,
        "model_calls": 0,
        "cache_hits": 0,
    }
    for call in calls:
        totals["cost"] += call.cost
        totals["tokens_in"] += call.tokens_in
        totals["tokens_out"] += call.tokens_out
        if call.source == ModelCall.Source.MODEL:
            totals["model_calls"] += 1
        elif call.source == ModelCall.Source.CACHE:
            totals["cache_hits"] += 1
    return totals


def _record_calls(task: Task, calls: tuple[CallRecord, ...], *, attempt: int | None) -> None:
    """Write the ledger rows of a run and add them to the task's totals (on the
    instance, which the caller saves under its row lock)."""
    if not calls:
        return
    ModelCall.objects.bulk_create(_ledger_rows(task, calls, attempt=attempt))
    _add_totals(task, calls)


def _add_totals(task: Task, calls: Iterable[CallRecord]) -> None:
    """Add calls to the task's totals, on the instance (the caller saves it)."""
    for name, value in _totals(calls).items():
        setattr(task, name, getattr(task, name) + value)


def _record_stale_calls(task_id: int, calls: tuple[CallRecord, ...], *, attempt: int | None) -> None:
    """The calls of a run whose result came too late still happened: into the
    ledger, marked stale and never accepted (the task's output is another run's,
    or none yet), and into the task's totals, as they were spent; everything
    else stays as the current run has it."""
    if not calls:
        return
    task = (
        Task.objects.filter(pk=task_id)
        .only("pk", "board_id", "agent_id", "prompt_version", "attempts")
        .first()
    )
    if task is None:
        return
    ModelCall.objects.bulk_create(_ledger_rows(task, calls, attempt=attempt, stale=True))
    Task.objects.filter(pk=task_id).update(
        **{name: F(name) + value for name, value in _totals(calls).items()}
    )


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
        _lock_board(board_id)
        task = _current_run(task_id, lease_token)
        if task is None:
            _record_stale_calls(task_id, calls, attempt=attempt)
            return False
        _record_calls(task, calls, attempt=task.attempts)
        changed = _return_or_fail(task, kind=TaskEvent.Kind.ATTEMPT_FAILED, reason=error)
        if task.status == Status.FAILED:
            # Out of attempts: for its experiment, a task that never succeeded.
            ExperimentSample.objects.bulk_create(
                experiment_line.sample_rows([(task, False)]), ignore_conflicts=True
            )
        _after_commit(task.board_id, changed, pull=True)
        breaker_agents = (
            jidoka.record_agent_outcomes(failed={task.agent_id: error}) if task.agent_id else set()
        )
        jidoka.record_model_calls(calls, board_id=task.board_id)
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
        _lock_board(board_id)
        task = _current_run(task_id, lease_token)
        if task is None:
            return False
        task.attempts = max(task.attempts - 1, 0)
        changed = _return_or_fail(
            task,
            kind=TaskEvent.Kind.DEFERRED,
            reason=reason,
            note=f"not run, the attempt is not counted: {reason}",
        )
        _after_commit(task.board_id, changed, pull=False)
    return True


def _return_or_fail(
    task: Task,
    *,
    kind: str,
    reason: str,
    user: AbstractBaseUser | None = None,
    verb: str = "failed",
    note: str = "",
) -> set[int]:
    """Take a task out of In progress after a failed or lost run (or out of Review
    after a reviewer rejected its output, ``verb`` "rejected"): back to Ready
    for another attempt, else to the Backlog, whichever exists and has room under
    its hard limit; to Done marked failed once the agent's attempts are used up,
    or when neither has room (a hard WIP limit is never exceeded, not even to
    return a task). ColumnMissing if the task must go to Done and there is none."""
    from_column = task.column
    from_status = task.status
    columns = {c.role: c for c in Column.objects.filter(board_id=task.board_id)}
    max_attempts = task.agent.max_attempts if task.agent else 1
    task.last_error = reason[:2000]
    target: Column | None = None
    if task.attempts >= max_attempts:
        note = note or f"{verb} after {task.attempts} attempt(s): {reason}"
    else:
        note = note or f"attempt {task.attempts} of {max_attempts} {verb}: {reason}"
        for role in (Role.READY, Role.BACKLOG):
            column = columns.get(role)
            if column is None:
                continue
            try:
                soft_note = _check_wip(column)
            except WipLimitReached:
                continue
            target = column
            if soft_note:
                note = f"{note}; {soft_note}"
            break
        if target is None:
            note = (
                f"{note}; no room to return it (Ready and Backlog are full or missing), so it is "
                "marked failed: a person can move it back to Ready when there is room"
            )
    if target is None:
        target = _required_column(task.board_id, Role.DONE, columns)
        _place(task, target)
        task.status = Status.FAILED
    else:
        _place(task, target)
    task.save()
    _event(
        task,
        kind,
        from_column=from_column,
        to_column=target,
        from_status=from_status,
        to_status=task.status,
        user=user,
        agent=task.agent if kind in (TaskEvent.Kind.ATTEMPT_FAILED, TaskEvent.Kind.DEFERRED) else None,
        note=note,
    ).save()
    return {from_column.pk, target.pk}


def leases_renew(*, lease_tokens: Iterable[uuid.UUID | str]) -> int:
    """Extend the leases of runs still in flight in this worker."""
    tokens = list(lease_tokens)
    if not tokens:
        return 0
    expires = timezone.now() + timedelta(seconds=settings.KAIZEN_LEASE_SECONDS)
    return Task.objects.filter(lease_token__in=tokens, status=Status.RUNNING).update(lease_expires_at=expires)


def _dead_workers() -> set[str]:
    """The workers holding runs whose heartbeat has stopped (boards.workers). None
    when Redis cannot say: then only the leases count, as before heartbeats."""
    owners = set(
        Task.objects.filter(status=Status.RUNNING)
        .exclude(worker="")
        .order_by()  # no ordering columns in the DISTINCT
        .values_list("worker", flat=True)
        .distinct()
    )
    if not owners:
        return set()
    try:
        return workers.dead_among(owners)
    except Exception as exc:
        logger.warning("could not read the workers' heartbeats (%s): leases only this pass", exc)
        return set()


def leases_reap(*, limit: int = 500) -> int:
    """Take tasks whose run is lost out of In progress (see _return_or_fail for
    where they go, an attempt spent): those whose worker stopped beating
    (boards.workers: it died or froze, seconds ago), and those whose lease ran
    out (a worker that never beat, or a run that outlived
    KAIZEN_RUN_TIMEOUT_SECONDS, which its worker stopped renewing).

    Reads first, and takes locks only when there is something to take back: every
    worker runs this every heartbeat (its watchdog), and on SQLite a transaction
    takes the database's write lock at once.

    Each task is returned in its own savepoint: a task that cannot be returned
    (its board has no Done column to fail it into) is logged and stays In
    progress, to be tried again on the next pass, without holding up the others."""
    now = timezone.now()
    dead = _dead_workers()
    lost = Q(lease_expires_at__lt=now)
    if dead:
        lost |= Q(worker__in=dead)
    candidates = Task.objects.filter(lost, status=Status.RUNNING)
    # Reaped tasks go back to Ready, whose hard limit is counted: lock their
    # boards first (in id order, so two reapers cannot deadlock).
    board_ids = sorted(set(candidates.order_by().values_list("board_id", flat=True)[:limit]))
    if not board_ids:
        return 0
    boards: dict[int, set[int]] = {}
    with transaction.atomic():
        for board_id in board_ids:
            _lock_board(board_id)
        expired = (
            candidates.select_for_update(skip_locked=True, of=("self",), no_key=True)
            .select_related("column", "agent")
            .filter(board_id__in=board_ids)
            .order_by("lease_expires_at")[:limit]
        )
        count = 0
        for task in expired:
            if task.worker in dead:
                reason = f"its worker {task.worker} stopped sending heartbeats: it died or froze"
            else:
                reason = (
                    "the worker stopped renewing its lease (it died or froze, or the run "
                    "went past the run timeout)"
                )
            try:
                with transaction.atomic():
                    changed = _return_or_fail(task, kind=TaskEvent.Kind.LEASE_EXPIRED, reason=reason)
            except ColumnMissing as exc:
                logger.error("could not return task %s, whose lease expired: %s", task.pk, exc.messages[0])
                continue
            except Exception:
                logger.exception(
                    "could not return task %s of board %s, whose lease expired", task.pk, task.board_id
                )
                continue
            boards.setdefault(task.board_id, set()).update(changed)
            count += 1
        for board_id, column_ids in boards.items():
            _after_commit(board_id, column_ids, pull=True)
    if count:
        logger.warning("returned %s task(s) whose run was lost (lease expired or worker dead)", count)
    return count


def leases_release_worker(*, worker: str) -> int:
    """A worker process that stops hands back, at once, the tasks its runs hold
    (see boards.runtime.worker_handover): each goes back to Ready (or the
    Backlog, as a failed run's would), without spending its attempt, as a run
    that never got to its work. Runs of that worker still finishing afterwards
    are stale: their results are ignored (their calls recorded as stale).
    Returns how many tasks went back."""
    if not worker:
        return 0
    held = Task.objects.filter(status=Status.RUNNING, worker=worker)
    board_ids = sorted(set(held.order_by().values_list("board_id", flat=True)))
    if not board_ids:
        return 0
    count = 0
    with transaction.atomic():
        for board_id in board_ids:
            _lock_board(board_id)
        tasks = (
            held.select_for_update(of=("self",), no_key=True)
            .select_related("column", "agent")
            .filter(board_id__in=board_ids)
            .order_by("pk")
        )
        boards: dict[int, set[int]] = {}
        for task in tasks:
            task.attempts = max(task.attempts - 1, 0)
            try:
                with transaction.atomic():
                    changed = _return_or_fail(
                        task,
                        kind=TaskEvent.Kind.DEFERRED,
                        reason=f"its worker {worker} stopped before the run ended",
                        note=f"handed back: its worker {worker} is stopping; the attempt is not counted",
                    )
            except ColumnMissing as exc:
                logger.error("could not hand back task %s: %s", task.pk, exc.messages[0])
                continue
            boards.setdefault(task.board_id, set()).update(changed)
            count += 1
        for board_id, column_ids in boards.items():
            _after_commit(board_id, column_ids, pull=True)
    if count:
        logger.warning("worker %s handed back %s task(s) as it stopped", worker, count)
    return count


# --- what people do on the board ----------------------------------------------

# Why a column other than Ready keeps its own order.
_OWN_ORDER = {
    Role.BACKLOG: "the Backlog is pulled by priority, then age",
    Role.IN_PROGRESS: "In progress is ordered by when agents pulled its tasks",
    Role.DONE: "Done lists tasks by when they finished",
}


def _reorder_refused(column: Column) -> MoveNotAllowed:
    # Only Ready's order decides anything (what agents pull next); reordering
    # elsewhere would record events with no visible effect.
    why = _OWN_ORDER.get(column.role, f"{column.name} keeps the order its tasks arrived in")
    return MoveNotAllowed(f"Only the Ready queue can be reordered; {why}.")


def task_move(
    *,
    task: Task,
    to_column: Column,
    user: AbstractBaseUser | None,
    before: Task | None = None,
    note: str = "",
) -> Task:
    """Move a task by hand, where the column's rules allow, or reorder it within
    its column when ``to_column`` is its own (``before`` is the card it now precedes).
    The returned task's ``wip_note`` says when the move took the column past its
    soft WIP limit (empty otherwise)."""
    if to_column.board_id != task.board_id:
        raise MoveNotAllowed("That column belongs to another board.")
    with transaction.atomic():
        _lock_board(task.board_id)
        task = (
            Task.objects.select_for_update(of=("self",), no_key=True).select_related("column").get(pk=task.pk)
        )
        if before is not None:
            # Read it afresh: the caller's copy may hold a position that has moved since.
            before = Task.objects.filter(pk=before.pk, column=to_column).exclude(pk=task.pk).first()
        from_column = task.column
        if from_column.pk == to_column.pk:
            if to_column.role != Role.READY:
                raise _reorder_refused(to_column)
            task.position = _slot_before(to_column, before, exclude_pk=task.pk)
            task.save(update_fields=["position", "updated_at"])
            _event(
                task,
                TaskEvent.Kind.REORDERED,
                from_column=from_column,
                to_column=to_column,
                from_status=task.status,
                to_status=task.status,
                user=user,
                note=note,
            ).save()
            _after_commit(task.board_id, [to_column.pk], pull=True)
            task.wip_note = ""
            return task
        if from_column.role == Role.REVIEW:
            # A defect waits on a person who may decide it: a move by anyone
            # else (or by a reviewer, past the inbox) would end it undecided.
            escalation = Escalation.objects.filter(task=task, status=Escalation.Status.OPEN).first()
            if escalation is not None:
                raise EscalationOpen(task, escalation)
        if to_column.role not in MANUAL_MOVES[from_column.role]:
            if from_column.role == Role.IN_PROGRESS:
                message = "An agent is working on this task; it leaves In progress when the run ends."
            elif to_column.role == Role.IN_PROGRESS:
                message = "Tasks enter In progress only when an agent pulls them from Ready."
            else:
                message = f"Tasks cannot move from {from_column.name} to {to_column.name}."
            raise MoveNotAllowed(message)
        soft_note = _check_wip(to_column)
        from_status = task.status
        position = None if before is None else _slot_before(to_column, before, exclude_pk=task.pk)
        _place(task, to_column, position=position)
        notes = [note, soft_note]
        sent_back = from_column.role in (Role.DONE, Role.REVIEW) and to_column.role in (
            Role.BACKLOG,
            Role.READY,
        )
        if sent_back and (task.attempts or task.last_error or task.output or task.confidence is not None):
            # A person sends the task round again: it starts afresh, with the
            # agent's full attempts rather than what the last round left of them.
            notes.append(
                f"starts afresh: attempts reset (were {task.attempts}), output and last error cleared"
            )
            task.attempts = 0
            task.last_error = ""
            task.output = ""
            task.confidence = None
            task.confidence_source = ""
            task.accepted_tier = None
            task.reused_from = None
        if to_column.role == Role.DONE and task.blocked_at is not None:
            # A finished task waits on nothing; a block left on it would show on its card.
            notes.append(f"block cleared ({task.blocked_note})")
            task.blocked_note = ""
            task.blocked_at = None
        task.save()
        _event(
            task,
            TaskEvent.Kind.MOVED,
            from_column=from_column,
            to_column=to_column,
            from_status=from_status,
            to_status=task.status,
            user=user,
            note="; ".join(n for n in notes if n),
        ).save()
        _after_commit(task.board_id, [from_column.pk, to_column.pk], pull=True)
    # For the caller to tell the person, as the event records it: a soft limit exceeded.
    task.wip_note = soft_note
    return task


def task_step(*, task: Task, user: AbstractBaseUser | None, direction: str) -> Task:
    """Keyboard moves: ``up``/``down`` reorder within the column, ``left``/``right``
    move to the neighbouring column (where the rules allow)."""
    column = task.column
    if direction in ("up", "down") and column.role != Role.READY:
        # Refused even at the column's edge, where there would be nothing to swap.
        raise _reorder_refused(column)
    siblings = Task.objects.filter(column=column).exclude(pk=task.pk)
    if direction == "up":
        previous = siblings.filter(position__lt=task.position).order_by("-position").first()
        return (
            task if previous is None else task_move(task=task, to_column=column, user=user, before=previous)
        )
    if direction == "down":
        following = list(siblings.filter(position__gt=task.position).order_by("position")[:2])
        if not following:
            return task
        before = following[1] if len(following) > 1 else None
        return task_move(task=task, to_column=column, user=user, before=before)
    if direction in ("left", "right"):
        neighbour = column_neighbour_get(column=column, direction=direction)
        if neighbour is None:
            raise MoveNotAllowed(f"There is no column to the {direction} of {column.name}.")
        return task_move(task=task, to_column=neighbour, user=user)
    raise ValidationError(f"Unknown direction {direction!r}: use up, down, left or right.")


def task_block(*, task: Task, user: AbstractBaseUser | None, note: str) -> Task:
    note = (note or "").strip()
    if not note:
        raise ValidationError({"note": ["Say what blocks the task, so others know what to fix."]})
    with transaction.atomic():
        task = Task.objects.select_for_update(of=("self",), no_key=True).get(pk=task.pk)
        if task.status in (Status.RUNNING, Status.DONE, Status.FAILED):
            raise MoveNotAllowed(f"A task that is {task.get_status_display().lower()} cannot be blocked.")
        task.blocked_note = note
        task.blocked_at = timezone.now()
        task.save(update_fields=["blocked_note", "blocked_at", "updated_at"])
        _event(
            task, TaskEvent.Kind.BLOCKED, from_status=task.status, to_status=task.status, user=user, note=note
        ).save()
        _after_commit(task.board_id, [task.column_id], pull=False)
    return task


def task_unblock(*, task: Task, user: AbstractBaseUser | None, note: str = "") -> Task:
    with transaction.atomic():
        task = Task.objects.select_for_update(of=("self",), no_key=True).get(pk=task.pk)
        if task.blocked_at is None:
            return task
        task.blocked_note = ""
        task.blocked_at = None
        task.save(update_fields=["blocked_note", "blocked_at", "updated_at"])
        _event(
            task,
            TaskEvent.Kind.UNBLOCKED,
            from_status=task.status,
            to_status=task.status,
            user=user,
            note=note.strip(),
        ).save()
        _after_commit(task.board_id, [task.column_id], pull=True)
    return task


def board_set_paused(*, board: Board, paused: bool) -> Board:
    with transaction.atomic():
        board = _lock_board(board.pk)
        board.paused = paused
        board.save(update_fields=["paused"])
        _after_commit(board.pk, [], pull=not paused)
    return board


def agent_set_paused(*, agent: Agent, paused: bool) -> Agent:
    with transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        agent.paused = paused
        agent.save(update_fields=["paused"])
        for board_id in agent.boards.values_list("pk", flat=True):
            # No column changed: the update carries the board's agents (with
            # this one's state); resuming frees capacity, so pull too.
            _after_commit(board_id, [], pull=not paused)
    return agent


# --- demo feed and API tokens ------------------------------------------------


def demo_task_feed(*, board: Board) -> Task | None:
    """Add the board's next demo task (boards.demo_feed: a fixed example, a
    template rendered afresh, or now and then an exact repeat of an earlier
    task), so a demo board moves on its own. Skipped while the intake column is
    full, so an idle demo does not pile up work."""
    if not board.demo_tasks or board.paused:
        return None
    intake = _intake_column(board)
    limit = intake.wip_limit if intake.wip_limit is not None else 50
    if _count(intake) >= limit:
        return None
    spec = demo_feed.demo_task_at(
        board.demo_tasks, demo_feed.FeedSettings.from_json(board.demo_feed), _demo_feed_number(board)
    )
    return task_create(
        board=board,
        title=spec["title"] or "Example task",
        input=spec["input"],
        capability=spec["capability"],
        priority=spec["priority"],
    )


def _demo_feed_number(board: Board) -> int:
    """The number of the board's next demo task, taken for good: a task the line
    then refuses (its capability no longer offered, say) is skipped, not retried
    at every tick."""
    with transaction.atomic():
        Board.objects.filter(pk=board.pk).update(demo_feed_count=F("demo_feed_count") + 1)
        # Read under the row lock the update holds: two feeds never get one number.
        taken = Board.objects.filter(pk=board.pk).values_list("demo_feed_count", flat=True).get()
    return taken - 1


def boards_pull_all() -> int:
    """Pull every unpaused board (the periodic safety net); returns the tasks
    claimed. One board's error is logged and does not stop the others."""
    claimed = 0
    for board_id in Board.objects.filter(paused=False).values_list("pk", flat=True):
        try:
            claimed += len(board_pull(board_id=board_id))
        except Exception:
            logger.exception("periodic pull of board %s failed", board_id)
    return claimed


def demo_boards_feed() -> int:
    """Add demo tasks to every unpaused board that has some (its feed's batch
    each, up to the intake column's limit); returns how many were added. Not
    idempotent: that is its job, on a clock. One board's error is logged and
    does not stop the others."""
    added = 0
    for board in Board.objects.filter(paused=False):
        if not board.demo_tasks:
            continue
        try:
            for _ in range(demo_feed.FeedSettings.from_json(board.demo_feed).batch):
                if demo_task_feed(board=board) is None:
                    break
                added += 1
        except Exception:
            logger.exception("demo feed of board %s failed", board.pk)
    return added


def api_token_create(
    *,
    user: AbstractBaseUser,
    name: str = "",
    access: str = ApiToken.Access.READ,
    boards: Iterable[Board] | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its key, which is shown only this once.

    Read only unless ``access`` is write, and for every board unless ``boards``
    lists some. A write token is refused for a user who may not add tasks."""
    boards = None if boards is None else list(boards)
    if access not in ApiToken.Access.values:
        raise ValidationError({"access": [f"Access must be read or write, not {access!r}."]})
    if access == ApiToken.Access.WRITE and not user.has_perm(ApiToken.WRITE_PERMISSION):
        raise ValidationError(
            {
                "access": [
                    f"User {user.get_username()!r} may not add tasks, so a write token would be refused: "
                    f"give them the “Can add task” permission ({ApiToken.WRITE_PERMISSION}) in the admin, "
                    "or make a read-only token."
                ]
            }
        )
    if boards is not None and not boards:
        raise ValidationError({"boards": ["Name at least one board, or let the token use every board."]})
    key = ApiToken.generate_key()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=key[:10],
            key_hash=ApiToken.hash_key(key),
            access=access,
            all_boards=boards is None,
        )
        if boards:
            token.boards.set(boards)
    return token, key


def api_token_authenticate(*, key: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=ApiToken.hash_key(key), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Written at most once a minute, so busy clients do not write on every call.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


__all__ = [
    "Claim",
    "ColumnMissing",
    "EscalationOpen",
    "MoveNotAllowed",
    "WipLimitReached",
    "agent_set_paused",
    "api_token_authenticate",
    "api_token_create",
    "board_pull",
    "board_set_paused",
    "boards_pull_all",
    "demo_boards_feed",
    "demo_task_feed",
    "leases_reap",
    "leases_release_worker",
    "leases_renew",
    "request_pull",
    "task_attempt_fail",
    "task_block",
    "task_complete",
    "tasks_complete",
    "RunResult",
    "task_create",
    "task_move",
    "task_run_begin",
    "tasks_run_begin",
    "task_step",
    "task_unblock",
]


# --- for the board's views and the admin ---------------------------------------
# (Added with the admin and view fixes; kept apart from the core above.)


def board_config_changed(*, board_id: int) -> None:
    """A board's columns, or the agents serving it, were changed in the admin.

    The admin saves those rows itself; this does what a service would do after
    them: once the change commits, every column goes to the browsers (a WIP
    limit shows as it now is), with the agents strip, and the board pulls, as a
    raised limit or a new agent may have freed capacity."""
    column_ids = list(Column.objects.filter(board_id=board_id).values_list("pk", flat=True))
    _after_commit(board_id, column_ids, pull=True)


__all__ += ["board_config_changed", "column_neighbour"]


# --- agents ------------------------------------------------------------------------

# What does the work and what the model is asked: a change to any of these is a
# new prompt version (whose results are not taken for the old one's).
PROMPT_FIELDS = ("prompt_template", "prompt_variables", "parameters", "cascade", "implementation")


def agent_save(
    *,
    agent: Agent,
    based_on_version: int | None = None,
    user: AbstractBaseUser | None = None,
    rationale: str = "",
) -> Agent:
    """Save an agent's settings (from the admin, a script, or the agent page's
    operational switches): validate, store the prompt settings in their normal
    form (a cascade's prices as exact decimal strings, its simulated prices filled
    in), and start a new prompt version when what the model is asked has changed,
    so results of the old prompt are no longer reused and the ledger tells the
    versions apart.

    Such a prompt change is a direct one, past the kaizen loop's gates: people
    propose theirs on the agent page (``experiments.services.proposal_create``).
    So that the agent's history still has no gaps, the version it replaces and
    the new one are recorded as prompt versions, with an audit entry saying where
    the change came from (``rationale`` adds to it; ``user`` when a person made it).
    The new number follows every version the agent has had, proposals' candidates
    included: after a rollback the active number is not the highest, and reusing
    a number would mix two prompts' results and history.

    ``based_on_version`` is the prompt version the editor started from: if the
    prompt has moved on since (someone else saved), nothing is written and a
    ValidationError says so, rather than one edit silently undoing the other.

    Its boards are refreshed and pulled after commit (a new model or a higher
    concurrency may change what the board shows and can take)."""
    # experiments.services imports this module; its models and line helpers do not.

    agent.full_clean()
    agent.prompt_variables = parse_variables(agent.prompt_variables)
    agent.parameters = parse_parameters(agent.parameters)
    agent.cascade = cascade_json(parse_cascade(agent.cascade))
    why = "applied from a config file or the admin" + (f" ({rationale.strip()})" if rationale.strip() else "")
    with transaction.atomic():
        replaced: PromptVersion | None = None
        if agent.pk is not None:
            before = (
                Agent.objects.select_for_update(of=("self",), no_key=True)
                .filter(pk=agent.pk)
                .values("prompt_version", *PROMPT_FIELDS)
                .first()
            )
            if before is not None:
                if based_on_version is not None and before["prompt_version"] != based_on_version:
                    raise ValidationError(
                        f"Someone else saved a new prompt for {agent.name} while you were editing "
                        f"(version {before['prompt_version']}; you started from {based_on_version}). "
                        "Nothing was saved: reload the page to see their change, then make yours."
                    )
                agent.prompt_version = before["prompt_version"]
                if any(before[name] != getattr(agent, name) for name in PROMPT_FIELDS):
                    # The stored fields, as they were: the version being replaced.
                    replaced = experiment_line.ensure_version(Agent(pk=agent.pk, name=agent.name, **before))
                    agent.prompt_version = experiment_line.next_version_number(agent)
        agent.save()
        if replaced is not None:
            version = experiment_line.ensure_version(
                agent, source=PromptVersion.Source.CONFIG, author=user, rationale=why
            )
            AuditEntry.objects.create(
                agent=agent,
                action=AuditEntry.Action.VERSION,
                version=version,
                user=user if user is not None and user.is_authenticated else None,
                reason=f"v{replaced.number} → v{version.number}: {why}",
            )
        for board_id in agent.boards.values_list("pk", flat=True):
            board_config_changed(board_id=board_id)
    return agent


__all__ += [
    "MAX_INPUT",
    "MAX_PRIORITY",
    "MAX_TITLE",
    "MIN_PRIORITY",
    "PROMPT_FIELDS",
    "agent_save",
    "input_key",
]


# --- intake of many tasks, and the rules of a task's fields ---------------------------
# (Added with the task list, import and API fixes of issue 10; kept apart from the core above.)
# The rules of a task's fields (task_fields_errors) are in boards.text.


class TasksImportRefused(ValidationError):
    """Nothing of a batch of tasks was imported: ``row_errors`` holds each bad
    row's problems per field, by line number (empty when the batch as a whole was
    refused, e.g. by a hard WIP limit)."""

    def __init__(self, message: str, *, row_errors: dict[int, dict[str, list[str]]] | None = None) -> None:
        super().__init__(message)
        self.row_errors = row_errors or {}


# Rows inserted per statement, and between two progress reports.
IMPORT_BATCH = 1000


def tasks_import(
    *,
    board: Board,
    rows: Sequence[TaskRow],
    user: AbstractBaseUser | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Task]:
    """Put many tasks in the board's intake column at once, all or nothing.

    Every row is checked first, and any problem (one read from the file, or one
    of ``task_fields_errors``) refuses the whole batch with every row's problems
    (``TasksImportRefused``), so a corrected file can simply be imported again:
    nothing is left half-written. A hard WIP limit on the intake column with no
    room for the whole batch refuses it too, rather than taking the first rows.

    Then one transaction inserts the tasks in batches (``progress`` is called
    with the number inserted so far), each where ``task_create`` would have put
    it (after every task of its priority or higher), with its CREATED event, and
    one pull and one live update follow the commit."""
    if not rows:
        raise TasksImportRefused("There are no tasks to import.")
    offered = sorted({c for a in board.agents.all() for c in a.offered_capabilities})
    row_errors: dict[int, dict[str, list[str]]] = {}
    for row in rows:
        problems = {name: list(messages) for name, messages in row.problems.items()}
        checked = task_fields_errors(
            title=row.title.strip(),
            input=row.input,
            capability=row.capability.strip(),
            priority=row.priority,
            offered=offered,
        )
        for name, messages in checked.items():
            # A field that could not be read at all has said so already.
            problems.setdefault(name, messages)
        if problems:
            row_errors[row.line] = problems
    if row_errors:
        bad = len(row_errors)
        raise TasksImportRefused(
            f"{bad} of {len(rows)} row{'s' if len(rows) != 1 else ''} "
            f"{'have' if bad != 1 else 'has'} errors, so nothing was imported: "
            "correct them and import the file again.",
            row_errors=row_errors,
        )

    with transaction.atomic():
        column = _intake_column(board)
        if column.wip_limit is not None:
            _lock_board(board.pk)
        try:
            note = _check_wip(column, adding=len(rows))
        except WipLimitReached:
            room = max(column.wip_limit - _count(column), 0)
            raise TasksImportRefused(
                f"{column.name} has a hard WIP limit of {column.wip_limit} and room for {room} more "
                f"task{'s' if room != 1 else ''}, so the {len(rows)} tasks were not imported (none of them): "
                "import fewer at a time, or wait until agents have pulled some."
            ) from None
        positions = _import_positions(column, rows)
        status = STATUS_FOR_ROLE[column.role]
        tasks = [
            Task(
                board=board,
                column=column,
                status=status,
                position=position,
                title=row.title.strip(),
                input=row.input,
                capability=row.capability.strip(),
                priority=row.priority,
                allow_reuse=row.allow_reuse,
                input_key=input_key(row.input),
            )
            for row, position in zip(rows, positions, strict=True)
        ]
        for start in range(0, len(tasks), IMPORT_BATCH):
            batch = tasks[start : start + IMPORT_BATCH]
            Task.objects.bulk_create(batch)
            TaskEvent.objects.bulk_create(
                [
                    _event(
                        task,
                        TaskEvent.Kind.CREATED,
                        to_column=column,
                        to_status=status,
                        user=user,
                        note=note or "imported",
                    )
                    for task in batch
                ]
            )
            if progress is not None:
                progress(start + len(batch))
        _after_commit(board.pk, [column.pk], pull=True)
    return tasks


def _import_positions(column: Column, rows: Sequence[TaskRow]) -> list[int]:
    """A position for each row, in ``column``, where ``task_create`` would have
    put it had the rows been created one by one: after every task of its
    priority or higher. Rows headed for the same gap between two tasks go there
    in priority order, file order among equals; a gap too narrow for its rows is
    widened by shifting the tasks after it (one UPDATE) and the plan made again."""
    while True:
        plan, narrow = _plan_positions(column, rows)
        if narrow is None:
            return plan
        at, needed = narrow
        Task.objects.filter(column=column, position__gte=at).update(
            position=F("position") + (needed + 1) * POSITION_GAP
        )


def _plan_positions(column: Column, rows: Sequence[TaskRow]) -> tuple[list[int], tuple[int, int] | None]:
    existing = Task.objects.filter(column=column)
    # The first task of lower priority, by position, for each priority in the batch.
    before: dict[int, int | None] = {
        priority: existing.filter(priority__lt=priority)
        .order_by("position")
        .values_list("position", flat=True)
        .first()
        for priority in {row.priority for row in rows}
    }
    # Stable: file order among rows of equal priority.
    order = sorted(range(len(rows)), key=lambda index: -rows[index].priority)
    gaps: dict[int | None, list[int]] = {}
    for index in order:
        gaps.setdefault(before[rows[index].priority], []).append(index)
    positions = [0] * len(rows)
    for upper, indexes in gaps.items():
        count = len(indexes)
        if upper is None:
            last = existing.aggregate(m=Max("position"))["m"] or 0
            slots = [last + POSITION_GAP * (i + 1) for i in range(count)]
        else:
            lower = existing.filter(position__lt=upper).aggregate(m=Max("position"))["m"]
            if lower is None:
                lower = upper - (count + 1) * POSITION_GAP
            if upper - lower - 1 < count:
                return positions, (upper, count)
            step = (upper - lower) // (count + 1)
            slots = [lower + step * (i + 1) for i in range(count)]
        for index, slot in zip(indexes, slots, strict=True):
            positions[index] = slot
    return positions, None


__all__ += ["TasksImportRefused", "task_fields_errors", "tasks_import"]
