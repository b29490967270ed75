"""Live updates: after a change commits, the changed columns of a board are
re-rendered once, from the page's own template partials, and published to the
board's Channels group; consumers forward the HTML as it is.

One broadcaster thread per process gathers changes for a short window
(``KAIZEN_BROADCAST_WINDOW_MS``) and sends one message per board, so a burst of
moves becomes one swap in the browser, and each column is rendered at its
latest state only once. The thread owns a long-lived event loop, so the channel
layer keeps its Redis connection instead of opening one per message.

When the channel layer cannot be reached (Redis down or out of reach), what could
not be sent is remembered, not lost: the boards, and the groups of the other
pages' updates (the andon inbox, the evolution review). The thread tries the
layer again with a growing pause and, once it answers, waits a moment for the
web servers to subscribe again (channels_redis retries once a second), then
sends each such board whole (every column, banner and agents) and asks the
other groups' pages to catch up (``live.resync``: their consumers close the
socket with 1012, the htmx ws extension reconnects, and the page re-fetches what
it shows, as it does on every reconnect).

A process that ends (a management command, ``manage.py shell``) flushes what it
queued before it exits (atexit), for KAIZEN_BROADCAST_EXIT_FLUSH_SECONDS at most:
the thread is a daemon, and would otherwise die with what it had not sent.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)

# The longest the CPU budget may delay the next burst of live updates, in seconds.
MAX_HOLD = 1.0


def board_group(board_id: int) -> str:
    return f"board_{board_id}"


# Asks the consumers of a group to have their pages catch up (see the module's doc).
RESYNC = {"type": "live.resync"}
# Published when the layer is tried again after a failure: a group nobody joins.
PROBE_GROUP = "kaizen_broadcast_probe"


class Broadcaster:
    # Pauses between tries of a layer that failed: doubling from the first to the last.
    RETRY_FIRST = 0.5
    RETRY_MAX = 8.0
    # After the layer answers again, how long the web servers get to subscribe
    # again (channels_redis's receive loop retries once a second) before the
    # catch-up is sent: sent earlier, it could reach no one.
    SETTLE = 2.0

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
        # What a failed send left to catch up on (the thread's own; ``_behind``
        # tells flush() there is some): boards to send whole, groups to resync.
        self._lost_boards: set[int] = set()
        self._lost_groups: set[str] = set()
        self._behind = False
        self._retry_at = 0.0
        self._retry_pause = 0.0
        self._answered_at: float | None = None

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
        """Wait until everything queued so far has been sent, and anything a failed
        send left has been caught up on (for tests and shutdown). False if that
        took longer than ``timeout`` seconds."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0 and not self._behind, timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="broadcaster", daemon=True)
                self._thread.start()
                if not getattr(self, "_exit_flush", False):
                    self._exit_flush = True
                    atexit.register(self._flush_at_exit)

    def _flush_at_exit(self) -> None:
        # Daemon threads still run while atexit handlers do.
        timeout = settings.KAIZEN_BROADCAST_EXIT_FLUSH_SECONDS
        if timeout > 0 and not self.flush(timeout):
            logger.warning("live updates not sent within %ss of exiting were dropped", timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        layer = get_channel_layer()
        window = settings.KAIZEN_BROADCAST_WINDOW_MS / 1000
        budget = settings.KAIZEN_BROADCAST_CPU_SHARE
        not_before = 0.0
        while True:
            try:
                # While behind, wake up for the next try of the layer.
                wait = max(self._retry_at - time.monotonic(), 0.0) if self._behind else None
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
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
            # CPU time, not wall time: waiting on a slow or absent Redis is not
            # rendering, and must not hold back the next burst.
            started = time.thread_time()
            try:
                if self._behind:
                    self._catch_up(loop, layer)
                self._send(loop, layer, pending, jobs)
            except Exception:
                logger.exception("broadcasting to boards %s failed", sorted(pending))
            finally:
                spent = time.thread_time() - started
                # Never held back more than MAX_HOLD: a process's first render
                # compiles the templates (seconds on a busy machine), and the
                # share alone would then freeze its live updates for half a minute.
                not_before = time.monotonic() + min(spent * (1 / budget - 1), MAX_HOLD)
                with self._sent:
                    self._unsent -= taken
                    if self._unsent == 0:
                        self._sent.notify_all()

    def _send(self, loop: asyncio.AbstractEventLoop, layer, pending: dict[int, set[int]], jobs=()) -> None:
        from boards.fragments import render_board_update

        if self._behind:
            # The layer is not back yet: these boards go whole with the catch-up.
            # Jobs are rendered still, only to learn which groups they were for.
            self._lost_boards.update(pending)
            pending = {}
        messages: list[tuple[str, dict, int | None]] = []
        try:
            close_old_connections()
            for board_id, column_ids in pending.items():
                html = render_board_update(board_id=board_id, column_ids=column_ids)
                if html:
                    messages.append((board_group(board_id), {"type": "board.update", "html": html}, board_id))
            for job in jobs:
                try:
                    messages += [(group, message, None) for group, message in job()]
                except Exception:
                    logger.exception("rendering a live update failed")
        finally:
            # Hand the connection back (to the pool on PostgreSQL) between bursts.
            connection.close()
        if self._behind:
            self._lost_groups.update(group for group, _, _ in messages)
            return
        for index, (group, message, _) in enumerate(messages):
            try:
                loop.run_until_complete(layer.group_send(group, message))
            except Exception as exc:
                # This message and the rest of the burst wait for the layer to be
                # back (one try each would wait out one timeout each).
                self._fell_behind(exc, messages[index:])
                return

    # --- when the layer fails -----------------------------------------------------

    def _fell_behind(self, exc: Exception, unsent: list[tuple[str, dict, int | None]]) -> None:
        for group, _, board_id in unsent:
            if board_id is not None:
                self._lost_boards.add(board_id)
            else:
                self._lost_groups.add(group)
        if not self._behind:
            logger.warning(
                "live updates could not be sent (%s): the boards %s and the groups %s catch up once the "
                "channel layer is back",
                exc,
                sorted(self._lost_boards),
                sorted(self._lost_groups),
            )
            self._retry_pause = self.RETRY_FIRST
        else:
            self._retry_pause = min(self._retry_pause * 2, self.RETRY_MAX)
        self._answered_at = None
        self._retry_at = time.monotonic() + self._retry_pause
        with self._sent:
            self._behind = True

    def _catch_up(self, loop: asyncio.AbstractEventLoop, layer) -> None:
        """Try the layer again when it is time; once it has answered for SETTLE
        seconds, send every lost board whole and a resync to every lost group."""
        from boards.fragments import render_board_update
        from boards.models import Column

        now = time.monotonic()
        if now < self._retry_at:
            return
        if self._answered_at is None:
            try:
                loop.run_until_complete(layer.group_send(PROBE_GROUP, {"type": "probe"}))
            except Exception as exc:
                self._fell_behind(exc, [])
                return
            self._answered_at = now
            self._retry_at = now + self.SETTLE
            logger.info("the channel layer answers again: catching up in %ss", self.SETTLE)
            return
        boards, groups = sorted(self._lost_boards), sorted(self._lost_groups)
        messages: list[tuple[str, dict, int | None]] = []
        try:
            close_old_connections()
            for board_id in boards:
                # Every column: which ones changed meanwhile is not known.
                column_ids = set(Column.objects.filter(board_id=board_id).values_list("pk", flat=True))
                html = render_board_update(board_id=board_id, column_ids=column_ids)
                if html:
                    messages.append((board_group(board_id), {"type": "board.update", "html": html}, board_id))
        finally:
            connection.close()
        messages += [(group, RESYNC, None) for group in groups]
        for index, (group, message, _) in enumerate(messages):
            try:
                loop.run_until_complete(layer.group_send(group, message))
            except Exception as exc:
                self._fell_behind(exc, messages[index:])
                return
        logger.info("live updates caught up: boards %s, groups %s", boards, groups)
        self._lost_boards.clear()
        self._lost_groups.clear()
        self._answered_at = None
        with self._sent:
            self._behind = False
            self._sent.notify_all()


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
