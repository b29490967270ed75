"""The shadow (experiments.genchi.shadow_run with experiments.line.shadow_picks):
a share of live tasks also runs through the candidate after the live run
completes, paired with the live outcome, never shipped and never escalated;
and the holdout, which keeps a share of tasks on an earlier version."""

from __future__ import annotations

import json
import random

import pytest
import redis
from django.conf import settings

from andon.models import Escalation, Inspection
from boards import services
from boards.agents import runtime
from boards.models import ModelCall, Task
from boards.services.enqueue import pull_requests_key
from experiments import genchi
from experiments import line as experiment_line
from experiments.models import AgentGates, Replay, ReplayItem
from tests.experiments.genchi_support import BROKEN, history_agent, ticket, version

pytestmark = [pytest.mark.django_db, pytest.mark.redis, pytest.mark.usefixtures("fast_replays")]


@pytest.fixture
def queue():
    """This run's Celery queue in Redis, emptied before and after."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    name = settings.CELERY_TASK_DEFAULT_QUEUE
    client.delete(name)
    experiment_line.genchi.clear()
    yield lambda: [json.loads(raw)["headers"] for raw in client.lrange(name, 0, -1)]
    client.delete(name)
    client.delete(pull_requests_key(name), *client.keys("kaizen:pull-requested:*"))
    experiment_line.genchi.clear()


def run_live(agent, text: str, capture) -> Task:
    board = agent.boards.get()
    with capture(execute=True):
        task = services.task_create(board=board, title="live ticket", input=text, capability="triage")
    with capture(execute=True):
        claims = services.board_pull(board_id=board.pk)
    [claim] = [c for c in claims if c.task_id == task.pk]
    with capture(execute=True):
        runtime.run(claim.task_id, str(claim.lease_token))
    task.refresh_from_db()
    return task


def test_shadow_mirrors_live_tasks_pairs_them_and_ships_nothing(queue, django_capture_on_commit_callbacks):
    agent = history_agent(tasks=5, gates={"shadow_share": 1.0, "shadow_size": 6})
    candidate = version(agent, BROKEN)
    shadow = genchi.shadow_start(agent=agent, candidate=candidate)
    experiment_line.genchi.clear()
    rng = random.Random(3)
    live = [run_live(agent, ticket(rng), django_capture_on_commit_callbacks) for _ in range(6)]
    sent = [h for h in queue() if h["task"] == "experiments.tasks.shadow_run"]
    assert sorted(json.loads(h["argsrepr"].replace("(", "[").replace(")", "]"))[1] for h in sent) == sorted(
        t.pk for t in live
    )
    outputs = {t.pk: (t.output, t.status, t.column_id) for t in live}
    escalations = Escalation.objects.count()
    live_calls = ModelCall.objects.count()

    for task in live:
        assert genchi.shadow_run(shadow.pk, task.pk) == "paired"
    assert genchi.shadow_run(shadow.pk, live[0].pk) in ("seen", "full")

    items = {i.task_id: i for i in ReplayItem.objects.filter(replay=shadow)}
    assert set(items) == {t.pk for t in live}
    for task in live:
        item = items[task.pk]
        inspection = Inspection.objects.filter(task=task).order_by("pk").first()
        assert item.baseline_pass == inspection.passed
        assert item.baseline_output == task.output
        assert item.candidate_output  # recorded...
        assert item.baseline_cost == task.cost
    # ...and never shipped, never escalated, not a live call.
    for task in Task.objects.filter(pk__in=outputs):
        assert (task.output, task.status, task.column_id) == outputs[task.pk]
    assert Escalation.objects.count() == escalations
    assert ModelCall.objects.count() == live_calls
    assert ModelCall.every.filter(purpose=ModelCall.Purpose.SHADOW).count() == 6

    shadow.refresh_from_db()
    assert shadow.done == 6 and shadow.spent_usd > 0
    assert genchi.replays_resume() >= 1  # the beat decides it at its planned size
    shadow.refresh_from_db()
    assert shadow.state == Replay.State.DONE
    assert shadow.stats["pairs"] == 6
    assert "live_latency_ms" in shadow.stats
    assert "mirrored live tasks" in shadow.reason or shadow.stats["pairs"] == 0


def test_shadow_leaves_out_tasks_outside_its_share_and_other_versions(
    queue, django_capture_on_commit_callbacks
):
    agent = history_agent(tasks=5, gates={"shadow_share": 0.0001, "shadow_size": 6})
    shadow = genchi.shadow_start(agent=agent, candidate=version(agent, BROKEN))
    experiment_line.genchi.clear()
    task = run_live(agent, "I was charged twice", django_capture_on_commit_callbacks)
    assert not [h for h in queue() if h["task"] == "experiments.tasks.shadow_run"]
    task.attempts = 2
    assert experiment_line.shadow_picks([task]) == []
    shadow.share = 1.0
    shadow.save(update_fields=["share"])
    experiment_line.genchi.clear()
    task.attempts = 1
    assert experiment_line.shadow_picks([task]) == [(shadow.pk, task.pk)]
    task.prompt_version = 99
    assert experiment_line.shadow_picks([task]) == []


def test_a_shadow_stops_at_its_time_limit_and_is_decided_on_what_it_has(queue):
    agent = history_agent(tasks=5)
    shadow = genchi.shadow_start(agent=agent, candidate=version(agent, BROKEN))
    Replay.objects.filter(pk=shadow.pk).update(deadline=shadow.created_at)
    genchi.replays_resume()
    shadow.refresh_from_db()
    assert shadow.state == Replay.State.DONE
    assert shadow.stats["stopped"] == "time limit"
    assert shadow.verdict == "fail"  # no pairs: nothing shown


def test_the_holdout_keeps_its_share_on_the_earlier_version(queue):
    agent = history_agent(tasks=5)
    earlier = genchi.ensure_version(agent)
    later = version(agent, BROKEN)
    agent.prompt_template = later.prompt_template
    agent.prompt_version = later.number
    agent.save(update_fields=["prompt_template", "prompt_version"])
    AgentGates.objects.create(agent=agent, holdout_share=0.3, holdout_version=earlier, holdout_salt="s1")
    experiment_line.genchi.clear()
    board = agent.boards.get()
    tasks = [
        services.task_create(board=board, title=f"t{i}", input="x", capability="triage") for i in range(400)
    ]
    held = 0
    for task in tasks:
        experiment_line.assign(task, agent, {})
        assert task.prompt_version in (earlier.number, later.number)
        if task.prompt_version == earlier.number:
            assert task.arm == experiment_line.HOLDOUT
            held += 1
    assert 0.2 < held / 400 < 0.4
    # Sticky: the same task lands in the same place again.
    again = tasks[0]
    first = again.prompt_version
    experiment_line.assign(again, agent, {})
    assert again.prompt_version == first
