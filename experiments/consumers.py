"""The evolution review's websocket: it forwards the fragments
experiments.broadcast publishes to the ``kaizen_review`` group.

Four kinds of page listen: the review page (``/ws/kaizen/``) takes the review's
updates (the proposals and experiments lists, an experiment's row with its chart
data, a proposal's gates with their progress, the recent audit entries); an
experiment's page (``/ws/kaizen/?experiment=<pk>``) takes that experiment's
updates only (its row, chart data, look history and audit entries); a
proposal's page (``?proposal=<pk>``) that proposal's (its status, decision,
gates and audit entries); a replay's page (``?replay=<pk>``) that replay's (its
progress, verdict, statistics, items and audit entries). Each gets only what
its page has, so no swap lands on a missing element."""

from __future__ import annotations

from experiments.broadcast import REVIEW_GROUP
from experiments.services import can_approve
from kaizen_web.consumers import PermissionGroupConsumer, positive_int


class ReviewConsumer(PermissionGroupConsumer):
    group = REVIEW_GROUP
    allowed = staticmethod(can_approve)
    experiment_id: int | None = None
    proposal_id: int | None = None
    replay_id: int | None = None

    def read_query(self, query: dict[str, list[str]]) -> None:
        self.experiment_id = positive_int(query.get("experiment", [""])[0])
        self.proposal_id = positive_int(query.get("proposal", [""])[0])
        self.replay_id = positive_int(query.get("replay", [""])[0])

    @property
    def review_page(self) -> bool:
        return self.experiment_id is None and self.proposal_id is None and self.replay_id is None

    async def review_update(self, event: dict) -> None:
        if self.review_page:
            await self.send(text_data=event["html"])

    async def experiment_update(self, event: dict) -> None:
        if self.experiment_id is not None and event.get("experiment_id") == self.experiment_id:
            await self.send(text_data=event["html"])

    async def proposal_update(self, event: dict) -> None:
        if self.proposal_id is not None and event.get("proposal_id") == self.proposal_id:
            await self.send(text_data=event["html"])

    async def replay_update(self, event: dict) -> None:
        if self.replay_id is not None and event.get("replay_id") == self.replay_id:
            await self.send(text_data=event["html"])
