"""The flow measures (boards.flow) against values worked out by hand from small,
fixed histories: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from scipy import stats

from boards import flow

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # on a whole minute, hour and day


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_percentiles_are_nearest_rank():
    p = flow.percentiles(range(1, 11))
    # ranks ceil(p/100 * 10): 5, 7, 9 (8.5 up), 10 (9.5 up)
    assert p.values == {50: 5.0, 70: 7.0, 85: 9.0, 95: 10.0}
    assert p.count == 10
    assert flow.percentiles([3, 1, 2]).values == {50: 2.0, 70: 3.0, 85: 3.0, 95: 3.0}


def test_percentiles_of_nothing_are_none():
    p = flow.percentiles([])
    assert p.count == 0 and p.get(85) is None
    assert p.as_dict() == {"p50": None, "p70": None, "p85": None, "p95": None, "unit": "s", "count": 0}


def test_cycle_and_lead_time_start_at_first_claim_and_creation():
    items = [
        flow.FinishedItem(task_id=1, created=0.0, started=100.0, finished=400.0),
        flow.FinishedItem(task_id=2, created=50.0, started=None, finished=60.0),
    ]
    assert flow.cycle_times(items) == [300.0]  # the unclaimed item has no cycle time
    assert flow.lead_times(items) == [400.0, 10.0]


def test_age_and_its_level_against_the_sle():
    sle = flow.percentiles([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])  # p70 = 70, p85 = 90
    assert flow.item_age(at(0), at(75)) == 75.0
    assert flow.age_level(70, sle) == "ok"
    assert flow.age_level(71, sle) == "amber"
    assert flow.age_level(90, sle) == "amber"
    assert flow.age_level(91, sle) == "red"
    assert flow.age_level(10_000, flow.percentiles([])) == "ok"


HISTORY = [
    flow.StatusChange(at(-30), "", "backlog"),  # task 1 created before the window
    flow.StatusChange(at(10), "", "backlog"),  # task 2
    flow.StatusChange(at(20), "backlog", "ready"),  # task 1
    flow.StatusChange(at(70), "ready", "running"),  # task 1 claimed
    flow.StatusChange(at(100), "running", "running"),  # not a change: ignored
    flow.StatusChange(at(130), "running", "done"),  # task 1 finished
    flow.StatusChange(at(150), "backlog", "ready"),  # task 2
]


def test_cfd_is_reconstructed_from_status_changes():
    baseline, deltas = flow.aggregate_changes(HISTORY, since=T0, step=60)
    assert baseline == {"backlog": 1}
    grid = flow.period_grid(T0, at(240), 60)
    assert len(grid) == 4
    bands = flow.cfd(baseline, deltas, grid)
    # Items in each status at the end of each minute, worked out by hand:
    assert bands["backlog"] == [1, 1, 0, 0]
    assert bands["ready"] == [1, 0, 1, 1]
    assert bands["running"] == [0, 1, 0, 0]
    assert bands["done"] == [0, 0, 1, 1]
    assert bands["review"] == [0, 0, 0, 0]
    assert flow.wip(bands) == [0, 1, 0, 0]
    assert flow.throughput(deltas, grid) == [0, 0, 1, 0]


def test_a_past_state_of_the_board_comes_from_the_changes_before_it():
    # The window starting at 2 min: task 1 is done and task 2 in Backlog before it.
    baseline, deltas = flow.aggregate_changes(HISTORY, since=at(140), step=60)
    assert baseline == {"backlog": 1, "ready": 0, "running": 0, "done": 1}
    bands = flow.cfd(baseline, deltas, flow.period_grid(at(140), at(170), 60))
    assert bands["done"] == [1] and bands["ready"] == [1] and bands["backlog"] == [0]


def test_throughput_keeps_zero_periods_and_rebins_hours_into_days():
    grid = flow.period_grid(T0, at(6 * 3600), 3600)
    per_hour = flow.throughput_from_times([at(10), at(20), at(3 * 3600 + 5)], grid, 3600)
    assert per_hour == [2, 0, 0, 1, 0, 0]
    assert flow.rebin([1, 2, 3, 4, 5], 2) == [3, 7, 5]


def test_how_many_with_constant_throughput_is_exact():
    forecast = flow.forecast_how_many([3, 3, 3], periods=10, seed=1)
    assert forecast.items == {50: 30, 70: 30, 85: 30, 95: 30}


def test_when_with_constant_throughput_is_exact():
    forecast = flow.forecast_when([3], items=10, seed=1)
    assert forecast.periods == {50: 4, 70: 4, 85: 4, 95: 4}  # 3, 6, 9, 12: the 4th period


def test_how_many_with_bernoulli_periods_follows_the_binomial():
    # Each period finishes one item or none, half the time each: over 20 periods
    # the total is Binomial(20, 0.5); "c chance of at least X" is the largest X
    # with P(total >= X) >= c.
    forecast = flow.forecast_how_many([0, 1], periods=20, seed=7)
    for c, x in forecast.items.items():
        exact = max(k for k in range(21) if stats.binom.sf(k - 1, 20, 0.5) >= c / 100)
        assert abs(x - exact) <= 1, (c, x, exact)
    assert forecast.items[95] <= forecast.items[85] <= forecast.items[50]


def test_when_with_bernoulli_periods_follows_the_negative_binomial():
    # Periods to the 10th success at p = 0.5: 10 + NegBin(10, 0.5) failures.
    forecast = flow.forecast_when([0, 1], items=10, seed=7)
    for c, periods in forecast.periods.items():
        exact = 10 + stats.nbinom.ppf(c / 100, 10, 0.5)
        assert abs(periods - exact) <= 1, (c, periods, exact)


def test_forecast_is_reproducible_with_its_seed():
    a = flow.forecast_how_many([0, 1, 2, 5], periods=30, seed=3)
    b = flow.forecast_how_many([0, 1, 2, 5], periods=30, seed=3)
    assert a == b


def test_when_never_ends_without_throughput():
    assert flow.forecast_when([0, 0], items=3).periods == {50: None, 70: None, 85: None, 95: None}
    with pytest.raises(ValueError):
        flow.forecast_how_many([], periods=3)


def test_xmr_limits_match_a_published_worked_example():
    # Montgomery, Introduction to Statistical Quality Control (6th ed.), Example 6.5:
    # viscosity of aircraft primer paint, 15 batches. Published: mean 33.52, average
    # moving range 0.48, natural process limits 32.24 and 34.80, upper range limit
    # 1.57 (the same X ± 2.66 mR, 3.27 mR as Wheeler, Understanding Variation, p. 60).
    viscosity = [
        33.75,
        33.05,
        34.00,
        33.81,
        33.46,
        34.02,
        33.68,
        33.27,
        33.49,
        33.20,
        33.62,
        33.00,
        33.54,
        33.12,
        33.84,
    ]
    chart = flow.xmr(viscosity)
    assert round(chart.mean, 2) == 33.52
    assert round(chart.mr_mean, 2) == 0.48
    assert round(chart.upper, 2) == 34.80
    assert round(chart.lower, 2) == 32.24
    assert round(chart.range_upper, 2) == 1.57
    assert chart.predictable is True and chart.outside == []


def test_xmr_names_the_points_outside_the_limits():
    values = [10, 11, 10, 11, 10, 11, 10, 11, 10, 30]
    chart = flow.xmr(values)
    # mean 12.4, mR = (8 x 1 + 20) / 9 = 3.111..., upper limit 12.4 + 8.276 = 20.68
    assert chart.outside == [9]
    assert chart.ranges_outside == [9]  # the jump 10 -> 30 (20 > 3.268 x 3.11 = 10.17)
    assert chart.predictable is False
    assert flow.xmr([5]).predictable is None


def test_line_measures():
    m = flow.line_measures(
        "a",
        flow.LineCounts(
            completed=4, first_pass=3, rework_agent=1, rework_human=2, escalations=1, inspections=5, cost=0.2
        ),
    )
    assert m.first_pass_yield == 0.75
    assert m.escalation_rate == 0.2
    assert m.cost_per_item == pytest.approx(0.05)
    assert flow.line_measures("b", flow.LineCounts()).first_pass_yield is None


def test_first_pass_needs_a_passing_finish_and_nothing_sent_back():
    assert flow.is_first_pass(flow.TaskHistory(completed_passing=True))
    assert not flow.is_first_pass(flow.TaskHistory(completed_passing=True, returns=1))
    assert not flow.is_first_pass(flow.TaskHistory(completed_passing=False))
    assert not flow.is_first_pass(flow.TaskHistory(completed_passing=True, corrected=1))


def test_window_problems():
    assert flow.window_problems(since=at(10), until=at(0)) == {
        "until": ["The end of the window must be after its start."]
    }
    assert "resolution" in flow.window_problems(since=T0, until=at(86400 * 30), step=60)
    assert flow.window_problems(since=T0, until=at(3600), step=60) == {}
    assert flow.window_problems(since=T0, until=at(86400 * 366)) == {}
    assert flow.window_problems(since=T0, until=at(86400 * 367)) == {
        "since": ["Ask for at most 366 days at a time."]
    }
