"""A fixed history of a line for the Muda tests: tasks, their events, model calls,
inspections and an escalation, at set times, so every waste can be worked out by
hand (the expected values are in tests/andon/test_muda.py).

Times are hours after T0; the window is [T0, T0 + 24 h). The rows are written
straight to the tables (not through the line's services), so the Muda rollups are
rebuilt from them at the end (andon.muda_rollups.rebuild)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from andon import muda_rollups
from andon.models import Escalation, Inspection
from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent
from tests.factories import make_agent, make_board

T0 = datetime(2026, 1, 5, tzinfo=UTC)
SINCE = T0
UNTIL = T0 + timedelta(days=1)
CACHE_SECONDS = 7200

S = Task.Status
K = TaskEvent.Kind


def at(hours: float) -> datetime:
    return T0 + timedelta(minutes=round(hours * 60))


@dataclass
class Line:
    board: Board
    alpha: Agent
    beta: Agent
    tasks: dict[int, Task]


def _events(task: Task, *steps: tuple[float, str, str, str]) -> None:
    for hours, kind, from_status, to_status in steps:
        event = TaskEvent.objects.create(
            task=task,
            board=task.board,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            actor=TaskEvent.Actor.SYSTEM,
        )
        TaskEvent.objects.filter(pk=event.pk).update(created_at=at(hours))


def _call(task: Task, hours: float, **fields) -> None:
    defaults = {
        "attempt": 1,
        "tier": 1,
        "source": ModelCall.Source.MODEL,
        "provider": "simulated",
        "model": "sim-small" if fields.get("tier", 1) == 1 else "sim-medium",
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": Decimal(0),
        "accepted": False,
        "error": "",
        "request_key": "",
        "context_window": None,
        "would_pass": None,
    }
    values = {**defaults, **fields}
    values["cost"] = Decimal(str(values["cost"]))
    ModelCall.objects.create(task=task, board=task.board, agent=task.agent, created_at=at(hours), **values)


def _inspection(task: Task, hours: float, *, attempt: int, passed: bool, waste: int, out: int) -> Inspection:
    inspection = Inspection.objects.create(
        task=task,
        board=task.board,
        agent=task.agent,
        attempt=attempt,
        passed=passed,
        waste_tokens=waste,
        tokens_out=out,
    )
    Inspection.objects.filter(pk=inspection.pk).update(created_at=at(hours))
    return inspection


def _task(board: Board, agent: Agent, n: int, status: str, role: str) -> Task:
    return Task.objects.create(
        board=board,
        column=board.columns.get(role=role),
        title=f"Task {n}",
        status=status,
        agent=agent,
    )


def build_line(*, offset: int = 0, board: Board | None = None, alpha: Agent | None = None, beta=None) -> Line:
    """The history; ``offset`` shifts task numbers (to add the same history again
    on the same board, for the query-count tests)."""
    board = board or make_board()
    alpha = alpha or make_agent(boards=[board], name=f"alpha{offset or ''}")
    beta = beta or make_agent(boards=[board], name=f"beta{offset or ''}")
    R = Column.Role
    t = {
        1: _task(board, alpha, 1 + offset, S.DONE, R.DONE),
        2: _task(board, alpha, 2 + offset, S.DONE, R.DONE),
        3: _task(board, beta, 3 + offset, S.DONE, R.DONE),
        4: _task(board, beta, 4 + offset, S.DONE, R.DONE),
        5: _task(board, alpha, 5 + offset, S.READY, R.READY),
        6: _task(board, alpha, 6 + offset, S.DONE, R.DONE),
        7: _task(board, alpha, 7 + offset, S.DONE, R.DONE),
    }
    _events(
        t[1],
        (0, K.CREATED, "", S.BACKLOG),
        (1, K.MOVED, S.BACKLOG, S.READY),
        (2, K.CLAIMED, S.READY, S.RUNNING),
        (3, K.COMPLETED, S.RUNNING, S.DONE),
    )
    _events(
        t[2],
        (4, K.CREATED, "", S.READY),
        (4.5, K.CLAIMED, S.READY, S.RUNNING),
        (5, K.ESCALATED, S.RUNNING, S.REVIEW),
        (7, K.REJECTED, S.REVIEW, S.READY),
        (7.5, K.CLAIMED, S.READY, S.RUNNING),
        (8, K.COMPLETED, S.RUNNING, S.DONE),
    )
    _events(
        t[3],
        (10, K.CREATED, "", S.READY),
        (10.25, K.CLAIMED, S.READY, S.RUNNING),
        (10.5, K.BLOCKED, S.RUNNING, S.RUNNING),
        (11, K.UNBLOCKED, S.RUNNING, S.RUNNING),
        (11.5, K.COMPLETED, S.RUNNING, S.DONE),
    )
    _events(
        t[4],
        (12, K.CREATED, "", S.READY),
        (12.5, K.CLAIMED, S.READY, S.RUNNING),
        (13, K.COMPLETED, S.RUNNING, S.DONE),
    )
    _events(
        t[5],
        (14, K.CREATED, "", S.READY),
        (14.5, K.CLAIMED, S.READY, S.RUNNING),
        (14.8, K.ATTEMPT_FAILED, S.RUNNING, S.READY),
        (15, K.CLAIMED, S.READY, S.RUNNING),
        (15.3, K.ATTEMPT_FAILED, S.RUNNING, S.READY),
    )
    _events(
        t[6],
        (15.9, K.CREATED, "", S.READY),
        (16, K.CLAIMED, S.READY, S.RUNNING),
        (16, K.COMPLETED, S.RUNNING, S.DONE),
    )
    # Before the window: none of it counts.
    _events(
        t[7],
        (-3, K.CREATED, "", S.READY),
        (-2.5, K.CLAIMED, S.READY, S.RUNNING),
        (-1, K.COMPLETED, S.RUNNING, S.DONE),
    )
    m = "sim-medium"
    _call(
        t[7],
        -2,
        tokens_in=100,
        tokens_out=100,
        cost="1.00",
        accepted=True,
        request_key="k0",
        context_window=1000,
    )
    _call(
        t[1],
        2.5,
        tokens_in=100,
        tokens_out=50,
        cost="0.10",
        request_key="k1",
        context_window=1000,
        would_pass=True,
    )
    _call(
        t[1],
        2.6,
        tier=2,
        model=m,
        tokens_in=100,
        tokens_out=40,
        cost="0.50",
        accepted=True,
        request_key="k2",
        context_window=4000,
    )
    _call(
        t[2],
        4.75,
        tokens_in=200,
        tokens_out=100,
        cost="0.20",
        accepted=True,
        request_key="k3",
        context_window=1000,
    )
    _call(
        t[2],
        7.75,
        attempt=2,
        tokens_in=220,
        tokens_out=80,
        cost="0.25",
        accepted=True,
        request_key="k4",
        context_window=1000,
    )
    _call(t[3], 11.2, error="boom", request_key="k5", context_window=1000)
    _call(
        t[3],
        11.3,
        tier=2,
        model=m,
        tokens_in=300,
        tokens_out=60,
        cost="0.60",
        accepted=True,
        request_key="k6",
        context_window=4000,
    )
    _call(t[4], 12.8, source=ModelCall.Source.CACHE, request_key="k7", context_window=1000, would_pass=False)
    _call(
        t[4],
        12.9,
        tier=2,
        model=m,
        tokens_in=300,
        tokens_out=60,
        cost="0.60",
        accepted=True,
        request_key="k6",
        context_window=4000,
    )
    _call(t[5], 14.6, tokens_in=100, tokens_out=30, cost="0.05", request_key="k8", context_window=1000)
    _call(t[5], 14.7, tier=2, model=m, error="boom", request_key="k9", context_window=4000)
    _call(
        t[5],
        15.1,
        attempt=2,
        tokens_in=100,
        tokens_out=30,
        cost="0.05",
        request_key="k8",
        context_window=1000,
    )
    _call(t[5], 15.2, attempt=2, tier=2, model=m, error="boom", request_key="k9", context_window=4000)
    _call(t[6], 16, tier=None, source=ModelCall.Source.REUSE, provider="", model="", accepted=True)

    _inspection(t[7], -1, attempt=1, passed=False, waste=50, out=100)
    _inspection(t[1], 3, attempt=1, passed=True, waste=10, out=40)
    rejected = _inspection(t[2], 5, attempt=1, passed=False, waste=0, out=100)
    _inspection(t[2], 8, attempt=2, passed=True, waste=0, out=80)
    _inspection(t[3], 11.5, attempt=1, passed=True, waste=20, out=60)
    _inspection(t[4], 13, attempt=1, passed=False, waste=0, out=60)
    _inspection(t[6], 16, attempt=1, passed=True, waste=0, out=0)
    escalation = Escalation.objects.create(
        task=t[2],
        board=board,
        agent=alpha,
        inspection=rejected,
        attempt=1,
        status=Escalation.Status.REJECTED,
    )
    Escalation.objects.filter(pk=escalation.pk).update(created_at=at(5), decided_at=at(7))
    # Written straight to the tables, back-dated: the rollups are rebuilt from them,
    # as for history that came before them.
    muda_rollups.rebuild()
    return Line(board=board, alpha=alpha, beta=beta, tasks=t)
