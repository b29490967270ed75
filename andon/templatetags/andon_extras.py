"""Template filters of the andon pages."""

from __future__ import annotations

from django import template

from andon.services import is_simulated_reviewer as _is_simulated_reviewer

register = template.Library()


@register.filter
def is_simulated_reviewer(user) -> bool:
    """Whether a decision was the demo's simulated reviewer's (to badge it)."""
    return _is_simulated_reviewer(user if user else None)
