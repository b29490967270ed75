"""The cost-anomaly warning: the last hour's spend above 3x the median of the
previous 24 hourly spends, and at least $1 (KAIZEN_COST_ANOMALY_MIN_USD), raises
an andon alert with the evidence, once per board or agent per hour."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from andon import budgets
from andon.models import Alert, AndonRecord
from boards import services
from boards.models import ModelCall

NOW = datetime(2026, 12, 5, 14, 0, tzinfo=ZoneInfo("UTC"))
D = Decimal


def test_the_rule_on_a_fixed_history():
    # Twelve hours at $0.50 and twelve at $1.00: the median is $0.75, 3x is $2.25.
    history = [D("0.50")] * 12 + [D("1.00")] * 12
    found = budgets.cost_anomaly(D("2.26"), history, factor=3, minimum=1)
    assert found == budgets.Anomaly(last_hour=D("2.26"), median=D("0.75"), threshold=D("2.25"))
    assert budgets.cost_anomaly(D("2.25"), history, factor=3, minimum=1) is None


def test_a_quiet_line_does_not_alarm_below_the_minimum():
    # A median of $0.10 an hour: $0.90 is 9x the norm, but under the $1 minimum.
    history = [D("0.10")] * 24
    assert budgets.cost_anomaly(D("0.90"), history, factor=3, minimum=1) is None
    found = budgets.cost_anomaly(D("1.00"), history, factor=3, minimum=1)
    assert found is not None and found.threshold == D("1") and found.median == D("0.10")


def test_hours_with_no_spend_count_as_zero():
    # Spend in 10 of the 24 hours only: the median is 0, so the minimum decides.
    history = [D("0")] * 14 + [D("5")] * 10
    assert budgets.cost_anomaly(D("1.50"), history, factor=3, minimum=1).median == 0


@pytest.fixture
def history(board, agent):
    """$0.50 in each of the 24 hours before the last one, at half past, and
    $4.00 (two calls) in the last hour: for the board and its one agent."""
    task = services.task_create(board=board, title="Part", input="part")
    rows = [
        ModelCall(
            task=task,
            board=board,
            agent=agent,
            cost=D("0.50"),
            created_at=NOW - timedelta(hours=k, minutes=30),
        )
        for k in range(1, 25)
    ]
    rows += [
        ModelCall(
            task=task, board=board, agent=agent, cost=D("1.50"), created_at=NOW - timedelta(minutes=50)
        ),
        ModelCall(task=task, board=board, agent=agent, cost=D("2.50"), created_at=NOW),
        # Older than the 25 hours looked at: ignored.
        ModelCall(
            task=task, board=board, agent=agent, cost=D("99"), created_at=NOW - timedelta(hours=25, minutes=1)
        ),
    ]
    ModelCall.objects.bulk_create(rows)


@pytest.mark.django_db
def test_hourly_spend_is_read_per_hour_back_from_now(board, history, django_assert_num_queries):
    with django_assert_num_queries(1):
        hours = budgets.hourly_spend_get(now=NOW, scope="board")
    assert hours == {board.pk: [D("0.50")] * 24 + [D("4.00")]}


@pytest.mark.django_db
def test_an_anomaly_raises_an_alert_with_the_evidence(board, agent, history):
    raised = budgets.cost_anomalies_check(now=NOW)

    assert {(a.board_id, a.agent_id) for a in raised} == {(board.pk, None), (None, agent.pk)}
    alert = Alert.objects.get(board=board)
    assert alert.kind == "cost_anomaly" and alert.is_open
    assert alert.title == f"Spend far above its norm: board {board.name}"
    assert alert.evidence["last_hour"] == "4.0000"
    assert alert.evidence["median"] == "0.5000"
    assert alert.evidence["hourly"] == ["0.5000"] * 24
    assert alert.summary.startswith(
        "$4.00 spent in the last hour; the median of the previous 24 hourly spends is $0.50."
    )
    records = AndonRecord.objects.filter(action=AndonRecord.Action.ANOMALY_RAISED)
    assert records.count() == 2 and records.get(board=board).alert == alert


@pytest.mark.django_db
def test_once_an_hour_per_scope(board, agent, history):
    assert len(budgets.cost_anomalies_check(now=NOW)) == 2
    assert budgets.cost_anomalies_check(now=NOW + timedelta(minutes=5)) == []
    assert Alert.objects.count() == 2


@pytest.mark.django_db
def test_spend_at_its_norm_raises_nothing(board, agent, settings, history):
    settings.KAIZEN_COST_ANOMALY_FACTOR = 10.0  # $4 is 8x the median: under 10x
    assert budgets.cost_anomalies_check(now=NOW) == []
