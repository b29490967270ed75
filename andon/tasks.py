"""Celery tasks of the andon: thin wrappers that call one service.

review_demo_escalations is scheduled only when KAIZEN_DEMO_REVIEWER_SECONDS is
set (kaizen_web.settings). Running it twice decides two inbox rows at most,
each once: a decision locks its escalations and skips those already decided,
and a line already restarted is not restarted again.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from andon import broadcast as andon_broadcast
from andon import budgets, demo_reviewer, waste_thresholds
from boards import services as board_services


@shared_task(name="andon.tasks.review_demo_escalations")
def review_demo_escalations() -> int:
    if settings.KAIZEN_DEMO_REVIEWER_SECONDS <= 0:
        return 0
    decided = demo_reviewer.demo_review_run()
    return len(decided) + len(demo_reviewer.demo_restart_run())


@shared_task(name="andon.tasks.budgets_tick")
def budgets_tick() -> dict[str, int]:
    """Lift budget stops whose period ended, recount new budgets, look for a
    cost anomaly (andon.budgets.budgets_tick); then send the boards whose
    budget stop ended their status (and pull them), and the inbox its banner.
    Idempotent: a stop is lifted once, an anomaly raised once an hour per board
    or agent.

    Then the waste thresholds (andon.waste_thresholds.thresholds_tick): each
    enabled one is computed, and a crossing raises its alert (and stop) once."""
    tick = budgets.budgets_tick()
    waste = waste_thresholds.thresholds_tick()
    for board_id in sorted(tick.boards | waste.boards):
        board_services.board_changed_on_commit(board_id, [], pull=True)
    if tick.lifted or tick.anomalies or tick.recounted or waste.alerts or waste.stops:
        andon_broadcast.line_stops_changed()
    return {
        "lifted": len(tick.lifted),
        "recounted": tick.recounted,
        "anomalies": len(tick.anomalies),
        "thresholds_checked": waste.checked,
        "waste_alerts": len(waste.alerts),
        "waste_stops": len(waste.stops),
    }
