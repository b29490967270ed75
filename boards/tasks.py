"""Celery tasks: thin wrappers that take primary keys and call one service.

Running one twice is safe for all but the demo feed: a run whose lease is no
longer current does nothing, and a second pull or reap does only what is left to do.
feed_demo_boards is not idempotent: every run may add an example task to each
demo board (up to its intake column's limit); that is its job, on a clock.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from django.conf import settings

from boards import services
from boards.agents import runtime
from kaizen_web import heap

logger = logging.getLogger(__name__)


@shared_task(name="boards.tasks.run_task")
def run_task(task_id: int, lease_token: str) -> str:
    # A batch of one: its cascade goes to the agent loop as a batch's do.
    return runtime.run_batch([(task_id, lease_token)])[0]


@shared_task(name="boards.tasks.run_tasks")
def run_tasks(claims: list[list]) -> list[str]:
    """Several claimed runs, side by side: ``[[task_id, lease_token], ...]``."""
    return runtime.run_batch([(int(task_id), str(token)) for task_id, token in claims])


# Whether this worker serves the line's queue (set at worker_init). Another worker,
# such as the knowledge base's embedder on <queue>.knowledge, runs no task of the
# line: it must not beat as a line worker, nor pull every board when it starts.
_serves_line = True


def _consumes_line_queue(worker) -> bool:
    """Whether ``worker`` (Celery's, at worker_init: its -Q queues are set by then)
    consumes the line's queue, CELERY_TASK_DEFAULT_QUEUE. With no -Q it consumes
    the default queue."""
    if worker is None:
        return True
    names = set(worker.app.amqp.queues.consume_from or ())
    return not names or settings.CELERY_TASK_DEFAULT_QUEUE in names


@worker_init.connect
def _mark_worker(sender=None, **kwargs) -> None:
    global _serves_line
    _serves_line = _consumes_line_queue(sender)
    if not _serves_line:
        logger.info("this worker serves no queue of the line: it neither beats as a line worker nor pulls")
        return
    services.mark_worker_process()
    # The thread pool runs tasks in this process: it beats from now on.
    runtime.worker_started()


@worker_process_init.connect
def _start_child(**kwargs) -> None:
    # A prefork child (forked before worker_ready): its own collector settings too.
    heap.settle()
    # Its own heartbeat (threads do not survive the fork).
    if _serves_line:
        runtime.worker_started()


@worker_ready.connect
def _pull_at_start(**kwargs) -> None:
    # The worker's code is loaded: out of the garbage collector's work from now on.
    heap.settle()
    if _serves_line:
        runtime.worker_ready()


@worker_shutting_down.connect
def _hand_over(**kwargs) -> None:
    # Asked to stop (Ctrl-C, SIGTERM, SIGQUIT): the tasks in flight go back to
    # Ready now, not when their leases run out. Sent from a signal handler.
    runtime.worker_handover_soon()


@worker_shutdown.connect
def _stopped(**kwargs) -> None:
    runtime.worker_handover_wait()


@worker_process_shutdown.connect
def _child_stopped(**kwargs) -> None:
    runtime.worker_handover()


@shared_task(name="boards.tasks.pull_board")
def pull_board(board_id: int) -> None:
    """A pull asked as a Celery message, as versions before the pull-request list
    (boards.services.enqueue) asked for one: kept so that messages still queued
    when a worker is upgraded are served, not refused as unknown."""
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


@shared_task(name="boards.tasks.fold_flow")
def fold_flow() -> int:
    return services.boards_flow_fold()
