"""What people do with budgets: create, change and delete them. Each service
checks the permission itself (``andon.add_budget``, ``andon.change_budget``,
``andon.delete_budget``; views check it too, to answer 403 early), validates,
writes in one transaction with an audit record (andon.models.AndonRecord), and
schedules the live updates on commit.

A change applies at once to the current period: the period is recounted from
the ledger, so a raised limit lifts the budget's stop and a lowered one may
warn or stop at once (andon.budgets.budget_recount).
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon import budgets
from andon.models import AndonRecord, Budget, LineStop
from boards import services as board_services
from boards.models import Agent, Board

ADD_PERMISSION = "andon.add_budget"
CHANGE_PERMISSION = "andon.change_budget"
DELETE_PERMISSION = "andon.delete_budget"

FIELDS = ("name", "board", "agent", "unit", "period", "limit", "warn_percent")


def _require(user: User | None, permission: str) -> None:
    if user is None or not user.has_perm(permission):
        raise PermissionDenied(f"Only people with the {permission} permission may do this.")


def _validate(budget: Budget) -> None:
    errors: dict[str, str] = {}
    if (budget.board_id is None) == (budget.agent_id is None):
        errors["__all__"] = "A budget is either a board's or an agent's: choose one of the two."
    if budget.limit is None or Decimal(budget.limit) <= 0:
        errors["limit"] = "The limit must be more than zero."
    elif budget.unit == Budget.Unit.TOKENS and Decimal(budget.limit) != Decimal(budget.limit).to_integral():
        errors["limit"] = "A tokens budget counts whole tokens: give a whole number."
    if not 1 <= (budget.warn_percent or 0) <= 100:
        errors["warn_percent"] = "Warn at a percentage between 1 and 100."
    if not (budget.name or "").strip():
        errors["name"] = "Name the budget, so warnings say which one."
    if errors:
        raise ValidationError(errors)


def _figures(budget: Budget) -> dict:
    return {
        "name": budget.name,
        "scope": budget.scope_label,
        "unit": budget.unit,
        "period": budget.period,
        "limit": budgets.amount_text(budget.unit, Decimal(budget.limit)),
        "warn_percent": budget.warn_percent,
    }


def _changed_on_commit(budget: Budget) -> None:
    """Send every board the budget touches its banner and status, and the inbox
    its banner; forget the cached rules in this process (now, for the rest of
    this transaction, and after the commit, for what was read meanwhile)."""
    budgets.budget_rules.clear()
    transaction.on_commit(budgets.budget_rules.clear)
    board_services.boards_changed_on_commit(board_id=budget.board_id, agent_id=budget.agent_id)
    transaction.on_commit(andon_broadcast.line_stops_changed)


def budget_create(
    *,
    user: User,
    name: str,
    unit: str,
    period: str,
    limit: Decimal,
    warn_percent: int = 80,
    board: Board | None = None,
    agent: Agent | None = None,
) -> Budget:
    _require(user, ADD_PERMISSION)
    budget = Budget(
        name=name.strip(),
        board=board,
        agent=agent,
        unit=unit,
        period=period,
        limit=limit,
        warn_percent=warn_percent,
        created_by=user,
    )
    _validate(budget)
    with transaction.atomic():
        budget.save()
        period_row, _ = budgets.budget_recount(budget, user=user)
        AndonRecord.objects.create(
            action=AndonRecord.Action.BUDGET_CREATED,
            budget=budget,
            board=board,
            agent=agent,
            user=user,
            detail=f"Budget {budget.name} created: {budget.amount_label(budget.limit)} a {budget.period} "
            f"for {budget.scope_label}, warning at {budget.warn_percent}%.",
            data={**_figures(budget), "spent": str(period_row.spent)},
        )
        _changed_on_commit(budget)
    return budget


def budget_update(*, budget: Budget, user: User, **changes) -> Budget:
    """Change a budget's name, scope, unit, period, limit or warning level."""
    _require(user, CHANGE_PERMISSION)
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise ValueError(f"not budget fields: {sorted(unknown)}")
    with transaction.atomic():
        locked = Budget.objects.select_for_update().get(pk=budget.pk)
        before = _figures(locked)
        old_scope = (locked.board_id, locked.agent_id)
        for name, value in changes.items():
            setattr(locked, name, value.strip() if name == "name" else value)
        _validate(locked)
        if (locked.unit, locked.period, locked.board_id, locked.agent_id) != (
            before["unit"],
            before["period"],
            old_scope[0],
            old_scope[1],
        ):
            # What it counts changed: the old periods' totals mean something else now.
            locked.periods.all().delete()
            # A stop of the old scope is lifted; the recount may stop the new one.
            for stop in LineStop.objects.filter(budget=locked, restarted_at__isnull=True):
                stop.restart_note = "The budget's scope, unit or period changed."
                stop.restarted_by = user
                stop.restarted_at = timezone.now()
                stop.save(update_fields=["restarted_at", "restarted_by", "restart_note"])
        locked.save()
        period_row, lifted = budgets.budget_recount(locked, user=user)
        after = _figures(locked)
        changed = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
        AndonRecord.objects.create(
            action=AndonRecord.Action.BUDGET_CHANGED,
            budget=locked,
            board_id=locked.board_id,
            agent_id=locked.agent_id,
            user=user,
            detail=f"Budget {locked.name} changed: "
            + (", ".join(f"{k} {old} → {new}" for k, (old, new) in changed.items()) or "nothing")
            + ".",
            data={
                "changed": changed,
                "spent": str(period_row.spent),
                "lifted_stop": lifted.pk if lifted else None,
            },
        )
        if old_scope != (locked.board_id, locked.agent_id):
            old = Budget(board_id=old_scope[0], agent_id=old_scope[1])
            _changed_on_commit(old)
        _changed_on_commit(locked)
    return locked


def budget_delete(*, budget: Budget, user: User) -> None:
    """Delete a budget: its stop, if any, is lifted; its records stay."""
    _require(user, DELETE_PERMISSION)
    with transaction.atomic():
        locked = Budget.objects.select_for_update().get(pk=budget.pk)
        for stop in LineStop.objects.filter(budget=locked, restarted_at__isnull=True):
            stop.restart_note = "The budget was deleted."
            stop.restarted_by = user
            stop.restarted_at = stop.until if stop.expired else timezone.now()
            stop.save(update_fields=["restarted_at", "restarted_by", "restart_note"])
        AndonRecord.objects.create(
            action=AndonRecord.Action.BUDGET_DELETED,
            board_id=locked.board_id,
            agent_id=locked.agent_id,
            user=user,
            detail=f"Budget {locked.name} deleted ({locked.scope_label}).",
            data=_figures(locked),
        )
        _changed_on_commit(locked)
        locked.delete()
