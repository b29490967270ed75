"""What the consumer tests need of a browser: its headers (the page's origin and
the session cookie of a logged-in user) and a connection through the real ASGI
application."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from kaizen_web.asgi import application

ORIGIN = (b"origin", b"http://testserver")


def session_cookie(user) -> tuple[bytes, bytes]:
    """The cookie header of a browser where ``user`` has logged in."""
    client = Client()
    client.force_login(user)
    return (
        b"cookie",
        f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode(),
    )


def connects(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a websocket to ``path`` with these headers is accepted."""

    async def attempt() -> bool:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    return async_to_sync(attempt)()
