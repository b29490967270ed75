"""Waste thresholds, the line's side: the periodic tick computes each enabled
threshold's waste (andon.muda.waste_measure, over the threshold's window) and,
when the value is worse than the limit, raises an andon alert with the
evidence, once per crossing, and with ``stop_line`` stops the line of the
threshold's board or agent (a LineStop of kind waste, which the pull and the
board's flow status honour like any stop, until a reviewer restarts it).

Why in the tick and not when an output is inspected: a waste over the last
200 outputs reads hundreds of rows, and the line's completion is its hot path.
A minute late (KAIZEN_BUDGETS_TICK_SECONDS) is soon enough for a rate over 200
outputs.

One alert per crossing: the threshold keeps ``crossed_at`` (since when the
value is worse than the limit). A tick that finds it worse and ``crossed_at``
empty raises the alert (and the stop); later ticks stay quiet while it stays
worse; a tick that finds it within the limit clears ``crossed_at`` (on record),
so the next crossing raises again. A window with no data (None) changes nothing:
no evidence either way.

Imports no service module (andon.services and andon.waste_services call it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from andon import muda
from andon.alerts import alert_raise, record
from andon.models import Alert, AndonRecord, LineStop, WasteThreshold
from boards.models import Board

logger = logging.getLogger(__name__)

Action = AndonRecord.Action


def better_of(name: str) -> str:
    """ "lower" or "higher": which way the waste is better (andon.muda.TARGETS)."""
    return muda.TARGETS[name][1]


def unit_of(name: str) -> str:
    return muda.TARGETS[name][2]


def is_worse(name: str, value: float, limit: float) -> bool:
    """Worse than the limit: above it where lower is better, below it where
    higher is better (token efficiency). Equal to the limit is within it."""
    return value > limit if better_of(name) == "lower" else value < limit


def amount_label(name: str, value: float) -> str:
    """'7.5%', '1.8 calls/item'."""
    unit = unit_of(name)
    number = f"{round(value, 2):g}"
    return f"{number}%" if unit == "%" else f"{number} {unit}"


def rule_sentence(threshold: WasteThreshold) -> str:
    """'Human escalation rate above 5% over the last 200 outputs'."""
    side = "above" if better_of(threshold.waste) == "lower" else "below"
    label = muda.LABELS.get(threshold.waste, threshold.waste)
    return (
        f"{label} {side} {amount_label(threshold.waste, threshold.limit)} over the {threshold.window_label}"
    )


def _scope(threshold: WasteThreshold) -> dict[str, int | None]:
    if threshold.agent_id is not None:
        return {"agent_id": threshold.agent_id}
    return {"board_id": threshold.board_id}


def threshold_measure(threshold: WasteThreshold, *, now: datetime) -> muda.Measured | None:
    """The threshold's waste over its window ending now."""
    if threshold.window_outputs is not None:
        return muda.waste_measure(
            threshold.waste,
            board=threshold.board,
            agent=threshold.agent,
            until=now + timedelta(seconds=1),
            last_outputs=threshold.window_outputs,
        )
    return muda.waste_measure(
        threshold.waste,
        board=threshold.board,
        agent=threshold.agent,
        since=now - timedelta(hours=threshold.window_hours or 1),
        until=now + timedelta(seconds=1),
    )


def evidence_of(threshold: WasteThreshold, measured: muda.Measured) -> dict[str, Any]:
    waste = measured.waste
    return {
        "waste": waste.name,
        "label": waste.label,
        "value": waste.value,
        "limit": threshold.limit,
        "unit": waste.unit,
        "better": waste.better,
        "window": threshold.window_label,
        "window_outputs": threshold.window_outputs,
        "window_hours": threshold.window_hours,
        "since": measured.since.isoformat(),
        "until": measured.until.isoformat(),
        "outputs": measured.outputs,
        "counts": dict(waste.parts),
        "target": waste.target,
        "definition": waste.definition,
    }


def _counts_text(parts: dict[str, float | int | None]) -> str:
    shown = [f"{name.replace('_', ' ')} {value:g}" for name, value in parts.items() if value is not None]
    return ", ".join(shown)


def crossing_sentence(threshold: WasteThreshold, measured: muda.Measured) -> str:
    """'Human escalation rate 7.5% over the last 200 outputs (escalations 15,
    inspected 200), above the limit of 5%'."""
    waste = measured.waste
    assert waste.value is not None
    side = "above" if waste.better == "lower" else "below"
    counts = _counts_text(waste.parts)
    return (
        f"{waste.label} {amount_label(waste.name, waste.value)} over the {threshold.window_label}"
        + (f" ({counts})" if counts else "")
        + f", {side} the limit of {amount_label(waste.name, threshold.limit)}"
    )


@dataclass
class Checked:
    """What the tick did, for the live updates after commit."""

    alerts: list[Alert] = field(default_factory=list)
    stops: list[LineStop] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)  # threshold pks
    boards: set[int] = field(default_factory=set)  # boards whose status changed
    checked: int = 0


def threshold_check(threshold: WasteThreshold, *, now: datetime, checked: Checked | None = None) -> Checked:
    """Compute one threshold and act on a crossing or a recovery. Locks the
    threshold's row, so two ticks at once raise one alert. Call in a transaction."""
    checked = checked if checked is not None else Checked()
    locked = (
        WasteThreshold.objects.select_for_update(of=("self",))
        .select_related("board", "agent")
        .filter(pk=threshold.pk, enabled=True)
        .first()
    )
    if locked is None:
        return checked
    checked.checked += 1
    measured = threshold_measure(locked, now=now)
    value = None if measured is None else measured.waste.value
    locked.checked_at = now
    locked.last_value = value
    if measured is None or value is None:
        locked.save(update_fields=["checked_at", "last_value"])
        return checked
    worse = is_worse(locked.waste, value, locked.limit)
    if worse and locked.crossed_at is None:
        locked.crossed_at = now
        _crossed(locked, measured, now=now, checked=checked)
    elif not worse and locked.crossed_at is not None:
        locked.crossed_at = None
        evidence = evidence_of(locked, measured)
        record(
            Action.THRESHOLD_RECOVERED,
            threshold=locked,
            detail=f"Back within the threshold: {measured.waste.label} "
            f"{amount_label(locked.waste, value)} over the {locked.window_label} "
            f"(limit {amount_label(locked.waste, locked.limit)}).",
            data={k: v for k, v in evidence.items() if k != "definition"},
            **_scope(locked),
        )
        checked.recovered.append(locked.pk)
    locked.save(update_fields=["checked_at", "last_value", "crossed_at"])
    return checked


def _crossed(threshold: WasteThreshold, measured: muda.Measured, *, now: datetime, checked: Checked) -> None:
    evidence = evidence_of(threshold, measured)
    sentence = crossing_sentence(threshold, measured)
    title = f"{measured.waste.label} threshold crossed: {threshold.scope_label}"
    alert = alert_raise(
        kind=Alert.Kind.WASTE_THRESHOLD,
        title=title,
        summary=sentence
        + "."
        + (
            f" The {'agent' if threshold.agent_id else 'board'}'s line is stopped."
            if threshold.stop_line
            else ""
        ),
        evidence=evidence,
        # One per crossing: the crossing's start names it.
        key=f"waste:{threshold.pk}:{now:%Y%m%dT%H%M%S%f}",
        threshold_id=threshold.pk,
        **_scope(threshold),
    )
    if alert is None:
        return
    record(
        Action.THRESHOLD_CROSSED,
        threshold=threshold,
        alert=alert,
        detail=sentence + ".",
        data={k: v for k, v in evidence.items() if k != "definition"},
        **_scope(threshold),
    )
    checked.alerts.append(alert)
    _touched(threshold, checked)
    if threshold.stop_line:
        stop = waste_stop(threshold, sentence, alert=alert)
        if stop is not None:
            checked.stops.append(stop)


def waste_stop(threshold: WasteThreshold, sentence: str, *, alert: Alert | None = None) -> LineStop | None:
    """Stop the line of the threshold's board or agent. None when another stop
    is in force already (a cord, a budget, a defect spike): the line is
    stopped anyway; the alert says what was crossed."""
    scope = _scope(threshold)
    reason = f"Waste threshold crossed: {sentence}"
    if LineStop.objects.filter(restarted_at__isnull=True, **scope).exists():
        record(
            Action.WASTE_LINE_STOPPED,
            threshold=threshold,
            alert=alert,
            detail=f"{reason}. The line was stopped already; no second stop.",
            data={"stopped": False},
            **scope,
        )
        return None
    try:
        with transaction.atomic():
            stop = LineStop.objects.create(
                kind=LineStop.Kind.WASTE, reason=reason, threshold=threshold, **scope
            )
    except IntegrityError:
        return None
    record(
        Action.WASTE_LINE_STOPPED,
        threshold=threshold,
        alert=alert,
        line_stop=stop,
        detail=reason + ".",
        data={"stopped": True},
        **scope,
    )
    logger.warning("line stopped for waste threshold %s: %s", threshold.pk, reason)
    return stop


def _touched(threshold: WasteThreshold, checked: Checked) -> None:
    if threshold.board_id is not None:
        checked.boards.add(threshold.board_id)
    else:
        checked.boards |= set(Board.objects.filter(agents=threshold.agent_id).values_list("pk", flat=True))


def thresholds_tick(*, now: datetime | None = None) -> Checked:
    """The periodic part: check every enabled threshold, each in its own
    transaction (one threshold's failure does not undo another's alert)."""
    now = now or timezone.now()
    checked = Checked()
    for threshold in WasteThreshold.objects.filter(enabled=True).order_by("pk"):
        try:
            with transaction.atomic():
                threshold_check(threshold, now=now, checked=checked)
        except Exception:  # one broken threshold must not keep the others unchecked
            logger.exception("waste threshold %s could not be checked", threshold.pk)
    return checked


def waste_stop_restarted(stop: LineStop, *, user: User | None, note: str) -> None:
    """A reviewer restarted a waste stop (andon.services.line_restart, in its
    transaction): on record. The threshold stays crossed until its waste is
    back within the limit, so the line is not stopped again for this crossing."""
    if stop.kind != LineStop.Kind.WASTE:
        return
    record(
        Action.LINE_RESTARTED,
        threshold_id=stop.threshold_id,
        line_stop=stop,
        board_id=stop.board_id,
        agent_id=stop.agent_id,
        user=user,
        detail=f"Waste stop restarted by a person: {note}",
    )
