"""Worker heartbeats (boards.workers) and what the reaper does with them: a run
records its worker when it begins; a worker whose heartbeat stopped (and is
still missing at a second look) is dead, and its tasks go back to Ready at once;
a worker that stops hands its tasks back itself. Real Redis (REDIS_URL); time is
moved by shortening Redis TTLs, never by sleeping."""

from __future__ import annotations

import uuid

import pytest
import redis
from django.conf import settings

from boards import services, workers
from boards.agents import runtime
from boards.models import Task, TaskEvent
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.redis

Status = Task.Status


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def worker_ids(client):
    """Fresh worker ids; their keys are deleted afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"test-host:{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for worker_id in made:
        client.delete(workers.KEY.format(worker_id), workers.MISSING.format(worker_id))


def _missing_since(client, worker_id: str, seconds: float) -> None:
    """As if the first look had found ``worker_id`` missing ``seconds`` ago."""
    client.set(workers.MISSING.format(worker_id), b"1", px=workers.MISSING_TTL_MS - int(seconds * 1000))


def _running(board, n: int, *, worker: str = "") -> list[Task]:
    """``n`` tasks claimed; with ``worker``, their runs begun there."""
    tasks = [services.task_create(board=board, title=f"run {i}", input=f"input {i}") for i in range(n)]
    claims = services.board_pull(board_id=board.pk)
    assert len(claims) == n
    if worker:
        begun = services.tasks_run_begin(claims=[(c.task_id, c.lease_token) for c in claims], worker=worker)
        assert set(begun) == {t.pk for t in tasks}
    return [Task.objects.get(pk=t.pk) for t in tasks]


# --- the heartbeat --------------------------------------------------------------------------


def test_a_beating_worker_is_alive(client, worker_ids):
    alive = worker_ids()
    workers.beat(client, alive)

    assert workers.dead_among([alive]) == set()


def test_a_missing_heartbeat_is_not_death_until_a_second_look_two_beats_later(client, worker_ids):
    # Redis restarting loses every key: a live worker would look dead until it beats again.
    gone = worker_ids()

    assert workers.dead_among([gone]) == set()  # first look: marked, not dead
    assert client.exists(workers.MISSING.format(gone))
    _missing_since(client, gone, 2 * settings.KAIZEN_WORKER_HEARTBEAT_SECONDS)

    assert workers.dead_among([gone]) == {gone}


def test_a_beat_clears_the_suspicion(client, worker_ids):
    back = worker_ids()
    _missing_since(client, back, 60)

    workers.beat(client, back)

    assert workers.dead_among([back]) == set()
    assert not client.exists(workers.MISSING.format(back))


def test_the_heartbeat_expires_after_the_dead_time(client, worker_ids):
    worker_id = worker_ids()
    workers.beat(client, worker_id)

    remaining = client.pttl(workers.KEY.format(worker_id))

    assert 0 < remaining <= settings.KAIZEN_WORKER_DEAD_SECONDS * 1000


def test_a_heartbeat_beats_at_once_and_stops_with_its_key_deleted(client):
    beat = workers.Heartbeat()
    worker_id = beat.start()
    try:
        assert beat.beating
        assert client.exists(workers.KEY.format(worker_id))
        assert beat.start() == worker_id  # once per process
    finally:
        beat.stop()

    assert not beat.beating
    assert not client.exists(workers.KEY.format(worker_id))


# --- a run records its worker ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_run_records_its_worker_when_it_begins_and_a_claim_waiting_for_one_has_none(board, agent):
    services.task_create(board=board, title="waits", input="x")
    [claim] = services.board_pull(board_id=board.pk)
    assert Task.objects.get(pk=claim.task_id).worker == ""

    task = services.task_run_begin(task_id=claim.task_id, lease_token=claim.lease_token, worker="w1")

    assert task is not None and task.agent == agent
    assert Task.objects.get(pk=claim.task_id).worker == "w1"


@pytest.mark.django_db
def test_a_stale_claim_records_no_worker(board, agent):
    services.task_create(board=board, title="stale", input="x")
    [claim] = services.board_pull(board_id=board.pk)
    services.task_attempt_fail(task_id=claim.task_id, lease_token=claim.lease_token, error="lost")

    assert services.task_run_begin(task_id=claim.task_id, lease_token=claim.lease_token, worker="w1") is None
    assert Task.objects.get(pk=claim.task_id).worker == ""


@pytest.mark.django_db
def test_a_batch_begun_names_its_worker_on_its_current_runs_only():
    board = make_board(doing_limit=None)
    make_agent(boards=[board], concurrency=4)
    for i in range(4):
        services.task_create(board=board, title=f"batch {i}", input=f"x {i}")
    claims = services.board_pull(board_id=board.pk)
    assert len(claims) == 4
    current, stale, swapped, other = claims
    # A run whose attempt failed meanwhile; a claim given with another run's
    # token; a run begun elsewhere first.
    services.task_attempt_fail(task_id=stale.task_id, lease_token=stale.lease_token, error="lost")
    services.tasks_run_begin(claims=[(other.task_id, other.lease_token)], worker="w-other")

    begun = services.tasks_run_begin(
        claims=[
            (current.task_id, current.lease_token),
            (stale.task_id, stale.lease_token),
            (swapped.task_id, str(other.lease_token)),
        ],
        worker="w1",
    )

    assert set(begun) == {current.task_id}
    workers_now = dict(Task.objects.filter(board=board).values_list("pk", "worker"))
    assert workers_now == {
        current.task_id: "w1",
        stale.task_id: "",
        swapped.task_id: "",
        other.task_id: "w-other",
    }


@pytest.mark.django_db
def test_a_task_leaving_in_progress_forgets_its_worker(board, agent):
    [task] = _running(board, 1, worker="w1")

    assert services.task_complete(task_id=task.pk, lease_token=task.lease_token, output="ok", confidence=0.95)

    assert Task.objects.get(pk=task.pk).worker == ""


# --- the reaper -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_reaper_returns_a_dead_workers_tasks_at_once_and_spares_the_others(client, worker_ids):
    board = make_board(ready_limit=10, doing_limit=10)
    make_agent(boards=[board], concurrency=10)
    dead, alive = worker_ids(), worker_ids()
    lost = _running(board, 2, worker=dead)
    kept = _running(board, 2, worker=alive)
    waiting = _running(board, 1)  # claimed, its run not begun anywhere yet
    workers.beat(client, alive)
    _missing_since(client, dead, 60)

    assert services.leases_reap() == 2

    for task in lost:
        task.refresh_from_db()
        assert (task.status, task.worker, task.lease_token) == (Status.READY, "", None)
        event = task.events.get(kind=TaskEvent.Kind.LEASE_EXPIRED)
        assert f"its worker {dead} stopped sending heartbeats" in event.note
    # Their leases had a minute left: only the heartbeat explains it.
    assert all(t.lease_expires_at is not None for t in kept + waiting)
    assert Task.objects.filter(pk__in=[t.pk for t in kept + waiting], status=Status.RUNNING).count() == 3


@pytest.mark.django_db
def test_the_first_look_at_a_missing_heartbeat_returns_nothing(client, worker_ids, board, agent):
    gone = worker_ids()
    _running(board, 1, worker=gone)

    assert services.leases_reap() == 0
    assert Task.objects.get().status == Status.RUNNING


@pytest.mark.django_db
def test_without_redis_the_reaper_still_takes_back_expired_leases(board, agent, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    def unreachable(ids, **kwargs):
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(workers, "dead_among", unreachable)
    [task] = _running(board, 1, worker="some-worker")
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert services.leases_reap() == 1
    assert Task.objects.get(pk=task.pk).status == Status.READY


@pytest.mark.django_db
def test_a_reaper_pass_with_nothing_to_take_back_opens_no_transaction(
    board, agent, django_assert_num_queries
):
    _running(board, 1)

    # Every worker runs it every beat: on SQLite a transaction takes the write lock.
    with django_assert_num_queries(2):  # the workers holding runs; the lost runs' boards
        assert services.leases_reap() == 0


# --- a worker that stops hands its tasks back -------------------------------------------------


@pytest.mark.django_db
def test_a_stopping_worker_hands_its_tasks_back_without_spending_their_attempts(worker_ids):
    board = make_board(ready_limit=10, doing_limit=10)
    agent = make_agent(boards=[board], concurrency=10)
    stopping, other = worker_ids(), worker_ids()
    mine = _running(board, 2, worker=stopping)
    theirs = _running(board, 1, worker=other)

    assert services.leases_release_worker(worker=stopping) == 2

    for task in mine:
        task.refresh_from_db()
        assert (task.status, task.attempts, task.worker) == (Status.READY, 0, "")
        event = task.events.get(kind=TaskEvent.Kind.DEFERRED)
        assert f"handed back: its worker {stopping} is stopping" in event.note
        assert event.agent_id == agent.pk
    assert Task.objects.get(pk=theirs[0].pk).status == Status.RUNNING
    # A late result of a handed-back run changes nothing.
    assert (
        services.task_complete(
            task_id=mine[0].pk, lease_token=mine[0].lease_token, output="late", confidence=0.9
        )
        is False
    )


@pytest.mark.django_db
def test_worker_handover_releases_this_process_tasks_and_stops_its_heartbeat(
    client, board, agent, monkeypatch
):
    beat = workers.Heartbeat()
    monkeypatch.setattr(runtime, "heartbeat", beat)
    monkeypatch.setattr(services.pull, "_in_worker", True)
    monkeypatch.setattr(services.pull, "_stopping", False)
    monkeypatch.setattr(services.pull, "request_pull", lambda **kwargs: None)
    worker_id = beat.start()
    assert runtime.current_worker() == worker_id
    [task] = _running(board, 1, worker=worker_id)

    assert runtime.worker_handover() == 1

    assert Task.objects.get(pk=task.pk).status == Status.READY
    assert not client.exists(workers.KEY.format(worker_id))
    # No longer a worker that pulls or records runs; a second call does nothing.
    assert services.in_worker_process() is False
    monkeypatch.setattr(services.pull, "_pulls", None)  # a pull would fail here
    services.pull_requested_run(board_id=board.pk)
    assert runtime.current_worker() == ""
    assert runtime.worker_handover() == 0
