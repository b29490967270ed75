"""Celery tasks: thin wrappers that take primary keys and call one service.

Each is safe to run twice: a run whose lease is no longer current does nothing.
"""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_init

from boards import runtime, services
from boards.models import Board


@shared_task(name="boards.tasks.run_task")
def run_task(task_id: int, lease_token: str) -> str:
    return runtime.run(task_id, lease_token)


@worker_init.connect
def _mark_worker(**kwargs) -> None:
    services.mark_worker_process()


@shared_task(name="boards.tasks.pull_board")
def pull_board(board_id: int) -> None:
    services.pull_requested_run(board_id=board_id)


@shared_task(name="boards.tasks.reap_expired_leases")
def reap_expired_leases() -> int:
    return services.leases_reap()


@shared_task(name="boards.tasks.pull_all_boards")
def pull_all_boards() -> int:
    claimed = 0
    for board_id in Board.objects.filter(paused=False).values_list("pk", flat=True):
        claimed += len(services.board_pull(board_id=board_id))
    return claimed


@shared_task(name="boards.tasks.feed_demo_boards")
def feed_demo_boards() -> int:
    added = 0
    for board in Board.objects.filter(paused=False):
        if board.demo_tasks and services.demo_task_feed(board=board) is not None:
            added += 1
    return added
