"""Leases: a claimed run holds its task for a while, renewed while it is in
flight. A run that is lost (its worker died, froze or stopped) gives its task
back: the reaper takes back tasks whose lease ran out or whose worker stopped
beating, and a worker that stops hands back its own at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from boards import workers
from boards.models import Task, TaskEvent
from boards.services.primitives import ColumnMissing, board_lock, task_return_or_fail
from boards.services.pull import board_changed_on_commit

logger = logging.getLogger(__name__)

Status = Task.Status


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
    """Take tasks whose run is lost out of In progress (see task_return_or_fail for
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
            board_lock(board_id)
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
                    changed = task_return_or_fail(task, kind=TaskEvent.Kind.LEASE_EXPIRED, reason=reason)
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
            board_changed_on_commit(board_id, column_ids, pull=True)
    if count:
        logger.warning("returned %s task(s) whose run was lost (lease expired or worker dead)", count)
    return count


def leases_release_worker(*, worker: str) -> int:
    """A worker process that stops hands back, at once, the tasks its runs hold
    (see boards.agents.runtime.worker_handover): each goes back to Ready (or the
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
            board_lock(board_id)
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
                    changed = task_return_or_fail(
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
            board_changed_on_commit(board_id, column_ids, pull=True)
    if count:
        logger.warning("worker %s handed back %s task(s) as it stopped", worker, count)
    return count
