"""What people do with waste thresholds: create, change and delete them. Each
service checks the permission itself (``andon.add_wastethreshold``,
``andon.change_wastethreshold``, ``andon.delete_wastethreshold``; views check
it too, to answer 403 early), validates, and writes in one transaction with an
audit record (andon.models.AndonRecord).

A change re-arms the threshold (its crossing is forgotten): the next tick
judges the waste against the new rule and alerts if it is crossed. Deleting
or disabling a threshold lifts the line stop it made, if one is in force.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import muda, waste_thresholds
from andon.models import AndonRecord, LineStop, WasteThreshold
from boards import services as board_services
from boards.models import Agent, Board

ADD_PERMISSION = "andon.add_wastethreshold"
CHANGE_PERMISSION = "andon.change_wastethreshold"
DELETE_PERMISSION = "andon.delete_wastethreshold"

FIELDS = ("board", "agent", "waste", "limit", "window_outputs", "window_hours", "stop_line", "enabled")

MAX_OUTPUTS = 10_000
MAX_HOURS = int(muda.MAX_WINDOW.total_seconds() // 3600)


def _require(user: User | None, permission: str) -> None:
    if user is None or not user.has_perm(permission):
        raise PermissionDenied(f"Only people with the {permission} permission may do this.")


def threshold_validate(threshold: WasteThreshold) -> None:
    """ValidationError by field when the threshold's values make no rule."""
    errors: dict[str, str] = {}
    if (threshold.board_id is None) == (threshold.agent_id is None):
        errors["__all__"] = "A threshold is either a board's or an agent's: choose one of the two."
    if threshold.waste not in muda.NAMES:
        errors["waste"] = "Choose one of the wastes: " + ", ".join(muda.LABELS[n] for n in muda.NAMES) + "."
    if threshold.limit is None or threshold.limit < 0:
        errors["limit"] = "The limit cannot be negative."
    elif (
        threshold.waste in muda.NAMES
        and waste_thresholds.unit_of(threshold.waste) == "%"
        and threshold.limit > 100
    ):
        errors["limit"] = "This waste is a percentage: give a limit between 0 and 100."
    if (threshold.window_outputs is None) == (threshold.window_hours is None):
        errors["window_outputs"] = "Give the window either as a number of outputs or as a number of hours."
    elif threshold.window_outputs is not None and not 1 <= threshold.window_outputs <= MAX_OUTPUTS:
        errors["window_outputs"] = f"Count between 1 and {MAX_OUTPUTS:,} outputs."
    elif threshold.window_hours is not None and not 1 <= threshold.window_hours <= MAX_HOURS:
        errors["window_hours"] = f"Count between 1 and {MAX_HOURS:,} hours."
    if errors:
        raise ValidationError(errors)


def _figures(threshold: WasteThreshold) -> dict[str, Any]:
    return {
        "scope": threshold.scope_label,
        "waste": threshold.waste,
        "limit": threshold.limit,
        "window": threshold.window_label,
        "stop_line": threshold.stop_line,
        "enabled": threshold.enabled,
        "rule": waste_thresholds.rule_sentence(threshold),
    }


def _scope(threshold: WasteThreshold) -> dict[str, int | None]:
    return {"board_id": threshold.board_id, "agent_id": threshold.agent_id}


def _stops_lift(threshold: WasteThreshold, *, user: User, note: str) -> list[LineStop]:
    lifted = []
    for stop in LineStop.objects.filter(threshold=threshold, restarted_at__isnull=True):
        stop.restarted_at = timezone.now()
        stop.restarted_by = user
        stop.restart_note = note
        stop.save(update_fields=["restarted_at", "restarted_by", "restart_note"])
        AndonRecord.objects.create(
            action=AndonRecord.Action.LINE_RESTARTED,
            threshold=threshold,
            line_stop=stop,
            board_id=stop.board_id,
            agent_id=stop.agent_id,
            user=user,
            detail=note,
        )
        lifted.append(stop)
    return lifted


def _changed_on_commit(threshold: WasteThreshold) -> None:
    board_services.boards_changed_on_commit(board_id=threshold.board_id, agent_id=threshold.agent_id)
    transaction.on_commit(andon_broadcast.line_stops_changed)


def threshold_create(
    *,
    user: User,
    waste: str,
    limit: float,
    board: Board | None = None,
    agent: Agent | None = None,
    window_outputs: int | None = 200,
    window_hours: int | None = None,
    stop_line: bool = False,
    enabled: bool = True,
) -> WasteThreshold:
    _require(user, ADD_PERMISSION)
    threshold = WasteThreshold(
        board=board,
        agent=agent,
        waste=waste,
        limit=limit,
        window_outputs=window_outputs,
        window_hours=window_hours,
        stop_line=stop_line,
        enabled=enabled,
        created_by=user,
    )
    threshold_validate(threshold)
    with transaction.atomic():
        threshold.save()
        AndonRecord.objects.create(
            action=AndonRecord.Action.THRESHOLD_CREATED,
            threshold=threshold,
            user=user,
            detail=f"Waste threshold created for {threshold.scope_label}: "
            f"{waste_thresholds.rule_sentence(threshold)}"
            + (", stopping the line" if threshold.stop_line else "")
            + ("" if threshold.enabled else " (disabled)")
            + ".",
            data=_figures(threshold),
            **_scope(threshold),
        )
    return threshold


def threshold_update(*, threshold: WasteThreshold, user: User, **changes: Any) -> WasteThreshold:
    """Change a threshold's scope, waste, limit, window, stop_line or enabled."""
    _require(user, CHANGE_PERMISSION)
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise ValueError(f"not threshold fields: {sorted(unknown)}")
    with transaction.atomic():
        locked = WasteThreshold.objects.select_for_update(of=("self",)).get(pk=threshold.pk)
        before = _figures(locked)
        old = WasteThreshold(board_id=locked.board_id, agent_id=locked.agent_id)
        for name, value in changes.items():
            setattr(locked, name, value)
        threshold_validate(locked)
        after = _figures(locked)
        changed = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
        if not changed:
            return locked
        lifted: list[LineStop] = []
        if not locked.enabled or (old.board_id, old.agent_id) != (locked.board_id, locked.agent_id):
            lifted = _stops_lift(
                locked,
                user=user,
                note="The waste threshold was disabled."
                if not locked.enabled
                else "The threshold's scope changed.",
            )
        # Re-armed: the next tick judges the waste against the new rule.
        locked.crossed_at = None
        locked.save()
        AndonRecord.objects.create(
            action=AndonRecord.Action.THRESHOLD_CHANGED,
            threshold=locked,
            user=user,
            detail=f"Waste threshold of {locked.scope_label} changed: "
            + ", ".join(f"{k} {old_value} → {new_value}" for k, (old_value, new_value) in changed.items())
            + ".",
            data={"changed": changed, "lifted_stops": [s.pk for s in lifted]},
            **_scope(locked),
        )
        if lifted:
            _changed_on_commit(locked)
            if (old.board_id, old.agent_id) != (locked.board_id, locked.agent_id):
                _changed_on_commit(old)
    return locked


def threshold_delete(*, threshold: WasteThreshold, user: User) -> None:
    """Delete a threshold: its stop, if any, is lifted; its alerts and records stay."""
    _require(user, DELETE_PERMISSION)
    with transaction.atomic():
        locked = (
            WasteThreshold.objects.select_for_update(of=("self",))
            .select_related("board", "agent")
            .get(pk=threshold.pk)
        )
        lifted = _stops_lift(locked, user=user, note="The waste threshold was deleted.")
        AndonRecord.objects.create(
            action=AndonRecord.Action.THRESHOLD_DELETED,
            user=user,
            detail=f"Waste threshold of {locked.scope_label} deleted: {waste_thresholds.rule_sentence(locked)}.",
            data=_figures(locked),
            **_scope(locked),
        )
        if lifted:
            _changed_on_commit(locked)
        locked.delete()
