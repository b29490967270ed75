"""Leases: a run owns its task only while its lease is current; the reaper
returns tasks whose lease expired, and a late result cannot finish a task twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from boards import services
from boards.models import Task, TaskEvent
from tests.factories import make_agent

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
