"""Live updates, for every app: after a change commits, what the apps render is
published to their Channels groups by one broadcaster thread per process. The
apps own their renderers and groups (``boards.broadcast``, ``andon.broadcast``,
``experiments.broadcast``); this module owns how their messages travel.

An app asks in one of two ways (call either after commit):

- ``publish(job)``: ``job`` renders its own messages, ``[(group, message)]``, in
  the broadcaster thread, with the next burst;
- ``changed(topic, key, parts)``: changes that merge. The parts asked for one key
  within a burst are rendered once, together, at their latest state (a board's
  columns: a burst of moves becomes one swap in the browser). The ``Topic`` also
  says how to render a key whole, for the catch-up after an outage.

The thread coalesces only when there is a burst. A change asked for when nothing
was sent within the last ``KAIZEN_BROADCAST_WINDOW_MS`` goes out at once (the
leading edge), with whatever else is already queued: a lone move reaches the
browsers without waiting. Changes asked for within the window after a send are
gathered and sent together when the window ends (the trailing edge), merged per
key and rendered at their latest state: a busy line sends a board at most once a
window, however many moves it makes. The thread owns a long-lived event loop, so
the channel layer keeps its Redis connection instead of opening one per message.
Rendering may take at most ``KAIZEN_BROADCAST_CPU_SHARE`` of the thread's time:
past it, the next burst waits (never longer than MAX_HOLD), so under a heavy load
live updates come less often, still whole and current, instead of taking the
worker's CPU.

When the channel layer cannot be reached (Redis down or out of reach), what could
not be sent is remembered, not lost: the topics' keys, and the groups of the jobs'
messages. The thread tries the layer again with a growing pause and, once it
answers, waits a moment for the web servers to subscribe again (channels_redis
retries once a second), then renders each such key whole (a board: every column,
banner and agents) and asks the other groups' pages to catch up (``live.resync``:
their consumers close the socket with 1012, the htmx ws extension reconnects, and
the page re-fetches what it shows, as it does on every reconnect).

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
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# A message for a Channels group: (group, message).
Message = tuple[str, dict]
Job = Callable[[], list[Message]]
K = TypeVar("K", bound=Hashable)

# The longest the CPU budget may delay the next burst of live updates, in seconds.
MAX_HOLD = 1.0

# Asks the consumers of a group to have their pages catch up (see the module's doc).
RESYNC = {"type": "live.resync"}
# Published when the layer is tried again after a failure: a group nobody joins.
PROBE_GROUP = "kaizen_broadcast_probe"


@dataclass(frozen=True, eq=False)
class Topic(Generic[K]):
    """Changes that merge by key. ``render(key, parts)`` renders the parts asked
    for one key within a burst; ``render_whole(key)`` renders all of it, for the
    catch-up after an outage (which parts changed meanwhile is not known). Both
    run in the broadcaster thread and read the database as it is then.

    ``group(key)``, when given, names the one group a key's messages go to: a key
    whose group nobody is subscribed to is not rendered at all (see watched_groups).
    A page's consumer subscribes before its socket opens, and the page re-reads
    what it shows once it has, so a change it would have been sent is in what it
    reads (see watched_groups for the one ordering this leans on)."""

    name: str
    render: Callable[[K, set], list[Message]]
    render_whole: Callable[[K], list[Message]]
    group: Callable[[K], str] | None = None


# A topic's key: what a message was rendered for, to render whole if it is lost
# (None for a job's message: its group is resynced).
_Key = tuple[Topic[Any], Any]
_Owner = _Key | None


class Broadcaster:
    # Pauses between tries of a layer that failed: doubling from the first to the last.
    RETRY_FIRST = 0.5
    RETRY_MAX = 8.0
    # After the layer answers again, how long the web servers get to subscribe
    # again (channels_redis's receive loop retries once a second) before the
    # catch-up is sent: sent earlier, it could reach no one.
    SETTLE = 2.0

    def __init__(self) -> None:
        # (topic, key, parts) for changes that merge, or a job: a callable that
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
        # tells flush() there is some): topics' keys to render whole, groups to resync.
        self._lost_keys: set[_Key] = set()
        self._lost_groups: set[str] = set()
        self._behind = False
        self._retry_at = 0.0
        self._retry_pause = 0.0
        self._answered_at: float | None = None

    def changed(self, topic: Topic[K], key: K, parts: Iterable[Hashable]) -> None:
        """Render these parts of ``key`` with the next burst, merged with the
        others asked for it meanwhile (after commit)."""
        self._put((topic, key, frozenset(parts)))

    def publish(self, job: Job) -> None:
        """Send the messages ``job`` renders, with the next burst (after commit)."""
        self._put(job)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been sent, and anything a failed
        send left has been caught up on (for tests and shutdown). False if that
        took longer than ``timeout`` seconds."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0 and not self._behind, timeout)

    def _put(self, item: object) -> None:
        self._ensure_started()
        with self._sent:
            self._unsent += 1
        self._queue.put(item)

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
        budget = _CpuBudget(settings.KAIZEN_BROADCAST_CPU_SHARE, time.monotonic())
        # The next burst goes no earlier than this: the window after the last
        # send, or later when rendering got expensive (the CPU budget).
        not_before = 0.0
        while True:
            try:
                # While behind, wake up for the next try of the layer.
                wait = max(self._retry_at - time.monotonic(), 0.0) if self._behind else None
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            pending: dict[_Key, set] = {}
            jobs: list[Job] = []
            taken = 0
            # Nothing sent within the window (and the budget allows): this change
            # goes at once, with what is queued already (the leading edge).
            # Otherwise a burst is on: gather until the window ends (the trailing
            # edge), so it goes as one send per window, merged by key.
            deadline = not_before
            while item is not None:
                if callable(item):
                    jobs.append(item)
                else:
                    topic, key, parts = item
                    pending.setdefault((topic, key), set()).update(parts)
                taken += 1
                remaining = deadline - time.monotonic()
                try:
                    # What arrives once the deadline has passed goes in the next
                    # burst; only what is queued already joins this one.
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
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
                logger.exception("broadcasting %s failed", _keys_shown(pending))
            finally:
                now = time.monotonic()
                hold = budget.spend(time.thread_time() - started, now)
                # A send that had nothing to send (a try of the layer while
                # behind) opens no window.
                sent = bool(pending or jobs)
                not_before = now + max(hold, window if sent else 0.0)
                with self._sent:
                    self._unsent -= taken
                    if self._unsent == 0:
                        self._sent.notify_all()

    def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        layer,
        pending: dict[_Key, set],
        jobs: Iterable[Job] = (),
    ) -> None:
        if self._behind:
            # The layer is not back yet: these keys go whole with the catch-up.
            # Jobs are rendered still, only to learn which groups they were for.
            self._lost_keys.update(pending)
            pending = {}
        messages: list[tuple[str, dict, _Owner]] = []
        pending = self._watched(loop, layer, pending)
        try:
            close_old_connections()
            for (topic, key), parts in pending.items():
                messages += [(group, message, (topic, key)) for group, message in topic.render(key, parts)]
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

    @staticmethod
    def _watched(loop: asyncio.AbstractEventLoop, layer, pending: dict[_Key, set]) -> dict[_Key, set]:
        """The pending keys someone is watching: those of a topic without a
        ``group``, and those whose group has a subscriber now. Rendering a board
        for no one cost a busy worker a tenth of its CPU."""
        groups = {owner: owner[0].group(owner[1]) for owner in pending if owner[0].group is not None}
        if not groups:
            return pending
        try:
            watched = loop.run_until_complete(watched_groups(layer, set(groups.values())))
        except (TimeoutError, OSError, RedisError):
            # Cannot tell (Redis is out of reach): render, and let the send find
            # out, and catch up, as before.
            logger.debug("could not ask the channel layer who is watching", exc_info=True)
            return pending
        except Exception:
            logger.exception("asking the channel layer who is watching failed; rendering for everyone")
            return pending
        if watched is None:
            return pending
        unwatched = {owner for owner, group in groups.items() if group not in watched}
        return {owner: parts for owner, parts in pending.items() if owner not in unwatched}

    # --- when the layer fails -----------------------------------------------------

    def _fell_behind(self, exc: Exception, unsent: list[tuple[str, dict, _Owner]]) -> None:
        for group, _, owner in unsent:
            if owner is not None:
                self._lost_keys.add(owner)
            else:
                self._lost_groups.add(group)
        if not self._behind:
            logger.warning(
                "live updates could not be sent (%s): %s and the groups %s catch up once the channel layer is back",
                exc,
                _keys_shown(self._lost_keys),
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
        seconds, send every lost key whole and a resync to every lost group."""
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
        keys = sorted(self._lost_keys, key=_in_order)
        groups = sorted(self._lost_groups)
        messages: list[tuple[str, dict, _Owner]] = []
        try:
            close_old_connections()
            for topic, key in keys:
                messages += [(group, message, (topic, key)) for group, message in topic.render_whole(key)]
        finally:
            connection.close()
        messages += [(group, RESYNC, None) for group in groups]
        for index, (group, message, _) in enumerate(messages):
            try:
                loop.run_until_complete(layer.group_send(group, message))
            except Exception as exc:
                self._fell_behind(exc, messages[index:])
                return
        logger.info("live updates caught up: %s, groups %s", _keys_shown(keys), groups)
        self._lost_keys.clear()
        self._lost_groups.clear()
        self._answered_at = None
        with self._sent:
            self._behind = False
            self._sent.notify_all()


class _CpuBudget:
    """Rendering's share of the broadcaster thread's time, kept on average: the
    thread earns ``share`` of a second of CPU each second, saves at most
    CREDIT_SECONDS' worth, and spends it on each render. A render goes at once
    while there is credit, so a lone update never waits on the one before it
    (holding each burst back by its own cost made every update after an
    expensive one wait, at any rate of change); past it, the next burst waits
    until the credit is repaid, so a busy line's updates come less often.

    Never held back more than MAX_HOLD: a process's first render compiles the
    templates (seconds on a busy machine), and repaying that in full would
    freeze its live updates for half a minute."""

    CREDIT_SECONDS = 1.0

    def __init__(self, share: float, now: float) -> None:
        self.share = share
        self.credit = share * self.CREDIT_SECONDS
        self.at = now

    def spend(self, seconds: float, now: float) -> float:
        """Take ``seconds`` of CPU spent rendering, at ``now`` (time.monotonic());
        return how long the next burst waits."""
        earned = self.credit + (now - self.at) * self.share
        self.credit = max(min(earned, self.share * self.CREDIT_SECONDS) - seconds, -self.share * MAX_HOLD)
        self.at = now
        return max(-self.credit, 0.0) / self.share


async def watched_groups(layer, groups: set[str]) -> set[str] | None:
    """Which of ``groups`` have a subscriber now, or None when the layer cannot say.

    The pub/sub layer of channels_redis (settings.CHANNEL_LAYERS) subscribes each
    web server's Redis connection to a group's Redis channel while a consumer of
    that server is in the group; ``PUBSUB NUMSUB`` counts those subscriptions,
    across every web server. ``group_add`` sends the SUBSCRIBE without waiting
    for Redis to answer it, before the socket is accepted: a page's re-read is
    asked for a browser round trip later, so Redis has taken the subscription
    before a change that the re-read does not show is committed and asked about.
    (A PUBLISH sent before a late SUBSCRIBE was lost in the same way before
    anyone asked; after a Redis restart, until the web servers subscribe again,
    nobody counts as watching, as nobody received the PUBLISH either.)

    It uses the layer's naming of group channels and its shards (channels_redis
    4), through methods that are not its public API: if they are missing, every
    group counts as watched, as before. Were they renamed, every board would
    look unwatched: tests/boards/test_broadcast.py then fails."""
    try:
        inner = layer._get_layer()
        name_of = inner._get_group_channel_name
        shard_of = inner._get_shard
    except AttributeError:
        return None
    by_shard: dict[Any, dict[str, str]] = {}
    for group in groups:
        channel = name_of(group)
        by_shard.setdefault(shard_of(channel), {})[channel] = group
    watched: set[str] = set()
    for shard, channels in by_shard.items():
        shard._ensure_redis()
        counts = await shard._redis.pubsub_numsub(*channels)
        watched.update(channels[_text(channel)] for channel, count in counts if count)
    return watched


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _in_order(owner: _Key) -> tuple[str, Any]:
    topic, key = owner
    return topic.name, key


def _keys_shown(keys: Iterable[_Key]) -> str:
    """Keys for a log line: "board 3, board 7" (or "nothing")."""
    return ", ".join(f"{topic.name} {key}" for topic, key in sorted(keys, key=_in_order)) or "nothing"


_broadcaster = Broadcaster()


def layer_configured() -> bool:
    return bool(getattr(settings, "CHANNEL_LAYERS", None))


def changed(topic: Topic[K], key: K, parts: Iterable[Hashable]) -> None:
    """Schedule a live update of these parts of ``key`` (call after commit); see Broadcaster.changed."""
    if layer_configured():
        _broadcaster.changed(topic, key, parts)


def publish(job: Job) -> None:
    """Schedule the messages a job renders (call after commit); see Broadcaster.publish."""
    if layer_configured():
        _broadcaster.publish(job)


def flush(timeout: float = 5.0) -> bool:
    """Wait until every live update queued so far has been sent (see Broadcaster.flush)."""
    return _broadcaster.flush(timeout)
