"""What the consumer tests need of a browser: its headers (the page's origin and
the session cookie of a logged-in user) and a connection through the real ASGI
application."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator as _ChannelsCommunicator
from django.conf import settings
from django.test import Client

from kaizen_web.asgi import application

ORIGIN = (b"origin", b"http://testserver")
# How long a test waits for the application to answer a connect, a close or a
# message. Channels' default is one second: a timing assumption a loaded machine
# breaks (a refused foreign origin took longer than that while other suites ran).
PATIENCE = 30.0


class WebsocketCommunicator(_ChannelsCommunicator):
    """Channels' test communicator that waits on the application's answer (up to
    PATIENCE) instead of failing after its default second."""

    async def connect(self, timeout: float = PATIENCE):
        return await super().connect(timeout)

    async def disconnect(self, code: int = 1000, timeout: float = PATIENCE) -> None:
        await super().disconnect(code, timeout)

    async def receive_from(self, timeout: float = PATIENCE):
        return await super().receive_from(timeout)


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
