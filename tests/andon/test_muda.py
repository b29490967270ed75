"""The seven wastes against values worked out by hand from the fixed history in
tests/andon/muda_history.py (hours after T0; the window is the day [T0, T0 + 24 h)).

The ledger in the window (c0, before it, never counts):

    call task agent att tier source  in   out  $     taken error key win   would pass  h
    c1   1    α     1   1    model   100  50   0.10  no    -     k1  1000  yes         2.5
    c2   1    α     1   2    model   100  40   0.50  yes   -     k2  4000  -           2.6
    c3   2    α     1   1    model   200  100  0.20  yes   -     k3  1000  -           4.75  (rejected)
    c4   2    α     2   1    model   220  80   0.25  yes   -     k4  1000  -           7.75
    c5   3    β     1   1    model   0    0    0     no    boom  k5  1000  -           11.2
    c6   3    β     1   2    model   300  60   0.60  yes   -     k6  4000  -           11.3
    c7   4    β     1   1    cache   0    0    0     no    -     k7  1000  no          12.8
    c8   4    β     1   2    model   300  60   0.60  yes   -     k6  4000  -           12.9
    c9   5    α     1   1    model   100  30   0.05  no    -     k8  1000  -           14.6
    c10  5    α     1   2    model   0    0    0     no    boom  k9  4000  -           14.7
    c11  5    α     2   1    model   100  30   0.05  no    -     k8  1000  -           15.1
    c12  5    α     2   2    model   0    0    0     no    boom  k9  4000  -           15.2
    c13  6    α     1   -    reuse   0    0    0     yes   -     -   -     -           16

Inspections (task/attempt: pass or fail, waste tokens): 1/1 pass 10, 2/1 fail (escalated,
rejected), 2/2 pass 0, 3/1 pass 20, 4/1 fail (no escalation: reached Done unreviewed), 6/1 pass 0.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from andon import muda
from boards.models import Column, Task
from tests.andon.muda_history import CACHE_SECONDS, SINCE, UNTIL, at, build_line
from tests.factories import make_board

pytestmark = pytest.mark.django_db


@pytest.fixture
def line(settings):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    return build_line()


@pytest.fixture
def board_report(line) -> muda.MudaReport:
    return muda.muda_report_get(board=line.board, since=SINCE, until=UNTIL)


def test_overproduction_counts_passed_over_rejected_and_excess_output_tokens(board_report):
    waste = board_report.waste("overproduction")
    # All output tokens of model calls: 50+40+100+80+0+60+60+30+0+30+0 = 450.
    # Passed over: c1 50 + c9 30 + c11 30 = 110 ($0.10 + $0.05 + $0.05);
    # rejected draft: c3 100 ($0.20); excess over the estimate: 10 of c2, 20 of c6,
    # at their share of the call's tokens: $0.50 * 10/140 + $0.60 * 20/360.
    assert waste.parts["output_tokens"] == 450
    assert (
        waste.parts["passed_over_tokens"],
        waste.parts["rejected_tokens"],
        waste.parts["excess_tokens"],
    ) == (
        110,
        100,
        30,
    )
    assert waste.value == pytest.approx(240 / 450 * 100, abs=1e-4)
    assert waste.cost == pytest.approx(0.20 + 0.20 + 0.50 * 10 / 140 + 0.60 * 20 / 360)
    assert (waste.unit, waste.target, waste.met) == ("%", 20.0, False)


def test_token_efficiency_is_one_minus_overproduction(board_report):
    assert board_report.token_efficiency.value == pytest.approx(100 - 240 / 450 * 100, abs=1e-4)
    assert board_report.token_efficiency.met is False  # 46.7% is not above 80%


def test_waiting_is_the_queue_share_of_the_lead_time_of_items_finished_in_the_window(board_report):
    waste = board_report.waste("waiting")
    # Finished in the window: tasks 1, 2, 3, 4, 6 (task 7 finished before it, 5 is not done).
    # Lead times 3 + 4 + 1.5 + 1 + 0.1 = 9.6 h. Backlog 1 h (task 1); Ready 1 + 0.5 + 0.5
    # + 0.25 + 0.5 + 0.1 = 2.85 h; waiting for a decision 2 h (task 2, 5 h to 7 h);
    # blocked 0.5 h (task 3), apart.
    assert waste.parts["finished_items"] == 5
    assert waste.value == pytest.approx((1 + 2.85 + 2) / 9.6 * 100, abs=1e-4)
    assert waste.parts["backlog_s_per_item"] == pytest.approx(3600 / 5)
    assert waste.parts["ready_s_per_item"] == pytest.approx(2.85 * 3600 / 5)
    assert waste.parts["decision_s_per_item"] == pytest.approx(2 * 3600 / 5)
    assert waste.parts["blocked_s_per_item"] == pytest.approx(0.5 * 3600 / 5)
    assert waste.parts["review_s_per_item"] == 0
    assert waste.cost is None


def test_transport_is_model_calls_per_finished_item(board_report):
    waste = board_report.waste("transport")
    # Task 1: 2 calls, 2: 2, 3: 2 (one failed), 4: 1 (and a cache hit), 6: 0 (reused) = 7 / 5.
    # Beyond the taken answer: c1 $0.10, c3 $0.20, c5 $0.
    assert waste.value == pytest.approx(1.4)
    assert waste.cost == pytest.approx(0.30)
    assert waste.unit == "calls/item" and waste.met is True


def test_over_processing_counts_only_where_a_cheaper_answer_is_known_to_pass(board_report):
    waste = board_report.waste("over_processing")
    # Answers taken: runs 1/1 (tier 2), 2/1, 2/2, 3/1 (tier 2), 4/1 (tier 2), 6/1 (reused) = 6.
    # 1/1: tier 1 would have passed -> over-processed, $0.50 of tier 2 above it.
    # 3/1: tier 1 failed (no answer to judge): unknown. 4/1: tier 1 would have failed.
    assert waste.parts == {
        "answers_taken": 6,
        "taken_above_tier_1": 3,
        "with_cheaper_verdict": 2,
        "over_processed": 1,
    }
    assert waste.value == pytest.approx(100 / 6, abs=1e-4)
    assert waste.cost == pytest.approx(0.50)


def test_inventory_is_the_95th_percentile_of_context_window_use(board_report):
    waste = board_report.waste("inventory")
    # Prompt / window of calls with prompt tokens: 10, 2.5, 20, 22, 7.5, 7.5, 10, 10 (%):
    # nearest rank ceil(0.95 * 8) = 8th of 8 sorted = 22.
    assert waste.value == pytest.approx(22.0)
    assert waste.parts["peak"] == pytest.approx(22.0)
    assert waste.parts["calls_measured"] == 8
    # The window ended in the past: no WIP now to speak of.
    assert waste.parts["items_above_wip_limits"] == 0


def test_context_window_use_per_agent(line, board_report):
    by_agent = {c.name: c for c in board_report.context_by_agent}
    assert (by_agent["alpha"].calls, by_agent["alpha"].p95, by_agent["alpha"].peak) == (6, 22.0, 22.0)
    assert (by_agent["beta"].calls, by_agent["beta"].p95, by_agent["beta"].peak) == (2, 7.5, 7.5)
    assert by_agent["beta"].models == (("simulated", "sim-medium"),)


def test_motion_counts_identical_calls_in_a_task_or_within_the_cache_window(board_report):
    waste = board_report.waste("motion")
    # 11 model calls. c8 repeats c6 (k6) 1.6 h later, within the 2 h cache window: $0.60;
    # c11 repeats c9 (k8) in the same task: $0.05. c12 repeats c10, but both failed.
    assert waste.parts["model_calls"] == 11
    assert (waste.parts["redundant_in_task"], waste.parts["redundant_in_cache_window"]) == (1, 1)
    assert (waste.parts["served_from_cache"], waste.parts["reused_results"]) == (1, 1)
    assert waste.value == pytest.approx(2 / 11 * 100, abs=1e-4)
    assert waste.cost == pytest.approx(0.65)


def test_motion_outside_the_cache_window_is_not_redundant(line, settings):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = 3600  # c8 comes 1.6 h after c6
    waste = muda.muda_report_get(board=line.board, since=SINCE, until=UNTIL).waste("motion")
    assert (waste.parts["redundant_in_task"], waste.parts["redundant_in_cache_window"]) == (1, 0)


def test_defects_and_escalation_rate(board_report):
    waste = board_report.waste("defects")
    # 6 inspections, 2 failed; retries: runs 2/2 and 5/2; provider errors c5, c10, c12.
    # Cost: failed runs 2/1 ($0.20) and 4/1 ($0.60), runs without an output 5/1, 5/2 ($0.05 each).
    assert waste.value == pytest.approx(100 * 2 / 6, abs=1e-4)
    assert waste.cost == pytest.approx(0.90)
    assert waste.parts["retries"] == 2
    assert waste.parts["provider_errors"] == 3
    assert (waste.parts["escalations"], waste.parts["rejected"], waste.parts["edited"]) == (1, 1, 0)
    assert board_report.escalation_rate.value == pytest.approx(100 / 6, abs=1e-4)
    assert board_report.escalation_rate.met is False
    assert board_report.unreviewed_defects == 1  # task 4's failed output went to Done unreviewed


def test_an_agent_s_wastes_are_its_own(line):
    report = muda.muda_report_get(board=line.board, agent=line.beta, since=SINCE, until=UNTIL)
    # Beta: c5, c6, c7, c8; inspections 3/1 pass (waste 20), 4/1 fail.
    over = report.waste("overproduction")
    assert over.parts["output_tokens"] == 120
    assert over.value == pytest.approx(20 / 120 * 100, abs=1e-4)
    assert report.waste("defects").value == pytest.approx(50.0)
    assert report.escalation_rate.value == 0.0
    assert report.waste("transport").value == pytest.approx(3 / 2)  # tasks 3 and 4
    waiting = report.waste("waiting")
    assert waiting.parts["finished_items"] == 2
    assert waiting.value == pytest.approx((0.25 + 0.5) / 2.5 * 100, abs=1e-4)


def test_the_trend_splits_the_window_by_hour(board_report):
    assert board_report.period == "hour"
    assert len(board_report.trend) == 24
    assert board_report.trend[2].start == at(2)
    # 2 h to 3 h: c1 and c2 (tier 1 passed over, 50 of 90 tokens, and c2's 10 excess tokens,
    # by task 1's inspection at 3 h, in the next period).
    assert board_report.trend[2].values["overproduction"] == pytest.approx(60 / 90 * 100, abs=1e-4)
    # 4 h to 5 h: c3, whose draft was rejected (escalated at 5 h).
    assert board_report.trend[4].values["overproduction"] == 100.0
    # Task 1 finished at 3 h: backlog 1 h and ready 1 h of 3 h.
    assert board_report.trend[3].values["waiting"] == pytest.approx(200 / 3, abs=1e-4)
    assert board_report.trend[3].values["transport"] == pytest.approx(2.0)
    assert board_report.trend[20].values == dict.fromkeys(muda.NAMES)
    # A repeat is judged against the calls of earlier periods too: c8 (12 h) repeats c6 (11 h),
    # c11 (15 h) repeats c9 (14 h).
    assert board_report.trend[12].values["motion"] == 100.0
    assert board_report.trend[15].values["motion"] == 50.0  # c11 of c11 and c12


def test_a_long_window_has_a_daily_trend(line):
    report = muda.muda_report_get(board=line.board, since=SINCE - timedelta(days=2), until=UNTIL)
    assert report.period == "day"
    assert [p.start for p in report.trend] == [SINCE - timedelta(days=2), SINCE - timedelta(days=1), SINCE]
    # The day before T0 has task 7 alone: its answer, a failed inspection.
    assert report.trend[1].values["defects"] == 100.0
    assert report.trend[2].values["defects"] == pytest.approx(100 * 2 / 6, abs=1e-4)


def test_waste_value_gives_the_report_s_numbers(line):
    assert muda.waste_value("token_efficiency", board=line.board, since=SINCE, until=UNTIL) == pytest.approx(
        100 - 240 / 450 * 100, abs=1e-4
    )
    # Alpha: inspections 1/1, 2/1, 2/2, 6/1; one escalation.
    assert muda.waste_value("escalation_rate", agent=line.alpha, since=SINCE, until=UNTIL) == 25.0


def test_waste_value_over_the_last_outputs(line):
    # The last two outputs before UNTIL: 4/1 (failed, 13 h) and 6/1 (passed, 16 h).
    assert muda.waste_value("defects", board=line.board, until=UNTIL, last_outputs=2) == 50.0
    # More outputs than there are: all of them, task 7's included.
    assert muda.waste_value("defects", board=line.board, until=UNTIL, last_outputs=100) == pytest.approx(
        100 * 3 / 7, abs=1e-4
    )


def test_waste_value_is_none_without_data_and_refuses_unknown_names(db):
    board = make_board()
    assert muda.waste_value("defects", board=board) is None
    assert muda.waste_value("token_efficiency", board=board, last_outputs=10) is None
    with pytest.raises(ValueError, match="unknown waste 'speed'"):
        muda.waste_value("speed", board=board)
    with pytest.raises(ValueError, match="at least 1"):
        muda.waste_value("defects", board=board, last_outputs=0)


def test_wip_above_limits_now_and_its_age(db):
    board = make_board(ready_limit=1, hard=False)
    ready = board.columns.get(role=Column.Role.READY)
    for n in range(3):
        Task.objects.create(board=board, column=ready, title=f"t{n}", status=Task.Status.READY)
    oldest = timezone.now() - timedelta(hours=5)
    Task.objects.filter(title="t0").update(created_at=oldest)

    report = muda.muda_report_get(board=board)

    [excess] = report.wip_excess
    assert (excess.column, excess.count, excess.limit, excess.excess) == ("Ready", 3, 1, 2)
    assert excess.oldest_age_s == pytest.approx(5 * 3600, abs=60)
    assert report.waste("inventory").parts["items_above_wip_limits"] == 2
    assert report.waste("inventory").value is None  # no model calls


def test_every_waste_has_a_definition_a_target_and_a_unit(board_report):
    assert [w.name for w in board_report.wastes] == list(muda.WASTES)
    for waste in (*board_report.wastes, board_report.token_efficiency, board_report.escalation_rate):
        assert waste.definition and waste.unit and waste.target > 0 and waste.better in ("lower", "higher")


@pytest.mark.parametrize("copies", [1, 4])
def test_the_report_reads_a_bounded_number_of_queries(settings, django_assert_max_num_queries, copies):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    first = build_line()
    for n in range(1, copies):
        build_line(offset=10 * n, board=first.board, alpha=first.alpha, beta=first.beta)
    with django_assert_max_num_queries(7):
        report = muda.muda_report_get(board=first.board, since=SINCE, until=UNTIL)
    assert report.waste("transport").parts["finished_items"] == 5 * copies
