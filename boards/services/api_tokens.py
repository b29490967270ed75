"""API tokens: made for a user (the key shown once), and checked on each request."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from boards.models import ApiToken, Board


def api_token_create(
    *,
    user: User,
    name: str = "",
    access: str = ApiToken.Access.READ,
    boards: Iterable[Board] | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its key, which is shown only this once.

    Read only unless ``access`` is write, and for every board unless ``boards``
    lists some. A write token is refused for a user who may not add tasks."""
    boards = None if boards is None else list(boards)
    if access not in ApiToken.Access.values:
        raise ValidationError({"access": [f"Access must be read or write, not {access!r}."]})
    if access == ApiToken.Access.WRITE and not user.has_perm(ApiToken.WRITE_PERMISSION):
        raise ValidationError(
            {
                "access": [
                    f"User {user.get_username()!r} may not add tasks, so a write token would be refused: "
                    f"give them the “Can add task” permission ({ApiToken.WRITE_PERMISSION}) in the admin, "
                    "or make a read-only token."
                ]
            }
        )
    if boards is not None and not boards:
        raise ValidationError({"boards": ["Name at least one board, or let the token use every board."]})
    key = ApiToken.generate_key()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=key[:10],
            key_hash=ApiToken.hash_key(key),
            access=access,
            all_boards=boards is None,
        )
        if boards:
            token.boards.set(boards)
    return token, key


def api_token_authenticate(*, key: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=ApiToken.hash_key(key), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Written at most once a minute, so busy clients do not write on every call.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
