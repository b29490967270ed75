"""Budgets and spend, the line's side: charge each recorded model call to the
budgets it falls under, warn at a budget's ``warn_percent``, stop the line of
its board or agent at its limit (a LineStop of kind budget, which the pull and
the board's flow status honour through ``andon.jidoka.active_stops``), lift
such stops when their period ends, and raise a cost-anomaly alert when the last
hour's spend runs far above its norm.

Why a running total and a stop row, rather than a sum at claim time: the pull
is the line's hot path, and a ledger sum over a month grows with the line. Spend
is charged once, where the ledger rows are written (inside the completion's
transaction, so the total and the ledger commit together), and the pull pays
nothing: it already reads the line stops in force. A new period's row starts
from the ledger's own sum, so the ledger stays the one truth.

Periods are calendar periods in the project's TIME_ZONE: a day from midnight,
a week from Monday, a month from the 1st.

Imports no service module (boards.services, andon.services call it).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, DecimalField, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from andon.alerts import alert_raise, record
from andon.models import Alert, AndonRecord, Budget, BudgetPeriod, LineStop
from boards.models import Board, ModelCall

logger = logging.getLogger(__name__)

Unit = Budget.Unit
Period = Budget.Period
Action = AndonRecord.Action
ZERO = Decimal(0)


# --- periods ------------------------------------------------------------------------


def period_bounds(period: str, at: datetime) -> tuple[datetime, datetime]:
    """The calendar period (start, end) holding ``at``, in the project's TIME_ZONE:
    a day from midnight, a week from Monday, a month from the 1st. Aware datetimes."""
    tz = timezone.get_current_timezone()
    local = timezone.localtime(at, tz)
    day = local.date()
    if period == Period.WEEK:
        first = day - timedelta(days=day.weekday())
        following = first + timedelta(days=7)
    elif period == Period.MONTH:
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        first = day
        following = day + timedelta(days=1)
    start = datetime(first.year, first.month, first.day, tzinfo=tz)
    end = datetime(following.year, following.month, following.day, tzinfo=tz)
    return start, end


def amount_of(unit: str, call: ModelCall) -> Decimal:
    """What a ledger row spends of a budget: its cost in dollars, or for tokens
    the tokens in and out of a real model call (a cache hit or a reused result
    sends nothing to a provider, whatever tokens its row copies)."""
    if unit == Unit.TOKENS:
        if call.source != ModelCall.Source.MODEL:
            return ZERO
        return Decimal(call.tokens_in + call.tokens_out)
    return Decimal(call.cost)


def _ledger_rows(*, board_id: int | None, agent_id: int | None):
    if agent_id is not None:
        return ModelCall.objects.filter(agent_id=agent_id)
    return ModelCall.objects.filter(board_id=board_id or 0)


def ledger_spend(budget: Budget | BudgetRule, start: datetime, end: datetime) -> Decimal:
    """The spend of a budget's scope in [start, end), summed from the ledger."""
    rows = _ledger_rows(board_id=budget.board_id, agent_id=budget.agent_id).filter(
        created_at__gte=start, created_at__lt=end
    )
    if budget.unit == Unit.TOKENS:
        total = rows.filter(source=ModelCall.Source.MODEL).aggregate(
            t_in=Coalesce(Sum("tokens_in"), 0), t_out=Coalesce(Sum("tokens_out"), 0)
        )
        return Decimal(total["t_in"] + total["t_out"])
    return rows.aggregate(c=Sum("cost"))["c"] or ZERO


# --- the budgets, as the line reads them ---------------------------------------------


@dataclass(frozen=True)
class BudgetRule:
    """A budget as the line charges it (read from its row, kept in memory)."""

    pk: int
    name: str
    board_id: int | None
    agent_id: int | None
    unit: str
    period: str
    limit: Decimal
    warn_percent: int

    @classmethod
    def of(cls, budget: Budget) -> BudgetRule:
        return cls(
            budget.pk,
            budget.name,
            budget.board_id,
            budget.agent_id,
            budget.unit,
            budget.period,
            Decimal(budget.limit),
            budget.warn_percent,
        )

    @property
    def warn_at(self) -> Decimal:
        return self.limit * self.warn_percent / 100

    def covers(self, call: ModelCall) -> bool:
        if self.agent_id is not None:
            return call.agent_id == self.agent_id
        return call.board_id == self.board_id

    def amount_label(self, value: Decimal) -> str:
        if self.unit == Unit.TOKENS:
            return f"{int(value):,} tokens"
        return f"${value:,.2f}"


class _Rules:
    """Every budget, read at most once every TTL seconds per process: the
    completion of a run must not query for them each time. A budget created or
    changed takes effect in other processes within TTL; the periodic tick
    recounts a new budget's period from the ledger, so spend recorded meanwhile
    is not lost. In the process that made the change, ``clear`` takes effect at
    once: a read that began before it (another thread's) is returned to its
    caller but not kept."""

    TTL = 2.0

    def __init__(self, read: Callable[[], tuple[BudgetRule, ...]] | None = None) -> None:
        self._read = read or (lambda: tuple(BudgetRule.of(b) for b in Budget.objects.order_by("pk")))
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._rules: tuple[BudgetRule, ...] = ()
        # Counts the clears: a read is kept only if none came while it ran.
        self._cleared = 0

    def get(self) -> tuple[BudgetRule, ...]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < self.TTL:
                return self._rules
            cleared = self._cleared
        rules = self._read()
        with self._lock:
            if self._cleared == cleared:
                self._rules, self._read_at = rules, now
        return rules

    def clear(self) -> None:
        with self._lock:
            self._read_at = -1e9
            self._cleared += 1


budget_rules = _Rules()


# --- charging the ledger's rows --------------------------------------------------------


@dataclass
class Charged:
    """What charging a batch of calls did, for the live updates after commit."""

    boards: set[int] = field(default_factory=set)  # boards of budgets that warned or stopped
    agents: set[int] = field(default_factory=set)  # agents of budgets that warned or stopped
    alerts: bool = False
    stops: bool = False

    def __bool__(self) -> bool:
        return bool(self.boards or self.agents or self.alerts or self.stops)


def calls_charge(rows: Sequence[ModelCall]) -> Charged:
    """Charge ledger rows (already inserted, in this transaction) to the budgets
    they fall under, each to the period its call was made in; then warn or stop
    where a period crossed its thresholds. Call last in the transaction that
    wrote the rows: the period rows are locked until it commits. Without
    budgets it makes no query (the rules are cached)."""
    charged = Charged()
    rules = budget_rules.get()
    if not rules or not rows:
        return charged
    now = timezone.now()
    current: dict[str, tuple[datetime, datetime]] = {}
    # (budget pk, period start) -> (rule, end, amount); in budget order, the order
    # every charger locks the period rows in, so two batches cannot deadlock.
    charges: dict[tuple[int, datetime], tuple[BudgetRule, datetime, Decimal]] = {}
    for rule in rules:
        if rule.period not in current:
            current[rule.period] = period_bounds(rule.period, now)
        for call in rows:
            if not rule.covers(call):
                continue
            start, end = current[rule.period]
            if not start <= call.created_at < end:
                start, end = period_bounds(rule.period, call.created_at)
            amount = amount_of(rule.unit, call)
            key = (rule.pk, start)
            before = charges.get(key)
            charges[key] = (rule, end, amount + (before[2] if before else ZERO))
    for (_, start), (rule, end, amount) in sorted(charges.items(), key=lambda item: item[0]):
        period = _period_charge(rule, start=start, end=end, amount=amount)
        if period is not None and end > now:
            _thresholds_check(rule, period, charged=charged, now=now)
    return charged


def _period_charge(
    rule: BudgetRule, *, start: datetime, end: datetime, amount: Decimal
) -> BudgetPeriod | None:
    """Add ``amount`` to the period's running total, locked; a period without a
    row yet starts from the ledger's sum, which already holds this transaction's rows.
    None when the budget was deleted since the rules were read (up to TTL ago)."""
    if connection.vendor == "postgresql":
        # One statement on the hot path: add and read back under the row lock
        # (numeric arithmetic is exact there; SQLite's is not, so it reads,
        # adds in Python and writes).
        period = _period_add_returning(rule.pk, start, amount)
    else:
        period = BudgetPeriod.objects.select_for_update().filter(budget_id=rule.pk, start=start).first()
        if period is not None and amount:
            period.spent += amount
            BudgetPeriod.objects.filter(pk=period.pk).update(spent=period.spent)
    if period is not None:
        return period
    # Read up to TTL ago, the rule may be of a budget deleted since (in another
    # process, or by a transaction that committed after the read): a period made
    # for it would point at no budget and fail the completion's commit. The
    # budget's row is locked until this transaction ends (budget_delete locks
    # it too), so it cannot go between this look and the new period's insert.
    if not Budget.objects.select_for_update(no_key=True).filter(pk=rule.pk).exists():
        return None
    try:
        with transaction.atomic():
            return BudgetPeriod.objects.create(
                budget_id=rule.pk, start=start, end=end, spent=ledger_spend(rule, start, end)
            )
    except IntegrityError:
        # Another transaction made it first; its sum could not see our rows.
        period = BudgetPeriod.objects.select_for_update().get(budget_id=rule.pk, start=start)
    if amount:
        period.spent += amount
        BudgetPeriod.objects.filter(pk=period.pk).update(spent=period.spent)
    return period


_ADD_RETURNING = (
    'UPDATE {table} SET spent = spent + %s WHERE budget_id = %s AND start = %s RETURNING id, "end", spent, '
    "warned_at, stopped_at, overridden_at, overridden_by_id"
)


def _period_add_returning(budget_id: int, start: datetime, amount: Decimal) -> BudgetPeriod | None:
    """PostgreSQL: add to the period's total and read it back, in one statement;
    None when the period has no row yet."""
    sql = _ADD_RETURNING.format(table=connection.ops.quote_name(BudgetPeriod._meta.db_table))
    with connection.cursor() as cursor:
        cursor.execute(sql, [amount, budget_id, start])
        row = cursor.fetchone()
    if row is None:
        return None
    pk, end, spent, warned_at, stopped_at, overridden_at, overridden_by_id = row
    return BudgetPeriod(
        pk=pk,
        budget_id=budget_id,
        start=start,
        end=end,
        spent=Decimal(spent),
        warned_at=warned_at,
        stopped_at=stopped_at,
        overridden_at=overridden_at,
        overridden_by_id=overridden_by_id,
    )


def _scope(rule: BudgetRule | Budget) -> dict[str, int | None]:
    return {"agent_id": rule.agent_id} if rule.agent_id is not None else {"board_id": rule.board_id}


def _money(value: Decimal) -> str:
    """Dollars as evidence: four places, the same on every database."""
    return str(Decimal(value).quantize(Decimal("0.0001")))


def amount_text(unit: str, value: Decimal) -> str:
    return str(int(value)) if unit == Unit.TOKENS else _money(value)


def _figures(rule: BudgetRule, period: BudgetPeriod) -> dict[str, Any]:
    return {
        "unit": rule.unit,
        "period": rule.period,
        "spent": amount_text(rule.unit, period.spent),
        "limit": amount_text(rule.unit, rule.limit),
        "warn_percent": rule.warn_percent,
        "percent": float(round(period.spent * 100 / rule.limit, 1)),
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
    }


def _period_end_label(end: datetime) -> str:
    return timezone.localtime(end).strftime("%Y-%m-%d %H:%M %Z")


def spend_sentence(rule: BudgetRule, period: BudgetPeriod) -> str:
    """'$8.10 of $10.00 (81%) spent this day; the period ends 2026-12-06 00:00 UTC'."""
    percent = period.spent * 100 / rule.limit
    return (
        f"{rule.amount_label(period.spent)} of {rule.amount_label(rule.limit)} ({percent:.0f}%) "
        f"spent this {rule.period}; the period ends {_period_end_label(period.end)}"
    )


def _thresholds_check(rule: BudgetRule, period: BudgetPeriod, *, charged: Charged, now: datetime) -> None:
    touched = False
    if period.warned_at is None and period.spent >= rule.warn_at:
        period.warned_at = now
        BudgetPeriod.objects.filter(pk=period.pk).update(warned_at=now)
        alert = alert_raise(
            kind=Alert.Kind.BUDGET_WARNING,
            title=f"{rule.name}: {rule.warn_percent}% of the budget spent",
            summary=spend_sentence(rule, period) + ".",
            evidence=_figures(rule, period),
            budget_id=rule.pk,
            key=f"budget:{rule.pk}:{period.start:%Y%m%d}:warn:{rule.limit}:{rule.warn_percent}",
            **_scope(rule),
        )
        record(
            Action.WARNING_RAISED,
            budget_id=rule.pk,
            alert=alert,
            detail=spend_sentence(rule, period),
            data=_figures(rule, period),
            **_scope(rule),
        )
        charged.alerts = touched = True
    if period.spent >= rule.limit and period.stopped_at is None and period.overridden_at is None:
        stop = budget_stop(rule, period, now=now)
        if stop is not None:
            charged.stops = charged.alerts = touched = True
    if touched:
        if rule.agent_id is not None:
            charged.agents.add(rule.agent_id)
        else:
            charged.boards.add(rule.board_id)  # type: ignore[arg-type]


def budget_stop(rule: BudgetRule, period: BudgetPeriod, *, now: datetime) -> LineStop | None:
    """Stop the line of the budget's board or agent until the period ends. None
    when another stop is in force already (a cord, a defect spike): the line
    is stopped anyway, and the next charge tries again once it is restarted."""
    scope = _scope(rule)
    expired = list(
        LineStop.objects.filter(restarted_at__isnull=True, until__lte=now, **scope).values_list(
            "pk", flat=True
        )
    )
    if expired:
        expired_stops_lift(expired)
    if LineStop.objects.filter(restarted_at__isnull=True, **scope).exists():
        return None
    reason = f"Budget reached: {rule.name}, " + spend_sentence(rule, period)
    try:
        with transaction.atomic():
            stop = LineStop.objects.create(
                kind=LineStop.Kind.BUDGET, reason=reason, budget_id=rule.pk, until=period.end, **scope
            )
    except IntegrityError:
        return None
    period.stopped_at = now
    BudgetPeriod.objects.filter(pk=period.pk).update(stopped_at=now)
    alert = alert_raise(
        kind=Alert.Kind.BUDGET_REACHED,
        title=f"{rule.name}: the limit is reached and the {'agent' if rule.agent_id else 'board'}'s line stopped",
        summary=reason + ".",
        evidence=_figures(rule, period),
        budget_id=rule.pk,
        key=f"budget:{rule.pk}:{period.start:%Y%m%d}:stop:{stop.pk}",
        **scope,
    )
    record(
        Action.LINE_STOPPED,
        budget_id=rule.pk,
        alert=alert,
        line_stop=stop,
        detail=reason,
        data=_figures(rule, period),
        **scope,
    )
    logger.warning("line stopped for budget %s: %s", rule.pk, reason)
    return stop


# --- lifting budget stops ---------------------------------------------------------------


def expired_stops_lift(stop_ids: Iterable[int]) -> list[LineStop]:
    """Record budget stops whose period has ended as restarted at its end (they
    are out of force already: see LineStop.expired). Idempotent."""
    lifted = []
    for stop in LineStop.objects.select_for_update(of=("self",)).filter(
        pk__in=list(stop_ids), kind=LineStop.Kind.BUDGET, restarted_at__isnull=True, until__lte=timezone.now()
    ):
        stop.restarted_at = stop.until
        stop.restart_note = "The budget's period ended."
        stop.save(update_fields=["restarted_at", "restart_note"])
        record(
            Action.LINE_RESTARTED,
            budget_id=stop.budget_id,
            line_stop=stop,
            board_id=stop.board_id,
            agent_id=stop.agent_id,
            detail="The budget's period ended.",
        )
        lifted.append(stop)
    return lifted


def budget_stop_restarted(stop: LineStop, *, user: User | None, note: str) -> None:
    """A person restarted a budget stop (andon.services.line_restart, in its
    transaction): the line runs on for the rest of the period, on record."""
    if stop.kind != LineStop.Kind.BUDGET or stop.budget_id is None:
        return
    now = timezone.now()
    BudgetPeriod.objects.filter(budget_id=stop.budget_id, start__lte=now, end__gt=now).update(
        overridden_at=now, overridden_by=user
    )
    record(
        Action.LINE_RESTARTED,
        budget_id=stop.budget_id,
        line_stop=stop,
        board_id=stop.board_id,
        agent_id=stop.agent_id,
        user=user,
        detail=f"Restarted by a person for the rest of the period: {note}",
    )


def budgets_recheck(*, board_id: int | None = None, agent_id: int | None = None) -> list[LineStop]:
    """Stop again for the budgets of a board or agent whose line was just
    restarted from another stop (a cord, a defect spike) while their limit was
    reached: the budget's stop could not be made then (one stop at a time).
    Call in the restart's transaction."""
    now = timezone.now()
    scope = {"agent_id": agent_id} if agent_id is not None else {"board_id": board_id}
    stops = []
    for budget in Budget.objects.filter(**scope).order_by("pk"):
        rule = BudgetRule.of(budget)
        start, _ = period_bounds(rule.period, now)
        period = BudgetPeriod.objects.select_for_update().filter(budget_id=rule.pk, start=start).first()
        if period is None or period.stopped_at or period.overridden_at or period.spent < rule.limit:
            continue
        stop = budget_stop(rule, period, now=now)
        if stop is not None:
            stops.append(stop)
    return stops


def budget_recount(budget: Budget, *, user: User | None = None) -> tuple[BudgetPeriod, LineStop | None]:
    """Set the budget's current period from the ledger and apply its thresholds
    as they stand now: a raised limit lifts the budget's stop (and re-arms the
    warning), a lowered one may warn or stop at once. Returns the period and the
    stop lifted, if any. Call in a transaction."""
    now = timezone.now()
    rule = BudgetRule.of(budget)
    start, end = period_bounds(rule.period, now)
    period, _ = BudgetPeriod.objects.select_for_update().get_or_create(
        budget_id=rule.pk, start=start, defaults={"end": end}
    )
    period.spent = ledger_spend(rule, start, end)
    lifted = None
    stop = LineStop.objects.filter(budget_id=rule.pk, restarted_at__isnull=True).first()
    if stop is not None and period.spent < rule.limit:
        stop.restarted_at = now
        stop.restarted_by = user
        stop.restart_note = f"The limit is now {rule.amount_label(rule.limit)}."
        stop.save(update_fields=["restarted_at", "restarted_by", "restart_note"])
        record(
            Action.LINE_RESTARTED,
            budget_id=rule.pk,
            line_stop=stop,
            user=user,
            detail=stop.restart_note + " " + spend_sentence(rule, period) + ".",
            **_scope(rule),
        )
        lifted = stop
    if period.spent < rule.limit:
        period.stopped_at = None
        period.overridden_at = None
    if period.spent < rule.warn_at:
        period.warned_at = None
    period.save(update_fields=["spent", "stopped_at", "overridden_at", "warned_at"])
    _thresholds_check(rule, period, charged=Charged(), now=now)
    return period, lifted


@dataclass(frozen=True)
class Tick:
    """What the periodic part did: the stops it recorded as lifted, the budgets
    it recounted, the anomalies it raised; ``boards`` whose status changed."""

    lifted: list[LineStop]
    recounted: int
    anomalies: list[Alert]
    boards: set[int]


def budgets_tick(*, now: datetime | None = None) -> Tick:
    """The periodic part: lift budget stops whose period ended, recount the
    periods of budgets changed in the last few minutes (spend charged by a
    process that did not know of them yet), and look for cost anomalies."""
    now = now or timezone.now()
    with transaction.atomic():
        expired = LineStop.objects.filter(
            kind=LineStop.Kind.BUDGET, restarted_at__isnull=True, until__lte=now
        ).values_list("pk", flat=True)
        lifted = expired_stops_lift(list(expired))
    recent = list(Budget.objects.filter(updated_at__gte=now - timedelta(minutes=5)).order_by("pk"))
    for budget in recent:
        with transaction.atomic():
            budget_recount(budget)
    anomalies = cost_anomalies_check(now=now)
    boards = {stop.board_id for stop in lifted if stop.board_id}
    agents = {stop.agent_id for stop in lifted if stop.agent_id}
    if agents:
        boards |= set(Board.objects.filter(agents__in=agents).values_list("pk", flat=True))
    return Tick(lifted=lifted, recounted=len(recent), anomalies=anomalies, boards=boards)


# --- the board's budgets, for its banner ---------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    spent: Decimal
    period_start: datetime
    period_end: datetime
    # A person restarted the line for the rest of the period (budget_stop_restarted).
    overridden: bool = False

    @property
    def percent(self) -> float:
        return float(self.spent * 100 / self.budget.limit)

    @property
    def warned(self) -> bool:
        return self.spent >= self.budget.limit * self.budget.warn_percent / 100

    @property
    def reached(self) -> bool:
        return self.spent >= self.budget.limit

    @property
    def spent_label(self) -> str:
        return self.budget.amount_label(self.spent)

    @property
    def limit_label(self) -> str:
        return self.budget.amount_label(self.budget.limit)


def budget_statuses(budgets: Sequence[Budget], *, now: datetime | None = None) -> list[BudgetStatus]:
    """Each budget's spend in its current period, from the running totals (one
    query); a period without a row has spent nothing the line has charged yet."""
    now = now or timezone.now()
    bounds = {b.pk: period_bounds(b.period, now) for b in budgets}
    periods = (
        {
            (p.budget_id, p.start): p
            for p in BudgetPeriod.objects.filter(
                budget__in=[b.pk for b in budgets], start__lte=now, end__gt=now
            ).only("budget_id", "start", "spent", "overridden_at")
        }
        if budgets
        else {}
    )
    statuses = []
    for b in budgets:
        start, end = bounds[b.pk]
        period = periods.get((b.pk, start))
        spent = period.spent if period is not None else ZERO
        overridden = period is not None and period.overridden_at is not None
        statuses.append(BudgetStatus(b, spent, start, end, overridden=overridden))
    return statuses


# --- the cost anomaly -----------------------------------------------------------------


@dataclass(frozen=True)
class Anomaly:
    last_hour: Decimal
    median: Decimal
    threshold: Decimal


def cost_anomaly(
    last_hour: Decimal, previous: Sequence[Decimal], *, factor: float, minimum: float
) -> Anomaly | None:
    """The rule: the last hour's spend is an anomaly when it is above ``factor``
    times the median of the previous hours' spends (hours with no spend count as
    zero) and at least ``minimum`` dollars. The median, not the mean, so one
    earlier burst does not hide the next; the minimum, so a line that spends
    cents an hour (median near zero) does not alarm at a dollar."""
    median = Decimal(statistics.median(previous)) if previous else ZERO
    threshold = max(median * Decimal(str(factor)), Decimal(str(minimum)))
    if last_hour > median * Decimal(str(factor)) and last_hour >= Decimal(str(minimum)):
        return Anomaly(last_hour, median, threshold)
    return None


HOURS = 24


def hourly_spend_get(*, now: datetime, scope: str) -> dict[int, list[Decimal]]:
    """Spend in dollars per board or agent (``scope``) in the 25 hours before
    ``now``, hour by hour, oldest first, the last being the last 60 minutes:
    one query (a conditional sum per hour), whatever the number of rows."""
    money = DecimalField(max_digits=24, decimal_places=10)
    sums = {
        f"h{k}": Coalesce(
            Sum(
                Case(
                    When(
                        created_at__gt=now - timedelta(hours=k + 1),
                        created_at__lte=now - timedelta(hours=k),
                        then="cost",
                    ),
                    default=Value(0),
                    output_field=money,
                )
            ),
            Value(0),
            output_field=money,
        )
        for k in range(HOURS + 1)
    }
    column = "board_id" if scope == "board" else "agent_id"
    rows = (
        ModelCall.objects.filter(created_at__gt=now - timedelta(hours=HOURS + 1), created_at__lte=now)
        .exclude(**{f"{column}__isnull": True})
        .values(column)
        .annotate(**sums)
        .order_by()
    )
    return {row[column]: [Decimal(row[f"h{k}"]) for k in range(HOURS, -1, -1)] for row in rows}


def cost_anomalies_check(*, now: datetime | None = None) -> list[Alert]:
    """Raise a cost-anomaly alert for each board and agent whose last hour's
    spend breaks the rule (``cost_anomaly``), at most one per scope per hour."""
    now = now or timezone.now()
    factor = settings.KAIZEN_COST_ANOMALY_FACTOR
    minimum = settings.KAIZEN_COST_ANOMALY_MIN_USD
    raised = []
    for scope in ("board", "agent"):
        for pk, hours in hourly_spend_get(now=now, scope=scope).items():
            previous, last = hours[:-1], hours[-1]
            found = cost_anomaly(last, previous, factor=factor, minimum=minimum)
            if found is None:
                continue
            evidence = {
                "last_hour": _money(last),
                "hourly": [_money(h) for h in previous],
                "median": _money(found.median),
                "factor": factor,
                "minimum_usd": minimum,
                "threshold": _money(found.threshold),
                "window_end": now.isoformat(),
            }
            summary = (
                f"${last:,.2f} spent in the last hour; the median of the previous {HOURS} hourly "
                f"spends is ${found.median:,.2f}. The alarm sounds above {factor:g}x that median "
                f"and at ${minimum:,.2f} or more."
            )
            with transaction.atomic():
                alert = alert_raise(
                    kind=Alert.Kind.COST_ANOMALY,
                    title=f"Spend far above its norm on {scope} {pk}",
                    summary=summary,
                    evidence=evidence,
                    key=f"anomaly:{scope}:{pk}:{timezone.localtime(now):%Y%m%d%H}",
                    **{f"{scope}_id": pk},
                )
                if alert is None:
                    continue
                alert.title = f"Spend far above its norm: {alert.scope_label}"
                alert.save(update_fields=["title"])
                record(
                    Action.ANOMALY_RAISED,
                    alert=alert,
                    detail=summary,
                    data=evidence,
                    **{f"{scope}_id": pk},
                )
            raised.append(alert)
    return raised
