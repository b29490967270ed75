"""Celery tasks: thin wrappers that take primary keys and call one service.

Running one twice is safe for all but the demo feed: a run whose lease is no
longer current does nothing, and a second pull or reap does only what is left to do.
feed_demo_boards is not idempotent: every run may add an example task to each
demo board (up to its intake column's limit); that is its job, on a clock.
"""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_init

from boards import runtime, services


@shared_task(name="boards.tasks.run_task")
def run_task(task_id: int, lease_token: str) -> str:
    return runtime.run(task_id, lease_token)


@shared_task(name="boards.tasks.run_tasks")
def run_tasks(claims: list[list]) -> list[str]:
    """Several claimed runs, side by side: ``[[task_id, lease_token], ...]``."""
    return runtime.run_batch([(int(task_id), str(token)) for task_id, token in claims])


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
    return services.boards_pull_all()


@shared_task(name="boards.tasks.feed_demo_boards")
def feed_demo_boards() -> int:
    return services.demo_boards_feed()
