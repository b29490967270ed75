"""Replays on a real Celery worker (a subprocess, thread pool, the real Redis and
the test database): to their verdict with progress on the way, cancelled
mid-way, carried on after the worker is killed, stopped by their cost cap, and
a proposal's gates moved on by the worker once its replay concludes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.utils import timezone

from boards.models import ModelCall
from experiments import genchi
from experiments import services as kaizen
from experiments.models import ChangeProposal, Gate, Replay, ReplayItem
from tests.experiments.genchi_support import BETTER, history_agent, version
from tests.experiments.helpers import fields_of
from tests.factories import make_approver, make_editor

DEADLINE = 180.0
# Slow enough to see a replay part-way (and to cancel or kill it there).
SLOW = {"KAIZEN_REPLAY_RATE": "6", "KAIZEN_REPLAY_STEP_SECONDS": "3", "KAIZEN_REPLAY_LEASE_SECONDS": "3"}


def wait_until(what: str, check: Callable[[], bool], *, timeout: float = DEADLINE) -> None:
    # A deadline only so a broken line fails instead of hanging; nothing asserts on time.
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.1)


def state(replay: Replay) -> Replay:
    replay.refresh_from_db()
    return replay


def replay_calls(replay: Replay) -> int:
    return ModelCall.every.filter(
        purpose=ModelCall.Purpose.REPLAY, task_id__in=replay.items.values("task_id")
    ).count()


@pytest.mark.worker(env={"KAIZEN_REPLAY_STEP_SECONDS": "1"})
def test_a_worker_runs_a_replay_to_its_verdict_showing_progress(celery_worker):
    agent = history_agent(tasks=60)
    replay = genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=60, seed=2)
    seen: set[int] = set()

    def finished() -> bool:
        seen.add(state(replay).done)
        return not replay.is_open

    wait_until("the replay to end", finished)
    assert replay.state == Replay.State.DONE, replay.reason
    assert replay.done == 60 and replay.stats["pairs"] == 60
    assert replay.verdict in ("pass", "fail")
    assert len(seen) > 2, "its progress was seen part-way"
    assert ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).count() == 60
    assert replay_calls(replay) == 120  # one tier, two versions, each item once


@pytest.mark.worker(env=SLOW)
def test_a_cancelled_replay_stops_on_the_worker(celery_worker):
    agent = history_agent(tasks=200)
    replay = genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=200, seed=2)
    wait_until("the replay to begin", lambda: state(replay).done > 0)
    genchi.replay_cancel(replay=replay, user=None, note="enough")
    process = celery_worker.current
    wait_until(
        "the worker's step to see the cancel",
        lambda: (
            re.search(r"replay_step\[[^]]+\] succeeded in [\d.]+s: 'ended'", process.log_text()) is not None
        ),
    )
    done = state(replay).done
    assert replay.state == Replay.State.CANCELLED
    assert done < 200
    assert ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).count() == done
    assert replay_calls(replay) == 2 * done


@pytest.mark.worker(env=SLOW)
def test_a_replay_survives_its_worker_being_killed(celery_worker):
    agent = history_agent(tasks=60)
    replay = genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=60, seed=2)
    wait_until("the replay to begin", lambda: state(replay).done > 0)
    celery_worker.kill()
    halfway = state(replay).done
    assert 0 < halfway < 60
    celery_worker.start()
    # What Celery beat does every few seconds: once the dead step's lease has run
    # out, the replay goes to a worker again.
    wait_until("the dead step's lease to run out", lambda: state(replay).lease_until < timezone.now())
    assert genchi.replays_resume() >= 1
    wait_until("the replay to end", lambda: not state(replay).is_open)
    assert replay.state == Replay.State.DONE, replay.reason
    assert replay.done == 60
    assert ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).count() == 60
    assert replay_calls(replay) == 120, "no item was recorded twice"


@pytest.mark.worker(env={"KAIZEN_REPLAY_STEP_SECONDS": "1"})
def test_a_replay_stops_at_its_cost_cap_on_the_worker(celery_worker):
    agent = history_agent(tasks=200)
    replay = genchi.replay_start(
        agent=agent, candidate=version(agent, BETTER), sample=200, seed=2, budget_usd=Decimal("0.0003")
    )
    wait_until("the replay to end", lambda: not state(replay).is_open)
    assert replay.state == Replay.State.DONE
    assert replay.stats["stopped"] == "cost cap"
    assert replay.spent_usd >= replay.budget_usd
    assert replay.done < 200


@pytest.mark.worker(env={"KAIZEN_REPLAY_STEP_SECONDS": "1"})
def test_the_worker_moves_a_proposal_through_its_replay_gate(celery_worker):
    agent = history_agent(tasks=80, gates={"adversarial": "never", "shadow": "never", "replay_sample": 80})
    proposal = kaizen.proposal_create(
        agent=agent,
        fields=fields_of(agent, prompt_template=BETTER),
        rationale="Define the classes.",
        user=make_editor(),
    )
    kaizen.proposal_approve(proposal=proposal, user=make_approver(), note="Go.")

    def moved() -> bool:
        proposal.refresh_from_db()
        return proposal.status != ChangeProposal.Status.VALIDATING

    wait_until("the proposal to leave its gates", moved)
    gate = proposal.gates.get()
    assert gate.state in (Gate.State.PASSED, Gate.State.FAILED)
    expected = (
        ChangeProposal.Status.EXPERIMENTING
        if gate.state == Gate.State.PASSED
        else ChangeProposal.Status.REJECTED
    )
    assert proposal.status == expected, gate.reason
