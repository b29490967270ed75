"""Django's ModelBackend, reading a signed-in user and their permissions in two
compiled queries.

Every page and websocket loads the session's user, and nearly every page asks a
permission or two (the navigation, the andon cord, the reviewer's controls).
ModelBackend reads the user with one query and, at the first ``has_perm``, the
user's own and their groups' permissions with two more, each compiled by the ORM
on every request: about a third of the board page's CPU under load
(bench/board_page.py, cProfile). Here the user and all their permission names
are read by two ``Prepared`` queries (kaizen_web.prepared) when the session's
user is loaded, and ``has_perm`` answers from them for the rest of the request,
as ModelBackend answers from its own per-request cache.

The rules are ModelBackend's, unchanged: an inactive user has no permission and
cannot be loaded; a superuser has every permission (``User.has_perm`` says so
before asking a backend; ``get_all_permissions`` is left to ModelBackend, which
lists them all); an object permission is never granted here. A user that was
not loaded by ``get_user`` (just authenticated, or made in code) is answered
by ModelBackend itself.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import backends, get_user_model
from django.contrib.auth.models import Permission
from django.db.models import QuerySet, Value

from kaizen_web.prepared import Prepared, fields

# The attribute the permissions read with the user are kept in, for this request.
_READ = "_kaizen_permissions"


def _user_query(*, user_id: int) -> QuerySet:
    User = get_user_model()
    return User._default_manager.filter(pk=user_id).values_list(*fields(User))[:1]


def _permissions_query(*, user_id: int) -> QuerySet:
    """(app label, codename, "user" or "group") for each permission the user has
    directly and through each of their groups (the same permission may come twice).
    The relations are named as ModelBackend names them, from the user model."""
    User = get_user_model()
    user_permissions = User._meta.get_field("user_permissions").related_query_name()
    user_groups = User._meta.get_field("groups").related_query_name()
    own = (
        Permission.objects.filter(**{user_permissions: user_id})
        .annotate(source=Value("user"))
        .values_list("content_type__app_label", "codename", "source")
        .order_by()
    )
    through_groups = (
        Permission.objects.filter(**{f"group__{user_groups}": user_id})
        .annotate(source=Value("group"))
        .values_list("content_type__app_label", "codename", "source")
        .order_by()
    )
    return own.union(through_groups, all=True)


# Read for every request of a signed-in user: compiled once (kaizen_web.prepared).
_USER = Prepared(_user_query, user_id=int)
_PERMISSIONS = Prepared(_permissions_query, user_id=int)


class ModelBackend(backends.ModelBackend):
    """ModelBackend whose ``get_user`` reads the user's permissions with the user."""

    def get_user(self, user_id: Any) -> Any:
        User = get_user_model()
        try:
            pk = int(user_id)
        except (TypeError, ValueError):
            # Not an integer key (a custom user model): ModelBackend's own lookup.
            return super().get_user(user_id)
        user = next(iter(_USER.instances(User, user_id=pk)), None)
        if user is None or not self.user_can_authenticate(user):
            return None
        if not getattr(user, "is_superuser", False):
            read: dict[str, set[str]] = {"user": set(), "group": set()}
            for app_label, codename, source in _PERMISSIONS.rows(user_id=pk):
                read[source].add(f"{app_label}.{codename}")
            setattr(user, _READ, read)
        return user

    def _read(self, user_obj: Any, obj: Any, source: str) -> set[str] | None:
        read = getattr(user_obj, _READ, None)
        if read is None or obj is not None or not user_obj.is_active or user_obj.is_anonymous:
            return None
        return read[source]

    def get_user_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        read = self._read(user_obj, obj, "user")
        return set(read) if read is not None else super().get_user_permissions(user_obj, obj)

    def get_group_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        read = self._read(user_obj, obj, "group")
        return set(read) if read is not None else super().get_group_permissions(user_obj, obj)
