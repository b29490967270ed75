"""The board tests' shared fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from boards.services.enqueue import pull_requests_key


class CeleryQueue:
    """This run's Celery queue in Redis, read the way a worker would find it."""

    def __init__(self) -> None:
        self.name: str = settings.CELERY_TASK_DEFAULT_QUEUE
        self._client = redis.Redis.from_url(settings.CELERY_BROKER_URL)

    def task_names(self) -> list[str]:
        """The names of the tasks waiting in the queue, oldest first."""
        return [json.loads(raw)["headers"]["task"] for raw in self._client.lrange(self.name, 0, -1)]

    def pulls_requested(self) -> list[int]:
        """The boards whose pull was asked of the workers and not yet taken by one,
        oldest first (boards.services.enqueue: a Redis list beside the queue)."""
        return [int(raw) for raw in reversed(self._client.lrange(self.pull_requests, 0, -1))]

    @property
    def pull_requests(self) -> str:
        return pull_requests_key(self.name)

    def clear(self) -> None:
        """No queued Celery messages or pull requests, and no pull marked as asked
        for (which would hold back the next request for one)."""
        self._client.delete(self.name, self.pull_requests)
        self._client.delete(*self._client.keys("kaizen:pull-requested:*") or ["-"])


@pytest.fixture
def empty_queue() -> Iterator[CeleryQueue]:
    """The Celery queue, emptied before and after the test (the test needs Redis)."""
    queue = CeleryQueue()
    queue.clear()
    yield queue
    queue.clear()
