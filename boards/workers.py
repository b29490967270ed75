"""Worker heartbeats: how the line tells a dead worker from a busy one within
seconds, where a lease takes a minute.

Each Celery worker process has an id (host, pid and a random part) and beats:
every KAIZEN_WORKER_HEARTBEAT_SECONDS it sets ``kaizen:worker:<id>`` in Redis,
a key that expires after KAIZEN_WORKER_DEAD_SECONDS. A run records its worker's
id on its task when it begins (``Task.worker``). The reaper
(``boards.services.leases_reap``) asks which of the workers holding runs have no
key: their tasks go back to Ready.

A missing key is not yet proof: Redis may have restarted (losing every key) or
been out of reach while the workers could not beat. So a worker is taken for
dead only when its key is still missing at a second look, at least two beats
after the first one noticed it: a live worker has beaten again by then, and its
beat clears the mark. Redis measures that time itself (the mark's remaining
TTL), so the clocks of the machines asking do not matter.

A task claimed but not yet begun by any worker has no worker recorded: only its
lease covers it. Taking a live worker for dead (frozen longer than the dead
time) costs the runs it has in flight, never a task: they are returned, run
again elsewhere, and the frozen worker's late results are ignored because its
lease tokens are no longer current.

Imports nothing of the services: they call it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable

import redis
from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

KEY = "kaizen:worker:{}"
MISSING = "kaizen:worker-missing:{}"
# How long a "first seen missing" mark lives: long enough to be read again at the
# second look, short enough that marks of workers gone for good clear themselves.
MISSING_TTL_MS = 10 * 60 * 1000


_clients: dict[tuple[int, str], redis.Redis] = {}


def _client() -> redis.Redis:
    """A client that gives up quickly: a beat that cannot be written is retried at
    the next beat, and must not hold up the loop (or a reaper) for long. One per
    process and Redis URL (its pool is thread-safe)."""
    key = (os.getpid(), settings.REDIS_URL)
    client = _clients.get(key)
    if client is None:
        timeout = max(settings.KAIZEN_WORKER_HEARTBEAT_SECONDS, 0.5)
        client = _clients[key] = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return client


def _dead_ms() -> int:
    return int(settings.KAIZEN_WORKER_DEAD_SECONDS * 1000)


def _confirm_ms() -> int:
    # The second look that confirms a missing key: two beats later.
    return int(2 * settings.KAIZEN_WORKER_HEARTBEAT_SECONDS * 1000)


def beat(client: redis.Redis, worker_id: str) -> None:
    """One heartbeat of ``worker_id`` (and the end of any suspicion of it)."""
    pipe = client.pipeline(transaction=False)
    pipe.set(KEY.format(worker_id), b"1", px=_dead_ms())
    pipe.delete(MISSING.format(worker_id))
    pipe.execute()


def forget(client: redis.Redis, worker_id: str) -> None:
    """A worker that stops deletes its key: if it could not hand its tasks back,
    the reaper takes them (after its second look) rather than after the dead time."""
    client.delete(KEY.format(worker_id))


def dead_among(worker_ids: Iterable[str], *, client: redis.Redis | None = None) -> set[str]:
    """Which of these workers are dead: no heartbeat now, and none since a first
    look found it missing at least two beats ago. Two round trips to Redis."""
    ids = sorted(set(worker_ids))
    if not ids:
        return set()
    client = client or _client()
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.exists(KEY.format(worker_id))
    missing = [worker_id for worker_id, alive in zip(ids, pipe.execute(), strict=True) if not alive]
    if not missing:
        return set()
    pipe = client.pipeline(transaction=False)
    for worker_id in missing:
        pipe.set(MISSING.format(worker_id), b"1", nx=True, px=MISSING_TTL_MS)
        pipe.pttl(MISSING.format(worker_id))
    replies = pipe.execute()
    dead = set()
    for worker_id, remaining in zip(missing, replies[1::2], strict=True):
        # Missing since the mark was set: its full lifetime less what remains of it.
        if remaining is not None and remaining >= 0 and MISSING_TTL_MS - remaining >= _confirm_ms():
            dead.add(worker_id)
    return dead


class Heartbeat:
    """This process's heartbeat, and its watchdog: a second thread that runs the
    reaper every beat, so a dead worker's tasks come back within seconds while
    any worker lives (the reaper's own schedule is a safety net). Separate
    threads, so a reaper waiting on a lock never delays a beat.

    Started once per process (a forked child gets an id and threads of its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stopped = threading.Event()
        self.worker_id = ""

    def start(self, *, watchdog: Callable[[], object] | None = None) -> str:
        """Beat (once at once, then on a thread) and return this process's worker id.
        Idempotent; a process that stopped beating does not start again."""
        with self._lock:
            if self._pid == os.getpid():
                return self.worker_id
            self._pid = os.getpid()
            self._stopped = threading.Event()
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
            worker_id, stopped = self.worker_id, self._stopped
        client = _client()
        try:
            # Before any run records this id: a reaper must never find a run held
            # by a worker that has not beaten yet.
            beat(client, worker_id)
        except redis.RedisError:
            logger.warning("worker %s: the first heartbeat failed; retrying every beat", worker_id)
        threading.Thread(
            target=self._beat_loop, args=(client, worker_id, stopped), name="heartbeat", daemon=True
        ).start()
        if watchdog is not None:
            threading.Thread(
                target=self._watch_loop, args=(watchdog, stopped), name="watchdog", daemon=True
            ).start()
        logger.info("worker %s beats every %ss", worker_id, settings.KAIZEN_WORKER_HEARTBEAT_SECONDS)
        return worker_id

    def stop(self) -> None:
        """Stop beating and delete the key (see forget). The id stays, for the
        runs still finishing."""
        with self._lock:
            if self._pid != os.getpid() or self._stopped.is_set():
                return
            self._stopped.set()
            worker_id = self.worker_id
        try:
            forget(_client(), worker_id)
        except redis.RedisError:
            logger.warning("worker %s: could not delete its heartbeat; it expires on its own", worker_id)

    @property
    def beating(self) -> bool:
        return self._pid == os.getpid() and not self._stopped.is_set()

    @staticmethod
    def _beat_loop(client: redis.Redis, worker_id: str, stopped: threading.Event) -> None:
        interval = settings.KAIZEN_WORKER_HEARTBEAT_SECONDS
        failing = False
        while not stopped.wait(interval):
            try:
                beat(client, worker_id)
            except Exception as exc:
                if not failing:
                    logger.warning("worker %s: heartbeat failed (%s); retrying every beat", worker_id, exc)
                failing = True
            else:
                if failing:
                    logger.info("worker %s: heartbeat back", worker_id)
                failing = False

    @staticmethod
    def _watch_loop(watchdog: Callable[[], object], stopped: threading.Event) -> None:
        interval = settings.KAIZEN_WORKER_HEARTBEAT_SECONDS
        while not stopped.wait(interval):
            try:
                watchdog()
            except Exception:
                logger.exception("the watchdog's reaper pass failed")
            finally:
                connection.close()


heartbeat = Heartbeat()
