"""The board's websocket: it forwards the fragments the broadcaster publishes
to the board's group. Thin on purpose: rendering happens once per change in
boards.fragments, not once per connected browser."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from boards.broadcast import board_group
from boards.models import Board


@database_sync_to_async
def _board_id(slug: str) -> int | None:
    return Board.objects.filter(slug=slug).values_list("pk", flat=True).first()


class BoardConsumer(AsyncWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Closing before accept() refuses the handshake (HTTP 403).
            await self.close()
            return
        board_id = await _board_id(self.scope["url_route"]["kwargs"]["slug"])
        if board_id is None:
            await self.close()
            return
        self.group = board_group(board_id)
        # Subscribed before the socket opens, and the page re-reads the board once
        # it has: a board is rendered only while someone is subscribed to it
        # (kaizen_web.live.watched_groups), and a change rendered for no one is
        # in what the page re-reads.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The board is read-only over the socket: writes go through the views,
        # which check CSRF and call the services.
        return

    async def dispatch(self, message: dict) -> None:
        if message["type"] == "board.update":
            # Channels' dispatch first closes stale database connections, in a
            # thread, before every handler: a thread hop per update per socket
            # (a quarter of the web server's CPU with 50 watchers). Forwarding
            # rendered HTML touches no database.
            await self.board_update(message)
            return
        await super().dispatch(message)

    async def board_update(self, event: dict) -> None:
        await self.send(text_data=event["html"])

    async def live_resync(self, event: dict) -> None:
        # See kaizen_web.consumers: reconnect, and board.js re-fetches the board.
        await self.close(code=1012)
