"""The evolution review's websocket: it forwards the fragments
experiments.broadcast publishes to the ``kaizen_review`` group.

Two kinds of page listen: the review page (``/ws/kaizen/``) takes the review's
updates (the proposals and experiments lists, an experiment's row with its chart
data, the recent audit entries); an experiment's page
(``/ws/kaizen/?experiment=<pk>``) takes that experiment's updates only (its row,
chart data, look history and audit entries). Each gets only what its page has,
so no swap lands on a missing element."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from experiments.broadcast import REVIEW_GROUP
from experiments.services import can_approve


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


class ReviewConsumer(AsyncWebsocketConsumer):
    joined = False
    experiment_id: int | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        # Closing before accept() refuses the handshake (HTTP 403).
        if user is None or not user.is_authenticated:
            await self.close()
            return
        # has_perm reads the user's permissions from the database.
        if not await database_sync_to_async(can_approve)(user):
            await self.close()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.experiment_id = _positive_int(query.get("experiment", [""])[0])
        await self.channel_layer.group_add(REVIEW_GROUP, self.channel_name)
        self.joined = True
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(REVIEW_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Read-only: actions go through the views, which check CSRF and call the services.
        return

    async def review_update(self, event: dict) -> None:
        if self.experiment_id is None:
            await self.send(text_data=event["html"])

    async def experiment_update(self, event: dict) -> None:
        if self.experiment_id is not None and event.get("experiment_id") == self.experiment_id:
            await self.send(text_data=event["html"])
