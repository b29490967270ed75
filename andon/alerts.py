"""Raising andon alerts (andon.models.Alert): one row per cause, named by its
``key``, with the evidence as figures and as a sentence. The budgets raise them
(andon.budgets), and so do waste thresholds (andon.waste_thresholds: kind
waste_threshold, key ``waste:<threshold pk>:<crossing time>``); the inbox
shows and acknowledges them all alike. The caller sends the inbox its banner
after commit (andon.broadcast.line_stops_changed)."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from andon.models import Alert, AndonRecord


def alert_raise(
    *,
    kind: str,
    title: str,
    summary: str,
    evidence: dict[str, Any],
    key: str,
    board_id: int | None = None,
    agent_id: int | None = None,
    budget_id: int | None = None,
    threshold_id: int | None = None,
) -> Alert | None:
    """The alert, or None when one with this key exists already (raised before,
    or by a concurrent transaction: a savepoint keeps the caller's going)."""
    try:
        with transaction.atomic():
            return Alert.objects.create(
                kind=kind,
                title=title[:200],
                summary=summary,
                evidence=evidence,
                key=key[:120],
                board_id=board_id,
                agent_id=agent_id,
                budget_id=budget_id,
                threshold_id=threshold_id,
            )
    except IntegrityError:
        return None


def record(action: str, **fields: Any) -> AndonRecord:
    """An entry of the andon's record (append-only)."""
    return AndonRecord.objects.create(action=action, **fields)
