"""The andon inbox's websocket: it forwards the fragments andon.broadcast
publishes to the ``andon_inbox`` group. New escalations go only to the
connections whose filters (``?board=&agent=&check=``, as on the page) they
match; every other update (a row claimed or gone, the figures, the banner)
goes to all, since it only touches what a page already shows."""

from __future__ import annotations

from andon.broadcast import INBOX_GROUP
from andon.services import is_reviewer
from kaizen_web.consumers import PermissionGroupConsumer, positive_int


class InboxConsumer(PermissionGroupConsumer):
    group = INBOX_GROUP
    allowed = staticmethod(is_reviewer)
    board_id: int | None = None
    agent_id: int | None = None
    check: str = ""

    def read_query(self, query: dict[str, list[str]]) -> None:
        self.board_id = positive_int(query.get("board", [""])[0])
        self.agent_id = positive_int(query.get("agent", [""])[0])
        self.check = query.get("check", [""])[0]

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
