"""The demo's simulated reviewer: off unless configured; works only demo boards'
inboxes, one row at a time, once it has waited; decides like a plausible person,
the same way every time for the same escalation; and is labelled as a program
wherever its decisions show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from andon import demo_reviewer, tasks
from andon import services as andon_services
from andon.demo_reviewer import SIMULATED_REVIEWER, Plan, plan_for
from andon.models import Escalation
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import DEFECTIVE, claim_one, complete
from tests.factories import column, make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parents[2]

Role = Column.Role
DEMO_TASKS = [{"title": "Example", "input": "an example"}]


def demo_line(*, demo: bool = True):
    board = make_board()
    if demo:
        board.demo_tasks = DEMO_TASKS
        board.save()
    review = column(board, Role.REVIEW)
    review.wip_limit = None
    review.save()
    make_agent(boards=[board], spike_defects=1000, spike_window=1000)
    return board


def escalated(
    board, *, input: str = "scratch on housing", text: str = "Scratch on the housing.", age: float = 60
):
    task, claim = claim_one(board, input=input)
    assert complete(claim, confidence=DEFECTIVE, text=text)
    escalation = Escalation.objects.get(task=task, status=Escalation.Status.OPEN)
    # It has waited ``age`` seconds (the reviewer leaves fresh ones a moment).
    Escalation.objects.filter(pk=escalation.pk).update(created_at=timezone.now() - timedelta(seconds=age))
    escalation.refresh_from_db()
    return escalation


def failing(escalation: Escalation, *failures: tuple[str, str], confidence: float | None = 0.5) -> Escalation:
    """The escalation as if these (check kind, reason) had failed."""
    escalation.failures = [{"name": kind, "check": kind, "reason": reason} for kind, reason in failures]
    escalation.confidence = confidence
    return escalation


# --- the plan: what a plausible person decides ----------------------------------------


def test_the_plan_is_the_same_every_time_for_the_same_escalation():
    plans = [plan_for(failing(Escalation(pk=pk, output="x"), ("confidence", "low"))) for pk in range(1, 60)]

    again = [plan_for(failing(Escalation(pk=pk, output="x"), ("confidence", "low"))) for pk in range(1, 60)]

    assert plans == again


def test_most_confidence_only_escalations_are_approved_and_the_rest_rejected_with_a_reason():
    plans = [
        plan_for(failing(Escalation(pk=pk, output="x"), ("confidence", "below 0.7"), confidence=0.6))
        for pk in range(1, 201)
    ]

    approved = [p for p in plans if p.action == "approve"]
    rejected = [p for p in plans if p.action == "reject"]
    assert len(approved) + len(rejected) == 200
    assert 0.7 < len(approved) / 200 < 0.95
    assert all(p.text.startswith("Simulated reviewer:") for p in plans)
    assert all("60%" in p.text for p in plans)


def test_a_hedging_answer_is_rejected_with_a_reason():
    plan = plan_for(failing(Escalation(pk=7, output="I think so."), ("uncertainty", 'marker "I think"')))

    assert plan.action == "reject"
    assert plan.text.startswith("Simulated reviewer:") and "hedges" in plan.text


def test_a_malformed_answer_is_rejected_naming_the_failed_check():
    escalation = failing(
        Escalation(pk=3, output="{"), ("confidence", "low"), ("json", "not JSON: Expecting value")
    )

    plan = plan_for(escalation)

    assert plan == Plan("reject", plan.text)
    assert "json check (not JSON: Expecting value)" in plan.text


def test_a_too_long_answer_is_mostly_trimmed_and_otherwise_rejected():
    output = "The part is fine. " * 3 + "Some padding follows here. More padding to end it."
    plans = [
        plan_for(
            failing(Escalation(pk=pk, output=output), ("length", "300 characters, more than the maximum 100"))
        )
        for pk in range(1, 101)
    ]

    corrected = [p for p in plans if p.action == "correct"]
    assert 0.5 < len(corrected) / 100 < 0.9
    for plan in corrected:
        assert 0 < len(plan.text) < len(output.strip())
        assert output.startswith(plan.text)
        assert plan.note.startswith("Simulated reviewer:")
    assert {p.action for p in plans} == {"correct", "reject"}


# --- working the inbox ----------------------------------------------------------------


def test_it_decides_a_demo_boards_oldest_row_as_the_labelled_simulated_reviewer():
    board = demo_line()
    older = escalated(board, input="first input", age=120)
    escalated(board, input="second input", age=60)

    [decided] = demo_reviewer.demo_review_run(min_age=5)

    assert decided.pk == older.pk
    older.refresh_from_db()
    assert older.status != Escalation.Status.OPEN
    assert older.decided_by.username == SIMULATED_REVIEWER
    assert older.note.startswith("Simulated reviewer:")
    expected = plan_for(older).action
    kind = {"approve": TaskEvent.Kind.APPROVED, "reject": TaskEvent.Kind.REJECTED}.get(expected, expected)
    [event] = older.task.events.filter(kind=kind)
    assert event.user.username == SIMULATED_REVIEWER
    assert "Simulated reviewer" in event.note
    # One row per pass: the other waits for the next beat.
    assert Escalation.objects.filter(status=Escalation.Status.OPEN).count() == 1


def test_its_user_may_review_but_nobody_can_log_in_as_it():
    user = demo_reviewer.simulated_reviewer_user()

    assert andon_services.is_reviewer(user)
    assert not user.has_usable_password()
    assert demo_reviewer.simulated_reviewer_user().pk == user.pk


def test_it_decides_a_group_of_identical_escalations_at_once():
    board = demo_line()
    members = [escalated(board, age=60) for _ in range(3)]

    decided = demo_reviewer.demo_review_run(min_age=5)

    assert sorted(e.pk for e in decided) == sorted(m.pk for m in members)
    assert not Escalation.objects.filter(status=Escalation.Status.OPEN).exists()


def test_it_leaves_boards_without_demo_tasks_alone():
    board = demo_line(demo=False)
    escalated(board)

    assert demo_reviewer.demo_review_run(min_age=5) == []
    assert Escalation.objects.filter(status=Escalation.Status.OPEN).count() == 1


def test_it_leaves_a_fresh_escalation_a_moment():
    board = demo_line()
    escalated(board, age=1)

    assert demo_reviewer.demo_review_run(min_age=5) == []


def test_it_leaves_an_escalation_a_person_claimed():
    board = demo_line()
    escalation = escalated(board)
    andon_services.escalation_claim(escalation=escalation, user=make_reviewer(username="ana"))

    assert demo_reviewer.demo_review_run(min_age=5) == []
    escalation.refresh_from_db()
    assert escalation.is_open


def test_the_beat_task_does_nothing_while_the_setting_is_off(settings):
    board = demo_line()
    escalated(board)
    settings.KAIZEN_DEMO_REVIEWER_SECONDS = 0

    assert tasks.review_demo_escalations() == 0
    assert Escalation.objects.filter(status=Escalation.Status.OPEN).count() == 1

    settings.KAIZEN_DEMO_REVIEWER_SECONDS = 10
    settings.KAIZEN_DEMO_REVIEWER_MIN_AGE_SECONDS = 5
    assert tasks.review_demo_escalations() == 1


def _beat_schedule(**env: str) -> dict:
    """The beat schedule the settings build from this environment, read in a
    fresh interpreter (settings are read once per process)."""
    code = "import json; from kaizen_web import settings as s; print(json.dumps(s.CELERY_BEAT_SCHEDULE))"
    environ = {k: v for k, v in os.environ.items() if k != "KAIZEN_DEMO_REVIEWER_SECONDS"} | env
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True, cwd=BASE_DIR
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_beat_schedule_has_the_reviewer_only_when_it_is_turned_on():
    assert "demo-reviewer" not in _beat_schedule()

    entry = _beat_schedule(KAIZEN_DEMO_REVIEWER_SECONDS="12")["demo-reviewer"]

    assert entry == {"task": "andon.tasks.review_demo_escalations", "schedule": 12.0}


# --- labelled wherever its decisions show -----------------------------------------------


def test_its_decisions_are_badged_in_the_inbox_history_and_on_the_escalation_page():
    board = demo_line()
    escalation = escalated(board)
    demo_reviewer.demo_review_run(min_age=5)
    client = Client()
    client.force_login(make_reviewer(username="ana"))

    inbox = client.get("/andon/").content.decode()
    page = client.get(f"/andon/{escalation.pk}/").content.decode()
    task_page = client.get(f"/boards/{board.slug}/tasks/{escalation.task_id}/").content.decode()

    history = inbox[inbox.index('id="inbox-history"') :]
    assert f"{SIMULATED_REVIEWER} <span" in history and ">simulated reviewer</span>" in history
    assert ">simulated reviewer</span>" in page
    assert SIMULATED_REVIEWER in task_page and "Simulated reviewer:" in task_page


def test_someone_deciding_after_it_is_told_it_was_the_simulated_reviewer():
    board = demo_line()
    escalation = escalated(board)
    demo_reviewer.demo_review_run(min_age=5)

    with pytest.raises(andon_services.AlreadyDecided, match="simulated reviewer, not a person"):
        andon_services.escalation_approve(escalation=escalation, user=make_reviewer(username="ana"))


def test_a_task_it_rejected_goes_back_with_its_labelled_reason():
    board = demo_line()
    escalation = escalated(board)
    escalation.failures = [{"name": "uncertainty", "check": "uncertainty", "reason": "hedge"}]
    escalation.save()

    demo_reviewer.demo_review_run(min_age=5)

    task = Task.objects.get(pk=escalation.task_id)
    assert task.review_feedback.startswith("Simulated reviewer:")


# --- lines a defect spike stopped -------------------------------------------------------


def _spike_stop(agent, *, age: float = 120):
    from andon.models import LineStop

    stop = LineStop.objects.create(
        agent=agent, kind=LineStop.Kind.DEFECT_SPIKE, reason="defect spike: 3 in 10"
    )
    LineStop.objects.filter(pk=stop.pk).update(created_at=timezone.now() - timedelta(seconds=age))
    return stop


def test_it_restarts_a_demo_agents_line_a_defect_spike_stopped_a_while_ago():
    board = demo_line()
    agent = board.agents.get()
    stop = _spike_stop(agent)

    assert demo_reviewer.demo_restart_run(min_age=60) == [stop]

    stop.refresh_from_db()
    assert stop.restarted_at is not None
    assert stop.restarted_by.username == SIMULATED_REVIEWER
    assert stop.restart_note.startswith("Simulated reviewer:")


def test_it_leaves_a_fresh_spike_stop_showing_for_a_while():
    board = demo_line()
    stop = _spike_stop(board.agents.get(), age=5)

    assert demo_reviewer.demo_restart_run(min_age=60) == []
    stop.refresh_from_db()
    assert stop.restarted_at is None


def test_it_never_undoes_a_cord_a_person_pulled():
    board = demo_line()
    agent = board.agents.get()
    stop = andon_services.line_stop(user=make_reviewer(username="ana"), reason="wrong prices", agent=agent)
    from andon.models import LineStop

    LineStop.objects.filter(pk=stop.pk).update(created_at=timezone.now() - timedelta(hours=1))

    assert demo_reviewer.demo_restart_run(min_age=60) == []
    stop.refresh_from_db()
    assert stop.restarted_at is None


def test_it_leaves_an_agent_that_also_serves_a_real_board_stopped():
    board = demo_line()
    agent = board.agents.get()
    agent.boards.add(make_board())  # no demo tasks: real work
    stop = _spike_stop(agent)

    assert demo_reviewer.demo_restart_run(min_age=60) == []
    stop.refresh_from_db()
    assert stop.restarted_at is None


def test_the_beat_task_restarts_lines_too(settings):
    board = demo_line()
    _spike_stop(board.agents.get())
    settings.KAIZEN_DEMO_REVIEWER_SECONDS = 10
    settings.KAIZEN_DEMO_REVIEWER_RESTART_SECONDS = 60

    assert tasks.review_demo_escalations() == 1
