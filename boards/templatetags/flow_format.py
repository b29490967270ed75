"""Filters the Flow page writes its numbers with: durations in words a person
reads (``4 min 10 s``, ``2 h 5 min``, ``3 d 4 h``), shares in percent."""

from __future__ import annotations

from django import template

from experiments.charts import money

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(float(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    if s < 86400:
        minutes = (s % 3600) // 60
        return f"{s // 3600} h {minutes} min" if minutes else f"{s // 3600} h"
    hours = (s % 86400) // 3600
    return f"{s // 86400} d {hours} h" if hours else f"{s // 86400} d"


@register.filter
def percent(share: float | None) -> str:
    if share is None:
        return "–"
    return f"{share * 100:.0f}%"


@register.filter
def dollars(value: float | None) -> str:
    if value is None:
        return "–"
    return money(value)


@register.filter
def get(mapping: dict, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, dict) else None
