"""ASGI entry point: HTTP through Django, websockets through Channels."""

import asyncio
import contextlib
import contextvars
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix


class RequestThread(ThreadPoolExecutor):
    """One thread that runs a request's synchronous work, kept for later requests.

    ``busy`` counts the calls submitted and not yet finished, so that a thread
    still running a view whose client went away (Django stops waiting for it,
    but a thread cannot be stopped) is not handed to the next request."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.busy = 0
        self._busy_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._busy_lock:
            self.busy += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future) -> None:
        with self._busy_lock:
            self.busy -= 1


class RequestThreads:
    """Request threads kept between requests, taken and given back by the event
    loop's thread (so no lock): a request takes an idle one or starts one; at
    most ``keep`` idle ones are kept, the others end."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.idle: list[RequestThread] = []

    def take(self) -> RequestThread:
        return self.idle.pop() if self.idle else RequestThread()

    def give_back(self, thread: RequestThread) -> None:
        if thread.busy or len(self.idle) >= self.keep:
            thread.shutdown(wait=False)  # ends once its work is done
        else:
            self.idle.append(thread)


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler, with a request served as WSGI serves it: its
    synchronous work (the request-started signal, the middleware and the view,
    and, for a response that is not streamed, rendering it and closing it) runs
    in one hop to the request's thread, and that thread is kept for the next
    requests. The event loop only reads the body and writes the answer.

    Our views and middleware are synchronous. Django's handler builds its chain
    around an asynchronous core: a request went from the event loop to a thread
    and back three times (the request-started signal, the view, closing the
    response), and the loop ran a task listening for the client to leave beside
    a task for the view. Under 20 people loading the board while 20 clients
    posted tasks, those hops were some 15% of the web process's CPU, and the
    signals, tasks and hops left after a first change another 20% of its
    Python (py-spy --gil, bench/board_page.py).

    Django also starts a thread for every request (a ThreadSensitiveContext of
    its own, shut down at the end) and the event loop waits for each to start:
    some 7% of the web process's CPU while the line ran (py-spy --gil,
    bench/run.py), and a stall of the loop, and so of every websocket, each
    time the machine is slow to schedule the new thread. Database connections
    are per request either way (Django keeps them per asyncio context, not per
    thread).

    At most KAIZEN_WEB_REQUEST_THREADS requests run their synchronous work at
    once; the others wait their turn, first come, first served, on the event
    loop (reading a body and sending an answer take no turn). Python runs one
    thread at a time in a process: 40 requests side by side shared it unfairly
    (a thread back from a query waits for the others to let it go, once per
    query) and spent CPU handing it round. Under 20 people loading the board
    while 20 clients posted tasks, the page's p99 was twice its median. Eight
    turns: p99 271-371 ms against 354-452 with no limit, lower in each of four
    alternated pairs, with as many pages and posts served or more in three of
    them (bench/board_page.py; bench/README.md). Four served the page alone
    faster still but posted 9-30% fewer tasks under load: a post holds its turn
    while its commit waits on the disk. A request that waits long (a lock held
    elsewhere) holds its turn while it waits; the turns are per process. A
    streamed response (the CSV export) is produced after its turn, its reads
    and formatting included, taking none. A request whose client
    left while it waited for a turn is still served (as without turns); one
    cancelled while its view runs (the server stopping) gives its turn back at
    once, while its thread finishes the view.

    A client that leaves while its view runs is not noticed until the view
    returns: a synchronous view cannot be stopped anyway (Django's handler only
    stops waiting for it, and sends the request-finished signal, which closes
    the database connection, while the view may still be using it). Streamed
    responses are sent by Django's own code while listening for the client to
    leave, as Django does, and closed afterwards: our downloads chunk by chunk
    (boards.views_tasks), a file response read whole first (Django consumes a
    synchronous iterator before serving it asynchronously).
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads = RequestThreads()
        # Per event loop (a process has one; tests may run several in turn), with
        # the limit each was made for.
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )

    def turns(self) -> asyncio.Semaphore | None:
        """The turns of this event loop's requests (KAIZEN_WEB_REQUEST_THREADS;
        None when 0: no limit)."""
        limit = settings.KAIZEN_WEB_REQUEST_THREADS
        if not limit:
            return None
        loop = asyncio.get_running_loop()
        kept = self._turns.get(loop)
        if kept is None or kept[0] != limit:  # a changed setting (tests) makes new turns
            kept = self._turns[loop] = (limit, asyncio.Semaphore(limit))
        return kept[1]

    def load_middleware(self, is_async: bool = False) -> None:
        # The synchronous chain, run by BaseHandler.get_response in the request's thread.
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        thread = self.threads.take()
        try:
            await self.serve(scope, receive, send, thread)
        finally:
            self.threads.give_back(thread)

    async def serve(self, scope, receive, send, thread: RequestThread) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            # The hop to the request's thread, in a copy of this task's context
            # (Django keeps a request's database connections there). Not
            # asgiref's sync_to_async: for one call to a thread we chose, its
            # wrapper, executor lookup and two passes over the context were
            # some 13% of the web process's CPU a task posted, and entering a
            # ThreadSensitiveContext for every request another 4% (py-spy --gil,
            # bench/intake.py; bench/README.md). What asgiref also sets up is not
            # needed by a synchronous view: a view calling async_to_sync (none
            # does) runs its coroutine on an event loop of its own.
            context = contextvars.copy_context()
            async with self.turns() or contextlib.nullcontext():
                response = await asyncio.wrap_future(
                    thread.submit(context.run, self.respond, scope, body_file)
                )
            if not response.streaming:
                # Rendered and closed already: its headers and body go out.
                await self.send_response(response, send)
                return
            # A streamed response's chunks and its closing are asgiref hops to
            # the same thread (boards.views_tasks), which copy this task's
            # context: it takes the view's, whose connections they use and close.
            for var, value in context.items():
                var.set(value)
            async with ThreadSensitiveContext(executor=thread):
                try:
                    await self.stream(response, receive, send)
                finally:
                    # Whatever became of the sending: its connections and the
                    # request-finished signal.
                    await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    async def stream(self, response: HttpResponseBase, receive, send) -> None:
        """Send a streamed response while listening for the client to leave, as
        Django's handler does: if it leaves, the sending stops (the iterator is
        closed with the response), so a long download of ours is not produced
        for no one."""
        sending = asyncio.create_task(self.send_response(response, send))
        listening = asyncio.create_task(self.listen_for_disconnect(receive))
        await asyncio.wait([sending, listening], return_when=asyncio.FIRST_COMPLETED)
        for task in (listening, sending):
            if not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            elif not task.cancelled():
                try:
                    task.result()
                except RequestAborted:
                    pass  # the client left

    def respond(self, scope, body_file) -> HttpResponseBase:
        """In the request's thread: the response, which, unless it is streamed, is
        rendered and already closed (which sends the request-finished signal)."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error = self.create_request(scope, body_file)
        if request is None:
            response = cast(HttpResponseBase, error)  # Django gives one or the other
        else:
            with serving_request():
                response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]  # as Django's handler sets it
        if response.streaming:
            if isinstance(response, FileResponse):
                # The ASGI server cuts the body into packets: as Django's run_get_response.
                response.block_size = self.chunk_size
            return response
        # Closing keeps the content; send_response reads it and the headers.
        response.close()
        return response


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
django.setup(set_prefix=False)
django_asgi_app = SyncChainASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from andon.routing import websocket_urlpatterns as andon_websocket_urlpatterns  # noqa: E402
from boards.routing import websocket_urlpatterns as board_websocket_urlpatterns  # noqa: E402
from experiments.routing import websocket_urlpatterns as kaizen_websocket_urlpatterns  # noqa: E402
from kaizen_web.heap import settle  # noqa: E402
from kaizen_web.http import serving_request  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    board_websocket_urlpatterns + andon_websocket_urlpatterns + kaizen_websocket_urlpatterns
                )
            )
        ),
    }
)

# Everything is loaded: leave it out of the garbage collector's work (kaizen_web.heap).
settle()
