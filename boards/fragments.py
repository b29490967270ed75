"""What the websocket pushes: the changed parts of a board, rendered from the
same partials as the page (``boards/board.html``, and its cards from
``templates/jinja2/boards/card.html``), each marked hx-swap-oob so the htmx
websocket extension swaps it into place by id.

Called by the broadcaster thread (kaizen_web.live, through boards.broadcast)
after commit, outside any request: the partials it renders must not need one
(no CSRF token, no user).
Every push carries the board's live state around the columns (the banner, the
agents' load, the flow status saying why agents are or are not pulling) and
the Ready column, whose cards say why each waits. The browser swaps only what
changed and holds back a swap where a person is typing or has a form open
(static/js/live.js).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.template import engines
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import get_language

from andon.selectors import board_budgets_exist, budget_warnings_get
from boards.models import Agent, Board, Column, Task
from boards.selectors import (
    ColumnView,
    board_agents_get,
    board_breakers_get,
    board_column_counts_get,
    board_columns_get,
    board_line_stops_get,
    board_pull_status_get,
    board_sle_recent,
    capabilities_offered,
    cards_age_set,
)
from kaizen_web.prepared import Prepared, fields


def board_live_context(*, board: Board, column_ids: set[int] | None = None, with_ready: bool = True) -> dict:
    """The context of the board's live parts: ``columns`` (all of them, or those
    of ``column_ids``, plus Ready unless ``with_ready`` is False), the agents,
    the line stops and the flow status, with each drawn Ready card's reason to
    wait. A fixed number of queries, whatever the number of tasks or agents."""
    counted = board_column_counts_get(board=board)
    if column_ids is not None and with_ready:
        # Ready's cards say why each waits, which any change may alter.
        column_ids = set(column_ids) | {c.pk for c in counted if c.role == Column.Role.READY}
    # The line stops, the breakers and the agents are read once, here, for the
    # banner, the agents' strip, the cards and the flow status alike.
    line_stops = board_line_stops_get(board=board)
    breakers = board_breakers_get(board=board)
    agents = board_agents_get(board=board, line_stops=line_stops, breakers=breakers)
    columns = board_columns_get(board=board, column_ids=column_ids, counted=counted, agents=agents)
    status = board_pull_status_get(
        board=board, columns=counted, line_stops=line_stops, agents=agents, breakers=breakers
    )
    status.explain_cards(columns)
    # Each card in flight shows its age against the board's SLE: one query, only
    # when such a card is drawn (an update of Ready alone draws none).
    in_flight = (Task.Status.RUNNING, Task.Status.REVIEW)
    if any(card.status in in_flight for view in columns for card in view.cards):
        cards_age_set(columns=columns, sle=board_sle_recent.get(board))
    cards_html_set(columns=columns)
    warnings = budget_warnings_get(board=board) if board_budgets_exist(board=board) else []
    return {
        "board": board,
        "columns": columns,
        "agents": agents,
        "agents_summary": agents_summary(agents),
        "line_stops": line_stops,
        # Budgets of the board and its agents at or past their warning level; a
        # budget's stop is said by its budget's banner (with the spend now), once.
        "budget_warnings": warnings,
        "budget_stops_shown": {status.budget.pk for status in warnings if status.reached},
        "board_stopped": any(stop.board_id for stop in line_stops),
        "pull_status": status,
    }


# Read for every live update: compiled once (kaizen_web.prepared).
_BOARD = Prepared(lambda *, pk: Board.objects.filter(pk=pk).values_list(*fields(Board))[:1], pk=int)


def render_board_update(*, board_id: int, column_ids: set[int]) -> str:
    """HTML that brings a browser's board up to date after ``column_ids`` changed:
    those columns and Ready, whole, plus the banner, the agents' load and the
    flow status, which any change may have altered. Empty when the board no
    longer exists."""
    board = next(iter(_BOARD.instances(Board, pk=board_id)), None)
    if board is None:
        return ""
    context = board_live_context(board=board, column_ids=set(column_ids))
    context["oob"] = True
    return render_to_string("boards/board.html#board-update", context)


@dataclass(frozen=True)
class BoardLiveHtml:
    """The board page's live part, rendered: the banner (above the body) and
    #board-body's content (flow status, agents, columns); with what the rest of
    the page reads from the same agents, as they were: the capabilities the task
    form offers, and the agents the andon cord offers to stop, by name."""

    banner: SafeString
    body: SafeString
    rendered_at: float  # time.monotonic() when it was done
    capabilities: tuple[str, ...]
    cord_agents: tuple[Agent, ...]


# Per web process: the latest rendering of each board's live part, and a lock
# per board so that one request renders it while the others keep showing the
# previous one.
_live_html: dict[int, BoardLiveHtml] = {}
_rendering: dict[int, threading.Lock] = {}
_rendering_guard = threading.Lock()


def board_live_html_render(*, board: Board) -> BoardLiveHtml:
    """The board's live part, rendered now (a fixed number of queries)."""
    context = board_live_context(board=board)
    agents: list[Agent] = context["agents"]
    return BoardLiveHtml(
        banner=mark_safe(render_to_string("boards/board.html#banner", context)),  # noqa: S308 (autoescaped template)
        body=mark_safe(render_to_string("boards/board.html#board-body", context)),  # noqa: S308 (autoescaped template)
        # From the end: a rendering slower than the max age (a busy machine)
        # is not found old at once, and renders are spaced, not back to back.
        rendered_at=time.monotonic(),
        # The board's agents were read for the strip: no query of their own.
        capabilities=tuple(capabilities_offered(agents)),
        cord_agents=tuple(agents),  # by name, as the database orders them for the strip
    )


# How old, in max ages, a rendering may be and still be shown while another load
# renders the next: older (the board was not loaded for a while), a load waits.
STALE_FACTOR = 10


def board_live_html_get(*, board: Board, fresh: bool = False) -> BoardLiveHtml:
    """The board's live part as the page shows it: rendered at most once every
    KAIZEN_BOARD_PAGE_MAX_AGE_MS in this process, and shared by the page loads
    meanwhile; ``fresh`` renders it now (and keeps it for the next loads).

    Why: rendering it (about twenty queries, and a template of up to
    KAIZEN_COLUMN_CARD_LIMIT cards a column) costs some 80 ms of the web
    process's CPU. With 20 people loading the page while the API takes tasks,
    every load rendered it again and the page took 3.6 s at the median
    (bench/board_page.py). The page can be a moment old: its script re-reads
    the live part (boards-body, always fresh) as its websocket opens, and every
    change after that arrives by the websocket. Only a page that follows the
    viewer's own change, without JavaScript, must show it: those ask ``fresh``.

    A load that finds the rendering too old renders it again, unless another
    load of the same board already does: it then shows the previous one, so a
    crowd of loads costs one rendering, not one each; unless that one is older
    than STALE_FACTOR max ages, when it waits for the new one.
    """
    max_age = settings.KAIZEN_BOARD_PAGE_MAX_AGE_MS / 1000
    if not max_age:
        return board_live_html_render(board=board)

    def recent() -> BoardLiveHtml | None:
        kept = _live_html.get(board.pk)
        return kept if kept is not None and time.monotonic() - kept.rendered_at < max_age else None

    kept = None if fresh else recent()
    if kept is not None:
        return kept
    with _rendering_guard:
        lock = _rendering.setdefault(board.pk, threading.Lock())
    previous = _live_html.get(board.pk)
    if previous is not None and time.monotonic() - previous.rendered_at >= STALE_FACTOR * max_age:
        previous = None  # from a quiet spell long ago: this load waits for the new one
    if not fresh and previous is not None and not lock.acquire(blocking=False):
        return previous  # being rendered again by another load
    if fresh or previous is None:
        lock.acquire()
        # Another load may have rendered it while this one waited.
        kept = None if fresh else recent()
        if kept is not None:
            lock.release()
            return kept
    try:
        rendered = _live_html[board.pk] = board_live_html_render(board=board)
        return rendered
    finally:
        lock.release()


def board_live_html_clear() -> None:
    """Forget every rendering kept (the tests: SQLite hands a rolled-back test's ids out again)."""
    _live_html.clear()
    _card_html.clear()


# Per process: the HTML of the cards drawn lately, by everything a card shows
# (_card_key). Every live update draws Ready's cards again, and the other
# changed columns', most of them as they were on a quiet board; on a busy one
# most are new, and drawing them is what a card's template costs (boards.jinja).
_card_html: dict[tuple, SafeString] = {}
# Enough for every drawn card of a few dozen boards; past it, the lot is
# forgotten and drawn again (a card's key changes as it ages anyway).
CARD_HTML_KEPT = 5000


def cards_html_set(*, columns: list[ColumnView]) -> None:
    """Put each drawn card's HTML on it (``card_html``): kept from an earlier
    render while the card shows the same, else rendered now from the card's
    template (``templates/jinja2/boards/card.html``). Call once the cards have
    their reasons to wait and their ages."""
    template = None
    now = timezone.now()
    context = (timezone.get_current_timezone_name(), get_language())
    simulated: dict[int, bool] = {}
    for view in columns:
        for card in view.cards:
            key = _card_key(card, now, context, simulated)
            html = _card_html.get(key)
            if html is None:
                if template is None:
                    # Jinja2, autoescaped: boards.jinja says why.
                    template = engines["jinja2"].get_template("boards/card.html")
                html = mark_safe(template.render({"task": card}))  # noqa: S308 (autoescaped template)
                if len(_card_html) >= CARD_HTML_KEPT:
                    _card_html.clear()
                _card_html[key] = html
            card.card_html = html


def _card_key(card: Task, now: datetime, context: tuple, simulated: dict[int, bool]) -> tuple:
    """Everything the card template shows of ``card``: two cards with the same key
    render alike. Its ages in words are a function of the whole seconds in flight
    (the duration filter) and of the time since each of its moments
    (``_elapsed``)."""
    agent: tuple = ()
    # The agent is on the card already (board_columns_get): no query.
    task_agent = card.agent if card.agent_id is not None else None
    if task_agent is not None:
        if task_agent.pk not in simulated:
            simulated[task_agent.pk] = task_agent.is_simulated
        agent = (task_agent.name, simulated[task_agent.pk])
    flow_age: tuple = ()
    if card.flow_age_level:
        sle = card.flow_sle
        flow_age = (
            card.flow_age_level,
            round(card.flow_age),
            getattr(card, "first_claimed_at", None),
            sle.count,
            sle.p70,
            sle.p85,
        )
    return (
        context,
        card.pk,
        card.card_url,
        card.title,
        card.status,
        card.priority,
        card.capability,
        card.blocked_at,
        card.blocked_note,
        card.pull_hold,
        card.pull_hold_level,
        card.attempts,
        card.last_error,
        card.model_calls,
        card.cache_hits,
        card.reused_from_id,
        card.cost,
        card.accepted_tier,
        card.confidence,
        agent,
        flow_age,
        *(
            _elapsed(moment, now)
            for moment in (card.created_at, card.started_at, card.updated_at, card.finished_at)
        ),
    )


def _elapsed(moment: datetime | None, now: datetime) -> object:
    """What the card's words for the time since ``moment`` depend on: the whole
    minutes under a day (boards.jinja.timesince); beyond it, the whole hours,
    counted from the moment and from the moment without its microseconds, and
    the date. Django's timesince shows two adjacent units, the smallest an hour
    past a day; its units' boundaries fall on whole hours from the moment (or
    from its whole second, where a month is counted from it) and, for a day of
    the month the current month lacks, at midnight. Calling timesince for the
    key cost a card aged past a day more than drawing it did."""
    if moment is None:
        return None
    seconds = (now - moment).total_seconds()
    if seconds < 86400:
        return (moment, int(seconds // 60))
    whole = (now - moment.replace(microsecond=0)).total_seconds()
    return (moment, now.date(), int(seconds // 3600), int(whole // 3600))


def agents_summary(agents: list) -> dict[str, int]:
    """The agent strip's one line (all a phone shows until it is unfolded)."""
    alarm = ("open", "half_open")
    return {
        "running": sum(getattr(a, "running", 0) or 0 for a in agents),
        "capacity": sum(a.concurrency for a in agents),
        "stopped": sum(1 for a in agents if getattr(a, "line_stop", None)),
        "paused": sum(1 for a in agents if a.paused),
        "breakers": sum(
            1
            for a in agents
            if (getattr(a, "breaker", None) is not None and a.breaker.state in alarm)
            or any(b.state in alarm for b in getattr(a, "model_breakers", []))
        ),
    }
