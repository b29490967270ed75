"""Live updates: after a change commits, the changed columns of a board are
re-rendered once, from the page's own template partials, and published to the
board's Channels group; consumers forward the HTML as it is.

One broadcaster thread per process gathers changes for a short window
(``KAIZEN_BROADCAST_WINDOW_MS``) and sends one message per board, so a burst of
moves becomes one swap in the browser, and each column is rendered at its
latest state only once. The thread owns a long-lived event loop, so the channel
layer keeps its Redis connection instead of opening one per message.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)


def board_group(board_id: int) -> str:
    return f"board_{board_id}"


class Broadcaster:
    def __init__(self) -> None:
        # (board_id, column ids) for a board's columns, or a job: a callable that
        # renders its own messages, [(group, message)], in the broadcaster thread.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Changes queued and not yet sent. Counted up before the put and down
        # only after the batch holding them is sent, so flush() cannot see zero
        # while a change is on its way (an "idle" flag cleared by the caller and
        # set by the thread could be set just after a new put, and lose it).
        self._unsent = 0
        self._sent = threading.Condition()

    def columns_changed(self, board_id: int, column_ids: Iterable[int]) -> None:
        self._ensure_started()
        with self._sent:
            self._unsent += 1
        self._queue.put((board_id, frozenset(column_ids)))

    def publish(self, job: Callable[[], list[tuple[str, dict]]]) -> None:
        """Send the messages ``job`` renders, with the next burst (after commit)."""
        self._ensure_started()
        with self._sent:
            self._unsent += 1
        self._queue.put(job)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been sent (for tests and shutdown).
        False if that took longer than ``timeout`` seconds."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0, timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="broadcaster", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        layer = get_channel_layer()
        window = settings.KAIZEN_BROADCAST_WINDOW_MS / 1000
        budget = settings.KAIZEN_BROADCAST_CPU_SHARE
        not_before = 0.0
        while True:
            item = self._queue.get()
            pending: dict[int, set[int]] = {}
            jobs: list[Callable[[], list[tuple[str, dict]]]] = []
            taken = 0
            # Gather for the window, and longer when rendering got expensive: the
            # next burst waits until the last render is at most this share of
            # the time since, so under a heavy load live updates come less often
            # (still whole and current) instead of taking the worker's CPU.
            deadline = max(time.monotonic() + window, not_before)
            while item is not None:
                if callable(item):
                    jobs.append(item)
                else:
                    board_id, column_ids = item
                    pending.setdefault(board_id, set()).update(column_ids)
                taken += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break  # what arrives from now on goes in the next burst
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    item = None
            started = time.monotonic()
            try:
                self._send(loop, layer, pending, jobs)
            except Exception:
                logger.exception("broadcasting to boards %s failed", sorted(pending))
            finally:
                ended = time.monotonic()
                not_before = ended + (ended - started) * (1 / budget - 1)
                with self._sent:
                    self._unsent -= taken
                    if self._unsent == 0:
                        self._sent.notify_all()

    def _send(self, loop: asyncio.AbstractEventLoop, layer, pending: dict[int, set[int]], jobs=()) -> None:
        from boards.fragments import render_board_update

        messages: list[tuple[str, dict]] = []
        try:
            close_old_connections()
            for board_id, column_ids in pending.items():
                html = render_board_update(board_id=board_id, column_ids=column_ids)
                if html:
                    messages.append((board_group(board_id), {"type": "board.update", "html": html}))
            for job in jobs:
                try:
                    messages += job()
                except Exception:
                    logger.exception("rendering a live update failed")
        finally:
            # Hand the connection back (to the pool on PostgreSQL) between bursts.
            connection.close()
        for group, message in messages:
            loop.run_until_complete(layer.group_send(group, message))


_broadcaster = Broadcaster()


def columns_changed(board_id: int, column_ids: Iterable[int]) -> None:
    """Schedule a live update of these columns of a board (call after commit)."""
    if layer_configured():
        _broadcaster.columns_changed(board_id, column_ids)


def publish(job: Callable[[], list[tuple[str, dict]]]) -> None:
    """Schedule the messages a job renders (call after commit); see Broadcaster.publish."""
    if layer_configured():
        _broadcaster.publish(job)


def flush(timeout: float = 5.0) -> bool:
    return _broadcaster.flush(timeout)


def layer_configured() -> bool:
    return bool(getattr(settings, "CHANNEL_LAYERS", None))
