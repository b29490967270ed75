"""The pull: Ready is refilled from the Backlog, and agents claim Ready tasks up
to the free WIP of In progress and of each agent, by position (priority, then age)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from boards import services
from boards.models import Column, Task, TaskEvent
from tests.factories import column, make_agent, make_board

Role = Column.Role
Status = Task.Status


def _create(board, n, **kwargs):
    return [services.task_create(board=board, title=f"task {i}", input="x", **kwargs) for i in range(n)]


@pytest.mark.django_db
def test_new_task_lands_in_backlog_with_a_created_event(board):
    task = services.task_create(board=board, title="Inspect part 7", input="scratch on housing")

    assert task.column == column(board, Role.BACKLOG)
    assert task.status == Status.BACKLOG
    event = TaskEvent.objects.get(task=task)
    assert (event.kind, event.to_status, event.actor) == ("created", "backlog", "system")


@pytest.mark.django_db
def test_task_without_backlog_lands_in_ready():
    board = make_board(backlog=False)
    task = services.task_create(board=board, title="t", input="x")
    assert task.status == Status.READY


@pytest.mark.django_db
def test_task_create_rejects_blank_title_and_unknown_capability(board, agent):
    with pytest.raises(ValidationError) as err:
        services.task_create(board=board, title="  ", input="x", capability="astrology")
    assert set(err.value.message_dict) == {"title", "capability"}
    assert "astrology" in err.value.message_dict["capability"][0]
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_pull_refills_ready_up_to_its_limit(board, agent):
    _create(board, 8)
    agent.paused = True
    agent.save()

    services.board_pull(board_id=board.pk)

    assert Task.objects.filter(status=Status.READY).count() == 5
    assert Task.objects.filter(status=Status.BACKLOG).count() == 3


@pytest.mark.django_db
def test_refill_places_each_task_by_priority_among_those_already_in_ready():
    board = make_board(ready_limit=None)
    for title, priority in [("A", 5), ("B", 0)]:
        services.task_create(board=board, title=title, input="x", priority=priority)
    services.board_pull(board_id=board.pk)  # A and B into Ready (no agent claims)
    for title, priority in [("C", 5), ("D", 3), ("E", 0), ("F", 0), ("G", 7)]:
        services.task_create(board=board, title=title, input="x", priority=priority)
    long_ago = timezone.now() - timedelta(hours=1)
    Task.objects.filter(status=Status.BACKLOG).update(updated_at=long_ago)

    services.board_pull(board_id=board.pk)

    ready = list(Task.objects.filter(column=column(board, Role.READY)).order_by("position"))
    # After every task of its priority or higher, before the first of lower priority.
    assert [t.title for t in ready] == ["G", "A", "C", "D", "B", "E", "F"]
    assert len({t.position for t in ready}) == 7
    moved = [t for t in ready if t.title not in ("A", "B")]
    assert all(t.status == Status.READY and t.updated_at > long_ago + timedelta(minutes=30) for t in moved)
    notes = TaskEvent.objects.filter(kind=TaskEvent.Kind.MOVED, note="pulled into Ready")
    assert sorted(notes.values_list("task__title", flat=True)) == sorted("ABCDEFG")


@pytest.mark.django_db
def test_tasks_going_last_are_placed_by_one_read_and_written_by_one_statement(board):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from boards.services.primitives import tasks_place_write

    services.task_create(board=board, title="waiting", input="x", priority=1)
    services.board_pull(board_id=board.pk)
    tasks = [
        services.task_create(board=board, title=f"t{i}", input="x", priority=1 - i // 2) for i in range(4)
    ]
    ready = column(board, Role.READY)

    with CaptureQueriesContext(connection) as captured:
        tasks_place_write(tasks, ready)

    assert len(captured) == 2, [q["sql"] for q in captured]
    in_ready = Task.objects.filter(column=ready).order_by("position")
    assert list(in_ready.values_list("title", flat=True)) == ["waiting", "t0", "t1", "t2", "t3"]
    assert set(in_ready.values_list("status", flat=True)) == {Status.READY}


def _backlog(board, *specs):
    return [services.task_create(board=board, title=title, input="x", priority=p) for title, p in specs]


def _ready_titles(board):
    ready = Task.objects.filter(column=column(board, Role.READY)).order_by("position")
    assert len(set(ready.values_list("position", flat=True))) == ready.count()
    return list(ready.values_list("title", flat=True))


@pytest.mark.django_db
def test_tasks_placed_out_of_priority_order_each_find_their_slot(board):
    from boards.services.primitives import tasks_place_write

    tasks_place_write(_backlog(board, ("X", 3)), column(board, Role.READY))
    # A first goes last; B, of higher priority, comes after it in the list but
    # goes before X; C follows B.
    tasks_place_write(_backlog(board, ("A", 0), ("B", 5), ("C", 5)), column(board, Role.READY))

    assert _ready_titles(board) == ["B", "C", "X", "A"]


@pytest.mark.django_db
def test_tasks_placed_where_no_gap_is_left_spread_the_column_out(board):
    from boards.services.primitives import tasks_place_write

    ready = column(board, Role.READY)
    tasks_place_write(_backlog(board, ("Y", 5), ("X", 3)), ready)
    Task.objects.filter(title="Y").update(position=1)
    Task.objects.filter(title="X").update(position=2)

    tasks_place_write(_backlog(board, ("Z", 5), ("W", 5)), ready)

    assert _ready_titles(board) == ["Y", "Z", "W", "X"]


@pytest.mark.django_db
def test_pull_never_exceeds_hard_wip_limit(board):
    make_agent(boards=[board], concurrency=10)
    _create(board, 8)

    claims = services.board_pull(board_id=board.pk)
    again = services.board_pull(board_id=board.pk)

    assert len(claims) == 3
    assert again == []
    assert Task.objects.filter(status=Status.RUNNING).count() == 3


@pytest.mark.django_db
def test_pull_respects_soft_limit_too():
    board = make_board(hard=False, doing_limit=2)
    make_agent(boards=[board])
    _create(board, 5)

    services.board_pull(board_id=board.pk)

    assert Task.objects.filter(status=Status.RUNNING).count() == 2


@pytest.mark.django_db
def test_pull_respects_agent_concurrency(board):
    make_agent(boards=[board], concurrency=2)
    _create(board, 5)

    services.board_pull(board_id=board.pk)

    assert Task.objects.filter(status=Status.RUNNING).count() == 2


@pytest.mark.django_db
def test_pull_claims_by_priority_then_age(board):
    agent = make_agent(boards=[board], concurrency=1)
    agent.paused = True
    agent.save()
    low_old = services.task_create(board=board, title="low old", input="x", priority=0)
    services.task_create(board=board, title="low new", input="x", priority=0)
    high = services.task_create(board=board, title="high", input="x", priority=5)
    services.board_pull(board_id=board.pk)
    services.agent_set_paused(agent=agent, paused=False)

    first = services.board_pull(board_id=board.pk)
    assert [c.task_id for c in first] == [high.pk]
    Task.objects.filter(pk=high.pk).update(column=column(board, Role.DONE), status=Status.DONE)

    second = services.board_pull(board_id=board.pk)
    assert [c.task_id for c in second] == [low_old.pk]


@pytest.mark.django_db
def test_pull_matches_capability(board):
    vision = make_agent(boards=[board], capabilities=["vision"], concurrency=5)
    writer = make_agent(boards=[board], capabilities=["writing"], concurrency=5)
    photo = services.task_create(board=board, title="photo", input="x", capability="vision")
    letter = services.task_create(board=board, title="letter", input="x", capability="writing")
    anything = services.task_create(board=board, title="any", input="x")

    services.board_pull(board_id=board.pk)

    photo.refresh_from_db()
    letter.refresh_from_db()
    anything.refresh_from_db()
    assert photo.agent == vision
    assert letter.agent == writer
    assert anything.agent in (vision, writer)


@pytest.mark.django_db
def test_task_no_agent_can_do_stays_ready_and_does_not_block_others(board):
    make_agent(boards=[board], capabilities=["vision"], concurrency=1)
    other = make_agent(boards=[board], capabilities=["writing"], concurrency=5)
    other.paused = True
    other.save()
    letter = services.task_create(board=board, title="letter", input="x", capability="writing")
    photo = services.task_create(board=board, title="photo", input="x", capability="vision")

    services.board_pull(board_id=board.pk)

    letter.refresh_from_db()
    photo.refresh_from_db()
    assert letter.status == Status.READY
    assert photo.status == Status.RUNNING


@pytest.mark.django_db
def test_paused_board_pulls_nothing_until_resumed(board, agent):
    services.board_set_paused(board=board, paused=True)
    _create(board, 2)
    assert services.board_pull(board_id=board.pk) == []

    services.board_set_paused(board=board, paused=False)
    assert len(services.board_pull(board_id=board.pk)) == 2


@pytest.mark.django_db
def test_blocked_task_is_not_pulled(board, agent):
    blocked, free = _create(board, 2)
    services.task_block(task=blocked, user=None, note="waiting on the supplier's drawing")

    services.board_pull(board_id=board.pk)

    blocked.refresh_from_db()
    free.refresh_from_db()
    assert blocked.status == Status.BACKLOG
    assert free.status == Status.RUNNING


@pytest.mark.django_db
def test_claim_sets_lease_attempt_agent_and_event(board, agent, settings):
    settings.KAIZEN_LEASE_SECONDS = 30
    task = services.task_create(board=board, title="t", input="x")

    [claim] = services.board_pull(board_id=board.pk)

    task.refresh_from_db()
    assert claim.task_id == task.pk
    assert task.lease_token == claim.lease_token
    assert task.attempts == 1
    assert task.agent == agent
    assert 25 < (task.lease_expires_at - task.started_at).total_seconds() <= 30
    event = task.events.get(kind=TaskEvent.Kind.CLAIMED)
    assert (event.actor, event.agent, event.from_status, event.to_status) == (
        "agent",
        agent,
        "ready",
        "running",
    )


@pytest.mark.django_db(transaction=True)
def test_intake_outside_a_worker_asks_the_workers_for_one_pull(board, agent, empty_queue):
    tasks = [services.task_create(board=board, title=f"t{i}", input="x") for i in range(3)]

    # A burst of intake asks for one pull, not one per task, and claims nothing
    # in this (web) process. The request is not a Celery message.
    assert empty_queue.pulls_requested() == [board.pk]
    assert empty_queue.task_names() == []
    assert Task.objects.filter(status=Status.RUNNING).count() == 0

    # What a worker's pull-request thread does: take the request, and pull.
    assert services.pull_request_serve(timeout=1) == board.pk

    assert empty_queue.pulls_requested() == []
    assert Task.objects.filter(status=Status.RUNNING).count() == 3
    # The three claimed runs go out as one message.
    assert empty_queue.task_names() == ["boards.tasks.run_tasks"]
    # Once the worker has started on it, the next change asks again.
    services.task_create(board=board, title="later", input="x")
    assert empty_queue.pulls_requested() == [board.pk]
    assert all(t.events.filter(kind=TaskEvent.Kind.CREATED).exists() for t in tasks)


@pytest.mark.django_db(transaction=True)
def test_a_stopping_worker_leaves_pull_requests_to_the_others(board, agent, empty_queue, monkeypatch):
    from boards.services import enqueue, pull

    _create(board, 2)
    assert empty_queue.pulls_requested() == [board.pk]

    # Stopping (its handover has begun): it takes no request at all.
    monkeypatch.setattr(pull, "_stopping", True)
    assert services.pull_request_serve(timeout=1) is None
    assert empty_queue.pulls_requested() == [board.pk]

    # It took one just as it began to stop: the request goes back, unserved.
    monkeypatch.setattr(pull, "_stopping", False)
    take = enqueue.board_pull_requested_take

    def take_then_stop(timeout):
        taken = take(timeout)
        monkeypatch.setattr(pull, "_stopping", True)
        return taken

    monkeypatch.setattr(enqueue, "board_pull_requested_take", take_then_stop)
    assert services.pull_request_serve(timeout=1) is None
    assert empty_queue.pulls_requested() == [board.pk]
    assert Task.objects.filter(status=Status.RUNNING).count() == 0

    # Another worker takes it and pulls.
    monkeypatch.setattr(pull, "_stopping", False)
    monkeypatch.setattr(enqueue, "board_pull_requested_take", take)
    assert services.pull_request_serve(timeout=1) == board.pk
    assert Task.objects.filter(status=Status.RUNNING).count() == 2


@pytest.mark.django_db(transaction=True)
def test_pull_requests_wait_in_order_for_a_worker_and_are_capped(empty_queue, monkeypatch):
    from boards.services import enqueue

    monkeypatch.setattr(enqueue, "PULL_REQUESTS_MAX", 3)
    boards = [make_board(backlog=False) for _ in range(5)]
    for each in boards:
        services.request_pull(board_id=each.pk)
        services.request_pull(board_id=each.pk)  # asked already: not listed twice

    # With no worker, the newest requests wait; the oldest were dropped (a worker
    # that starts pulls every board anyway).
    assert empty_queue.pulls_requested() == [each.pk for each in boards[2:]]
    assert services.pull_request_serve(timeout=1) == boards[2].pk
    assert empty_queue.pulls_requested() == [each.pk for each in boards[3:]]
    empty_queue.clear()
    assert services.pull_request_serve(timeout=1) is None


@pytest.mark.django_db(transaction=True)
def test_a_worker_pulls_at_once_after_commit(board, agent, empty_queue, monkeypatch):
    monkeypatch.setattr(services.pull, "_in_worker", True)

    task = services.task_create(board=board, title="t", input="x")

    task.refresh_from_db()
    assert task.status == Status.RUNNING
    assert task.events.filter(kind=TaskEvent.Kind.CLAIMED).count() == 1
    assert empty_queue.task_names() == ["boards.tasks.run_task"]


@pytest.mark.django_db
def test_claim_updates_updated_at():
    # No Backlog: the claim is the only write (a refill would save the task too).
    board = make_board(backlog=False)
    make_agent(boards=[board])
    task = services.task_create(board=board, title="t", input="x")
    long_ago = timezone.now() - timedelta(hours=1)
    Task.objects.filter(pk=task.pk).update(updated_at=long_ago)

    services.board_pull(board_id=board.pk)

    task.refresh_from_db()
    assert task.status == Status.RUNNING
    assert task.updated_at > long_ago + timedelta(minutes=30)


@pytest.mark.django_db
def test_agents_pull_nothing_from_a_board_without_done(board, agent):
    Column.objects.filter(board=board, role=Role.DONE).delete()
    task = services.task_create(board=board, title="t", input="x")

    assert services.board_pull(board_id=board.pk) == []

    task.refresh_from_db()
    assert task.status == Status.READY  # refilled, but not claimed
