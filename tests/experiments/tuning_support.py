"""Builders for the tuning tests: an agent's history made by hand, attempt by
attempt, as the line leaves it (a task, its ledger rows, its inspection and its
knowledge-base pattern), so every figure the evidence shows can be counted here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from andon.models import Inspection
from boards.models import Agent, Column, ModelCall, Task
from experiments.models import Pattern
from experiments.planning import Window

# Three simulated tiers, cheapest first, with the simulated models' list prices.
THREE_TIERS = [
    {"provider": "simulated", "model": "sim-small", "threshold": 0.75},
    {"provider": "simulated", "model": "sim-medium", "threshold": 0.85},
    {"provider": "simulated", "model": "sim-large"},
]
TWO_TIERS = [THREE_TIERS[0], THREE_TIERS[2]]
CHECKS = [{"check": "confidence", "min": 0.7}]


@dataclass(frozen=True)
class C:
    """One call of an attempt: its tier, what it said and what it cost. Whether it
    was taken follows from the attempt's tier."""

    tier: int
    confidence: float | None = 0.9
    would_pass: bool | None = None
    cost: str = "0.001"
    tokens_out: int = 40
    error: str = ""
    latency_ms: float = 100.0


def add(
    agent: Agent,
    n: int,
    *,
    verdict: str = "passed",
    tier: int | None = 1,
    calls: list[C] | None = None,
    capability: str = "classify",
    version: int | None = None,
    params: dict[str, Any] | None = None,
    ago: timedelta = timedelta(minutes=1),
    ledger: bool = True,
) -> list[Task]:
    """``n`` finished attempts alike: each a task, its calls (one at tier 1 by
    default), its inspection and its pattern. ``params``: the parameters the
    pattern records (by default the agent's, under the taken tier's own)."""
    calls = calls if calls is not None else [C(tier=tier or 1)]
    version = version if version is not None else agent.prompt_version
    done = Column.objects.get(board=agent.boards.first(), role=Column.Role.DONE)
    at = timezone.now() - ago
    tasks = Task.objects.bulk_create(
        [
            Task(
                board_id=done.board_id,
                column=done,
                title=f"{capability} {i}",
                input=f"{capability} input {i}",
                capability=capability,
                status=Task.Status.DONE,
                agent=agent,
                prompt_version=version,
                attempts=1,
            )
            for i in range(n)
        ]
    )
    cascade = agent.cascade
    if params is None:
        params = dict(agent.parameters or {})
        if tier is not None and tier <= len(cascade):
            params.update(cascade[tier - 1].get("parameters") or {})
    taken = [c for c in calls if c.tier == tier]
    rows, patterns, inspections = [], [], []
    for task in tasks:
        for call in calls:
            rows.append(
                ModelCall(
                    task=task,
                    board_id=task.board_id,
                    agent=agent,
                    prompt_version=version,
                    attempt=1,
                    tier=call.tier,
                    provider=cascade[call.tier - 1]["provider"] if call.tier <= len(cascade) else "simulated",
                    model=cascade[call.tier - 1]["model"] if call.tier <= len(cascade) else "sim-large",
                    tokens_in=20,
                    tokens_out=call.tokens_out,
                    cost=Decimal(call.cost),
                    latency_ms=call.latency_ms,
                    confidence=call.confidence,
                    accepted=call.tier == tier,
                    would_pass=None if call.tier == tier else call.would_pass,
                    error=call.error,
                    created_at=at,
                )
            )
        patterns.append(
            Pattern(
                task=task,
                board_id=task.board_id,
                agent=agent,
                attempt=1,
                capability=capability,
                prompt_version=version,
                tier=tier,
                model=cascade[tier - 1]["model"] if tier and tier <= len(cascade) else "",
                params=params,
                verdict=verdict,
                output="an answer",
                cost=sum((Decimal(c.cost) for c in calls), Decimal(0)),
                latency_ms=sum(c.latency_ms for c in calls),
                tokens_in=20 * len(calls),
                tokens_out=sum(c.tokens_out for c in calls),
                text=task.title,
                text_hash=f"{task.pk:064x}",
                created_at=at,
            )
        )
        inspections.append(
            Inspection(
                task=task,
                board_id=task.board_id,
                agent=agent,
                prompt_version=version,
                attempt=1,
                passed=verdict == Pattern.Verdict.PASSED,
                tokens_out=taken[0].tokens_out if taken else 0,
            )
        )
    if ledger:
        ModelCall.objects.bulk_create(rows)
    Pattern.objects.bulk_create(patterns)
    Inspection.objects.bulk_create(inspections)
    return tasks


def window(agent: Agent, *, days: int = 7, outputs: int = 100) -> Window:
    """The kaizen cycle's window over the last ``days``, as pdca builds it
    (``outputs`` stands for the inspections it counted)."""
    since = timezone.now() - timedelta(days=days)
    return Window(agent=agent, since=since, days=days, outputs=[{}] * outputs, calls_since=since)
