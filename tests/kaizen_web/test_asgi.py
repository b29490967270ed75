"""kaizen_web.asgi: each HTTP request runs its synchronous work in one thread of
its own while it lasts, and that thread is kept for later requests instead of
a new one started (and joined) for every request."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.core.signals import request_finished, request_started

from kaizen_web.asgi import RequestThread, RequestThreads, django_asgi_app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def threads_seen():
    """The thread each request's start and finish signals ran in, in order."""
    seen: list[tuple[str, threading.Thread]] = []

    def started(**kwargs):
        seen.append(("started", threading.current_thread()))

    def finished(**kwargs):
        seen.append(("finished", threading.current_thread()))

    request_started.connect(started, dispatch_uid="test_asgi_started")
    request_finished.connect(finished, dispatch_uid="test_asgi_finished")
    yield seen
    request_started.disconnect(dispatch_uid="test_asgi_started")
    request_finished.disconnect(dispatch_uid="test_asgi_finished")


async def _get(path: str) -> dict:
    communicator = HttpCommunicator(django_asgi_app, "GET", path, headers=[(b"host", b"testserver")])
    response = await communicator.get_response(timeout=30)
    await communicator.wait(timeout=30)  # the request's end: the response closed, its signal sent
    return response


def test_requests_one_after_another_reuse_one_thread(threads_seen):
    async def three():
        return [await _get("/accounts/login/") for _ in range(3)]

    responses = async_to_sync(three)()
    assert [r["status"] for r in responses] == [200, 200, 200]
    assert [event for event, _ in threads_seen] == ["started", "finished"] * 3
    threads = [thread for _, thread in threads_seen]
    # Each request's start and finish in one thread, not the event loop's...
    assert all(thread is not threading.main_thread() for thread in threads)
    assert threads[0].name.startswith("request")
    # ...and the same kept thread for all three (Django's handler starts one a request).
    assert len({id(thread) for thread in threads}) == 1
    assert threads[0].is_alive()


def test_requests_at_the_same_time_each_have_their_own_thread(threads_seen):
    # Both requests must be inside their start signal at once: sharing one
    # thread, the first would wait for the second forever (here: 30 s, then fail).
    both_started = threading.Barrier(2, timeout=30)

    def meet(**kwargs):
        both_started.wait()

    request_started.connect(meet, dispatch_uid="test_asgi_meet")
    try:

        async def two():
            return await asyncio.gather(_get("/accounts/login/"), _get("/accounts/login/"))

        responses = async_to_sync(two)()
    finally:
        request_started.disconnect(dispatch_uid="test_asgi_meet")
    assert [r["status"] for r in responses] == [200, 200]
    started = [thread for event, thread in threads_seen if event == "started"]
    assert len({id(thread) for thread in started}) == 2


@pytest.mark.parametrize("turns", [2, 0])
def test_requests_beyond_the_turns_wait_for_one_to_end(settings, turns):
    # Each started request holds on until every request has started, or until
    # the ones not started are seen queued for a turn: with two turns, four
    # requests run two by two; with no limit, all four at once.
    settings.KAIZEN_WEB_REQUEST_THREADS = turns
    total = 4
    state = {"running": 0, "most": 0, "started": 0}
    changed = threading.Condition()
    queue: list[asyncio.Semaphore | None] = []

    def queued() -> int:
        semaphore = queue[0]
        return len(semaphore._waiters or ()) if semaphore is not None else 0

    def started(**kwargs):
        with changed:
            state["running"] += 1
            state["started"] += 1
            state["most"] = max(state["most"], state["running"])
            changed.notify_all()
            deadline = time.monotonic() + 30
            # The queue is the event loop's: looked at again every 10 ms.
            while not (state["started"] == total or queued() == total - state["started"]):
                assert time.monotonic() < deadline, state
                changed.wait(0.01)

    def finished(**kwargs):
        with changed:
            state["running"] -= 1
            changed.notify_all()

    request_started.connect(started, dispatch_uid="test_asgi_turns_started")
    request_finished.connect(finished, dispatch_uid="test_asgi_turns_finished")
    try:

        async def four():
            queue.append(django_asgi_app.turns())
            return await asyncio.gather(*[_get("/accounts/login/") for _ in range(total)])

        responses = async_to_sync(four)()
    finally:
        request_started.disconnect(dispatch_uid="test_asgi_turns_started")
        request_finished.disconnect(dispatch_uid="test_asgi_turns_finished")
    assert [r["status"] for r in responses] == [200] * total
    assert state["most"] == (turns or total)
    assert state["running"] == 0


def test_a_thread_still_busy_is_not_handed_to_the_next_request():
    # A view whose client went away keeps running in its thread: that thread
    # must not serve the next request, which would wait behind it.
    pool = RequestThreads(keep=4)
    thread = pool.take()
    release = threading.Event()
    running = thread.submit(release.wait, 30)
    pool.give_back(thread)
    assert pool.idle == []
    assert pool.take() is not thread
    release.set()
    assert running.result(timeout=30) is True


def test_idle_threads_kept_are_bounded():
    pool = RequestThreads(keep=2)
    taken = [pool.take() for _ in range(3)]
    for thread in taken:
        thread.submit(lambda: None).result(timeout=30)
        pool.give_back(thread)
    assert pool.idle == taken[:2]
    assert pool.take() is taken[1]


def test_a_page_is_served_in_one_hop_to_its_thread(monkeypatch, threads_seen):
    # Django's handler hops three times (the started signal, the view, closing
    # the response) and runs a task listening for a disconnect beside the view.
    hops = []
    submit = RequestThread.submit

    def counted(self, fn, /, *args, **kwargs):
        hops.append(fn)
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(RequestThread, "submit", counted)
    response = async_to_sync(_get)("/accounts/login/")

    assert response["status"] == 200
    assert b'name="password"' in response["body"]
    assert len(hops) == 1
    assert [event for event, _ in threads_seen] == ["started", "finished"]
    assert threads_seen[0][1] is threads_seen[1][1] is not threading.main_thread()
    headers = dict(response["headers"])
    assert headers[b"Content-Type"] == b"text/html; charset=utf-8"
    assert b"csrftoken=" in headers[b"Set-Cookie"]


def test_a_page_hops_without_asgiref_wrappers_or_a_thread_sensitive_context(monkeypatch):
    # asgiref's sync_to_async and a ThreadSensitiveContext per request cost the
    # web process a sixth of its CPU a task posted (bench/intake.py): a page that
    # is not streamed goes to its thread by a plain submit, in a copy of the
    # request's context.
    from asgiref import sync

    made = []
    for name in ("SyncToAsync", "ThreadSensitiveContext"):
        cls = getattr(sync, name)
        init = cls.__init__

        def counted(self, *args, _init=init, _name=name, **kwargs):
            made.append(_name)
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counted)
    response = async_to_sync(_get)("/accounts/login/")

    assert response["status"] == 200
    assert b'name="password"' in response["body"]
    assert made == []


def _export_request(board) -> HttpCommunicator:
    """A signed-in browser's GET of the board's CSV export (a streamed response),
    its request sent."""
    from django.conf import settings
    from django.test import Client

    from tests.factories import make_user

    client = Client()
    client.force_login(make_user())
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return HttpCommunicator(
        django_asgi_app,
        "GET",
        f"/boards/{board.slug}/tasks/export.csv",
        headers=[(b"host", b"testserver"), (b"cookie", cookie.encode())],
    )


def test_a_streamed_response_is_sent_whole_and_closed_in_the_request_thread(threads_seen):
    from boards.models import Task
    from tests.factories import column, make_board

    board = make_board()
    backlog = column(board, "backlog")
    for n in range(3):
        Task.objects.create(board=board, column=backlog, title=f"exported {n}", position=n)
    communicator = _export_request(board)

    async def export():
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=30)
        chunks = []
        while True:
            message = await communicator.receive_output(timeout=30)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await communicator.wait(timeout=30)
        return start, chunks

    start, chunks = async_to_sync(export)()
    assert start["status"] == 200
    assert len(chunks) > 1  # streamed: parts, then an empty closing message
    body = b"".join(chunks).decode()
    assert all(f"exported {n}" in body for n in range(3))
    assert [event for event, _ in threads_seen] == ["started", "finished"]
    assert threads_seen[1][1] is threads_seen[0][1] is not threading.main_thread()


def test_a_client_that_leaves_mid_stream_stops_the_stream(monkeypatch):
    # Django's handler listens for the client to leave while it streams, and
    # stops: a long export must not run on for no one (the iterator is closed).
    from tests.factories import make_board

    closed = threading.Event()
    made = []

    def endless(rows):
        try:
            while True:
                made.append(1)
                time.sleep(0.001)  # a row at a time, as a query would give them
                yield "x" * 1000 + "\n"
        finally:
            closed.set()

    monkeypatch.setattr("boards.views_tasks.csv_chunks", endless)
    communicator = _export_request(make_board())

    async def leave_early():
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=30)
        await communicator.receive_output(timeout=30)  # a first chunk
        await communicator.send_input({"type": "http.disconnect"})
        # The application ends by itself: it does not stream on.
        ended, _ = await asyncio.wait([communicator.future], timeout=5)
        await communicator.wait(timeout=1)  # (cancels it if it did not)
        return start, bool(ended)

    start, ended = async_to_sync(leave_early)()
    assert start["status"] == 200
    assert ended
    assert closed.wait(10)
    produced = len(made)
    time.sleep(0.2)
    assert len(made) == produced  # nothing more made after


def test_the_request_thread_says_it_serves_a_request_only_while_it_does(monkeypatch):
    from kaizen_web.http import in_served_request

    seen: list[tuple[str, bool]] = []
    get_response = django_asgi_app.get_response

    def watched(request):
        seen.append((threading.current_thread().name, in_served_request()))
        return get_response(request)

    monkeypatch.setattr(django_asgi_app, "get_response", watched)
    started = len(seen)
    response = async_to_sync(_get)("/accounts/login/")

    assert response["status"] == 200
    [(thread, serving)] = seen[started:]
    assert serving is True
    assert thread != threading.current_thread().name
    # Not a test's own thread, nor the request's once it has answered.
    assert in_served_request() is False
    # The thread just given back, kept for the next request.
    request_thread = django_asgi_app.threads.idle[-1]
    assert request_thread.submit(in_served_request).result() is False
