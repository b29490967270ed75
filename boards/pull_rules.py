"""The pull's rules, as pure functions of what the pull has read (no queries).

The pull (``boards.services.pull``) decides with them, under the board and agent locks;
``boards.selectors.board_pull_status_get`` explains with them, read-only, why
agents are not pulling. Each rule exists once, so what the board says cannot
drift from what the pull does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from andon.jidoka import PullGate
    from boards.models import Agent, Column


def review_limit_stops_pull(review: Column | None) -> bool:
    """Whether Review's WIP limit may stop the pull at all.

    Only a hard one does (jidoka: agents make no more suspect work than people
    can check). A soft limit is a signal, as in Kanban practice: the column
    shows "over limit by N" and the board says how many decisions wait, but
    agents go on pulling.
    """
    return review is not None and review.wip_limit is not None and review.hard_limit


def review_full(review: Column, count: int) -> bool:
    return review.wip_limit is not None and count >= review.wip_limit


def free_wip(doing: Column, in_doing: int) -> int | None:
    """Room left in In progress (None: no limit). Agents never pull past the
    column they pull into, whether its limit is hard or soft."""
    return None if doing.wip_limit is None else doing.wip_limit - in_doing


def agent_room(agents: Iterable[Agent], *, running: Mapping[int, int], gate: PullGate) -> dict[int, int]:
    """How many more tasks each agent may take now: its concurrency less what it
    runs (on any board), and one at a time while a breaker probes."""
    room = {a.pk: a.concurrency - running.get(a.pk, 0) for a in agents}
    for agent_id in gate.probes:
        # A half-open breaker lets one probe task through.
        if agent_id in room:
            room[agent_id] = min(room[agent_id], 1)
    for agent_id in gate.limited:
        # Every model the agent calls is due a probe: one run at a time until one answers.
        if agent_id in room:
            room[agent_id] = min(room[agent_id], 0 if running.get(agent_id) else 1)
    return room


def pick_agent(capability: str, agents: Iterable[Agent], room: Mapping[int, int]) -> Agent | None:
    """The agent that takes a task asking for ``capability``: the least busy able
    one with room (so work spreads across agents), or None."""
    able = [a for a in agents if room.get(a.pk, 0) > 0 and a.can_do(capability)]
    if not able:
        return None
    return max(able, key=lambda a: (room[a.pk], -a.pk))
