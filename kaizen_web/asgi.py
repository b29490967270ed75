"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler


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
    """Django's ASGI handler, with the middleware and the view run as WSGI runs
    them: one synchronous chain, called in the request's thread in one hop, and
    that thread kept for the next requests.

    Our views and middleware are synchronous. Django's handler builds its chain
    around an asynchronous core, so a request went from its thread back to the
    event loop (to resolve the URL) and into the thread again (for the view):
    under 20 people loading the board while 20 clients posted tasks, those hops
    were some 15% of the web process's CPU (py-spy, bench/board_page.py).

    Django also starts a thread for every request (a ThreadSensitiveContext of
    its own, shut down at the end) and the event loop waits for each to start:
    some 7% of the web process's CPU while the line ran (py-spy --gil,
    bench/run.py), and a stall of the loop, and so of every websocket, each
    time the machine is slow to schedule the new thread. Each request still
    runs all its synchronous work (signals, middleware, view, closing the
    response) in one thread of its own while it lasts, as Django's handler
    does; the thread is a kept one. Database connections are per request
    either way (Django keeps them per asyncio context, not per thread).
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads = RequestThreads()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain  # type: ignore[has-type]  # unannotated in Django
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        thread = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(thread)


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
django.setup(set_prefix=False)
django_asgi_app = SyncChainASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from andon.routing import websocket_urlpatterns as andon_websocket_urlpatterns  # noqa: E402
from boards.routing import websocket_urlpatterns as board_websocket_urlpatterns  # noqa: E402
from experiments.routing import websocket_urlpatterns as kaizen_websocket_urlpatterns  # noqa: E402

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
