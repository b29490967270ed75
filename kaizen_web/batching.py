"""Group commit: calls from many threads handed to one thread, which serves those
that arrive close together as one batch (one transaction, say) and answers each
caller on its own. boards.agents.runtime.Completer (finished runs, in a worker)
and boards.services.intake (tasks the web server takes, on SQLite) are two.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future
from typing import Generic, TypeVar

from django.db import connection

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """``submit(item)`` waits for its result. A thread of its own (one per process,
    started on first use, and again in a forked child) waits for a first item,
    lingers (``linger``) so that others join it, takes up to MAX_BATCH and hands
    them to ``flush``, which must answer every item's Future. A flush that raises
    answers what it left with that error: no caller waits forever. The thread's
    database connection is closed after each batch (on PostgreSQL, given back to
    the pool), and a caller outside a transaction gives its own back before it
    waits: the batch's thread takes one from the same pool, which callers holding
    theirs while they wait could leave empty."""

    MAX_BATCH = 200
    name = "batcher"

    def __init__(self) -> None:
        self._pending: list[tuple[Item, Future]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, item: Item) -> Result:
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            connection.close()
        return self.enqueue(item).result()

    def enqueue(self, item: Item) -> Future:
        """``submit`` without waiting: the Future answers when the batch is done
        (for an event loop, which must not wait on a thread's lock)."""
        future: Future = Future()
        with self._cond:
            self._pending.append((item, future))
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._pid = os.getpid()
                self._thread.start()
            self._cond.notify()
        return future

    def waiting(self) -> int:
        """Items submitted and not yet taken into a batch."""
        with self._cond:
            return len(self._pending)

    def linger(self) -> None:
        """Wait for more items to join the first one."""

    def flush(self, batch: list[tuple[Item, Future]]) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            self.linger()
            with self._cond:
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            try:
                self.flush(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                logger.exception("%s: a batch of %s failed", self.name, len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            finally:
                connection.close()
