"""A fixed history of a board, written straight into the event log, the ledger
and the andon's tables (times set by hand), for the flow tests. The values it
must give are worked out by hand in the tests that use it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from andon.models import Escalation, Inspection
from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent
from tests.factories import make_agent, make_board, make_user

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
E = TaskEvent.Kind


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _task(board: Board, title: str, *, status: str, agent: Agent | None, capability: str = "") -> Task:
    role = {"running": "in_progress", "failed": "done"}.get(status, status)
    column = Column.objects.get(board=board, role=role)
    task = Task.objects.create(
        board=board, column=column, title=title, status=status, agent=agent, capability=capability
    )
    Task.objects.filter(pk=task.pk).update(created_at=T0)
    return task


def _events(task: Task, steps: list[tuple[float, str, str, str, str]], *, agent=None, user=None) -> None:
    """(seconds, kind, from, to, actor) each."""
    for seconds, kind, from_status, to_status, actor in steps:
        event = TaskEvent.objects.create(
            task=task,
            board_id=task.board_id,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            actor=actor,
            agent=agent if actor == "agent" else None,
            user=user if actor == "user" else None,
        )
        TaskEvent.objects.filter(pk=event.pk).update(created_at=at(seconds))


def _inspection(task: Task, agent: Agent, seconds: float, *, passed: bool) -> Inspection:
    inspection = Inspection.objects.create(task=task, board_id=task.board_id, agent=agent, passed=passed)
    Inspection.objects.filter(pk=inspection.pk).update(created_at=at(seconds))
    if not passed:
        escalation = Escalation.objects.create(
            task=task, board_id=task.board_id, agent=agent, inspection=inspection
        )
        Escalation.objects.filter(pk=escalation.pk).update(created_at=at(seconds))
    return inspection


def _call(task: Task, agent: Agent, seconds: float, cost: str) -> None:
    ModelCall.objects.create(
        task=task,
        board_id=task.board_id,
        agent=agent,
        cost=Decimal(cost),
        provider="simulated",
        created_at=at(seconds),
    )


def build_history() -> dict:
    """Five tasks on a board served by alpha (summarise) and beta, over T0..T0+3h:

    1 alpha: created 0, Ready 60, claimed 600, passed and Done 1200.
    2 alpha: created 0, Ready 60, claimed 900, attempt failed (back to Ready) 1000,
      claimed 1100, escalated 1500, approved (Done) 2400.
    3 beta: created 0, Ready 60, claimed 1800, escalated 1900, rejected (Ready) 2000,
      claimed 2100, passed and Done 5400.
    4 beta: created in Ready 0, claimed 3000, still running.
    5 no agent: created 0, moved to Done by hand 7000 (never claimed).
    """
    board = make_board()
    alpha = make_agent(boards=[board], name="alpha", capabilities=["summarise"])
    beta = make_agent(boards=[board], name="beta")
    user = make_user()
    t1 = _task(board, "one", status="done", agent=alpha, capability="summarise")
    _events(
        t1,
        [
            (0, E.CREATED, "", "backlog", "system"),
            (60, E.MOVED, "backlog", "ready", "system"),
            (600, E.CLAIMED, "ready", "running", "agent"),
            (1200, E.COMPLETED, "running", "done", "agent"),
        ],
        agent=alpha,
    )
    t2 = _task(board, "two", status="done", agent=alpha, capability="summarise")
    _events(
        t2,
        [
            (0, E.CREATED, "", "backlog", "system"),
            (60, E.MOVED, "backlog", "ready", "system"),
            (900, E.CLAIMED, "ready", "running", "agent"),
            (1000, E.ATTEMPT_FAILED, "running", "ready", "agent"),
            (1100, E.CLAIMED, "ready", "running", "agent"),
            (1500, E.ESCALATED, "running", "review", "agent"),
        ],
        agent=alpha,
    )
    _events(t2, [(2400, E.APPROVED, "review", "done", "user")], user=user)
    t3 = _task(board, "three", status="done", agent=beta)
    _events(
        t3,
        [
            (0, E.CREATED, "", "backlog", "system"),
            (60, E.MOVED, "backlog", "ready", "system"),
            (1800, E.CLAIMED, "ready", "running", "agent"),
            (1900, E.ESCALATED, "running", "review", "agent"),
        ],
        agent=beta,
    )
    _events(t3, [(2000, E.REJECTED, "review", "ready", "user")], user=user)
    _events(
        t3,
        [(2100, E.CLAIMED, "ready", "running", "agent"), (5400, E.COMPLETED, "running", "done", "agent")],
        agent=beta,
    )
    t4 = _task(board, "four", status="running", agent=beta)
    _events(
        t4,
        [(0, E.CREATED, "", "ready", "system"), (3000, E.CLAIMED, "ready", "running", "agent")],
        agent=beta,
    )
    t5 = _task(board, "five", status="done", agent=None)
    _events(t5, [(0, E.CREATED, "", "backlog", "system")])
    _events(t5, [(7000, E.MOVED, "backlog", "done", "user")], user=user)
    # A block changes no status: ignored by every measure.
    _events(t4, [(3500, E.BLOCKED, "running", "running", "user")], user=user)
    _inspection(t1, alpha, 1200, passed=True)
    _inspection(t2, alpha, 1500, passed=False)
    _inspection(t3, beta, 1900, passed=False)
    _inspection(t3, beta, 5400, passed=True)
    _call(t1, alpha, 1150, "0.01")
    _call(t2, alpha, 950, "0.02")
    _call(t2, alpha, 1450, "0.03")
    _call(t3, beta, 5300, "0.05")
    return {"board": board, "alpha": alpha, "beta": beta, "tasks": [t1, t2, t3, t4, t5], "user": user}


def add_finished(board: Board, agent: Agent, n: int, *, start: float = 100) -> None:
    """``n`` more tasks claimed and finished inside the window (for query counts)."""
    for i in range(n):
        task = _task(board, f"extra {i}", status="done", agent=agent)
        _events(
            task,
            [
                (start, E.CREATED, "", "ready", "system"),
                (start + 10, E.CLAIMED, "ready", "running", "agent"),
                (start + 20 + i, E.COMPLETED, "running", "done", "agent"),
            ],
            agent=agent,
        )
        _call(task, agent, start + 15, "0.001")
