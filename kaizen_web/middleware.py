"""Middleware of our own; no domain logic here."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_only_middleware


@sync_only_middleware
def sync_chain(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Keeps the whole middleware chain synchronous under ASGI.

    Our views are synchronous. When the innermost middleware can run async,
    Django builds an async chain and runs every MiddlewareMixin hook
    (process_request, process_response, ...) through its own sync_to_async
    thread hop: a dozen hops per request, a third of the web process's CPU under
    load. Being sync-only and innermost, this makes Django build the chain
    synchronously, with one hop for the whole request. Websockets do not go
    through it (Channels routes them).
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        return get_response(request)

    return middleware
