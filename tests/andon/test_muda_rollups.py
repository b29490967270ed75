"""The Muda rollups (andon.muda_rollups): the report read from them equals the
report computed from every row (andon.muda.report over muda_history_get, the
reference) on fixed histories; the line keeps them up to date as it records,
late facts included; and the page and API read a number of queries that does not
grow with the history."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from andon import muda, muda_rollups
from andon import services as andon_services
from andon.models import Escalation, Inspection, MudaFinish, MudaHour
from boards import services
from boards.agents import CallRecord, Output
from boards.models import Agent, Board, Column, ModelCall, Task, TaskEvent
from tests.andon.helpers import DEFECTIVE, GOOD, PASSING, claim_one, fail
from tests.andon.muda_history import CACHE_SECONDS, SINCE, T0, UNTIL, at, build_line
from tests.boards.api_support import client_for, token_for
from tests.factories import make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db

S = Task.Status
K = TaskEvent.Kind


def _close(got: float | int | None, want: float | int | None) -> bool:
    if got is None or want is None:
        return got is want
    return got == pytest.approx(want, abs=1e-6)


def assert_same(got: muda.MudaReport, want: muda.MudaReport, *, trend: bool = True) -> None:
    """Every waste's value, cost and parts, the context per agent, the unreviewed
    defects and (with ``trend``) every period's values. Context-window use is read
    from a histogram: its percentiles may be up to a bucket's width (5 points below
    50%) above the exact ones, never below."""
    for name in muda.NAMES:
        g, w = got.waste(name), want.waste(name)
        if name == "inventory" and w.value is not None:
            assert w.value <= g.value <= w.value + 5, name
            assert _close(g.parts["peak"], w.parts["peak"]), name
            assert g.parts["calls_measured"] == w.parts["calls_measured"]
            continue
        assert _close(g.value, w.value), (name, g.value, w.value)
        assert _close(g.cost, w.cost), (name, g.cost, w.cost)
        assert set(g.parts) == set(w.parts), name
        for part in w.parts:
            assert _close(g.parts[part], w.parts[part]), (name, part, g.parts[part], w.parts[part])
    assert got.unreviewed_defects == want.unreviewed_defects
    assert [(c.name, c.calls, c.peak, c.models) for c in got.context_by_agent] == [
        (c.name, c.calls, c.peak, c.models) for c in want.context_by_agent
    ]
    for g_ctx, w_ctx in zip(got.context_by_agent, want.context_by_agent, strict=True):
        assert w_ctx.p95 <= g_ctx.p95 <= w_ctx.p95 + 5
    if trend:
        assert [p.start for p in got.trend] == [p.start for p in want.trend]
        for g_point, w_point in zip(got.trend, want.trend, strict=True):
            for name in muda.NAMES:
                g_value, w_value = g_point.values[name], w_point.values[name]
                if name == "inventory" and w_value is not None:
                    assert w_value <= g_value <= w_value + 5
                else:
                    assert _close(g_value, w_value), (g_point.start, name, g_value, w_value)


def reference(**window) -> muda.MudaReport:
    return muda.report(muda.muda_history_get(**window))


def both(**window) -> tuple[muda.MudaReport, muda.MudaReport]:
    return muda.muda_report_get(**window), reference(**window)


# --- the fixed history of test_muda.py ---------------------------------------------------


@pytest.fixture
def line(settings):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    return build_line()


@pytest.mark.parametrize(
    "since, until",
    [
        (SINCE, UNTIL),  # whole hours: the rollups alone
        (SINCE - timedelta(days=2), UNTIL),  # a daily trend
        (at(2.25), at(16.5)),  # parts of hours at both edges, read from the rows
        (at(14.05), at(14.9)),  # inside one hour
    ],
)
@pytest.mark.parametrize("who", ["board", "alpha", "beta"])
def test_the_rollups_give_the_reference_s_report(line, since, until, who):
    scope = {"board": line.board} if who == "board" else {"agent": getattr(line, who)}
    assert_same(*both(**scope, since=since, until=until))


def test_the_fixed_history_gives_the_hand_worked_values_from_the_rollups(line):
    report = muda.muda_report_get(board=line.board, since=at(2.25), until=at(16.5))
    # As test_muda.py works them out for the whole day: every row falls in this window.
    assert report.waste("overproduction").parts["wasted_tokens"] == 240
    assert report.waste("transport").value == pytest.approx(1.4)
    assert report.waste("motion").cost == pytest.approx(0.65)
    assert report.waste("defects").cost == pytest.approx(0.90)
    assert report.trend[0].start == at(2.25) and report.trend[1].start == at(3)


def test_a_repeat_of_a_call_before_the_window_is_redundant_too(line):
    # c8 (12.9 h) repeats c6 (11.3 h): the rollups judge a call against what came
    # before it, in the window or not (the reference sees only the window's calls).
    report = muda.muda_report_get(board=line.board, since=at(12), until=UNTIL)
    assert report.waste("motion").parts["redundant_in_cache_window"] == 1
    assert (
        reference(board=line.board, since=at(12), until=UNTIL)
        .waste("motion")
        .parts["redundant_in_cache_window"]
        == 0
    )


def test_a_draft_rejected_after_the_window_is_waste_in_it(line):
    # c3 (4.75 h) is escalated at 5 h and rejected: the rollups join a call to its
    # run's inspection and escalation whenever they came (the reference joins only
    # those in the window).
    report = muda.muda_report_get(board=line.board, since=at(4.1), until=at(4.9))
    assert report.waste("overproduction").parts["rejected_tokens"] == 100
    assert (
        reference(board=line.board, since=at(4.1), until=at(4.9))
        .waste("overproduction")
        .parts["rejected_tokens"]
        == 0
    )


def test_the_rebuild_command_is_idempotent_and_draws_progress(line, capsys):
    before = muda.muda_report_get(board=line.board, since=SINCE, until=UNTIL)
    hours = MudaHour.objects.count()
    call_command("muda_rollups_rebuild")
    call_command("muda_rollups_rebuild", "--no-progress")
    assert MudaHour.objects.count() == hours
    assert_same(muda.muda_report_get(board=line.board, since=SINCE, until=UNTIL), before)
    out, err = capsys.readouterr()
    assert "Rebuilt the Muda rollups of 7 tasks." in out
    assert "Tasks" in err  # the progress, on stderr


# --- a varied random history, fixed by its seed ----------------------------------------------


def _random_line(seed: int) -> tuple[Board, list[Agent]]:
    """Forty tasks of two agents on one board, each run a cascade of one to three
    tiers with passed-over answers, cache hits, reused results, provider errors,
    repeated request keys, prompts of every size against small and large windows,
    inspections with token waste, escalations decided every way, blocks, returns
    and tasks finished twice. A run's rows fall in one minute."""
    rng = random.Random(seed)
    board = make_board()
    agents = [make_agent(boards=[board], name=f"agent{n}") for n in range(2)]
    done = board.columns.get(role=Column.Role.DONE)

    def stamp(model, pk: int, when: datetime) -> None:
        model.objects.filter(pk=pk).update(created_at=when)

    def event(task: Task, when: datetime, kind: str, from_status: str, to_status: str) -> None:
        e = TaskEvent.objects.create(
            task=task,
            board=board,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            actor=TaskEvent.Actor.SYSTEM,
        )
        stamp(TaskEvent, e.pk, when)

    for n in range(40):
        agent = agents[n % 2]
        task = Task.objects.create(board=board, column=done, title=f"t{n}", status=S.DONE, agent=agent)
        now = T0 + timedelta(hours=1, minutes=rng.randrange(0, 20 * 60))
        event(task, now, K.CREATED, "", S.BACKLOG)
        now += timedelta(minutes=rng.randrange(1, 40))
        event(task, now, K.MOVED, S.BACKLOG, S.READY)
        attempts = rng.choice((1, 1, 2))
        for attempt in range(1, attempts + 1):
            now += timedelta(minutes=rng.randrange(1, 30))
            event(task, now, K.CLAIMED, S.READY, S.RUNNING)
            if rng.random() < 0.2:
                event(task, now + timedelta(seconds=5), K.BLOCKED, S.RUNNING, S.RUNNING)
                event(task, now + timedelta(seconds=50), K.UNBLOCKED, S.RUNNING, S.RUNNING)
            run_at = now.replace(second=0)
            tiers = rng.choice((1, 2, 3))
            for tier in range(1, tiers + 1):
                source = rng.choice(("model",) * 6 + ("cache", "reuse"))
                error = rng.random() < 0.1 and source == "model"
                window = rng.choice((None, 1000, 8000))
                call = ModelCall.objects.create(
                    task=task,
                    board=board,
                    agent=agent,
                    attempt=attempt,
                    tier=None if source == "reuse" else tier,
                    source=source,
                    provider="simulated" if source != "reuse" else "",
                    model=f"sim-{tier}" if source != "reuse" else "",
                    tokens_in=0 if error else rng.randrange(0, 1200),
                    tokens_out=0 if error else rng.randrange(0, 300),
                    cost=Decimal(rng.randrange(0, 100)) / 1000,
                    accepted=tier == tiers and not error,
                    error="boom" if error else "",
                    request_key="" if source == "reuse" else rng.choice(("k1", "k2", "k3", "k4", "k5", "")),
                    context_window=window,
                    would_pass=None if tier == tiers else rng.choice((True, False, None)),
                    created_at=run_at + timedelta(seconds=tier),
                )
                assert call.pk
            failed = attempt < attempts or rng.random() < 0.2
            inspection = Inspection.objects.create(
                task=task,
                board=board,
                agent=agent,
                attempt=attempt,
                passed=not failed,
                waste_tokens=rng.randrange(0, 60),
                tokens_out=10,
            )
            stamp(Inspection, inspection.pk, run_at + timedelta(seconds=30))
            now = run_at + timedelta(seconds=40)
            if failed:
                status = (
                    Escalation.Status.REJECTED
                    if attempt < attempts
                    else rng.choice(
                        (Escalation.Status.APPROVED, Escalation.Status.CORRECTED, Escalation.Status.OPEN)
                    )
                )
                escalation = Escalation.objects.create(
                    task=task, board=board, agent=agent, inspection=inspection, attempt=attempt, status=status
                )
                stamp(Escalation, escalation.pk, run_at + timedelta(seconds=30))
                event(task, now, K.ESCALATED, S.RUNNING, S.REVIEW)
                now += timedelta(minutes=rng.randrange(1, 50))
                if status == Escalation.Status.REJECTED:
                    event(task, now, K.REJECTED, S.REVIEW, S.READY)
                elif status != Escalation.Status.OPEN:
                    event(task, now, K.APPROVED, S.REVIEW, S.DONE)
            else:
                event(task, now, K.COMPLETED, S.RUNNING, S.DONE)
        if rng.random() < 0.15:
            # Sent back by a person and finished again.
            now += timedelta(minutes=5)
            event(task, now, K.MOVED, S.DONE, S.READY)
            event(task, now + timedelta(minutes=7), K.MOVED, S.READY, S.DONE)
    muda_rollups.rebuild()
    return board, agents


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rollups_give_the_reference_s_report_on_a_random_history(settings, seed):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = 3 * 3600
    board, agents = _random_line(seed)
    for since, until in ((SINCE, UNTIL), (T0 + timedelta(minutes=37), T0 + timedelta(hours=23, minutes=13))):
        assert_same(*both(board=board, since=since, until=until))
        for agent in agents:
            assert_same(*both(board=board, agent=agent, since=since, until=until))


# --- kept up to date by the line --------------------------------------------------------------


def _cascade(*, tokens_out: int, confidence: float, key: str) -> Output:
    """A two-tier run: tier 1 passed over (it would have passed), tier 2 taken."""
    calls = (
        CallRecord(
            source="model",
            tier=1,
            provider="simulated",
            model="sim-small",
            tokens_in=100,
            tokens_out=40,
            cost=Decimal("0.01"),
            request_key=f"{key}-1",
            context_window=1000,
            would_pass=True,
        ),
        CallRecord(
            source="model",
            tier=2,
            provider="simulated",
            model="sim-large",
            tokens_in=300,
            tokens_out=tokens_out,
            cost=Decimal("0.10"),
            accepted=True,
            confidence=confidence,
            request_key=f"{key}-2",
            context_window=4000,
        ),
    )
    return Output(text=GOOD, confidence=confidence, confidence_source="simulated", tier=2, calls=calls)


@pytest.fixture
def live_window():
    hour = muda_rollups.hour_of(timezone.now())
    # Whole hours around now: the figures come from the rollups, not the rows.
    return {"since": hour - timedelta(hours=1), "until": hour + timedelta(hours=2)}


def test_the_line_keeps_the_rollups_as_it_records(settings, board, agent, live_window):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    ana = make_reviewer(username="ana")
    passed_task, claim = claim_one(board, title="passes")
    assert services.task_complete(
        task_id=claim.task_id,
        lease_token=claim.lease_token,
        output=_cascade(tokens_out=50, confidence=PASSING, key="a"),
    )
    defect_task, claim = claim_one(board, title="defect")
    assert services.task_complete(
        task_id=claim.task_id,
        lease_token=claim.lease_token,
        output=_cascade(tokens_out=70, confidence=DEFECTIVE, key="b"),
    )
    failing_task, claim = claim_one(board, title="fails")
    fail(
        claim,
        calls=[CallRecord(source="model", tier=1, provider="simulated", model="sim-small", error="boom")],
    )

    report, want = both(board=board, **live_window)
    assert_same(report, want)
    assert report.waste("overproduction").parts["passed_over_tokens"] == 80
    assert report.waste("over_processing").parts["over_processed"] == 2
    assert report.waste("defects").parts["provider_errors"] == 1
    assert report.waste("transport").parts["finished_items"] == 1
    assert report.escalation_rate.parts["escalations"] == 1
    assert MudaFinish.objects.filter(task=passed_task).count() == 1

    # A late fact: the reviewer rejects the draft, whose 70 tokens become waste.
    escalation = Escalation.objects.get(task=defect_task)
    andon_services.escalation_reject(escalation=escalation, user=ana, reason="Wrong part number.")
    report, want = both(board=board, **live_window)
    assert_same(report, want)
    assert report.waste("overproduction").parts["rejected_tokens"] == 70
    assert report.waste("defects").parts["rejected"] == 1

    # Its next attempt is a defect too, which the reviewer corrects: to Done.
    [claim] = [c for c in services.board_pull(board_id=board.pk) if c.task_id == defect_task.pk]
    assert services.task_complete(
        task_id=claim.task_id,
        lease_token=claim.lease_token,
        output=_cascade(tokens_out=90, confidence=DEFECTIVE, key="c"),
    )
    second = Escalation.objects.get(task=defect_task, status=Escalation.Status.OPEN)
    andon_services.escalation_correct(escalation=second, user=ana, output="The right part number.")
    report, want = both(board=board, **live_window)
    assert_same(report, want)
    assert report.waste("defects").parts["edited"] == 1
    assert report.waste("transport").parts["finished_items"] == 2

    # A person sends the first task back and finishes it again: its last finish counts.
    passed_task.refresh_from_db()
    ready = board.columns.get(role=Column.Role.READY)
    done = board.columns.get(role=Column.Role.DONE)
    services.task_move(task=passed_task, to_column=ready, user=ana)
    services.task_move(task=Task.objects.get(pk=passed_task.pk), to_column=done, user=ana)
    assert MudaFinish.objects.filter(task=passed_task).count() == 2
    report, want = both(board=board, **live_window)
    assert_same(report, want)
    assert report.waste("transport").parts["finished_items"] == 2


def test_a_stale_run_s_calls_reach_the_rollups(settings, board, agent, live_window):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    task, claim = claim_one(board)
    assert services.task_complete(
        task_id=claim.task_id,
        lease_token=claim.lease_token,
        output=_cascade(tokens_out=50, confidence=PASSING, key="a"),
    )
    # The same lease again: the task is Done, so the run is stale; its calls were paid for.
    assert not services.task_complete(
        task_id=claim.task_id,
        lease_token=claim.lease_token,
        output=_cascade(tokens_out=60, confidence=PASSING, key="a"),
    )
    report, want = both(board=board, **live_window)
    assert_same(report, want)
    # Transport counts the finished item's calls whenever they came.
    assert report.waste("transport").parts["model_calls"] == 4
    # The repeat of the same task's identical calls is motion.
    assert report.waste("motion").parts["redundant_in_task"] == 2


def test_a_completed_run_s_finish_is_written_from_its_task_in_hand(settings, board, agent):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    task, claim = claim_one(board)

    with CaptureQueriesContext(connection) as queries:
        assert services.task_complete(
            task_id=claim.task_id,
            lease_token=claim.lease_token,
            output=_cascade(tokens_out=50, confidence=PASSING, key="a"),
        )

    # The run's task is read once, locked; its finish takes its board and agent from it.
    task_reads = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and 'FROM "boards_task"' in q["sql"].partition("WHERE")[0]
    ]
    assert len(task_reads) == 1, task_reads
    finish = MudaFinish.objects.get(task=task)
    assert (finish.board_id, finish.agent, finish.model_calls) == (board.pk, agent.pk, 2)


# --- a bounded number of queries ---------------------------------------------------------------


def _counts(line, *, logged_in, reader) -> tuple[int, int, int]:
    window = {"since": at(2.25), "until": at(16.5)}
    with CaptureQueriesContext(connection) as report_queries:
        muda.muda_report_get(board=line.board, **window)
    params = {
        "since": timezone.localtime(window["since"]).strftime("%Y-%m-%dT%H:%M"),
        "until": timezone.localtime(window["until"]).strftime("%Y-%m-%dT%H:%M"),
    }
    with CaptureQueriesContext(connection) as page_queries:
        assert logged_in.get(f"/boards/{line.board.slug}/muda/", params).status_code == 200
    with CaptureQueriesContext(connection) as api_queries:
        response = reader.get(
            f"/api/v1/boards/{line.board.slug}/muda",
            {"since": window["since"].isoformat(), "until": window["until"].isoformat()},
        )
        assert response.status_code == 200
    return len(report_queries), len(page_queries), len(api_queries)


def test_the_page_and_api_read_as_many_queries_for_a_longer_history(settings, logged_in):
    settings.KAIZEN_RESPONSE_CACHE_SECONDS = CACHE_SECONDS
    reader = client_for(token_for())
    first = build_line()
    _counts(first, logged_in=logged_in, reader=reader)  # the token's first use is recorded once
    small = _counts(first, logged_in=logged_in, reader=reader)
    for n in range(1, 5):
        build_line(offset=10 * n, board=first.board, alpha=first.alpha, beta=first.beta)
    large = _counts(first, logged_in=logged_in, reader=reader)
    assert small == large
    assert small[0] <= 13  # the rollups (4), the edges' rows (6), names, columns
