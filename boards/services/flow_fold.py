"""Folding a board's history into the flow rollups (FlowHour, FlowLineHour,
FlowItem), whole hours at a time, once each hour is over.

Why fold finished hours rather than update counters as each event commits: the
line records status changes from half a dozen services, in transactions that
run side by side; a counter row per (board, hour) updated by each of them would
be a lock every completion on the board waits for, and a code path that forgot
it would leave the rollups wrong for good. An hour that is over does not change
(its events were committed, KAIZEN_FLOW_FOLD_GRACE_SECONDS after its end, by
transactions long finished), so it is summed once from the event log itself,
off the line's path, by the periodic task; the flow measures read the rollups
for the hours folded and the event log for the rest (boards.flow_selectors),
so a figure never waits on the fold and never differs from the log's.

A history written with times in the past after its hours were folded (an import
of old work, a benchmark's seed) is folded again with ``flow_fold_rebuild``
(``manage.py flow_fold --rebuild``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q, Sum
from django.utils import timezone

from andon.models import Escalation, Inspection
from boards.flow_selectors import HOUR, EpochBucket, FlowFilter, flow_finished_raw_get
from boards.models import Board, FlowHour, FlowItem, FlowLineHour, ModelCall, TaskEvent

logger = logging.getLogger(__name__)

# Hours folded in one transaction: a day of a busy line is a few thousand rows.
CHUNK_HOURS = 24


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def fold_horizon(now: datetime | None = None) -> datetime:
    """The end of the last hour that may be folded: over, and its grace past."""
    now = now or timezone.now()
    return _floor_hour(now - timedelta(seconds=settings.KAIZEN_FLOW_FOLD_GRACE_SECONDS))


def _fold_span(board: Board, since: datetime, until: datetime) -> tuple[int, int, int]:
    """Write the rollups of [since, until) (whole hours); returns the rows written."""
    window = Q(created_at__gte=since, created_at__lt=until)
    changes: dict[tuple, int] = {}
    rows = (
        TaskEvent.objects.filter(window, board=board)
        .exclude(from_status=F("to_status"))
        .order_by()
        .annotate(hour=EpochBucket("created_at", HOUR))
        .values_list("hour", "task__agent_id", "task__capability", "from_status", "to_status", "actor")
        .annotate(n=Count("pk"))
    )
    for hour, agent_id, capability, from_status, to_status, actor, n in rows:
        key = (hour, agent_id, capability, from_status, to_status, actor == TaskEvent.Actor.USER)
        changes[key] = changes.get(key, 0) + n
    FlowHour.objects.bulk_create(
        FlowHour(
            board=board,
            hour=hour,
            agent_id=agent_id,
            capability=capability,
            from_status=from_status,
            to_status=to_status,
            by_person=by_person,
            changes=n,
        )
        for (hour, agent_id, capability, from_status, to_status, by_person), n in changes.items()
    )

    line: dict[tuple, dict[str, int | Decimal]] = {}
    for model, name, total in (
        (Escalation, "escalations", Count("pk")),
        (Inspection, "inspections", Count("pk")),
        (ModelCall, "cost", Sum("cost")),
    ):
        summed = (
            model.objects.filter(window, board=board)
            .order_by()
            .annotate(hour=EpochBucket("created_at", HOUR))
            .values_list("hour", "agent_id", "task__capability")
            .annotate(n=total)
        )
        for hour, agent_id, capability, n in summed:
            line.setdefault((hour, agent_id, capability), {})[name] = n or 0
    FlowLineHour.objects.bulk_create(
        FlowLineHour(board=board, hour=hour, agent_id=agent_id, capability=capability, **values)
        for (hour, agent_id, capability), values in line.items()
    )

    finished = flow_finished_raw_get(board=board, where=FlowFilter(since=since, until=until), since=since)
    FlowItem.objects.bulk_create(
        FlowItem(
            board=board,
            task_id=item.task_id,
            created_at=item.created_at,
            started_at=item.started_at,
            finished_at=item.finished_at,
            agent_id=item.agent_id,
            capability=item.capability,
            first_pass=item.first_pass,
        )
        for item in finished
    )
    return len(changes), len(line), len(finished)


def _next_activity(board: Board, since: datetime | None) -> datetime | None:
    """The hour of the board's first record at or after ``since`` (any time when
    None), in the event log, the ledger or the andon's rows: the fold skips the
    hours before it, so a quiet month costs four queries, not thirty days."""
    firsts = []
    for model in (TaskEvent, ModelCall, Inspection, Escalation):
        rows = model.objects.filter(board=board)
        if since is not None:
            rows = rows.filter(created_at__gte=since)
        firsts.append(rows.aggregate(first=Min("created_at"))["first"])
    known = [at for at in firsts if at is not None]
    return _floor_hour(min(known)) if known else None


def flow_fold(
    *,
    board_id: int,
    until: datetime | None = None,
    max_hours: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> datetime | None:
    """Fold the board's whole hours not folded yet, up to ``until`` (at most the
    fold horizon), ``max_hours`` at most, a day per transaction. Returns where
    the board is folded up to. Safe to run in several processes at once: each
    day is claimed by moving the board's mark from where it was read (a
    compare-and-set), and a process that loses the race stops. ``progress`` is
    called with (hours done, hours to do) after each day."""
    horizon = fold_horizon()
    until = horizon if until is None else min(_floor_hour(until), horizon)
    board = Board.objects.get(pk=board_id)
    read = board.flow_folded_until
    folded = read
    first: datetime | None = None
    spent = 0  # hours folded (a quiet hour skipped costs nothing)
    while folded is None or folded < until:
        if max_hours is not None and spent >= max_hours:
            break
        # Whole quiet hours are skipped: the next chunk starts at the next record.
        start = _next_activity(board, folded)
        start = until if start is None else min(until, max(start, folded or start))
        first = first or start
        hours = min(CHUNK_HOURS, int((until - start).total_seconds()) // HOUR)
        if max_hours is not None:
            hours = min(hours, max_hours - spent)
        end = start + timedelta(hours=hours)
        with transaction.atomic():
            mark = Q(flow_folded_until=read) if read is not None else Q(flow_folded_until__isnull=True)
            if not Board.objects.filter(mark, pk=board_id).update(flow_folded_until=end):
                logger.info("board %s: another process is folding its flow rollups", board_id)
                return Board.objects.filter(pk=board_id).values_list("flow_folded_until", flat=True).first()
            if hours:
                _fold_span(board, start, end)
        read = folded = end
        spent += hours
        if progress is not None:
            total = int((until - first).total_seconds()) // HOUR
            progress(int((end - first).total_seconds()) // HOUR, total)
        if not hours:
            break
    return folded


def flow_fold_rebuild(*, board_id: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Drop the board's rollups and fold its whole history again."""
    with transaction.atomic():
        Board.objects.filter(pk=board_id).update(flow_folded_until=None)
        for model in (FlowHour, FlowLineHour, FlowItem):
            model.objects.filter(board_id=board_id).delete()
    flow_fold(board_id=board_id, progress=progress)


def boards_flow_fold(*, max_hours: int = 24 * 30) -> int:
    """The periodic task: fold every board's finished hours (a month at most a
    board a run, so a long history is caught up over a few runs). One board's
    error is logged and does not stop the others; returns the boards folded."""
    done = 0
    for board_id in Board.objects.values_list("pk", flat=True):
        try:
            flow_fold(board_id=board_id, max_hours=max_hours)
            done += 1
        except Exception:
            logger.exception("folding the flow rollups of board %s failed", board_id)
    return done
