"""The flow measures read from a fixed history in the database (tests/boards/flow_history.py),
against values worked out by hand; the number of queries stays the same as the history grows."""

from __future__ import annotations

import pytest

from boards import flow_report, flow_selectors
from boards.flow_selectors import FlowFilter
from tests.boards.flow_history import T0, add_finished, at, build_history

pytestmark = pytest.mark.django_db

WINDOW = FlowFilter(since=T0, until=at(3 * 3600))


def report(board, where=WINDOW, step=3600):
    data = flow_selectors.flow_data_get(board=board, where=where, step=step)
    return flow_report.flow_report(data, where=where, now=at(10 * 3600))


def test_cycle_and_lead_time_percentiles():
    h = build_history()
    r = report(h["board"])
    # cycle times 600, 1500 (from the first claim at 900), 3600 (from 1800); task 5 was never claimed
    assert r["cycle_time"] == {
        "p50": 1500.0,
        "p70": 3600.0,
        "p85": 3600.0,
        "p95": 3600.0,
        "unit": "s",
        "count": 3,
    }
    # lead times 1200, 2400, 5400, 7000: ranks 2, 3 (2.8 up), 4 (3.4 up), 4
    assert r["lead_time"] == {
        "p50": 2400.0,
        "p70": 5400.0,
        "p85": 7000.0,
        "p95": 7000.0,
        "unit": "s",
        "count": 4,
    }


def test_throughput_per_hour_and_day():
    h = build_history()
    r = report(h["board"])
    assert r["throughput"]["per_hour"]["values"] == [2, 2, 0]
    assert r["throughput"]["per_hour"]["periods"][0] == "2026-01-05T09:00:00+00:00"
    assert r["throughput"]["per_day"]["values"] == [4]
    assert r["throughput"]["total"] == 4


def test_cfd_and_wip_per_hour():
    h = build_history()
    bands = report(h["board"])["cfd"]["bands"]
    # At 10:00: 1 and 2 done, 3 and 4 running, 5 in Backlog. At 11:00 and 12:00: 3 and 5 done too.
    assert bands["done"] == [2, 4, 4]
    assert bands["running"] == [2, 1, 1]
    assert bands["backlog"] == [1, 0, 0]
    assert bands["ready"] == [0, 0, 0]
    assert bands["review"] == [0, 0, 0]
    assert report(h["board"])["wip"]["values"] == [2, 1, 1]


def test_cfd_at_a_finer_resolution_starts_from_the_state_before_the_window():
    h = build_history()
    where = FlowFilter(since=at(1800), until=at(2100))
    bands = report(h["board"], where=where, step=60)["cfd"]["bands"]
    # Before 1800: 1 done; 2 running (claimed again at 1100); 3 and 4 ready; 5 backlog.
    # 1800 3 claimed; 1900 3 to Review (2 is there since 1500); 2000 3 back to Ready.
    # Counted at the end of each minute: 1860, 1920, 1980, 2040, 2100.
    assert bands["review"] == [1, 2, 2, 1, 1]
    assert bands["running"] == [1, 0, 0, 0, 0]
    assert bands["ready"] == [1, 1, 1, 2, 2]
    assert bands["done"] == [1, 1, 1, 1, 1]


def test_age_of_items_in_flight_now_and_in_the_past():
    h = build_history()
    r = report(h["board"])
    # Task 4, claimed at 3000, measured at the end of the window (10800): past the 85th
    # percentile of cycle times (3600), so red.
    assert [(a["task"], a["age_s"], a["level"], a["column"]) for a in r["age"]] == [
        (h["tasks"][3].pk, 7800.0, "red", "In progress")
    ]
    past = report(h["board"], where=FlowFilter(since=at(1800), until=at(2050)), step=60)
    # At 2050 task 2 waits in Review (first claimed at 900); task 3 is back in Ready.
    assert [(a["task"], a["age_s"], a["status"]) for a in past["age"]] == [
        (h["tasks"][1].pk, 1150.0, "review")
    ]


def test_agent_line_measures():
    h = build_history()
    line = report(h["board"])["agent_line"]
    agents = {row["key"]: row for row in line["agents"]}
    assert agents["alpha"]["completed"] == 2
    assert agents["alpha"]["first_pass_yield"] == 0.5  # task 1 yes; task 2 failed once and was escalated
    assert (agents["alpha"]["rework_agent"], agents["alpha"]["rework_human"]) == (1, 0)
    assert agents["alpha"]["escalation_rate"] == 0.5
    assert agents["alpha"]["cost_per_item"] == pytest.approx(0.03)
    assert agents["beta"]["first_pass_yield"] == 0.0
    assert (agents["beta"]["rework_agent"], agents["beta"]["rework_human"]) == (0, 1)
    assert agents["beta"]["cost_per_item"] == pytest.approx(0.05)
    assert agents["(no agent)"]["first_pass_yield"] == 0.0  # moved to Done by hand: no inspection passed
    capabilities = {row["key"]: row for row in line["capabilities"]}
    assert capabilities["summarise"]["completed"] == 2
    assert capabilities["(none)"]["completed"] == 2


def test_filters_by_agent_and_capability():
    h = build_history()
    r = report(h["board"], where=FlowFilter(since=T0, until=at(3 * 3600), agent_id=h["beta"].pk))
    assert r["cycle_time"]["count"] == 1 and r["cycle_time"]["p50"] == 3600.0
    assert r["throughput"]["per_hour"]["values"] == [0, 1, 0]
    r = report(h["board"], where=FlowFilter(since=T0, until=at(3 * 3600), capability="summarise"))
    assert r["lead_time"]["count"] == 2


def test_xmr_of_cycle_time_in_the_report():
    h = build_history()
    xmr = report(h["board"])["xmr"]["cycle_time"]
    # 600, 1500, 3600: mean 1900, moving ranges 900 and 2100 (mean 1500)
    assert xmr["mean"] == pytest.approx(1900)
    assert xmr["mr_mean"] == pytest.approx(1500)
    assert xmr["upper"] == pytest.approx(1900 + 2.66 * 1500)
    assert xmr["predictable"] is True


@pytest.mark.parametrize("extra", [5, 40])
def test_the_number_of_queries_does_not_grow_with_the_history(extra, django_assert_max_num_queries):
    h = build_history()
    add_finished(h["board"], h["alpha"], extra)
    with django_assert_max_num_queries(12):
        r = report(h["board"])
    assert r["throughput"]["total"] == 4 + extra
