"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
django_asgi_app = get_asgi_application()

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
