"""The in-flight cap the real providers share between threads and the agent loop
(boards.agents.providers.InFlight): waiting, timing out and cancelling never lose
or invent a slot."""

from __future__ import annotations

import asyncio
import threading

import pytest

from boards.agents.providers import InFlight


def _taken() -> InFlight:
    """A cap of one slot, taken."""
    cap = InFlight(1)
    assert cap.acquire(timeout=0)
    return cap


def _one_slot_free(cap: InFlight) -> None:
    """Nobody waits, and exactly the cap's one slot can be taken."""
    assert not cap._waiters
    assert cap.acquire(timeout=0) and not cap.acquire(timeout=0)


def test_a_released_slot_goes_to_the_longest_waiter_whether_thread_or_coroutine():
    cap = _taken()
    order: list[str] = []

    async def on_loop() -> None:
        assert await cap.aacquire(timeout=10)
        order.append("coroutine")
        cap.release()

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_until_complete, args=(on_loop(),))
    runner.start()
    while not cap._waiters:  # the coroutine waits first
        threading.Event().wait(0.001)

    def on_thread() -> None:
        assert cap.acquire(timeout=10)
        order.append("thread")
        cap.release()

    waiter = threading.Thread(target=on_thread)
    waiter.start()
    while len(cap._waiters) < 2:
        threading.Event().wait(0.001)
    cap.release()
    runner.join(10)
    waiter.join(10)
    loop.close()

    assert order == ["coroutine", "thread"]
    # Every slot is back: one can be taken at once, and only one.
    _one_slot_free(cap)


def test_a_waiter_that_times_out_takes_nothing_and_leaves_nothing_behind():
    cap = _taken()

    assert cap.acquire(timeout=0.01) is False
    assert asyncio.run(cap.aacquire(timeout=0.01)) is False

    cap.release()
    _one_slot_free(cap)


def test_a_cancelled_coroutine_hands_back_a_slot_it_was_given_or_keeps_it_to_release():
    cap = _taken()

    async def main() -> None:
        waiting = asyncio.ensure_future(cap.aacquire(timeout=10))
        await asyncio.sleep(0)
        assert len(cap._waiters) == 1
        cap.release()  # granted to the waiter, whose wake-up is still on its way
        waiting.cancel()
        # Either the cancel wins (the slot goes back) or the grant does (Python's
        # wait_for returns it): then the caller holds it and releases it as usual.
        try:
            held = await waiting
        except asyncio.CancelledError:
            held = False
        if held:
            cap.release()

    asyncio.run(main())

    _one_slot_free(cap)


def test_releasing_more_than_was_taken_is_an_error():
    cap = InFlight(2)
    with pytest.raises(ValueError, match="released more times"):
        cap.release()


def test_a_coroutine_cancelled_while_waiting_leaves_the_queue():
    cap = _taken()

    async def main() -> None:
        waiting = asyncio.ensure_future(cap.aacquire(timeout=10))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())

    cap.release()
    _one_slot_free(cap)


def test_a_thread_interrupted_while_waiting_leaves_no_slot_behind(monkeypatch):
    cap = _taken()

    def interrupted(self, timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Event, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cap.acquire(timeout=10)
    monkeypatch.undo()

    cap.release()
    _one_slot_free(cap)


def test_a_slot_released_to_a_coroutine_whose_loop_has_closed_goes_to_the_next():
    cap = _taken()
    loop = asyncio.new_event_loop()
    waiting = loop.create_task(cap.aacquire(timeout=10))
    loop.run_until_complete(asyncio.sleep(0))  # the coroutine is queued
    assert len(cap._waiters) == 1
    waiting.cancel()  # never run again: the loop closes with the waiter queued
    loop.close()

    cap.release()

    _one_slot_free(cap)
