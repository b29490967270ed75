"""What the apps' views share: the request type htmx's middleware fills in, and
the small helpers that turn errors into the one line a page shows."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """A request as django-htmx's middleware leaves it (for type hints)."""

    htmx: HtmxDetails


def error_message(exc: ValidationError) -> str:
    """A service's refusal as one line, for a page's message region."""
    return " ".join(exc.messages)


def form_errors(form: forms.Form) -> str:
    """A form's errors as one line, for a page's message region."""
    return " ".join(error for errors in form.errors.values() for error in errors)


def safe_next(request: HttpRequest) -> str | None:
    """The page to go back to after a plain (non-htmx) post (``next``), if it is
    one of this site's; None otherwise."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None
