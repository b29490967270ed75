"""Helpers for the JSON API tests: tokens of each scope, and requests as clients send them."""

from __future__ import annotations

from collections.abc import Iterable

from django.test import Client

from boards import services
from boards.models import ApiToken, Board
from tests.factories import make_user, make_writer


def token_for(
    user=None, *, access: str = ApiToken.Access.WRITE, boards: Iterable[Board] | None = None
) -> str:
    """The key of a new token (write, every board, unless said otherwise); a
    writer is made when no user is given."""
    if user is None:
        user = make_writer() if access == ApiToken.Access.WRITE else make_user()
    _, key = services.api_token_create(user=user, name="tests", access=access, boards=boards)
    return key


def client_for(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def post_json(client: Client, path: str, body: object) -> object:
    return client.post(path, data=body, content_type="application/json")
