"""The ledger: a row (ModelCall) for every model call a run made, cached or
reused answers included, and the task's running totals of cost, tokens and calls.
A late run's calls are recorded too, marked stale: they were made, and cost what
they cost.

Every row saved here is also counted for Prometheus (``boards.metrics``: the
OpenTelemetry GenAI histograms and the ``kaizen_model_*`` counters) once its
transaction commits, so the scrape and the ledger agree: a batch rolled back and
completed again one run at a time is counted once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import partial

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import budgets, muda_rollups
from boards import broadcast, metrics
from boards.agents import CallRecord
from boards.models import Board, ModelCall, Task
from kaizen_web.rows import rows_insert


def ledger_rows(
    task: Task, calls: Iterable[CallRecord], *, attempt: int | None, stale: bool = False
) -> list[ModelCall]:
    """The ledger rows of a run's calls (not saved: the caller creates them with
    the rest of its batch)."""
    now = timezone.now()
    rows = [
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
            request_key=call.request_key,
            context_window=call.context_window,
            would_pass=call.would_pass,
            created_at=call.at or now,
        )
        for call in calls
    ]
    for row, call in zip(rows, calls, strict=True):
        # Not a column: the bounded kind of failure, for the metrics' error.type.
        row.error_type = call.error_type  # type: ignore[attr-defined]
    return rows


def ledger_save(rows: list[ModelCall]) -> None:
    """Save ledger rows (one INSERT of a fixed shape; each row gets its id), and
    count them for the metrics after commit."""
    if not rows:
        return
    rows_insert(ModelCall, rows, returning=True)
    transaction.on_commit(partial(metrics.model_calls_observe, rows))


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


def task_calls_record(task: Task, calls: tuple[CallRecord, ...], *, attempt: int | None) -> None:
    """Write the ledger rows of a run and add them to the task's totals (on the
    instance, which the caller saves under its row lock)."""
    if not calls:
        return
    rows = ledger_rows(task, calls, attempt=attempt)
    ledger_save(rows)
    muda_rollups.calls_added(rows)
    task_totals_add(task, calls)
    budgets_charge(rows)


def task_totals_add(task: Task, calls: Iterable[CallRecord]) -> None:
    """Add calls to the task's totals, on the instance (the caller saves it)."""
    for name, value in _totals(calls).items():
        setattr(task, name, getattr(task, name) + value)


def stale_calls_record(
    task_id: int, calls: tuple[CallRecord, ...], *, attempt: int | None, charge: bool = True
) -> list[ModelCall]:
    """The calls of a run whose result came too late still happened: into the
    ledger, marked stale and never accepted (the task's output is another run's,
    or none yet), and into the task's totals, as they were spent; everything
    else stays as the current run has it. Returns the ledger rows; with
    ``charge`` False the caller charges them to budgets (a batch charges once,
    last, so that the budgets' period rows are locked in one order)."""
    if not calls:
        return []
    task = (
        Task.objects.filter(pk=task_id)
        .only("pk", "board_id", "agent_id", "prompt_version", "attempts")
        .first()
    )
    if task is None:
        return []
    rows = ledger_rows(task, calls, attempt=attempt, stale=True)
    ledger_save(rows)
    muda_rollups.calls_added(rows)
    Task.objects.filter(pk=task_id).update(
        **{name: F(name) + value for name, value in _totals(calls).items()}
    )
    if charge:
        budgets_charge(rows)
    return rows


def _board_refresh(board_id: int) -> Callable[[], None]:
    return lambda: broadcast.columns_changed(board_id, [])


def budgets_charge(rows: list[ModelCall]) -> None:
    """Charge ledger rows just written to the budgets they fall under
    (andon.budgets), and after commit send what a warning or a stop changed:
    the boards' banners and flow status, the andon inbox. Call it last in the
    transaction that wrote the rows (it locks the budgets' period rows)."""
    charged = budgets.calls_charge(rows)
    if not charged:
        return
    board_ids = set(charged.boards)
    if charged.agents:
        board_ids |= set(Board.objects.filter(agents__in=charged.agents).values_list("pk", flat=True))
    for board_id in sorted(board_ids):
        transaction.on_commit(_board_refresh(board_id))
    if charged.alerts or charged.stops:
        transaction.on_commit(andon_broadcast.line_stops_changed)
