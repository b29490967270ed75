"""The andon inbox's websocket: it forwards the fragments andon.broadcast
publishes to the ``andon_inbox`` group. New escalations go only to the
connections whose filters (``?board=&agent=&check=``, as on the page) they
match; every other update (a row claimed or gone, the figures, the banner)
goes to all, since it only touches what a page already shows."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from andon.broadcast import INBOX_GROUP
from andon.services import is_reviewer


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


class InboxConsumer(AsyncWebsocketConsumer):
    joined = False
    board_id: int | None = None
    agent_id: int | None = None
    check: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        # Closing before accept() refuses the handshake (HTTP 403).
        if user is None or not user.is_authenticated:
            await self.close()
            return
        # has_perm reads the user's permissions from the database.
        if not await database_sync_to_async(is_reviewer)(user):
            await self.close()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.board_id = _positive_int(query.get("board", [""])[0])
        self.agent_id = _positive_int(query.get("agent", [""])[0])
        self.check = query.get("check", [""])[0]
        await self.channel_layer.group_add(INBOX_GROUP, self.channel_name)
        self.joined = True
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(INBOX_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Read-only: decisions go through the views, which check CSRF and call the services.
        return

    def _matches(self, event: dict) -> bool:
        if self.board_id is not None and event.get("board_id") != self.board_id:
            return False
        if self.agent_id is not None and event.get("agent_id") != self.agent_id:
            return False
        return not self.check or self.check in (event.get("checks") or [])

    async def inbox_opened(self, event: dict) -> None:
        if self._matches(event):
            await self.send(text_data=event["html"])

    async def inbox_update(self, event: dict) -> None:
        await self.send(text_data=event["html"])
