"""The one place the line sends work to the Celery workers: a board's pull, and
claimed runs.

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

import redis
from django.conf import settings


@dataclass(frozen=True)
class Claim:
    """A run a pull claimed: its task, and the lease that makes it the current run."""

    task_id: int
    lease_token: uuid.UUID


class _PullFlag:
    """A Redis key that says a pull of a board has been asked of the workers and
    has not started yet, so a burst of intake sends one message, not one per task.
    The worker clears it just before pulling, so a change committed after that
    point sends a new one; it expires on its own if the message is lost."""

    TTL_MS = 2000
    _client: redis.Redis | None = None

    def __init__(self, board_id: int) -> None:
        self.key = f"kaizen:pull-requested:{board_id}"

    @classmethod
    def _redis(cls) -> redis.Redis:
        if cls._client is None:
            cls._client = redis.Redis.from_url(settings.REDIS_URL)
        return cls._client

    def set(self, *, nx: bool) -> bool:
        return bool(self._redis().set(self.key, b"1", nx=nx, px=self.TTL_MS))

    def clear(self) -> None:
        self._redis().delete(self.key)


def board_pull_enqueue(board_id: int) -> None:
    """Ask the workers to pull the board (boards.tasks.pull_board), unless a pull
    already asked for has not started yet."""
    if _PullFlag(board_id).set(nx=True):
        from boards.tasks import pull_board  # Celery's idiom: see the module's docstring

        pull_board.delay(board_id)


def board_pull_started(board_id: int) -> None:
    """A worker starts the pull asked for: a change from now on asks again."""
    _PullFlag(board_id).clear()


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
