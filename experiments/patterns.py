"""The line's side of the knowledge base (issue 14): one Pattern row per finished
attempt, written in the transaction that knows its outcome.

- An attempt that passes its inspection: ``passed``, written by the completion
  (boards.services.runs) for its batch.
- An attempt that fails it on a board with no Review column: ``defect``.
- An attempt sent to Review: written when a reviewer decides it
  (andon.services): ``approved`` (with their note), ``corrected`` (with the
  correction), ``rejected`` (with the reason).

Rows are written without their vector; the embedder (experiments.knowledge)
embeds them after the commit, off the line's hot path. This module imports no
services: the line calls it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.utils import timezone

from andon.jidoka import FinishedRun
from andon.models import Escalation
from boards.models import Agent, ModelCall, Task
from experiments.models import Pattern, PromptVersion
from kaizen_web.rows import rows_insert

# What is embedded of a task: its title and input, cut to what an embedding
# model reads (MiniLM truncates at 256 word pieces; a long input's start is what
# tells it apart).
TEXT_LIMIT = 4000


def pattern_text(title: str, input: str) -> str:
    """The text a task is known by in the knowledge base."""
    return "\n\n".join(part for part in (title.strip(), input.strip()) if part)[:TEXT_LIMIT]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1024)
def _version_parameters(agent_id: int, number: int) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """A prompt version's generation parameters and its tiers (versions are
    immutable, so a process may keep them). An agent's active version has no row
    until a change records it (agents made by a config file or the admin): then
    the agent's own fields are the version's."""
    row = (
        PromptVersion.objects.filter(agent_id=agent_id, number=number)
        .values_list("parameters", "cascade")
        .first()
    ) or Agent.objects.filter(pk=agent_id, prompt_version=number).values_list("parameters", "cascade").first()
    if row is None:
        return {}, ()
    parameters, cascade = row
    tiers = tuple(tier if isinstance(tier, dict) else {} for tier in (cascade or []))
    return dict(parameters or {}), tiers


def _parameters(task: Task, version: int | None, tier: int | None) -> dict[str, Any]:
    """The parameters the accepted tier was called with: the version's, under
    the tier's own."""
    if task.agent_id is None or version is None:
        return {}
    parameters, tiers = _version_parameters(task.agent_id, version)
    merged = dict(parameters)
    if tier is not None and 0 < tier <= len(tiers):
        merged.update(tiers[tier - 1].get("parameters") or {})
    return merged


def make_pattern(
    task: Task,
    *,
    verdict: str,
    attempt: int,
    tier: int | None,
    model: str,
    version: int | None,
    **fields: Any,
) -> Pattern:
    text = pattern_text(task.title, task.input)
    return Pattern(
        task_id=task.pk,
        board_id=task.board_id,
        agent_id=task.agent_id,
        attempt=attempt,
        capability=task.capability,
        prompt_version=version,
        tier=tier,
        model=model,
        params=_parameters(task, version, tier),
        verdict=verdict,
        text=text,
        text_hash=text_digest(text),
        created_at=timezone.now(),
        **fields,
    )


def run_patterns(runs: Iterable[FinishedRun]) -> list[Pattern]:
    """The patterns of a completion batch's runs whose outcome is known now:
    passed, or a defect on a board with no Review column (an escalated run's
    pattern waits for its reviewer)."""
    rows = []
    for run in runs:
        if run.escalate:
            continue
        output = run.output
        accepted = [call for call in output.calls if call.accepted] or list(output.calls)
        rows.append(
            make_pattern(
                run.task,
                verdict=Pattern.Verdict.PASSED if run.verdict.passed else Pattern.Verdict.DEFECT,
                attempt=run.task.attempts or 1,
                version=run.task.prompt_version,
                tier=output.tier,
                model=accepted[-1].model if accepted else "",
                output=output.text,
                reason="" if run.verdict.passed else run.verdict.summary(),
                cost=sum((call.cost for call in output.calls), Decimal(0)),
                latency_ms=sum(call.latency_ms for call in output.calls),
                tokens_in=sum(call.tokens_in for call in output.calls),
                tokens_out=sum(call.tokens_out for call in output.calls),
            )
        )
    return rows


def runs_record(runs: Iterable[FinishedRun]) -> None:
    """Write the batch's patterns (inside the completion's transaction)."""
    if not settings.KAIZEN_KNOWLEDGE:
        return
    rows = run_patterns(runs)
    if rows:
        # One INSERT of a fixed shape (kaizen_web.rows): Django's for a model with a
        # JSON field had a placeholder per value, a third of a completion's CPU.
        rows_insert(Pattern, rows, ignore_conflicts=True)


_DECIDED: dict[str, str] = {
    Escalation.Status.APPROVED: Pattern.Verdict.APPROVED,
    Escalation.Status.CORRECTED: Pattern.Verdict.CORRECTED,
    Escalation.Status.REJECTED: Pattern.Verdict.REJECTED,
}


def decision_patterns(escalations: Iterable[Escalation]) -> list[Pattern]:
    """The patterns of decided escalations: the escalated attempt, its output and
    what the reviewer said of it. The attempt's model calls give its tier,
    model, tokens and latency (one query for all)."""
    escalations = [e for e in escalations if e.status in _DECIDED]
    if not escalations:
        return []
    keys = {(e.task_id, e.attempt) for e in escalations}
    calls: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for row in (
        ModelCall.objects.filter(task_id__in={task for task, _ in keys})
        .order_by("pk")
        .values("task_id", "attempt", "tier", "model", "accepted", "latency_ms", "tokens_in", "tokens_out")
    ):
        if (row["task_id"], row["attempt"]) in keys:
            calls.setdefault((row["task_id"], row["attempt"]), []).append(row)
    tasks = Task.objects.in_bulk({e.task_id for e in escalations})
    rows = []
    for escalation in escalations:
        task = tasks.get(escalation.task_id)
        if task is None:
            continue
        mine = calls.get((escalation.task_id, escalation.attempt), [])
        accepted = [c for c in mine if c["accepted"]] or mine
        verdict = _DECIDED[Escalation.Status(escalation.status)]
        rows.append(
            make_pattern(
                task,
                verdict=verdict,
                attempt=escalation.attempt,
                # The attempt's version (the task's may have moved on since).
                version=escalation.prompt_version,
                tier=accepted[-1]["tier"] if accepted else None,
                model=accepted[-1]["model"] if accepted else "",
                escalation_id=escalation.pk,
                output=escalation.output,
                correction=escalation.corrected_output if verdict == Pattern.Verdict.CORRECTED else "",
                reason=escalation.note,
                cost=escalation.cost,
                latency_ms=sum(c["latency_ms"] for c in mine),
                tokens_in=sum(c["tokens_in"] for c in mine),
                tokens_out=sum(c["tokens_out"] for c in mine),
            )
        )
    return rows


def decisions_record(escalations: Iterable[Escalation]) -> None:
    """Write the patterns of escalations just decided (inside the decision's transaction)."""
    if not settings.KAIZEN_KNOWLEDGE:
        return
    rows = decision_patterns(escalations)
    if rows:
        Pattern.objects.bulk_create(rows, ignore_conflicts=True)
