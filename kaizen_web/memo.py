"""A value per key, kept in the process for a while: for reads the hot path makes
again and again whose answer moves slowly (an agent's optimal output length for
the token-waste check, a board's SLE for its cards' ages)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedTtl(Generic[K, V]):
    """``compute(key)`` at most once every ``ttl`` seconds per key and process.
    Computed outside the lock (two threads may both compute a stale key; the
    later one is kept), so a slow read never holds up the other keys."""

    def __init__(self, ttl: float, compute: Callable[[K], V], *, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._compute = compute
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V:
        now = self._clock()
        with self._lock:
            cached = self._values.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        value = self._compute(key)
        with self._lock:
            self._values[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
