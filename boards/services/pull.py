"""The pull: agents claim work from Ready (refilled from the Backlog) up to the
free WIP, under the board lock, and the claimed runs go to the workers after
commit. Also what asks for a pull: a change that may free capacity asks once it
has committed (``board_changed_on_commit``), and a worker process pulls at
once, in-process, while anywhere else the pull is asked of the workers
(``boards.services.enqueue``, the one place work is sent to them).
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import budgets, jidoka
from boards import broadcast, pull_rules
from boards.models import Agent, Board, Column, Task, TaskEvent, board_agent_ids
from boards.selectors import agents_running_get
from boards.services import enqueue
from boards.services.enqueue import Claim
from boards.services.primitives import (
    board_columns_by_role,
    board_lock,
    column_count,
    task_event,
    task_rows_update,
    tasks_place_write,
)
from experiments import line as experiment_line
from kaizen_web.prepared import Prepared, fields
from kaizen_web.rows import rows_insert

logger = logging.getLogger(__name__)

Role = Column.Role
Status = Task.Status


# Set in Celery worker processes (boards.tasks connects it to worker_init), and
# the other way when the worker stops (boards.agents.runtime.worker_handover).
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


def board_changed_on_commit(board_id: int, column_ids: Iterable[int], *, pull: bool) -> None:
    """Send the changed columns to browsers and, if capacity may have changed,
    pull, once the transaction has committed."""
    ids = set(column_ids)
    transaction.on_commit(lambda: broadcast.columns_changed(board_id, ids))
    if pull:
        transaction.on_commit(lambda: request_pull(board_id=board_id))


def boards_changed_on_commit(*, board_id: int | None, agent_id: int | None) -> None:
    """A rule scoped to a board or to an agent (a budget, a waste threshold)
    changed: every board it touches (the board, or each board the agent serves)
    is sent to browsers afresh and pulled, once the transaction has committed."""
    if board_id is not None:
        board_ids = [board_id]
    else:
        board_ids = list(Board.objects.filter(agents=agent_id).values_list("pk", flat=True))
    for each in board_ids:
        board_changed_on_commit(each, [], pull=True)


def request_pull(*, board_id: int) -> None:
    """Pull for a board, after commit so the capacity the trigger freed is visible.

    A worker pulls at once, in-process, where its finished runs' pulls coalesce.
    Anywhere else (a web request, a command) the pull is asked of the workers:
    they are where the claimed runs go anyway, and the request does not queue on
    the board lock behind every finishing run."""
    try:
        if _in_worker:
            _pulls.pull(board_id)
        else:
            enqueue.board_pull_enqueue(board_id)
    except Exception:
        # The periodic pull catches up; a failed trigger must not fail the
        # change that caused it, which has already committed.
        logger.exception("pull for board %s failed", board_id)


def pull_requested_run(*, board_id: int) -> None:
    """A worker answering a pull asked by another process (pull_request_serve; and
    boards.tasks.pull_board, for messages an earlier version sent). A worker that
    is stopping leaves it: it would claim runs it is not going to run. The other
    workers pull at their next change or periodic pull, and a worker that starts
    pulls every board (boards.agents.runtime.worker_ready)."""
    enqueue.board_pull_started(board_id)
    if _stopping:
        return
    _pulls.pull(board_id)


def pull_request_serve(*, timeout: float) -> int | None:
    """For a worker's pull-request threads (boards.agents.runtime.PullRequests):
    wait up to ``timeout`` seconds for a board another process asked the workers
    to pull (enqueue.board_pull_enqueue), and pull it. Returns the board's id, or
    None when none was asked. A worker that is stopping takes no request, and
    gives back one it took meanwhile, for the other workers."""
    if _stopping:
        return None
    board_id = enqueue.board_pull_requested_take(timeout)
    if board_id is None:
        return None
    if _stopping:
        enqueue.board_pull_requested_give_back(board_id)
        return None
    pull_requested_run(board_id=board_id)
    return board_id


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


# --- the pull ------------------------------------------------------------------


def board_pull(*, board_id: int) -> list[Claim]:
    """Refill Ready from the Backlog, then let agents claim Ready tasks up to the
    free WIP of In progress and of each agent. Runs in one transaction under the
    board lock; the claimed runs are enqueued after commit."""
    # Most pulls in a busy worker follow a finished run and find nothing waiting:
    # a plain read first spares them the board and agent locks. A task that
    # arrives after this read asks for its own pull once it commits.
    if not _WAITING.rows(board_id=board_id):
        return []
    with transaction.atomic():
        board = board_lock(board_id)
        if board.paused:
            return []
        columns = board_columns_by_role(board)
        changed: set[int] = set()
        _replenish(board, columns, changed)
        claims = _claim(board, columns, changed)
        if changed:
            transaction.on_commit(lambda: broadcast.columns_changed(board_id, changed))
        if claims:
            transaction.on_commit(lambda: enqueue.runs_enqueue(claims))
    return claims


# The pull's reads that do not depend on what it claims, at every pull: compiled
# once (kaizen_web.prepared). Compiling them through the ORM at every pull cost
# more than the rest of a pull of a few tasks (bench/line_steps.py). Once the
# agents are locked, what is read of them is read by their ids, not as the
# board's: a change of the board's agents committed meanwhile must not leave a
# locked agent's stops, breakers, running tasks or experiment unread.
#
# Not prepared: waiting tasks are few of a long history, which a plan kept for
# every value of the statuses would not know.
_WAITING = Prepared(
    lambda *, board_id: (
        Task.objects.filter(
            board_id=board_id, status__in=(Status.BACKLOG, Status.READY), blocked_at__isnull=True
        )
        .order_by()
        .values_list("pk")[:1]
    ),
    prepare=False,
    board_id=int,
)
# The board's unpaused agents, locked in pk order after the board (no deadlocks).
_AGENTS_LOCK = Prepared(
    lambda *, board_id: (
        Agent.objects.filter(pk__in=board_agent_ids(board_id), paused=False)
        .order_by("pk")
        .select_for_update(of=("self",), no_key=True)
        .values_list(*fields(Agent))
    ),
    board_id=int,
)


def _replenish(board: Board, columns: dict[str, Column], changed: set[int]) -> None:
    backlog, ready = columns.get(Role.BACKLOG), columns.get(Role.READY)
    if backlog is None or ready is None:
        return
    if ready.wip_limit is None:
        room = None
    else:
        room = ready.wip_limit - column_count(ready)
        if room <= 0:
            return
    taken = _BACKLOG_TAKE.instances(Task, column_id=backlog.pk, room=room)
    if not taken:
        return
    tasks_place_write(taken, ready)
    events = [
        task_event(
            task,
            TaskEvent.Kind.MOVED,
            from_column=backlog,
            to_column=ready,
            from_status=Status.BACKLOG,
            to_status=Status.READY,
            note="pulled into Ready",
        )
        for task in taken
    ]
    rows_insert(TaskEvent, events)
    changed.update({backlog.pk, ready.pk})


def _backlog_take(*, column_id: int, room: int | None) -> QuerySet:
    """The Backlog's first ``room`` tasks (None: all), by priority, then position,
    then age, taken (locked)."""
    tasks = (
        Task.objects.filter(column_id=column_id, blocked_at__isnull=True)
        .order_by("-priority", "position", "created_at")
        .select_for_update(skip_locked=True, of=("self",), no_key=True)
        .values_list(*fields(Task))
    )
    return tasks if room is None else tasks[:room]


_BACKLOG_TAKE = Prepared(_backlog_take, column_id=int, room=int)


@functools.cache
def _candidates(order: tuple) -> Prepared:
    """The query that takes (locks) Ready's first ``limit`` tasks a pull may claim
    (no capability asked, or one of ``capabilities``), in ``order``
    (PullGate.candidate_order: one of two), compiled once for each."""

    def build(*, column_id: int, capabilities: list[str], limit: int) -> QuerySet:
        return (
            Task.objects.filter(column_id=column_id, blocked_at__isnull=True)
            .filter(Q(capability="") | Q(capability__in=capabilities))
            .order_by(*order)
            .select_for_update(skip_locked=True, of=("self",), no_key=True)
            .values_list(*fields(Task))
        )[:limit]

    return Prepared(build, column_id=int, capabilities=list[str], limit=int)


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
    if (
        review is not None  # (review_limit_stops_pull says no without it)
        and pull_rules.review_limit_stops_pull(review)
        and pull_rules.review_full(review, column_count(review))
    ):
        # Jidoka: Review is at its hard limit, so the line waits for reviewers
        # rather than pile up more unchecked work. (A soft limit is a signal:
        # the board says so, and the pull goes on.)
        return []
    agents = _AGENTS_LOCK.instances(Agent, board_id=board.pk)
    if not agents:
        return []
    expired: list[int] = []
    board_stopped, stopped_agents = jidoka.active_stops(
        board_id=board.pk, agent_ids=[a.pk for a in agents], expired=expired
    )
    if expired:
        # Budget stops whose period has ended: out of force already, recorded now.
        budgets.expired_stops_lift(expired)
        transaction.on_commit(andon_broadcast.line_stops_changed)
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
    now = timezone.now()
    expires = now + timedelta(seconds=settings.KAIZEN_LEASE_SECONDS)
    claimed: list[Task] = []
    claims: list[Claim] = []
    # A few more rows than wanted are read: some may ask for a capability whose
    # agents are all busy.
    events = []
    candidates = _candidates(gate.candidate_order()).instances(
        Task,
        column_id=ready.pk,
        # No capability offered: only the tasks that ask for none ("" is one of them).
        capabilities=offered or [""],
        limit=want + 20,
    )
    for task in candidates:
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
        claims.append(Claim(task.pk, task.lease_token))
        task.lease_expires_at = expires
        task.started_at = now
        # bulk_update does not run auto_now: set it, or the claim looks stale.
        task.updated_at = now
        task.position = int(now.timestamp() * 1000) + len(claimed)
        claimed.append(task)
        events.append(
            task_event(
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
    task_rows_update(
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
    rows_insert(TaskEvent, events)
    changed.update({ready.pk, doing.pk})
    return claims


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
