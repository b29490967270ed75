"""The board's card is a Jinja2 template (boards/jinja.py says why): its filters
write what the Django template language's wrote, in the active language and
time zone, and everything a person typed is escaped wherever the card shows it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.template import Context, Template, engines
from django.utils import timezone, translation

from boards import jinja
from boards.fragments import render_board_update
from boards.models import Task
from tests.factories import column, make_agent, make_board


def _django(source: str, **context) -> str:
    return Template(source).render(Context(context))


# Under a day the words depend on the whole minutes alone; past it, on the calendar.
# (No span within a second of a minute's turn: the two filters read the clock apart.)
SPANS = [
    timedelta(seconds=0),
    timedelta(seconds=30),
    timedelta(minutes=1, seconds=30),
    timedelta(minutes=59),
    timedelta(hours=1),
    timedelta(hours=1, minutes=1),
    timedelta(hours=23, minutes=58, seconds=30),
    timedelta(days=1),
    timedelta(days=3, hours=4),
    timedelta(days=40),
    timedelta(days=800),
    timedelta(minutes=-5),  # in the future: "0 minutes", as Django says
]


@pytest.mark.parametrize("span", SPANS, ids=str)
def test_timesince_says_what_djangos_filter_says(span):
    moment = timezone.now() - span
    assert jinja.timesince(moment) == _django("{{ m|timesince }}", m=moment)


def test_timesince_is_in_the_active_language_whatever_it_said_before():
    moment = timezone.now() - timedelta(hours=2, minutes=5)
    english = jinja.timesince(moment)
    with translation.override("de"):
        german = jinja.timesince(moment)
        assert german == _django("{{ m|timesince }}", m=moment)
    assert german != english
    # The same minute count, asked again in English, is English again.
    assert jinja.timesince(moment) == english == _django("{{ m|timesince }}", m=moment)


def test_timesince_of_nothing_is_empty():
    assert jinja.timesince(None) == "" == _django("{{ m|timesince }}", m=None)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/St_Johns"])
def test_iso_is_djangos_date_c_in_the_current_time_zone(zone):
    moment = datetime(2026, 7, 1, 12, 30, 15, 123456, tzinfo=UTC)
    with timezone.override(zone):
        assert jinja.iso(moment) == _django("{{ m|date:'c' }}", m=moment)
    assert jinja.iso(None) == ""


@pytest.mark.parametrize("value", [0, 0.125, 0.5, 0.625, 0.935, 1, None, "x"])
def test_widthratio_is_djangos_tag(value):
    assert jinja.widthratio(value, 1, 100) == _django("{% widthratio v 1 100 %}", v=value)


@pytest.mark.parametrize("status", [choice for choice, _ in Task.Status.choices])
def test_status_label_is_the_status_display_in_lower_case(status):
    assert jinja.status_label(status) == Task(status=status).get_status_display().lower()


def test_the_card_template_is_autoescaped():
    template = engines["jinja2"].from_string("{{ text }}")
    assert template.render({"text": '<b a="1">'}) == "&lt;b a=&#34;1&#34;&gt;"


class _Cards(HTMLParser):
    """Each card's attributes and text, as a browser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.attributes: dict[str, dict[str, str | None]] = {}
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "li" and dict(attrs).get("id", "").startswith("task-"):
            self.attributes[dict(attrs)["id"]] = dict(attrs)
        for name, value in attrs:
            if name == "title" and value:
                self.text.append(value)

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.django_db
def test_what_people_typed_is_escaped_everywhere_a_card_shows_it():
    board = make_board(ready_limit=None)
    agent = make_agent(boards=[board], name="<i>agent</i>")
    typed = "<script>alert('x')</script> & \"quoted\""
    ready = Task.objects.create(
        board=board,
        column=column(board, "ready"),
        status="ready",
        title=typed,
        capability="",
        last_error=f"timeout {typed}",
        agent=agent,
    )
    blocked = Task.objects.create(
        board=board, column=column(board, "ready"), status="ready", title="blocked one"
    )
    Task.objects.filter(pk=blocked.pk).update(blocked_at=timezone.now(), blocked_note=typed)
    failed = Task.objects.create(
        board=board,
        column=column(board, "done"),
        status="failed",
        title="failed one",
        attempts=3,
        last_error=typed,
        finished_at=timezone.now(),
    )
    done = Task.objects.create(
        board=board,
        column=column(board, "done"),
        status="done",
        title="done one",
        agent=agent,
        attempts=2,
        confidence=0.935,
        cost=Decimal("0.00004"),
        model_calls=2,
        accepted_tier=1,
        finished_at=timezone.now() - timedelta(minutes=3),
    )

    html = render_board_update(
        board_id=board.pk, column_ids={column(board, "ready").pk, column(board, "done").pk}
    )
    cards = _Cards()
    cards.feed(html)

    # No markup of theirs became markup; their text reads back whole.
    assert "script" not in cards.tags and "i" not in cards.tags
    assert cards.attributes[f"task-{ready.pk}"]["data-title"] == typed
    text = "".join(cards.text)
    assert typed in text and f"timeout {typed}" in text and "<i>agent</i>" in text
    assert f"Blocked: {typed}" in " ".join(" ".join(cards.text).split())
    assert "blocked one" in text and "data-blocked" in html
    assert f"after 3 attempts: {typed}" in text
    # The ledger line, the confidence and the attempts, as the Django template wrote them.
    assert "<$0.0001" in text and "2 calls" in text and "tier 1" in text
    assert 'value="0.935"' in html and "94%" in text and "attempt 2" in text
    assert "finished 3\xa0minutes ago" in text
    assert cards.attributes[f"task-{done.pk}"]["data-status"] == "done"
    assert cards.attributes[f"task-{failed.pk}"]["data-status"] == "failed"


def test_a_card_shows_its_hold_priority_capability_and_a_long_error_cut_short():
    card = Task(
        pk=7,
        title="Weigh the pallets",
        status="failed",
        priority=3,
        capability="vision",
        attempts=2,
        last_error="x" * 200,
        created_at=timezone.now(),
    )
    card.card_url = "/boards/b/tasks/7/"
    card.pull_hold, card.pull_hold_level = "Waits: no agent offers vision.", "busy"
    html = engines["jinja2"].get_template("boards/card.html").render({"task": card})

    assert 'class="card card--failed card--held card--held-busy"' in html
    assert 'aria-describedby="task-7-hold"' in html and 'data-url="/boards/b/tasks/7/"' in html
    assert 'class="tag tag--priority tag--urgent" title="Priority 3 (higher is more urgent)">P3<' in html
    assert 'title="Needs capability vision">vision<' in html
    assert "Waits: no agent offers vision." in html
    # truncatechars:90, as Django cuts: 89 characters and an ellipsis.
    assert f"after 2 attempts: {'x' * 89}…</p>" in html
