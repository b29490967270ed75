"""What the apps' views share: the request type htmx's middleware fills in, the
small helpers that turn errors into the one line a page shows, and whether this
thread is serving a request of the web server."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme
from django_htmx.middleware import HtmxDetails

if TYPE_CHECKING:
    from django.contrib.auth.models import User


_serving = threading.local()


@contextlib.contextmanager
def serving_request() -> Iterator[None]:
    """Marks this thread as serving an HTTP request of the web server
    (kaizen_web.asgi) while the block runs."""
    _serving.active = True
    try:
        yield
    finally:
        _serving.active = False


def in_served_request() -> bool:
    """Whether this thread is serving a request of the web server: not a test's
    client, a command or a worker, whose callers expect their work done in their
    own thread (and transaction)."""
    return getattr(_serving, "active", False)


class HtmxHttpRequest(HttpRequest):
    """A request as django-htmx's middleware leaves it (for type hints)."""

    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """A request to one of our views, past LoginRequiredMiddleware: its user is
    signed in (for type hints; django-stubs' recipe for ``login_required`` views).
    Views that are exempt (``login_not_required``) take an HttpRequest."""

    user: User


def error_message(exc: ValidationError) -> str:
    """A service's refusal as one line, for a page's message region."""
    return " ".join(exc.messages)


def form_errors(form: forms.Form) -> str:
    """A form's errors as one line, for a page's message region."""
    # An ErrorList yields its messages as text; str() says so to the type checker.
    return " ".join(str(error) for errors in form.errors.values() for error in errors)


def form_add_service_errors(
    form: forms.Form, exc: ValidationError, *, fields: dict[str, str] | None = None
) -> None:
    """A service's ValidationError onto the form that fed it: each message on the
    field it names (renamed through ``fields`` where the form calls it otherwise),
    the rest above the form."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.error_dict.items():
        field = (fields or {}).get(name, name)
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


def safe_next(request: HttpRequest) -> str | None:
    """The page to go back to after a plain (non-htmx) post (``next``), if it is
    one of this site's; None otherwise."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None
