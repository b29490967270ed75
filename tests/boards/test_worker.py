"""A real Celery worker (a subprocess, thread pool) against the real Redis and the
test database: tasks go through the whole line, and a worker killed mid-task
loses nothing and completes nothing twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from decimal import Decimal

import pytest

from boards import services
from boards.agents.providers import ModelRequest
from boards.agents.simulated import simulate
from boards.models import Agent, ModelCall, Task, TaskEvent
from tests.factories import make_agent, make_board

DEADLINE = 180.0


def wait_until(what: str, check: Callable[[], bool], *, timeout: float = DEADLINE) -> None:
    # A deadline only so a broken line fails instead of hanging; nothing asserts on time.
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.1)


def completed_events(task: Task) -> int:
    return TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED).count()


@pytest.mark.worker
def test_a_real_worker_completes_tasks_end_to_end(celery_worker):
    board = make_board(ready_limit=5, doing_limit=3)
    # No quality checks: this is the way to Done through a real worker; the
    # simulated model is rightly unsure of some of these bare inputs, and a defect's
    # way through Review has its own tests (tests/andon).
    make_agent(boards=[board], name="quick", latency_ms=0, error_rate=0, concurrency=2, quality_checks=[])
    make_agent(boards=[board], name="slower", latency_ms=50, error_rate=0, concurrency=2, quality_checks=[])

    tasks = [
        services.task_create(board=board, title=f"Summarise report {n}", input=f"Quarterly report {n}")
        for n in range(12)
    ]

    ids = [t.pk for t in tasks]

    def all_done() -> bool:
        return Task.objects.filter(pk__in=ids, status=Task.Status.DONE).count() == len(ids)

    wait_until("every task to reach Done", all_done)
    for task in tasks:
        task.refresh_from_db()
        assert task.column.role == "done"
        # The agents' template is "{input}": the prompt is the input itself.
        answer = simulate(
            ModelRequest(model="sim-small", prompt=task.input, input=task.input, settings={"error_rate": 0})
        )
        assert (task.output, task.confidence) == (answer.text, answer.confidence)
        assert task.agent is not None
        assert task.lease_token is None
        assert completed_events(task) == 1


@pytest.mark.worker
def test_a_real_worker_runs_a_cascade_and_writes_the_ledger(celery_worker):
    board = make_board(ready_limit=10, doing_limit=4)

    def tier(model: str, threshold: float | None) -> dict:
        return {
            "provider": "simulated",
            "model": model,
            "parameters": {"latency_ms": 20, "error_rate": 0},
            "threshold": threshold,
        }

    # The simulated models never reach a confidence of 1.0, so every task goes
    # past sim-small and is accepted at sim-medium.
    # No quality checks: the cascade and the ledger are the subject, not jidoka.
    make_agent(
        boards=[board],
        name="cascade",
        concurrency=4,
        cascade=[tier("sim-small", 1.0), tier("sim-medium", 0.0), tier("sim-large", None)],
        quality_checks=[],
    )
    distinct = [
        services.task_create(board=board, title=f"Triage ticket {n}", input=f"Ticket {n}: the app crashes")
        for n in range(6)
    ]
    ids = [t.pk for t in distinct]
    wait_until(
        "the distinct tasks to reach Done",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.DONE).count() == len(ids),
    )
    # Once an identical input is done, the next one reuses its result.
    repeat = services.task_create(
        board=board, title="Triage ticket 0 again", input="ticket 0:  The app crashes"
    )
    wait_until(
        "the repeated task to reach Done", lambda: Task.objects.get(pk=repeat.pk).status == Task.Status.DONE
    )

    for task in Task.objects.filter(pk__in=ids):
        rows = list(ModelCall.objects.filter(task=task).order_by("pk"))
        assert [(r.tier, r.model, r.source, r.accepted) for r in rows] == [
            (1, "sim-small", "model", False),
            (2, "sim-medium", "model", True),
        ]
        assert task.accepted_tier == 2
        assert (
            task.output
            == simulate(
                ModelRequest(
                    model="sim-medium", prompt=task.input, input=task.input, settings={"error_rate": 0}
                )
            ).text
        )
        assert task.cost == sum((r.cost for r in rows), Decimal(0)) > 0
        assert task.tokens_in == sum(r.tokens_in for r in rows)
        assert task.model_calls == 2
        assert completed_events(task) == 1
    repeat.refresh_from_db()
    assert repeat.reused_from_id == ids[0]
    assert (repeat.cost, repeat.model_calls) == (0, 0)
    assert ModelCall.objects.get(task=repeat).source == ModelCall.Source.REUSE


@pytest.mark.worker(env={"KAIZEN_LEASE_SECONDS": "2"})
def test_a_task_whose_worker_is_killed_is_reaped_and_completed_once(celery_worker, settings):
    # The worker hands out 2 s leases (its environment, above) and so does this
    # process, should it ever pull.
    settings.KAIZEN_LEASE_SECONDS = 2
    board = make_board(doing_limit=3)
    agent = make_agent(boards=[board], name="stuck", latency_ms=30_000, error_rate=0, max_attempts=3)

    task = services.task_create(board=board, title="Inspect weld seam", input="Photo 17")
    # The commit asks the worker for a pull; the worker claims the task.
    wait_until(
        "the worker to claim the task", lambda: Task.objects.get(pk=task.pk).status == Task.Status.RUNNING
    )
    task.refresh_from_db()
    first_lease = task.lease_token
    claimed_until = task.lease_expires_at

    # The worker renews the lease while the model call runs: once it has, the
    # run is certainly in flight in that process.
    wait_until(
        "the worker to renew the lease",
        lambda: Task.objects.filter(pk=task.pk, lease_expires_at__gt=claimed_until).exists(),
    )
    celery_worker.kill()

    # The next run must finish quickly, and a fresh worker must be there to take it.
    Agent.objects.filter(pk=agent.pk).update(
        cascade=[
            {"provider": "simulated", "model": "sim-small", "parameters": {"latency_ms": 0, "error_rate": 0}}
        ]
    )
    celery_worker.start()

    def reaped() -> bool:
        # This process reaps too; the new worker's watchdog may be first.
        services.leases_reap()
        return TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.LEASE_EXPIRED).exists()

    wait_until("the reaper to find the expired lease", reaped)
    expiry = TaskEvent.objects.get(task=task, kind=TaskEvent.Kind.LEASE_EXPIRED)
    assert expiry.from_status == Task.Status.RUNNING
    assert expiry.to_status == Task.Status.READY

    wait_until("the task to be done", lambda: Task.objects.get(pk=task.pk).status == Task.Status.DONE)
    task.refresh_from_db()
    assert task.attempts == 2
    assert task.output
    assert completed_events(task) == 1
    assert TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.CLAIMED).count() == 2

    # The killed run's result arriving late must change nothing.
    output = task.output
    late = services.task_complete(task_id=task.pk, lease_token=first_lease, output="late", confidence=0.1)
    assert late is False
    task.refresh_from_db()
    assert task.output == output
    assert task.status == Task.Status.DONE
    assert completed_events(task) == 1


# --- a worker's heartbeat -------------------------------------------------------------------

# Long leases: only the heartbeat can explain a task coming back within seconds.
HEARTBEAT_ENV = {
    "KAIZEN_LEASE_SECONDS": "60",
    "KAIZEN_WORKER_HEARTBEAT_SECONDS": "0.5",
    "KAIZEN_WORKER_DEAD_SECONDS": "3",
}


def _runs_in_flight(board, n: int) -> list[Task]:
    """``n`` tasks whose runs (30 s model calls) have begun in the worker."""
    # No quality checks: whether the simulated model is sure of "Photo 1" is jidoka's
    # business, not what these tests are about (a defect would wait in Review).
    make_agent(boards=[board], name="slow", latency_ms=30_000, error_rate=0, concurrency=n, quality_checks=[])
    tasks = [
        services.task_create(board=board, title=f"Inspect part {i}", input=f"Photo {i}") for i in range(n)
    ]
    ids = [t.pk for t in tasks]
    # Begun, not only claimed: a claimed run no worker has picked up has no owner yet.
    wait_until(
        "every run to begin in the worker",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.RUNNING).exclude(worker="").count() == n,
    )
    return list(Task.objects.filter(pk__in=ids).order_by("pk"))


def _next_runs_finish_at_once(board) -> None:
    """Once no worker is left that could still read the slow model: a run that has
    begun may not have read its agent yet (on a loaded machine, for a while)."""
    Agent.objects.filter(boards=board, name="slow").update(
        cascade=[
            {"provider": "simulated", "model": "sim-small", "parameters": {"latency_ms": 0, "error_rate": 0}}
        ]
    )


@pytest.mark.worker(env=HEARTBEAT_ENV, concurrency=8)
def test_a_killed_workers_tasks_come_back_by_its_heartbeat_long_before_their_leases(celery_worker, settings):
    settings.KAIZEN_LEASE_SECONDS = 60
    board = make_board(ready_limit=10, doing_limit=6)
    running = _runs_in_flight(board, 4)
    dead = {t.worker for t in running}
    leases = {t.pk: t.lease_expires_at for t in running}

    celery_worker.kill()
    _next_runs_finish_at_once(board)
    # The survivor: its watchdog finds the dead worker's heartbeat gone.
    celery_worker.start()

    ids = list(leases)
    wait_until(
        "every task to be done again",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.DONE).count() == len(ids),
    )
    for task in Task.objects.filter(pk__in=ids):
        expiry = TaskEvent.objects.get(task=task, kind=TaskEvent.Kind.LEASE_EXPIRED)
        [worker] = dead
        assert f"its worker {worker} stopped sending heartbeats" in expiry.note
        # Taken back while its lease still had time to run.
        assert expiry.created_at < leases[task.pk]
        assert task.attempts == 2
        assert completed_events(task) == 1
        rows = ModelCall.objects.filter(task=task)
        assert rows.filter(accepted=True, stale=False).count() == 1
        assert not rows.filter(stale=True).exists()  # the dead worker never reported back


@pytest.mark.worker(env=HEARTBEAT_ENV, concurrency=8)
def test_a_worker_asked_to_stop_hands_its_tasks_back_at_once(celery_worker, settings):
    board = make_board(ready_limit=10, doing_limit=6)
    running = _runs_in_flight(board, 3)
    ids = [t.pk for t in running]

    # What Ctrl-C or a deployment's SIGTERM does: a warm shutdown.
    celery_worker.current.proc.send_signal(signal.SIGTERM)

    wait_until(
        "the stopping worker to hand its tasks back",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.READY).count() == len(ids),
    )
    for task in Task.objects.filter(pk__in=ids):
        event = TaskEvent.objects.get(task=task, kind=TaskEvent.Kind.DEFERRED)
        assert "handed back" in event.note and running[0].worker in event.note
        assert task.attempts == 0  # not the task's fault: the attempt is not counted
        assert task.lease_expires_at is None

    # The next worker takes them up and finishes each once.
    celery_worker.stop()
    _next_runs_finish_at_once(board)
    celery_worker.start()
    wait_until(
        "every task to be done",
        lambda: Task.objects.filter(pk__in=ids, status=Task.Status.DONE).count() == len(ids),
    )
    for task in Task.objects.filter(pk__in=ids):
        assert completed_events(task) == 1
        assert ModelCall.objects.filter(task=task, accepted=True, stale=False).count() == 1


@pytest.mark.worker
def test_a_worker_that_serves_no_queue_of_the_line_neither_beats_nor_pulls(celery_worker):
    # The knowledge base's embedder is such a worker (its own queue): it runs no
    # task of the line, so it must not count as a line worker.
    import redis
    from django.conf import settings

    celery_worker.stop()  # the fixture's worker, on the line's queue
    board = make_board(doing_limit=2, backlog=False)
    make_agent(boards=[board])
    task = services.task_create(board=board, title="waits for a line worker", input="Classify: scratch.")
    celery_worker.queue = settings.KAIZEN_KNOWLEDGE_QUEUE
    worker = celery_worker.start()
    wait_until(
        "the worker to say it serves no queue of the line",
        lambda: "serves no queue of the line" in worker.log_text(),
    )
    client = redis.Redis.from_url(settings.REDIS_URL)
    beating = [key for key in client.scan_iter("kaizen:worker:*") if f":{worker.proc.pid}:".encode() in key]
    assert beating == []
    # It did not pull at start: the task still waits in Ready.
    task.refresh_from_db()
    assert task.status == Task.Status.READY
