"""The Flow page's figures (boards.flow_charts) from a report's plain values."""

from __future__ import annotations

from boards import flow_charts


def _report(n: int) -> dict:
    percentiles = {"p50": 60.0, "p70": 70.0, "p85": 85.0, "p95": 95.0, "unit": "s", "count": n}
    return {
        "finished": {
            "task": list(range(1, n + 1)),
            "finished_at": [1_767_600_000.0 + i for i in range(n)],
            "cycle_time_s": [None if i % 10 == 0 else float(i % 100) for i in range(n)],
            "lead_time_s": [float(i % 100) + 5 for i in range(n)],
        },
        "cycle_time": percentiles,
        "lead_time": percentiles,
    }


def test_a_few_items_are_all_drawn_without_a_note():
    figure = flow_charts.cycle_figure(_report(30))
    cycle, lead = figure["data"]
    assert len(lead["x"]) == 30 and lead["customdata"][0] == 1
    assert len(cycle["x"]) == 27  # three were never claimed: no cycle time
    assert not any("drawn" in note["text"] for note in figure["layout"]["annotations"])


def test_tens_of_thousands_of_items_are_drawn_evenly_and_say_so():
    n = 3 * flow_charts.MAX_SCATTER + 7
    figure = flow_charts.cycle_figure(_report(n))
    cycle, lead = figure["data"]
    assert len(lead["x"]) <= flow_charts.MAX_SCATTER
    # Every 4th item, from the first to near the last: the whole window, evenly.
    assert lead["customdata"][:3] == [1, 5, 9]
    assert lead["customdata"][-1] > n - 4
    assert lead["x"][1] - lead["x"][0] == 4000  # milliseconds
    notes = [note["text"] for note in figure["layout"]["annotations"]]
    assert f"1 item in 4 drawn ({len(lead['x']):,} of {n:,}); the lines are of all" in notes
