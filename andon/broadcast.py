"""Live updates of the andon inbox, sent after commit through the project's live
transport (kaizen_web.live.publish), rendered from the inbox page's own partials
(``andon/inbox.html``), each marked hx-swap-oob:

- rows are groups of identical escalations (andon.selectors.inbox_groups_get),
  each with the id of its oldest open member;
- an escalation opened: its group's row, put at the top of the list or merged
  into the row already there (inbox.js), for the browsers whose filters it
  matches (the consumer decides, from the message's board, agent and failed
  checks);
- an escalation claimed or released: its group's row, replaced where it is shown;
- an escalation decided or withdrawn: its row deleted, for everyone, and its
  group's row sent again if other members are still open (with a new id when
  the oldest member was the one decided), with the recent decisions;
- with each of these, the inbox figures (open count, escalation rate, time to
  decision);
- a line stopped or restarted, a budget warning, an andon alert raised or
  acknowledged: the inbox banner (and the boards' own banners, through
  boards.broadcast.columns_changed).
"""

from __future__ import annotations

from django.template.loader import render_to_string

from andon.models import Escalation
from andon.selectors import (
    active_line_stops_get,
    budget_warnings_get,
    inbox_groups_get,
    inbox_stats_get,
    open_alerts_get,
    recent_decisions_get,
)
from kaizen_web import live

INBOX_GROUP = "andon_inbox"


def _stats_html() -> str:
    return render_to_string("andon/inbox.html#inbox-stats", {"stats": inbox_stats_get(), "oob": True})


def _groups(ids: list[int]) -> list:
    """The current groups (their leaders, with members and details) of the
    escalations ``ids`` (closed ones included: their groups may live on)."""
    touched = list(Escalation.objects.filter(pk__in=ids).select_related("task"))
    keys = {e.group_key for e in touched}
    return inbox_groups_get(keys=keys, details=True) if keys else []


def _upsert(leader) -> tuple[str, dict]:
    """A group's row for the browsers whose filters it matches: put on top of
    the list, or, where the row is shown already, merged into it (inbox.js)."""
    html = render_to_string(
        "andon/inbox.html#escalation-new", {"escalation": leader, "oob": True, "live": True}
    )
    return (
        INBOX_GROUP,
        {
            "type": "inbox.opened",
            "html": html,
            "board_id": leader.board_id,
            "agent_id": leader.agent_id,
            "checks": leader.group_checks,
        },
    )


def escalations_opened(ids: list[int]) -> None:
    """New escalations: each group they open or join, as its row (a group's
    row keeps its oldest member's id, so a newcomer updates the row in place)."""

    def job() -> list[tuple[str, dict]]:
        leaders = _groups(ids)
        messages = [_upsert(leader) for leader in leaders]
        if messages:
            messages.append((INBOX_GROUP, {"type": "inbox.update", "html": _stats_html()}))
        return messages

    live.publish(job)


def escalations_changed(ids: list[int]) -> None:
    """Escalations claimed or released: their groups' rows, replaced where shown."""

    def job() -> list[tuple[str, dict]]:
        leaders = _groups(ids)
        return [
            (
                INBOX_GROUP,
                {
                    "type": "inbox.update",
                    "html": render_to_string(
                        "andon/inbox.html#escalation-row", {"escalation": leader, "oob": True}
                    ),
                },
            )
            for leader in leaders
        ]

    live.publish(job)


def escalations_closed(ids: list[int]) -> None:
    """Escalations decided or withdrawn: their rows deleted, for everyone; the
    groups that still have open members, as their rows (a new leader's row when
    the old leader was among those closed); the figures and recent decisions."""

    def job() -> list[tuple[str, dict]]:
        leaders = _groups(ids)
        gone = [pk for pk in ids if pk not in {leader.pk for leader in leaders}]
        html = (
            render_to_string("andon/inbox.html#escalation-gone", {"ids": gone})
            + _stats_html()
            + render_to_string(
                "andon/inbox.html#inbox-history", {"decisions": recent_decisions_get(), "oob": True}
            )
        )
        return [(INBOX_GROUP, {"type": "inbox.update", "html": html})] + [
            _upsert(leader) for leader in leaders
        ]

    live.publish(job)


def banner_context() -> dict:
    """The inbox banner's context: the line stops in force, the budgets past
    their warning level and the alerts not yet acknowledged."""
    return {
        "line_stops": active_line_stops_get(),
        "budget_warnings": budget_warnings_get(),
        "alerts": open_alerts_get(),
    }


def line_stops_changed() -> None:
    """A line stopped or restarted, a budget warned, an alert raised or
    acknowledged: the inbox banner, whole."""

    def job() -> list[tuple[str, dict]]:
        html = render_to_string("andon/inbox.html#inbox-banner", {**banner_context(), "oob": True})
        return [(INBOX_GROUP, {"type": "inbox.update", "html": html})]

    live.publish(job)
