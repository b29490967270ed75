"""The one place the line sends work to the workers: a board's pull (a Redis
list the workers take requests from), and claimed runs (Celery messages).

The tasks are imported inside the functions that send them: ``boards.tasks``
imports the services (a Celery task calls one service), so importing it here at
module level would close a circle. That is Celery's own idiom, and the one import
inside a function the services keep. Through it, and only through it, the
services reach ``boards.tasks`` and, behind it, the runtime.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings


@dataclass(frozen=True)
class Claim:
    """A run a pull claimed: its task, and the lease that makes it the current run."""

    task_id: int
    lease_token: uuid.UUID


# How a process that is not a worker asks the workers to pull a board: the
# board's id on a Redis list (one per line queue, as the Celery messages were)
# that the workers' pull-request threads take from (boards.agents.runtime.
# PullRequests), one of them each request.
#
# A flag per board (``kaizen:pull-requested:<board>``) says a pull has been asked
# for and has not started yet, so a burst of intake asks once, not once per task.
# The worker clears it just before pulling, so a change committed after that
# point asks again; it expires on its own if the request is lost (a worker killed
# between taking it and pulling: the periodic pull catches up).
#
# Not a Celery message: on the embedded line nearly every task the API took asked
# for a pull of its own (the flag had cleared by then), and a Celery message cost
# the web process about 1 ms of CPU to send and the worker more to receive, log
# and run, where a Redis list costs a command on each side (bench/README.md,
# issue 15's ninth stop).
PULL_FLAG_TTL_MS = 2000
# The list is capped: while no worker runs, each board asks again every TTL; a
# worker that starts pulls every board anyway.
PULL_REQUESTS_MAX = 10_000
# Set the flag unless it is set; if this call set it, put the board on the list.
_ASK_PULL = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
    redis.call('LPUSH', KEYS[2], ARGV[2])
    redis.call('LTRIM', KEYS[2], 0, ARGV[3])
    return 1
end
return 0
"""
_clients: dict[str, tuple[redis.Redis, Any]] = {}


def _redis() -> tuple[redis.Redis, Any]:
    """This process's Redis client for pull requests, and the asking script."""
    found = _clients.get(settings.REDIS_URL)
    if found is None:
        client = redis.Redis.from_url(settings.REDIS_URL)
        found = _clients[settings.REDIS_URL] = (client, client.register_script(_ASK_PULL))
    return found


def pull_requests_key(queue: str) -> str:
    """The Redis list of the pulls asked of the workers of a line queue."""
    return f"kaizen:pull-requests:{queue}"


def _pull_flag(board_id: int) -> str:
    return f"kaizen:pull-requested:{board_id}"


def _waiting() -> str:
    return pull_requests_key(settings.CELERY_TASK_DEFAULT_QUEUE)


def board_pull_enqueue(board_id: int) -> None:
    """Ask the workers to pull the board, unless a pull already asked for has not
    started yet."""
    _, ask = _redis()
    ask(keys=[_pull_flag(board_id), _waiting()], args=[PULL_FLAG_TTL_MS, board_id, PULL_REQUESTS_MAX - 1])


def board_pull_requested_take(timeout: float) -> int | None:
    """For a worker's pull-request thread: the next board a process asked the
    workers to pull, waiting up to ``timeout`` seconds; None if none was asked."""
    client, _ = _redis()
    popped = client.brpop([_waiting()], timeout=timeout)
    return int(popped[1]) if popped else None


def board_pull_requested_give_back(board_id: int) -> None:
    """For a worker that took a request and stops before serving it: the request
    goes back, first in line, for another worker."""
    client, _ = _redis()
    client.rpush(_waiting(), board_id)


def board_pull_started(board_id: int) -> None:
    """A worker starts the pull asked for: a change from now on asks again."""
    client, _ = _redis()
    client.delete(_pull_flag(board_id))


def runs_enqueue(claims: Sequence[Claim]) -> None:
    """Send claimed runs to the workers: one Celery message per KAIZEN_RUN_BATCH
    of them, which the worker that takes it runs side by side
    (boards.agents.runtime.run_batch). A message costs the worker's consumer more CPU
    than a run's own bookkeeping, so a pull that claims a thousand tasks sends
    twenty messages, not a thousand."""
    from boards.tasks import run_task, run_tasks  # Celery's idiom: see the module's docstring

    size = settings.KAIZEN_RUN_BATCH
    for first in range(0, len(claims), size):
        chunk = claims[first : first + size]
        if len(chunk) == 1:
            run_task.delay(chunk[0].task_id, str(chunk[0].lease_token))
        else:
            run_tasks.delay([[claim.task_id, str(claim.lease_token)] for claim in chunk])


def shadow_runs_enqueue(picks: Sequence[tuple[int, int]]) -> None:
    """Send the shadow runs of live tasks just completed, as (shadow replay, task),
    to the workers (experiments.tasks.shadow_run, named rather than imported: the
    kaizen loop's tasks sit above the line's services)."""
    from celery import current_app

    for replay_id, task_id in picks:
        current_app.send_task("experiments.tasks.shadow_run", args=(replay_id, task_id))
