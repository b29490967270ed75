"""The broadcaster: flush() returns only once every change queued before it has
been rendered and sent to the channel layer (real database, real Redis)."""

from __future__ import annotations

import queue
import threading

import pytest

from boards.broadcast import BOARD_COLUMNS
from kaizen_web.live import Broadcaster
from tests.factories import make_board

# The broadcaster thread renders from its own connection: it needs real commits.
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


class _RecordingBroadcaster(Broadcaster):
    """The real broadcaster, noting which boards each batch sent, once sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: set[int] = set()
        self.batch_sent = threading.Event()

    def _send(self, loop, layer, pending, jobs=()) -> None:
        super()._send(loop, layer, pending, jobs)
        self.sent.update(key for _, key in pending)
        self.batch_sent.set()


class _PausingQueue(queue.SimpleQueue):
    """Once armed, holds the broadcaster thread just after it finds the queue
    empty. An implementation that decides "idle" from that check (as one did:
    clear a flag, put; the thread set it again when it found the queue empty)
    loses a change put in that gap; one that counts unsent changes never asks."""

    def __init__(self) -> None:
        self.armed = False
        self.paused = threading.Event()
        self.resume = threading.Event()

    def empty(self) -> bool:
        result = super().empty()
        if result and self.armed and threading.current_thread().name == "broadcaster":
            self.armed = False
            self.paused.set()
            self.resume.wait(10)
        return result


def test_flush_waits_for_every_queued_change():
    boards = [make_board() for _ in range(5)]
    broadcaster = _RecordingBroadcaster()

    for board in boards:
        broadcaster.changed(BOARD_COLUMNS, board.pk, [c.pk for c in board.columns.all()])

    assert broadcaster.flush(timeout=60) is True
    assert broadcaster.sent == {b.pk for b in boards}


def test_a_change_queued_as_a_batch_finishes_is_flushed_too():
    first, second = make_board(), make_board()
    broadcaster = _RecordingBroadcaster()
    broadcaster._queue = gate = _PausingQueue()
    gate.armed = True

    broadcaster.changed(BOARD_COLUMNS, first.pk, [])
    assert broadcaster.batch_sent.wait(10)
    gate.paused.wait(1)  # only an implementation that asks the queue stops here
    broadcaster.changed(BOARD_COLUMNS, second.pk, [])
    gate.resume.set()

    assert broadcaster.flush(timeout=60) is True
    assert second.pk in broadcaster.sent


def test_an_expensive_first_render_does_not_freeze_the_next_updates(monkeypatch):
    """A process's first render compiles the templates (seconds on a busy
    machine); the CPU budget then held every later update back for about ten
    times as long. The hold is capped, so the next change still goes out."""
    import kaizen_web.live as broadcast_module

    clock = {"cpu": 0.0}
    monkeypatch.setattr(broadcast_module.time, "thread_time", lambda: clock["cpu"])
    first, second = make_board(), make_board()

    class _SlowFirstRender(_RecordingBroadcaster):
        def _send(self, loop, layer, pending, jobs=()) -> None:
            if not self.sent:
                clock["cpu"] += 100.0  # as if the first render had taken 100 s of CPU
            super()._send(loop, layer, pending, jobs)

    broadcaster = _SlowFirstRender()
    broadcaster.changed(BOARD_COLUMNS, first.pk, [])
    assert broadcaster.flush(timeout=60) is True

    broadcaster.changed(BOARD_COLUMNS, second.pk, [])
    # Uncapped, the budget (10% of the CPU) would hold this one for 900 s.
    assert broadcaster.flush(timeout=60) is True
    assert second.pk in broadcaster.sent
