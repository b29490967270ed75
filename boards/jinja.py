"""The Jinja2 environment of the templates under ``templates/jinja2``
(``TEMPLATES``' second backend, named "jinja2").

Only the board's card is a Jinja2 template (``boards/card.html``): a page or a
live update draws up to KAIZEN_COLUMN_CARD_LIMIT cards a column, and on a busy
line nearly every card it draws is new (boards.fragments.cards_html_set keeps
the others). The Django template language interprets each variable, filter and
``if`` as it renders, 0.33 ms a card; Jinja2 compiles the template to Python
once, and a card costs 0.07 ms (bench/cards.py; bench/README.md, "Fourth
stop"). Everything else stays in Django's templates.

The filters are Django's own, or give what Django's give, so a card reads as
the Django template wrote it: numbers and ages in words in the active language.
Jinja2 applies no ``expects_localtime``: ``iso`` turns a moment into the
current time zone itself, as Django's ``date:'c'`` does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

from django.template.defaultfilters import floatformat, pluralize, truncatechars
from django.utils import timezone
from django.utils.timesince import timesince as django_timesince
from django.utils.translation import get_language
from jinja2 import Environment

from boards.models import Task
from boards.templatetags.flow_format import duration


def iso(moment: datetime | None) -> str:
    """``{{ moment|date:'c' }}`` of a Django template: ISO 8601 in the current time zone."""
    if moment is None:
        return ""
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return moment.isoformat()


def timesince(moment: datetime | None) -> str:
    """``{{ moment|timesince }}`` of a Django template ("3 hours, 5 minutes").

    Under a day, Django's words are those of the whole minutes elapsed alone
    (hours and minutes; no calendar), so they are worked out once a minute
    count and a language: most cards on a board are under a day old, and
    Django's timesince was a quarter of a card's rendering. (Elapsed time, as
    Django counts it for the database's moments, which are in UTC: for a moment
    in a zone with daylight saving, Django counts wall-clock time instead.)"""
    if not moment:
        return ""
    now = timezone.now() if timezone.is_aware(moment) else datetime.now()  # noqa: DTZ005 (naive as given)
    seconds = (now - moment).total_seconds()
    if 0 <= seconds < 86400:
        return _timesince_minutes(int(seconds // 60), get_language())
    try:
        return django_timesince(moment, now)
    except (ValueError, TypeError):
        return ""


@lru_cache(maxsize=2048)
def _timesince_minutes(minutes: int, language: str | None) -> str:
    # The language is part of the key only: Django's words are in the active one.
    end = datetime(2000, 1, 1)  # noqa: DTZ001 (a span, not a moment)
    return django_timesince(end - timedelta(minutes=minutes), end)


_STATUS_LABELS = dict(Task.Status.choices)


def status_label(status: str) -> str:
    """``task.get_status_display|lower`` without Django's choices lookup."""
    return str(_STATUS_LABELS.get(status, status)).lower()


def widthratio(value: float | None, max_value: float, max_width: float) -> str:
    """``{% widthratio value max_value max_width %}`` of a Django template."""
    try:
        return str(round(float(value) / float(max_value) * float(max_width)))  # type: ignore[arg-type]
    except ZeroDivisionError:
        return "0"
    except (TypeError, ValueError, OverflowError):
        return ""


def environment(**options) -> Environment:
    env = Environment(**options)  # noqa: S701 (Django's Jinja2 backend sets autoescape=True)
    env.filters.update(
        duration=duration,
        floatformat=floatformat,
        iso=iso,
        pluralize=pluralize,
        status_label=status_label,
        timesince=timesince,
        truncatechars=truncatechars,
        widthratio=widthratio,
    )
    return env
