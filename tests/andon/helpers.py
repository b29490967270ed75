"""Small builders for the jidoka tests: claimed runs, and outputs that pass or fail
the default checks (confidence at least 0.7, no uncertainty markers). Reviewers
are tests.factories.make_reviewer."""

from __future__ import annotations

from decimal import Decimal

from andon.models import Escalation
from boards import services
from boards.agents import CallRecord, Output
from boards.models import Board, Task

GOOD = "The housing has a 4 mm scratch near the seal; replace the cover."
PASSING = 0.95
DEFECTIVE = 0.2


def pull(board: Board) -> list[services.Claim]:
    return services.board_pull(board_id=board.pk)


def claim_one(board: Board, *, title: str = "Inspect part 7", input: str = "scratch on housing"):
    """A new task of ``board``, claimed by its agent: (task, claim)."""
    task = services.task_create(board=board, title=title, input=input)
    claims = pull(board)
    [claim] = [c for c in claims if c.task_id == task.pk]
    return task, claim


def model_call(
    *, model: str = "sim-small", cost: str = "0", error: str = "", confidence: float | None = None
) -> CallRecord:
    return CallRecord(
        source="model",
        tier=1,
        provider="simulated",
        model=model,
        tokens_in=0 if error else 12,
        tokens_out=0 if error else 16,
        cost=Decimal(cost),
        confidence=confidence,
        accepted=not error,
        error=error,
    )


def complete(
    claim: services.Claim,
    *,
    confidence: float | None = PASSING,
    text: str = GOOD,
    cost: str | None = None,
) -> bool:
    """Finish a claimed run with ``text``; ``cost`` adds one accepted model call costing that."""
    calls = () if cost is None else (model_call(cost=cost, confidence=confidence),)
    output = Output(
        text=text,
        confidence=confidence,
        confidence_source="simulated",
        tier=1 if calls else None,
        calls=calls,
    )
    return services.task_complete(task_id=claim.task_id, lease_token=claim.lease_token, output=output)


def fail(claim: services.Claim, *, error: str = "provider timed out", calls=()) -> bool:
    return services.task_attempt_fail(
        task_id=claim.task_id, lease_token=claim.lease_token, error=error, calls=tuple(calls)
    )


def escalate(board: Board, **task_kwargs) -> Escalation:
    """A task of ``board`` claimed and completed with a defect: its open escalation."""
    task, claim = claim_one(board, **task_kwargs)
    assert complete(claim, confidence=DEFECTIVE)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def where(task: Task) -> tuple[str, str]:
    """The task's (column role, status), read afresh."""
    task.refresh_from_db()
    return task.column.role, task.status
