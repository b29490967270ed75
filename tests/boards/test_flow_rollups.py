"""The flow rollups (boards.services.flow_fold): a board's finished hours summed
once, read for the hours they hold, the event log for the rest. Whatever is
folded, every figure is the one the event log gives."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from andon.models import Escalation, Inspection
from boards import flow_report, flow_selectors, services
from boards.flow_selectors import FlowFilter
from boards.models import Board, FlowHour, FlowItem, FlowLineHour, ModelCall, Task, TaskEvent
from boards.services.flow_fold import fold_horizon
from tests.boards.flow_history import T0, _call, _events, _inspection, _task, at, build_history
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db

E = TaskEvent.Kind
NOW = at(30 * 3600)


def report(board: Board, where: FlowFilter, step: int) -> dict:
    board = Board.objects.get(pk=board.pk)  # its fold mark as stored
    data = flow_selectors.flow_data_get(board=board, where=where, step=step)
    return flow_report.flow_report(data, where=where, now=NOW)


def windows(h: dict) -> list[tuple[FlowFilter, int]]:
    alpha = h["alpha"].pk
    return [
        (FlowFilter(since=T0, until=at(3 * 3600)), 3600),
        # Edges inside an hour: the log for the edges, the rollups for the middle.
        (FlowFilter(since=at(700), until=at(2 * 3600 + 1234)), 3600),
        (FlowFilter(since=at(700), until=at(2 * 3600 + 1234)), 900),
        (FlowFilter(since=T0 - timedelta(hours=5), until=at(24 * 3600)), 6 * 3600),
        (FlowFilter(since=at(3700), until=at(9000)), 3600),
        (FlowFilter(since=T0, until=at(3 * 3600), agent_id=alpha), 3600),
        (FlowFilter(since=T0, until=at(3 * 3600), capability="summarise"), 3600),
    ]


def test_a_folded_history_gives_every_figure_the_event_log_gives():
    h = build_history()
    board = h["board"]
    before = [report(board, where, step) for where, step in windows(h)]

    services.flow_fold(board_id=board.pk)

    board.refresh_from_db()
    assert board.flow_folded_until == fold_horizon()
    # The five tasks' status changes, their four finishes, the andon's rows and the ledger.
    assert FlowItem.objects.filter(board=board).count() == 4
    assert FlowHour.objects.filter(board=board).exists()
    assert FlowLineHour.objects.filter(board=board).exists()
    after = [report(board, where, step) for where, step in windows(h)]
    for (where, step), raw, rolled in zip(windows(h), before, after, strict=True):
        assert rolled == raw, f"window {where.since:%H:%M}-{where.until:%H:%M} at {step} s"


def test_the_rollups_hold_the_hand_worked_values():
    h = build_history()
    services.flow_fold(board_id=h["board"].pk)
    r = report(h["board"], FlowFilter(since=T0, until=at(3 * 3600)), 3600)
    # As in test_flow_selectors: now read from the rollups.
    assert r["cycle_time"]["p50"] == 1500.0 and r["cycle_time"]["count"] == 3
    assert r["throughput"]["per_hour"]["values"] == [2, 2, 0]
    assert r["cfd"]["bands"]["done"] == [2, 4, 4]
    alpha = next(a for a in r["agent_line"]["agents"] if a["key"] == "alpha")
    assert (alpha["completed"], alpha["first_pass_yield"], alpha["rework_agent"]) == (2, 0.5, 1)
    assert alpha["cost"] == 0.06


def test_whole_folded_hours_are_read_from_the_rollups_alone():
    h = build_history()
    board = h["board"]
    where = FlowFilter(since=T0, until=at(3 * 3600))
    raw = report(board, where, 3600)
    services.flow_fold(board_id=board.pk)

    # The log, the ledger and the andon's rows gone: the rollups still tell it all
    # (but for the items in flight at the window's end, read from the log).
    for model in (TaskEvent, ModelCall, Escalation, Inspection):
        model.objects.filter(board=board).delete()
    rolled = report(board, where, 3600)
    assert raw["age"] and not rolled["age"]
    assert {k: v for k, v in rolled.items() if k != "age"} == {k: v for k, v in raw.items() if k != "age"}


def test_folding_again_adds_nothing_and_a_rebuild_gives_the_same_rows():
    h = build_history()
    board = h["board"]
    services.flow_fold(board_id=board.pk)

    def rows():
        return (
            sorted(
                FlowHour.objects.filter(board=board).values_list(
                    "hour", "from_status", "to_status", "changes"
                )
            ),
            sorted(FlowItem.objects.filter(board=board).values_list("task_id", "finished_at", "first_pass")),
            sorted(FlowLineHour.objects.filter(board=board).values_list("hour", "agent_id", "cost")),
        )

    first = rows()
    services.flow_fold(board_id=board.pk)
    assert rows() == first
    services.flow_fold_rebuild(board_id=board.pk)
    assert rows() == first


def test_the_hour_not_over_is_read_from_the_event_log():
    board = make_board(backlog=False)
    make_agent(boards=[board], name="welder", latency_ms=0)
    services.flow_fold(board_id=board.pk)
    board.refresh_from_db()
    # Nothing older than this hour and its grace is folded; what happens now counts at once.
    assert board.flow_folded_until <= timezone.now() - timedelta(
        seconds=settings.KAIZEN_FLOW_FOLD_GRACE_SECONDS
    )
    task = services.task_create(board=board, title="Weld now")
    now = timezone.now()
    where = FlowFilter(since=now - timedelta(days=1), until=now + timedelta(seconds=1), live=True)
    data = flow_selectors.flow_data_get(board=board, where=where, step=3600)
    bands = flow_report.flow_report(data, where=where, now=now)["cfd"]["bands"]
    assert bands["ready"][-1] == 1
    assert not FlowHour.objects.filter(board=board).exists()
    assert TaskEvent.objects.filter(task=task).exists()


def test_a_random_history_reads_the_same_folded_or_not():
    rng = random.Random(12)
    board = make_board()
    agents = [make_agent(boards=[board], name=f"agent-{i}", capabilities=[f"cap-{i}"]) for i in range(2)]
    for n in range(40):
        agent = agents[n % 2]
        start = rng.uniform(0, 20 * 3600)
        done = rng.random() < 0.8
        task = _task(
            board, f"t{n}", status="done" if done else "running", agent=agent, capability=f"cap-{n % 2}"
        )
        steps = [
            (start, E.CREATED, "", "backlog", "system"),
            (start + rng.uniform(1, 900), E.MOVED, "backlog", "ready", "system"),
        ]
        t = steps[-1][0] + rng.uniform(1, 3600)
        steps.append((t, E.CLAIMED, "ready", "running", "agent"))
        if rng.random() < 0.3:
            t += rng.uniform(1, 600)
            steps += [
                (t, E.ATTEMPT_FAILED, "running", "ready", "agent"),
                (t + 30, E.CLAIMED, "ready", "running", "agent"),
            ]
            t += 30
        if done:
            t += rng.uniform(60, 7200)
            steps.append((t, E.COMPLETED, "running", "done", "agent"))
        _events(task, steps, agent=agent)
        _inspection(task, agent, t, passed=rng.random() < 0.9)
        _call(task, agent, t - 5, str(Decimal(rng.randint(1, 99)) / 1000))
    where_steps = []
    for _ in range(12):
        a, b = sorted(rng.uniform(-3600, 30 * 3600) for _ in range(2))
        step = rng.choice([900, 3600, 6 * 3600])
        agent_id = rng.choice([None, agents[0].pk])
        where_steps.append((FlowFilter(since=at(a), until=at(b + 3600), agent_id=agent_id), step))
    before = [report(board, where, step) for where, step in where_steps]
    services.flow_fold(board_id=board.pk)
    after = [report(board, where, step) for where, step in where_steps]
    assert after == before
    assert (
        FlowItem.objects.filter(board=board).count()
        == Task.objects.filter(board=board, status="done").count()
    )


def test_the_flow_measures_read_a_bounded_number_of_queries_folded(django_assert_max_num_queries):
    h = build_history()
    services.flow_fold(board_id=h["board"].pk)
    board = Board.objects.get(pk=h["board"].pk)
    where = FlowFilter(since=at(700), until=at(2 * 3600 + 1234))
    # Columns, CFD (rollups before, log before and inside, rollups inside), done
    # per hour (2), finished (rollup items; the log's finishes after the mark: none),
    # in flight, the line (4 + 2), agents.
    with django_assert_max_num_queries(16):
        flow_selectors.flow_data_get(board=board, where=where, step=3600)


def test_the_command_folds_and_says_so(capsys):
    h = build_history()
    call_command("flow_fold", "--board", h["board"].slug)
    out = capsys.readouterr().out
    assert f"{h['board'].slug}: folded up to" in out
    assert FlowItem.objects.filter(board=h["board"]).count() == 4
    call_command("flow_fold", "--rebuild")
    assert FlowItem.objects.filter(board=h["board"]).count() == 4
    with pytest.raises(CommandError, match="No board with the slug 'nope'"):
        call_command("flow_fold", "--board", "nope")


def test_the_beat_folds_every_few_minutes():
    entry = settings.CELERY_BEAT_SCHEDULE["fold-flow"]
    assert entry["task"] == "boards.tasks.fold_flow"
    assert entry["schedule"] <= 600
