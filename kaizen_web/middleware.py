"""Middleware of our own; no domain logic here."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails


class HtmxLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Django's LoginRequiredMiddleware, with an answer htmx understands.

    An htmx request follows a redirect inside its XMLHttpRequest and would swap
    the login page's HTML into the board (#board-body, #board-status). Such a
    request is answered instead with ``HX-Redirect`` to the login page, whose
    ``next`` is the page the browser shows (``HX-Current-URL``), not the
    fragment's URL, so that logging in leads back to that page.

    The status is 401: the request was refused for want of a login, and a
    client that is not htmx must not take the empty answer for a success.
    htmx reads ``HX-Redirect`` before it looks at the status (htmx 2:
    ``handleAjaxResponse``; htmx 4: ``#handleHeadersAndMaybeReturnEarly``), so
    any status but a 3xx, which the browser follows on its own, is honoured.
    """

    # django-stubs narrows the answer to HttpResponseRedirect, but Django passes
    # on any response this returns; HttpResponseClientRedirect (no Location) is not one.
    def handle_no_permission(self, request: HttpRequest, view_func: Callable) -> HttpResponse:  # type: ignore[override]
        htmx = HtmxDetails(request)
        if not htmx:
            return super().handle_no_permission(request, view_func)
        # Only a page of this site, as a path: never a foreign URL in `next`.
        page = htmx.current_url_abs_path
        login = redirect_to_login(
            page or "",
            resolve_url(self.get_login_url(view_func)),
            self.get_redirect_field_name(view_func) if page else None,
        )
        return HttpResponseClientRedirect(login.url, status=401)
