"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the middleware and the view run as WSGI runs
    them: one synchronous chain, called in the request's thread in one hop.

    Our views and middleware are synchronous. Django's handler builds its chain
    around an asynchronous core, so a request went from its thread back to the
    event loop (to resolve the URL) and into the thread again (for the view):
    under 20 people loading the board while 20 clients posted tasks, those hops
    were some 15% of the web process's CPU (py-spy, bench/board_page.py). Each
    request still runs in a thread of its own (Django's ThreadSensitiveContext
    per request), as before, with its own database connection from the pool.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain  # type: ignore[has-type]  # unannotated in Django
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)


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
