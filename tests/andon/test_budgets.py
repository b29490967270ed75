"""Budgets through the line: tasks claimed by an agent and completed with known
costs until its budget warns (80%) and stops it (100%); nothing claimed after;
the board says why. The stop lifts at the next period, when the limit is
raised, or when a reviewer restarts the line; tokens budgets; board vs agent
scope; the record of it all (andon.models.AndonRecord)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from andon import budget_services, budgets
from andon import services as andon_services
from andon.models import Alert, AndonRecord, Budget, BudgetPeriod, LineStop
from boards import services
from boards.agents import CallRecord, Output
from boards.models import ModelCall, Task
from boards.selectors import board_pull_status_get
from tests.andon.helpers import GOOD, PASSING, pull
from tests.factories import make_agent, make_board, make_reviewer, make_user_with

Action = AndonRecord.Action


@pytest.fixture
def keeper(db):
    """Kim keeps the budgets: creates, changes and deletes them, and reviews."""
    return make_user_with(
        "andon.add_budget", "andon.change_budget", "andon.delete_budget", "andon.review_escalation"
    )


@pytest.fixture
def solo(board):
    """One agent taking one task at a time, so each claim follows a completion."""
    return make_agent(boards=[board], concurrency=1, name="solo")


def call(*, cost: str = "0", tokens_in: int = 12, tokens_out: int = 16, source: str = "model") -> CallRecord:
    return CallRecord(
        source=source,
        tier=1,
        provider="simulated",
        model="sim-small",
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost=Decimal(cost),
        confidence=PASSING,
        accepted=True,
    )


def finish(claim, *calls: CallRecord) -> None:
    output = Output(text=GOOD, confidence=PASSING, confidence_source="simulated", tier=1, calls=calls)
    assert services.task_complete(task_id=claim.task_id, lease_token=claim.lease_token, output=output)


def feed(board, n: int) -> None:
    for i in range(n):
        services.task_create(board=board, title=f"Part {i}", input=f"part {i}")


def run_until_stopped(board, *, cost: str, most: int = 50) -> list[int]:
    """Claim and finish one run at a time, each costing ``cost``, until the pull
    claims nothing; the ids of the tasks claimed, in order."""
    claimed = []
    for _ in range(most):
        claims = pull(board)
        if not claims:
            return claimed
        for claim in claims:
            claimed.append(claim.task_id)
            finish(claim, call(cost=cost))
    raise AssertionError("the line never stopped")


def budget(keeper, **fields) -> Budget:
    values = {"name": "Daily spend", "unit": "usd", "period": "day", "limit": Decimal("10"), **fields}
    return budget_services.budget_create(user=keeper, **values)


# --- warn at 80%, stop at 100% ----------------------------------------------------------


@pytest.mark.django_db
def test_an_agents_budget_warns_at_80_percent_and_stops_its_line_at_100(board, solo, keeper):
    b = budget(keeper, agent=solo)  # $10 a day
    feed(board, 8)

    claimed = run_until_stopped(board, cost="2.00")

    # $2 a run: the 4th reaches $8 (80%: a warning), the 5th $10 (100%: the stop).
    assert len(claimed) == 5
    period = BudgetPeriod.objects.get(budget=b)
    assert period.spent == Decimal("10")
    assert period.warned_at is not None and period.stopped_at is not None
    [stop] = LineStop.objects.filter(restarted_at__isnull=True)
    assert (stop.kind, stop.agent_id, stop.board_id, stop.budget_id) == ("budget", solo.pk, None, b.pk)
    assert stop.until == period.end
    assert stop.reason.startswith("Budget reached: Daily spend, $10.00 of $10.00 (100%) spent this day")
    # Nothing is claimed after: three tasks wait in Ready and Backlog.
    assert pull(board) == []
    assert Task.objects.filter(board=board, status__in=["ready", "backlog"]).count() == 3
    # The board says why, with the same rule as the pull.
    status = board_pull_status_get(board=board)
    texts = [hold.text for hold in status.holds]
    assert any(text.startswith("solo: Budget reached: Daily spend") for text in texts), texts
    assert "budget reached" in status.board_hold.text.lower()
    kinds = list(Alert.objects.order_by("pk").values_list("kind", flat=True))
    assert kinds == ["budget_warning", "budget_reached"]
    warning = Alert.objects.get(kind="budget_warning")
    assert warning.evidence["spent"] == "8.0000" and warning.evidence["limit"] == "10.0000"
    assert warning.evidence["percent"] == 80.0 and warning.agent_id == solo.pk
    assert "$8.00 of $10.00 (80%)" in warning.summary


@pytest.mark.django_db
def test_the_warning_level_is_configurable(board, solo, keeper):
    b = budget(keeper, agent=solo, warn_percent=50)
    feed(board, 3)
    for _ in range(3):
        [claim] = pull(board)
        finish(claim, call(cost="2.00"))
        if BudgetPeriod.objects.get(budget=b).spent == Decimal("4"):
            assert not Alert.objects.exists()
    # $6 of $10 is past 50%.
    assert Alert.objects.get().kind == "budget_warning"


@pytest.mark.django_db
def test_the_running_total_equals_the_ledger(board, solo, keeper):
    feed(board, 6)
    [claim] = pull(board)
    finish(claim, call(cost="1.25"), call(cost="0.50", source="cache"))
    # Created after spend was recorded: its period starts from the ledger.
    b = budget(keeper, agent=solo, limit=Decimal("100"))
    for _ in range(3):
        [claim] = pull(board)
        finish(claim, call(cost="0.3333"))
    ledger = sum(ModelCall.objects.filter(agent=solo).values_list("cost", flat=True))
    assert BudgetPeriod.objects.get(budget=b).spent == ledger == Decimal("2.7499")


# --- what lifts the stop ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_next_period_lifts_the_stop(board, solo, keeper, monkeypatch):
    b = budget(keeper, agent=solo)
    feed(board, 8)
    assert len(run_until_stopped(board, cost="5.00")) == 2
    stop = LineStop.objects.get(kind="budget")
    later = stop.until + timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    # The next day: the pull claims again, and the stop is on record as lifted at midnight.
    [claim] = pull(board)
    stop.refresh_from_db()
    assert stop.restarted_at == stop.until and stop.restart_note == "The budget's period ended."
    assert AndonRecord.objects.filter(action=Action.LINE_RESTARTED, line_stop=stop).count() == 1
    assert not any(h.kind in ("budget", "agent_budget") for h in board_pull_status_get(board=board).holds)
    # The new day's spend starts at nothing: $5, then $10 stops it again.
    finish(claim, call(cost="5.00"))
    assert len(run_until_stopped(board, cost="5.00")) == 1
    new_day = BudgetPeriod.objects.get(budget=b, start=stop.until)
    assert new_day.spent == Decimal("10") and BudgetPeriod.objects.filter(budget=b).count() == 2


@pytest.mark.django_db
def test_the_board_status_drops_the_stop_once_the_period_ends(board, solo, keeper, monkeypatch):
    budget(keeper, agent=solo)
    feed(board, 3)
    run_until_stopped(board, cost="10.00")
    stop = LineStop.objects.get(kind="budget")
    assert any(h.kind == "agent_budget" for h in board_pull_status_get(board=board).holds)
    monkeypatch.setattr(timezone, "now", lambda: stop.until)
    # Read-only: the stop is out of force at its end, before anything lifts it.
    assert not any(h.kind == "agent_budget" for h in board_pull_status_get(board=board).holds)
    assert LineStop.objects.get(pk=stop.pk).restarted_at is None


@pytest.mark.django_db
def test_raising_the_limit_lifts_the_stop(board, solo, keeper):
    b = budget(keeper, agent=solo)
    feed(board, 8)
    run_until_stopped(board, cost="5.00")

    budget_services.budget_update(budget=b, user=keeper, limit=Decimal("20"))

    stop = LineStop.objects.get(kind="budget")
    assert stop.restarted_by == keeper and stop.restart_note == "The limit is now $20.00."
    period = BudgetPeriod.objects.get(budget=b)
    # $10 of $20 is 50%: the warning is re-armed for the new limit.
    assert (period.spent, period.stopped_at, period.warned_at) == (Decimal("10"), None, None)
    claimed = run_until_stopped(board, cost="5.00")
    assert len(claimed) == 2  # $15 (75%), then $20: stopped again
    assert LineStop.objects.filter(kind="budget", restarted_at__isnull=True).count() == 1
    changed = AndonRecord.objects.get(action=Action.BUDGET_CHANGED)
    assert changed.user == keeper and changed.data["changed"] == {"limit": ["10.0000", "20.0000"]}


@pytest.mark.django_db
def test_a_reviewer_restarting_a_budget_stop_lets_the_line_run_for_the_rest_of_the_period(
    board, solo, keeper
):
    b = budget(keeper, agent=solo)
    feed(board, 6)
    run_until_stopped(board, cost="5.00")
    stop = LineStop.objects.get(kind="budget")

    andon_services.line_restart(line_stop=stop, user=keeper, note="Month-end push, agreed with finance")

    assert len(run_until_stopped(board, cost="5.00")) == 4  # the rest of the work, past the limit
    period = BudgetPeriod.objects.get(budget=b)
    assert period.spent == Decimal("30") and period.overridden_by == keeper
    record = AndonRecord.objects.get(action=Action.LINE_RESTARTED)
    assert record.user == keeper and "Month-end push" in record.detail


# --- tokens, scope --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_tokens_budget_counts_the_tokens_of_real_model_calls(board, solo, keeper):
    b = budget(keeper, agent=solo, unit="tokens", limit=Decimal("100"))
    feed(board, 6)
    claimed = 0
    while claims := pull(board):
        for claim in claims:
            claimed += 1
            # 12 in + 16 out = 28 tokens; the cache hit's copied tokens count none.
            finish(claim, call(), call(source="cache", tokens_in=500, tokens_out=500))
    # 28, 56, 84 (84%: warned), 112: stopped after the 4th.
    assert claimed == 4
    assert BudgetPeriod.objects.get(budget=b).spent == Decimal("112")
    assert "112 tokens of 100 tokens (112%)" in LineStop.objects.get(kind="budget").reason


@pytest.mark.django_db
def test_a_board_budget_stops_the_whole_board_and_no_other(keeper):
    board, other = make_board(), make_board()
    first = make_agent(boards=[board], concurrency=1)
    second = make_agent(boards=[board], concurrency=1)
    elsewhere = make_agent(boards=[other], concurrency=1)
    budget(keeper, board=board, limit=Decimal("6"))
    feed(board, 10)
    feed(other, 2)

    claimed = run_until_stopped(board, cost="2.00")

    # Two agents share the $6: three $2 runs (claims come two at a time).
    assert 3 <= len(claimed) <= 4
    stop = LineStop.objects.get(kind="budget")
    assert (stop.board_id, stop.agent_id) == (board.pk, None)
    status = board_pull_status_get(board=board)
    assert status.board_hold.kind == "budget" and status.board_hold.text.startswith(
        "Budget reached: Daily spend"
    )
    assert {t.agent_id for t in Task.objects.filter(pk__in=claimed)} == {first.pk, second.pk}
    # The other board's line runs.
    [claim] = pull(other)
    assert Task.objects.get(pk=claim.task_id).agent_id == elsewhere.pk


@pytest.mark.django_db
def test_an_agents_budget_counts_every_board_and_stops_only_that_agent(keeper):
    board, other = make_board(), make_board()
    spender = make_agent(boards=[board, other], concurrency=1, name="spender")
    budget(keeper, agent=spender, limit=Decimal("4"))
    feed(other, 1)
    [claim] = pull(other)
    finish(claim, call(cost="3.00"))
    feed(board, 3)
    [claim] = pull(board)
    finish(claim, call(cost="1.00"))  # $4 across two boards: stopped

    assert pull(board) == [] and LineStop.objects.get(kind="budget").agent_id == spender.pk
    helper = make_agent(boards=[board], concurrency=1)
    [claim] = pull(board)
    assert Task.objects.get(pk=claim.task_id).agent_id == helper.pk


# --- periods --------------------------------------------------------------------------------


def test_periods_are_calendar_periods_in_the_project_time_zone(settings):
    settings.TIME_ZONE = "Europe/Paris"
    paris = ZoneInfo("Europe/Paris")
    with timezone.override(paris):
        # Wednesday 2026-12-02 23:30 in Paris is 22:30 UTC.
        at = datetime(2026, 12, 2, 22, 30, tzinfo=ZoneInfo("UTC"))
        assert budgets.period_bounds("day", at) == (
            datetime(2026, 12, 2, tzinfo=paris),
            datetime(2026, 12, 3, tzinfo=paris),
        )
        assert budgets.period_bounds("week", at) == (
            datetime(2026, 11, 30, tzinfo=paris),
            datetime(2026, 12, 7, tzinfo=paris),
        )
        assert budgets.period_bounds("month", at) == (
            datetime(2026, 12, 1, tzinfo=paris),
            datetime(2027, 1, 1, tzinfo=paris),
        )


# --- people and the record -------------------------------------------------------------------


@pytest.mark.django_db
def test_only_people_with_the_permission_create_change_or_delete_budgets(board, solo, keeper):
    reviewer = make_reviewer()
    with pytest.raises(PermissionDenied):
        budget(reviewer, agent=solo)
    b = budget(keeper, agent=solo)
    with pytest.raises(PermissionDenied):
        budget_services.budget_update(budget=b, user=reviewer, limit=Decimal("1"))
    with pytest.raises(PermissionDenied):
        budget_services.budget_delete(budget=b, user=reviewer)


@pytest.mark.django_db
def test_a_budget_is_a_boards_or_an_agents_with_a_positive_limit(board, solo, keeper):
    with pytest.raises(ValidationError) as both:
        budget(keeper, agent=solo, board=board)
    assert "either a board's or an agent's" in str(both.value)
    with pytest.raises(ValidationError) as zero:
        budget(keeper, agent=solo, limit=Decimal("0"))
    assert zero.value.message_dict["limit"] == ["The limit must be more than zero."]
    with pytest.raises(ValidationError) as half:
        budget(keeper, agent=solo, unit="tokens", limit=Decimal("10.5"))
    assert "whole number" in half.value.message_dict["limit"][0]
    assert not Budget.objects.exists()


@pytest.mark.django_db
def test_everything_is_on_record(board, solo, keeper):
    b = budget(keeper, agent=solo)
    feed(board, 6)
    run_until_stopped(board, cost="4.00")  # $4, $8 (80%), $12 (stop)
    budget_services.budget_update(budget=b, user=keeper, limit=Decimal("50"))
    alert = Alert.objects.get(kind="budget_warning")
    andon_services.alert_acknowledge(alert=alert, user=keeper)
    budget_services.budget_delete(budget=b, user=keeper)

    actions = list(AndonRecord.objects.order_by("pk").values_list("action", "user_id"))
    assert actions == [
        (Action.BUDGET_CREATED, keeper.pk),
        (Action.WARNING_RAISED, None),
        (Action.LINE_STOPPED, None),
        (Action.LINE_RESTARTED, keeper.pk),
        (Action.BUDGET_CHANGED, keeper.pk),
        (Action.ALERT_ACKNOWLEDGED, keeper.pk),
        (Action.BUDGET_DELETED, keeper.pk),
    ]
    stopped = AndonRecord.objects.get(action=Action.LINE_STOPPED)
    assert stopped.data["spent"] == "12.0000" and stopped.agent_id == solo.pk


@pytest.mark.django_db
def test_without_budgets_charging_makes_no_query(board, solo, django_assert_num_queries):
    feed(board, 1)
    [claim] = pull(board)
    task = Task.objects.get(pk=claim.task_id)
    budgets.budget_rules.get()  # read once, as a running process has
    rows = ModelCall.objects.bulk_create(
        [ModelCall(task=task, board=board, agent=solo, cost=Decimal("1"), created_at=timezone.now())]
    )
    with django_assert_num_queries(0):
        assert not budgets.calls_charge(rows)


def test_a_read_of_the_rules_that_began_before_a_change_is_not_kept():
    """A thread that began reading the budgets before this process changed one
    (a live render, say) gets what it read, but the next reader reads again: the
    change is not hidden for TTL seconds behind that older read."""
    import threading

    reading, changed = threading.Event(), threading.Event()
    reads: list[str] = []

    def read():
        reads.append("read")
        if len(reads) == 1:
            reading.set()
            changed.wait(10)
            return ("before the change",)
        return ("after the change",)

    rules = budgets._Rules(read=read)
    got: list = []
    slow = threading.Thread(target=lambda: got.append(rules.get()))
    slow.start()
    assert reading.wait(10)
    rules.clear()  # the change, committed while the slow read runs
    changed.set()
    slow.join(10)

    assert got == [("before the change",)]
    assert rules.get() == ("after the change",)
    assert rules.get() == ("after the change",)  # and that one is kept
    assert len(reads) == 2


@pytest.mark.django_db
def test_a_budget_deleted_while_its_rule_is_still_remembered_is_not_charged(board, solo, keeper, monkeypatch):
    """A process remembers the budgets for up to two seconds: a budget deleted
    meanwhile (by another process) must not be charged, or its new period would
    point at no budget and the completion's commit would fail on its foreign key."""
    from django.db import connection

    monkeypatch.setattr(budgets.budget_rules, "TTL", 1e9)  # however slow the test runs
    b = budget(keeper, agent=solo, limit=Decimal("1000"))
    budgets.budget_rules.get()  # remembered, as a running process has them
    Budget.objects.filter(pk=b.pk).delete()  # by another process: no clear here
    feed(board, 1)
    [claim] = pull(board)
    task = Task.objects.get(pk=claim.task_id)
    rows = ModelCall.objects.bulk_create(
        [ModelCall(task=task, board=board, agent=solo, cost=Decimal("1"), created_at=timezone.now())]
    )
    assert [rule.pk for rule in budgets.budget_rules.get()] == [b.pk]

    assert not budgets.calls_charge(rows)

    assert not BudgetPeriod.objects.exists()
    connection.check_constraints()  # what the commit would check: no period of no budget


# --- the real runtime ------------------------------------------------------------------------


@pytest.mark.django_db
def test_runs_of_the_simulated_model_are_charged_until_the_budget_stops_the_agent(board, keeper):
    """The runtime (boards.agents.runtime.run) against the simulated provider,
    priced: each run's calls reach the budget's running total, which always
    equals the ledger's sum, and the agent stops once it reaches the limit."""
    from boards.agents import runtime

    sim = make_agent(
        boards=[board],
        concurrency=1,
        name="sim",
        # No checks: every output passes to Done (Review's hard limit never stops the line).
        quality_checks=[],
        cascade=[
            {
                "provider": "simulated",
                "model": "sim-small",
                "parameters": {"latency_ms": 0, "error_rate": 0},
                "price_in": "10",
                "price_out": "20",
            }
        ],
    )
    b = budget(keeper, agent=sim, limit=Decimal("3"))
    for i in range(40):
        services.task_create(
            board=board, title=f"Inspect {i}", input=f"scratch {i} mm on the housing, part {i}"
        )
    runs = 0
    while claims := pull(board):
        for claim in claims:
            runtime.run(claim.task_id, str(claim.lease_token))
            runs += 1
            spent = BudgetPeriod.objects.get(budget=b).spent
            assert spent == sum(ModelCall.objects.filter(agent=sim).values_list("cost", flat=True))
        assert runs < 40, "the budget never stopped the agent"
    period = BudgetPeriod.objects.get(budget=b)
    # Stopped by the run that took it to $3 or past, and not before.
    assert period.spent >= Decimal("3") and period.stopped_at is not None
    last = ModelCall.objects.filter(agent=sim).order_by("-pk").first()
    assert period.spent - last.cost < Decimal("3")
    assert LineStop.objects.get(kind="budget").agent_id == sim.pk
    assert pull(board) == []


@pytest.mark.django_db
def test_a_budget_reached_under_a_cord_stops_the_line_once_the_cord_is_restarted(board, solo, keeper):
    b = budget(keeper, agent=solo)
    feed(board, 4)
    [claim] = pull(board)
    cord = andon_services.line_stop(user=keeper, agent=solo, reason="checking the welds")
    finish(claim, call(cost="12.00"))  # the run in flight goes past the limit while the cord holds
    assert LineStop.objects.filter(restarted_at__isnull=True).get() == cord
    assert BudgetPeriod.objects.get(budget=b).stopped_at is None

    andon_services.line_restart(line_stop=cord, user=keeper, note="welds fine")

    stop = LineStop.objects.get(restarted_at__isnull=True)
    assert (stop.kind, stop.agent_id) == ("budget", solo.pk)
    assert pull(board) == []


# --- concurrent charges (PostgreSQL) ------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis  # its commits ask for pulls and send live updates
@pytest.mark.django_db(transaction=True)
def test_concurrent_charges_lose_nothing_even_while_the_period_row_is_made():
    """Eight threads write ledger rows and charge them at once, each in its own
    transaction, starting with no period row: the running total ends equal to
    the ledger, whoever made the row and whatever it summed."""
    import threading

    from django.db import connection, transaction

    board = make_board()
    agent = make_agent(boards=[board])
    keeper = make_user_with("andon.add_budget")
    b = budget_services.budget_create(
        user=keeper, name="Race", board=board, unit="usd", period="month", limit=Decimal("1000000")
    )
    BudgetPeriod.objects.all().delete()  # the first charges race to make it
    task = services.task_create(board=board, title="Part", input="part")
    start, errors = threading.Barrier(8), []

    def charge(n: int) -> None:
        try:
            start.wait(10)
            for i in range(5):
                with transaction.atomic():
                    rows = ModelCall.objects.bulk_create(
                        [
                            ModelCall(
                                task=task,
                                board=board,
                                agent=agent,
                                cost=Decimal(f"{n + 1}.{i}1"),
                                created_at=timezone.now(),
                            )
                        ]
                    )
                    budgets.calls_charge(rows)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=charge, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    ledger = sum(ModelCall.objects.filter(board=board).values_list("cost", flat=True))
    # Each thread n charges (n+1).01 + (n+1).11 + ... + (n+1).41 = 5(n+1) + 1.05.
    assert ledger == sum(5 * (n + 1) + Decimal("1.05") for n in range(8))
    assert BudgetPeriod.objects.get(budget=b).spent == ledger


@pytest.mark.django_db
def test_the_periodic_tick_records_an_ended_stop_as_lifted(board, solo, keeper, monkeypatch):
    budget(keeper, agent=solo)
    feed(board, 2)
    run_until_stopped(board, cost="10.00")
    stop = LineStop.objects.get(kind="budget")
    monkeypatch.setattr(timezone, "now", lambda: stop.until + timedelta(seconds=1))

    tick = budgets.budgets_tick()

    assert [s.pk for s in tick.lifted] == [stop.pk] and tick.boards == {board.pk}
    stop.refresh_from_db()
    assert stop.restarted_at == stop.until
    assert budgets.budgets_tick().lifted == []  # once


# --- what budgets cost the line, in queries ---------------------------------------------------


def _completion_queries(board, cost: str) -> tuple[int, int]:
    """The queries of one pull that claims a task, and of its completion."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    services.task_create(board=board, title="Part", input="part")
    with CaptureQueriesContext(connection) as pulled:
        [claim] = pull(board)
    with CaptureQueriesContext(connection) as completed:
        finish(claim, call(cost=cost))
    return len(pulled), len(completed)


@pytest.mark.django_db
def test_budgets_cost_the_pull_nothing_and_a_completion_a_query_or_two(board, solo, keeper, is_postgres):
    """Measured, not timed: the pull reads the line stops it read before; a
    completion under one budget whose period has begun adds to its period row:
    one UPDATE ... RETURNING on PostgreSQL, a locked read and an update on SQLite."""
    per_budget = 1 if is_postgres else 2
    budgets.budget_rules.get()
    _completion_queries(board, "0.01")  # warm: per-process caches filled
    pull_before, complete_before = _completion_queries(board, "0.01")
    budget(keeper, agent=solo, limit=Decimal("1000"))
    budgets.budget_rules.get()
    # The first charge of the period finds its row made by budget_create.
    pull_after, complete_after = _completion_queries(board, "0.01")
    assert pull_after == pull_before
    assert complete_after == complete_before + per_budget
    budget(keeper, board=board, limit=Decimal("1000"), name="Board")
    budgets.budget_rules.get()
    pull_two, complete_two = _completion_queries(board, "0.01")
    assert (pull_two, complete_two) == (pull_before, complete_before + 2 * per_budget)


def board_banner(board) -> str:
    from django.template.loader import render_to_string

    from boards.fragments import board_live_context

    return render_to_string("boards/board.html#banner", board_live_context(board=board, column_ids=set()))


@pytest.mark.django_db
def test_the_board_says_a_budget_stop_once_with_the_spend_now_and_then_the_override(board, solo, keeper):
    budget(keeper, agent=solo)
    feed(board, 6)
    run_until_stopped(board, cost="5.00")
    stop = LineStop.objects.get(kind="budget")

    # One banner for the stop: the budget's, with the spend now and how the line restarts.
    banner = board_banner(board)
    assert f'id="line-stop-{stop.pk}"' not in banner
    assert banner.count("Budget reached") == 1
    assert "$10.00 of $10.00 spent" in banner
    assert (
        "line is stopped until the period ends, or until a reviewer raises the limit or restarts it" in banner
    )

    andon_services.line_restart(line_stop=stop, user=keeper, note="Month-end push")
    banner = board_banner(board)
    assert "A reviewer restarted the agent's line for the rest of the period." in banner
    assert "line is stopped" not in banner and "banner--stopped" not in banner


@pytest.mark.django_db
def test_a_cord_is_still_said_beside_a_budget(board, solo, keeper):
    budget(keeper, agent=solo, limit=Decimal("100"))
    stop = andon_services.line_stop(board=board, user=keeper, reason="Checking the welds")
    banner = board_banner(board)
    assert f'id="line-stop-{stop.pk}"' in banner and "Checking the welds" in banner
