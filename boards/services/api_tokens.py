"""API tokens: made for a user (the key shown once), and checked on each request."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.db import router, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import Combinable
from django.utils import timezone

from boards.models import ApiToken, Board
from kaizen_web.prepared import Prepared, fields


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


def _token_query(*, key_hash) -> QuerySet:
    user_fields = [f"user__{name}" for name in fields(User)]
    return (
        ApiToken.objects.filter(key_hash=key_hash, user__is_active=True)
        .annotate(may_add_task=_may_add_task())
        .values_list(*fields(ApiToken), *user_fields, "may_add_task")[:1]
    )


# Looked up on every API request: compiled once (kaizen_web.prepared).
_TOKEN = Prepared(_token_query, key_hash=str)


def api_token_authenticate(*, key: str) -> ApiToken | None:
    """The active token with this key, with its user; None if there is none.
    Whether the user may add tasks comes in the same query (``may_add_task``,
    read by ``ApiToken.write_problem``): the permission queries and compiling
    the lookup were most of what adding a task through the API cost."""
    row = _TOKEN.first(key_hash=ApiToken.hash_key(key))
    if row is None:
        return None
    token_fields, user_fields = fields(ApiToken), fields(User)
    split = len(token_fields)
    db = router.db_for_read(ApiToken)
    token = ApiToken.from_db(db, token_fields, row[:split])
    token.user = User.from_db(db, user_fields, row[split : split + len(user_fields)])
    token.may_add_task = row[-1]  # type: ignore[attr-defined]
    now = timezone.now()
    # Written at most once a minute, so busy clients do not write on every call.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def _may_add_task() -> Combinable:
    """ModelBackend's answer to ``user.has_perm(ApiToken.WRITE_PERMISSION)`` as a
    condition on the token's row: a superuser, or the permission given to the user
    or to one of their groups."""
    app_label, codename = ApiToken.WRITE_PERMISSION.split(".")
    permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    return Q(user__is_superuser=True) | Exists(
        permission.filter(Q(user=OuterRef("user_id")) | Q(group__user=OuterRef("user_id")))
    )
