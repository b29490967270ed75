"""Leases: a run owns its task only while its lease is current; the reaper
returns tasks whose lease expired, and a late result cannot finish a task twice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from boards import services
from boards.agents import CallRecord, Output, runtime
from boards.models import Column, ModelCall, Task, TaskEvent
from tests.factories import column, make_agent, make_board

Role = Column.Role
Status = Task.Status


def _claimed(board, agent, **kwargs):
    task = services.task_create(board=board, title="t", input="x", **kwargs)
    [claim] = services.board_pull(board_id=board.pk)
    task.refresh_from_db()
    return task, claim


def _expire(task):
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
def test_reaper_returns_expired_task_to_ready(board, agent):
    task, claim = _claimed(board, agent)
    _expire(task)

    assert services.leases_reap() == 1

    task.refresh_from_db()
    assert task.status == Status.READY
    assert task.lease_token is None
    assert "lease" in task.last_error
    event = task.events.get(kind=TaskEvent.Kind.LEASE_EXPIRED)
    assert (event.from_status, event.to_status, event.actor) == ("running", "ready", "system")


@pytest.mark.django_db
def test_reaper_leaves_live_leases_alone(board, agent):
    task, _ = _claimed(board, agent)

    assert services.leases_reap() == 0
    task.refresh_from_db()
    assert task.status == Status.RUNNING


@pytest.mark.django_db
def test_late_result_of_a_reaped_run_is_ignored(board, agent):
    task, old = _claimed(board, agent)
    _expire(task)
    services.leases_reap()
    [new] = services.board_pull(board_id=board.pk)

    assert (
        services.task_complete(task_id=task.pk, lease_token=old.lease_token, output="late", confidence=0.9)
        is False
    )
    assert services.task_complete(
        task_id=task.pk, lease_token=new.lease_token, output="fresh", confidence=0.9
    )
    assert (
        services.task_complete(task_id=task.pk, lease_token=new.lease_token, output="twice", confidence=0.9)
        is False
    )

    task.refresh_from_db()
    assert (task.status, task.output, task.attempts) == (Status.DONE, "fresh", 2)
    assert task.events.filter(kind=TaskEvent.Kind.COMPLETED).count() == 1


def _answer(cost: str) -> Output:
    """An output whose one (accepted) model call cost ``cost``."""
    call = CallRecord(
        source="model",
        tier=1,
        provider="simulated",
        model="sim-small",
        tokens_in=10,
        tokens_out=5,
        cost=Decimal(cost),
        confidence=0.9,
        accepted=True,
    )
    return Output(text=f"answer costing {cost}", confidence=0.9, tier=1, calls=(call,))


@pytest.mark.django_db
def test_a_late_results_calls_are_recorded_stale_and_never_accepted(board, agent):
    # A crash test found two accepted rows for one task: the reaped run's and the
    # run that finished it.
    task, old = _claimed(board, agent)
    _expire(task)
    services.leases_reap()
    [new] = services.board_pull(board_id=board.pk)
    assert services.task_complete(task_id=task.pk, lease_token=new.lease_token, output=_answer("0.002"))

    # As the runtime reports it, with the attempt the run began as.
    late = services.task_complete(
        task_id=task.pk, lease_token=old.lease_token, output=_answer("0.001"), attempt=1
    )

    assert late is False

    rows = list(ModelCall.objects.filter(task=task).order_by("pk"))
    assert [(r.attempt, r.accepted, r.stale) for r in rows] == [(2, True, False), (1, False, True)]
    task.refresh_from_db()
    assert (task.status, task.output, task.accepted_tier) == (Status.DONE, "answer costing 0.002", 1)
    # Both calls were paid for.
    assert task.cost == Decimal("0.003")
    assert task.model_calls == 2


@pytest.mark.django_db
def test_a_failed_attempt_reported_too_late_records_its_calls_stale(board, agent):
    task, old = _claimed(board, agent)
    _expire(task)
    services.leases_reap()

    assert (
        services.task_attempt_fail(
            task_id=task.pk, lease_token=old.lease_token, error="HTTP 500", calls=_answer("0.001").calls
        )
        is False
    )

    [row] = ModelCall.objects.filter(task=task)
    assert (row.accepted, row.stale) == (False, True)


@pytest.mark.django_db
def test_renew_extends_only_current_leases(board, agent, settings):
    settings.KAIZEN_LEASE_SECONDS = 120
    task, claim = _claimed(board, agent)
    _expire(task)

    assert (
        services.leases_renew(lease_tokens=[claim.lease_token, "00000000-0000-0000-0000-000000000000"]) == 1
    )

    task.refresh_from_db()
    assert task.lease_expires_at > timezone.now() + timedelta(seconds=100)
    assert services.leases_reap() == 0


@pytest.mark.django_db
def test_failed_attempts_retry_then_fail_after_max_attempts(board):
    agent = make_agent(boards=[board], max_attempts=2)
    task, first = _claimed(board, agent)

    services.task_attempt_fail(task_id=task.pk, lease_token=first.lease_token, error="HTTP 500 from provider")
    task.refresh_from_db()
    assert task.status == Status.READY
    assert task.last_error == "HTTP 500 from provider"

    [second] = services.board_pull(board_id=board.pk)
    services.task_attempt_fail(task_id=task.pk, lease_token=second.lease_token, error="HTTP 500 again")
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.column.role == "done"
    assert task.attempts == 2
    notes = list(task.events.filter(kind=TaskEvent.Kind.ATTEMPT_FAILED).values_list("note", flat=True))
    assert notes[0].startswith("attempt 1 of 2 failed")
    assert notes[1].startswith("failed after 2 attempt(s)")


@pytest.mark.django_db
def test_returned_task_goes_to_backlog_when_ready_is_full(board):
    agent = make_agent(boards=[board], concurrency=1)
    task, claim = _claimed(board, agent)
    for i in range(5):
        services.task_create(board=board, title=f"filler {i}", input="x")
    services.board_pull(board_id=board.pk)
    assert Task.objects.filter(status=Status.READY).count() == 5

    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="timeout")

    task.refresh_from_db()
    assert task.status == Status.BACKLOG
    assert Task.objects.filter(status=Status.READY).count() == 5


@pytest.mark.django_db
def test_returned_task_fails_into_done_when_ready_and_backlog_are_at_hard_limits():
    board = make_board(ready_limit=1)
    Column.objects.filter(board=board, role=Role.BACKLOG).update(wip_limit=1, hard_limit=True)
    agent = make_agent(boards=[board], concurrency=1)
    task, claim = _claimed(board, agent)
    services.task_create(board=board, title="waits in Ready", input="x")
    services.board_pull(board_id=board.pk)  # to Ready; the only agent is busy
    services.task_create(board=board, title="waits in Backlog", input="x")

    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="timeout")

    task.refresh_from_db()
    assert (task.status, task.column.role) == (Status.FAILED, Role.DONE)
    assert task.last_error == "timeout"
    assert column(board, Role.READY).tasks.count() == 1
    assert column(board, Role.BACKLOG).tasks.count() == 1
    note = task.events.get(kind=TaskEvent.Kind.ATTEMPT_FAILED).note
    assert note.startswith("attempt 1 of 3 failed: timeout")
    assert "no room to return it" in note
    assert "move it back to Ready when there is room" in note


@pytest.mark.django_db
def test_returned_task_never_exceeds_a_full_ready_on_a_board_without_backlog():
    board = make_board(backlog=False, ready_limit=1)
    agent = make_agent(boards=[board], concurrency=1)
    task, claim = _claimed(board, agent)
    services.task_create(board=board, title="fills Ready", input="x")
    _expire(task)

    assert services.leases_reap() == 1

    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert column(board, Role.READY).tasks.count() == 1
    assert "no room to return it" in task.events.get(kind=TaskEvent.Kind.LEASE_EXPIRED).note


@pytest.mark.django_db
def test_one_board_without_done_does_not_stop_the_reaper_for_the_others(caplog):
    broken = make_board(name="Broken line")
    # One attempt only: the expired task must fail into Done, which is gone.
    stuck, _ = _claimed(broken, make_agent(boards=[broken], max_attempts=1))
    Column.objects.filter(board=broken, role=Role.DONE).delete()
    healthy = make_board()
    fine, _ = _claimed(healthy, make_agent(boards=[healthy]))
    # The broken board's task expired first, so the reaper meets it first.
    Task.objects.filter(pk=stuck.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=10))
    _expire(fine)

    assert services.leases_reap() == 1

    fine.refresh_from_db()
    stuck.refresh_from_db()
    assert fine.status == Status.READY
    assert stuck.status == Status.RUNNING  # tried again on the next pass
    assert not stuck.events.filter(kind=TaskEvent.Kind.LEASE_EXPIRED).exists()
    assert "Board 'Broken line' has no Done column" in caplog.text


@pytest.mark.django_db
def test_complete_on_a_board_without_done_names_the_board_and_the_role(board, agent):
    task, claim = _claimed(board, agent)
    Column.objects.filter(board=board, role=Role.DONE).delete()

    with pytest.raises(services.ColumnMissing, match=f"Board '{board.name}' has no Done column"):
        services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output="x", confidence=0.9)

    task.refresh_from_db()
    assert task.status == Status.RUNNING
    assert task.output == ""


@pytest.fixture
def keeper():
    # Closed before use: no background thread, the test calls renew_due itself.
    keeper = runtime.LeaseKeeper()
    keeper.close()
    return keeper


@pytest.mark.django_db
def test_lease_keeper_renews_a_run_within_the_run_timeout(board, agent, keeper, settings):
    settings.KAIZEN_RUN_TIMEOUT_SECONDS = 3600
    task, claim = _claimed(board, agent)
    keeper.hold(claim.lease_token)
    _expire(task)

    assert keeper.renew_due() == 1

    task.refresh_from_db()
    assert task.lease_expires_at > timezone.now()
    assert services.leases_reap() == 0


@pytest.mark.django_db
def test_lease_keeper_lets_a_run_past_the_timeout_expire_and_ignores_its_late_result(
    board, agent, keeper, settings
):
    task, claim = _claimed(board, agent)
    keeper.hold(claim.lease_token)
    # Every run has been held at least this long: the model call "hangs".
    settings.KAIZEN_RUN_TIMEOUT_SECONDS = 0
    _expire(task)

    assert keeper.renew_due() == 0
    assert services.leases_reap() == 1

    task.refresh_from_db()
    assert task.status == Status.READY
    assert "run timeout" in task.last_error
    assert (
        services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output="late", confidence=0.9)
        is False
    )
    # Once past the timeout the run is not held any more, even if the timeout grows.
    settings.KAIZEN_RUN_TIMEOUT_SECONDS = 3600
    assert keeper.renew_due() == 0
