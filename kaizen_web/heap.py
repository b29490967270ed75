"""The garbage collector, tuned for long-running server processes.

Python collects its youngest generation every 700 allocations not yet freed, and
the oldest, which holds everything loaded at start (Django's models, URL patterns,
templates, the apps' modules: some 170,000 objects in the web server), every
so often as it grows. Under 20 people loading the board while 20 clients posted
tasks, the web server spent about 2 s a minute collecting, in pauses of up to
250 ms during which every request and websocket in the process waited: the
board page's p99 (bench/board_page.py).

``settle()``, called once a process has loaded its code, collects once, moves
what is left out of every later collection (``gc.freeze``: it is kept for the
life of the process anyway) and sets the thresholds of KAIZEN_GC_THRESHOLDS, so
that collections come less often and traverse only what was made since.
"""

from __future__ import annotations

import gc

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def thresholds() -> tuple[int, int, int] | None:
    """KAIZEN_GC_THRESHOLDS as three positive integers, or None for Python's own."""
    raw = settings.KAIZEN_GC_THRESHOLDS
    if not raw:
        return None
    try:
        values = tuple(int(value) for value in raw)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise ImproperlyConfigured(
            f"KAIZEN_GC_THRESHOLDS must be three positive integers, as 20000,50,100; got {','.join(raw)!r}"
        )
    return values[0], values[1], values[2]


def settle() -> None:
    """This process has loaded its code: collect once, leave what is left out of
    later collections, and set the thresholds (none set: Python's own, but the
    loaded code still frozen)."""
    chosen = thresholds()
    gc.collect()
    gc.freeze()
    if chosen is not None:
        gc.set_threshold(*chosen)
