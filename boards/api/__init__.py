"""The JSON API under /api/v1/ (django-ninja): ``endpoints`` (the operations and
the ``api`` the project's URLs mount), ``schemas`` (the request and response
shapes the OpenAPI schema publishes) and ``tokens`` (bearer-token
authentication)."""

from boards.api.endpoints import api

__all__ = ["api"]
