"""The evolution review's websocket: it forwards the fragments
experiments.broadcast publishes to the ``kaizen_review`` group.

Two kinds of page listen: the review page (``/ws/kaizen/``) takes the review's
updates (the proposals and experiments lists, an experiment's row with its chart
data, the recent audit entries); an experiment's page
(``/ws/kaizen/?experiment=<pk>``) takes that experiment's updates only (its row,
chart data, look history and audit entries). Each gets only what its page has,
so no swap lands on a missing element."""

from __future__ import annotations

from experiments.broadcast import REVIEW_GROUP
from experiments.services import can_approve
from kaizen_web.consumers import PermissionGroupConsumer, positive_int


class ReviewConsumer(PermissionGroupConsumer):
    group = REVIEW_GROUP
    allowed = staticmethod(can_approve)
    experiment_id: int | None = None

    def read_query(self, query: dict[str, list[str]]) -> None:
        self.experiment_id = positive_int(query.get("experiment", [""])[0])

    async def review_update(self, event: dict) -> None:
        if self.experiment_id is None:
            await self.send(text_data=event["html"])

    async def experiment_update(self, event: dict) -> None:
        if self.experiment_id is not None and event.get("experiment_id") == self.experiment_id:
            await self.send(text_data=event["html"])
