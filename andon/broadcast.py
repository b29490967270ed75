"""Live updates of the andon inbox, sent after commit through the board
broadcaster's thread (boards.broadcast.publish), rendered from the inbox page's
own partials (``andon/inbox.html``), each marked hx-swap-oob:

- an escalation opened: its row, put at the top of the list, for the browsers
  whose filters it matches (the consumer decides, from the message's board,
  agent and failed checks);
- an escalation claimed or released: its row, replaced where it is shown;
- an escalation decided or withdrawn: its row deleted, for everyone;
- with each of these, the inbox figures (open count, escalation rate, time to
  decision);
- a line stopped or restarted: the inbox banner (and the boards' own banners,
  through boards.broadcast.columns_changed).
"""

from __future__ import annotations

from django.template.loader import render_to_string

from boards import broadcast

INBOX_GROUP = "andon_inbox"


def _stats_html() -> str:
    from andon.selectors import inbox_stats_get

    return render_to_string("andon/inbox.html#inbox-stats", {"stats": inbox_stats_get(), "oob": True})


def _rows(ids: list[int]):
    from andon.selectors import inbox_escalations_get

    return inbox_escalations_get(ids=ids, details=True)


def escalations_opened(ids: list[int]) -> None:
    def job() -> list[tuple[str, dict]]:
        messages = []
        for escalation in _rows(ids):
            html = render_to_string(
                "andon/inbox.html#escalation-new", {"escalation": escalation, "oob": True, "live": True}
            )
            messages.append(
                (
                    INBOX_GROUP,
                    {
                        "type": "inbox.opened",
                        "html": html,
                        "board_id": escalation.board_id,
                        "agent_id": escalation.agent_id,
                        "checks": escalation.failed_checks,
                    },
                )
            )
        if messages:
            messages.append((INBOX_GROUP, {"type": "inbox.update", "html": _stats_html()}))
        return messages

    broadcast.publish(job)


def escalations_changed(ids: list[int]) -> None:
    def job() -> list[tuple[str, dict]]:
        return [
            (
                INBOX_GROUP,
                {
                    "type": "inbox.update",
                    "html": render_to_string(
                        "andon/inbox.html#escalation-row", {"escalation": escalation, "oob": True}
                    ),
                },
            )
            for escalation in _rows(ids)
        ]

    broadcast.publish(job)


def escalations_closed(ids: list[int]) -> None:
    def job() -> list[tuple[str, dict]]:
        html = render_to_string("andon/inbox.html#escalation-gone", {"ids": ids}) + _stats_html()
        return [(INBOX_GROUP, {"type": "inbox.update", "html": html})]

    broadcast.publish(job)


def line_stops_changed() -> None:
    def job() -> list[tuple[str, dict]]:
        from andon.selectors import active_line_stops_get

        html = render_to_string(
            "andon/inbox.html#inbox-banner", {"line_stops": active_line_stops_get(), "oob": True}
        )
        return [(INBOX_GROUP, {"type": "inbox.update", "html": html})]

    broadcast.publish(job)
