"""API tokens at the door: the bearer token every operation needs, checked
against the hashed ``ApiToken`` rows (``boards.models``); tokens are made by
``boards.services.api_token_create`` (``manage.py create_api_token``)."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.errors import AuthenticationError, AuthorizationError
from ninja.security import HttpBearer

from boards import services
from boards.models import ApiToken


class TokenHttpRequest(HttpRequest):
    """A request to an API operation, which BearerToken let through: django-ninja
    sets ``auth`` to what ``authenticate`` returned (for type hints)."""

    auth: ApiToken


class BearerToken(HttpBearer):
    """``Authorization: Bearer <token>`` checked against the hashed ApiToken table.
    With ``write``, the token must also be allowed to add tasks (its scope and
    its user's permission), checked before the body is read."""

    def __init__(self, *, write: bool = False) -> None:
        super().__init__()
        self.write = write

    def __call__(self, request: HttpRequest) -> ApiToken:
        # Replaces HttpBearer's parsing so that a missing header, another scheme and
        # an unknown token each get a message saying which it was.
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError(
                message="Send an API token in the header 'Authorization: Bearer <token>'; "
                "create one with `python manage.py create_api_token <username>`."
            )
        return self.authenticate(request, key.strip())

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken:
        api_token = services.api_token_authenticate(key=token)
        if api_token is None:
            raise AuthenticationError(
                message="That API token is not valid: it is unknown, revoked, or its user is inactive."
            )
        if self.write and (problem := api_token.write_problem()):
            raise AuthorizationError(message=problem)
        return api_token
