"""What the product's read-only websockets share: a logged-in user with the
page's permission joins one Channels group and is sent the fragments published
to it. Each app's consumer names its group, its permission check and what it
reads from the query string (its page's filters)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer


def positive_int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


class PermissionGroupConsumer(AsyncWebsocketConsumer):
    group: str = ""
    # Whether the (authenticated) user may watch: called off the event loop, as
    # has_perm reads the user's permissions from the database.
    allowed: Callable = staticmethod(lambda user: False)
    joined = False

    def read_query(self, query: dict[str, list[str]]) -> None:
        """Keep what the page's filters say (a subclass's business)."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        # Closing before accept() refuses the handshake (HTTP 403).
        if user is None or not user.is_authenticated:
            await self.close()
            return
        if not await database_sync_to_async(type(self).allowed)(user):
            await self.close()
            return
        self.read_query(parse_qs(self.scope.get("query_string", b"").decode("latin-1")))
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined = True
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Read-only: actions go through the views, which check CSRF and call the services.
        return

    async def live_resync(self, event: dict) -> None:
        # Updates for this group were lost while the channel layer was down
        # (kaizen_web.live): close with 1012 ("service restart"), on which the
        # htmx ws extension reconnects, and the page re-fetches what it shows.
        await self.close(code=1012)
