"""kaizen_web.auth and kaizen_web.sessions: a signed-in request reads its session,
its user and the user's permissions in three compiled queries, and answers every
``has_perm`` from them, with ModelBackend's rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from kaizen_web.auth import ModelBackend
from kaizen_web.sessions import SessionStore
from tests.factories import grant, make_board, make_user

pytestmark = pytest.mark.django_db

REVIEW = "andon.review_escalation"
ADD_TASK = "boards.add_task"


def _permission(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def test_the_settings_use_them():
    assert settings.AUTHENTICATION_BACKENDS == ["kaizen_web.auth.ModelBackend"]
    assert settings.SESSION_ENGINE == "kaizen_web.sessions"


def test_permissions_come_with_the_user_and_has_perm_asks_no_more():
    user = make_user()
    grant(user, ADD_TASK)
    group = Group.objects.create(name="reviewers")
    group.permissions.add(_permission(REVIEW), _permission(ADD_TASK))
    user.groups.add(group)

    with CaptureQueriesContext(connection) as loading:
        loaded = ModelBackend().get_user(str(user.pk))
    with CaptureQueriesContext(connection) as asking:
        answers = [loaded.has_perm(REVIEW), loaded.has_perm(ADD_TASK), loaded.has_perm("boards.delete_board")]
        has_all = loaded.has_perms([REVIEW, ADD_TASK])

    assert len(loading) == 2  # the user, and every permission it has
    assert len(asking) == 0  # ModelBackend: two more, at the first has_perm
    assert answers == [True, True, False]
    assert has_all
    # ModelBackend's three lists, each as it would give it.
    assert loaded.get_user_permissions() == {ADD_TASK}
    assert loaded.get_group_permissions() == {REVIEW, ADD_TASK}
    assert loaded.get_all_permissions() == {REVIEW, ADD_TASK}


def test_the_answers_are_modelbackends_for_every_kind_of_user():
    django_backend = "django.contrib.auth.backends.ModelBackend"
    plain = make_user()
    reviewer = make_user()
    grant(reviewer, REVIEW)
    superuser = make_user(is_superuser=True)
    inactive = make_user(is_active=False)
    grant(inactive, REVIEW)
    names = [REVIEW, ADD_TASK, "boards.delete_board"]
    User = get_user_model()

    for user in (plain, reviewer, superuser):
        ours = ModelBackend().get_user(user.pk)
        theirs = User.objects.get(pk=user.pk)
        theirs.backend = django_backend
        assert ours == theirs
        for name in names:
            assert ours.has_perm(name) == theirs.has_perm(name), (user, name)
        assert ours.get_all_permissions() == theirs.get_all_permissions()
        # No object permissions, as ModelBackend.
        assert ours.has_perm(REVIEW, obj=user) is (ours.is_superuser and ours.is_active)
    # An inactive user is not signed in; one read otherwise has no permission.
    assert ModelBackend().get_user(inactive.pk) is None
    assert not ModelBackend().has_perm(User.objects.get(pk=inactive.pk), REVIEW)
    assert ModelBackend().get_user(10**9) is None


def test_a_permission_taken_away_is_gone_at_the_next_request():
    user = make_user()
    grant(user, REVIEW)
    client = Client()
    client.force_login(user)
    board = make_board()

    # The cord is drawn only for those who may pull it.
    assert b'id="cord"' in client.get(board.get_absolute_url()).content
    user.user_permissions.clear()
    assert b'id="cord"' not in client.get(board.get_absolute_url()).content
    group = Group.objects.create(name="cord pullers")
    group.permissions.add(_permission(REVIEW))
    user.groups.add(group)
    assert b'id="cord"' in client.get(board.get_absolute_url()).content
    User = get_user_model()
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert client.get(board.get_absolute_url()).status_code == 302  # to the login page


def test_a_session_is_read_in_one_query_and_an_expired_one_not_at_all():
    user = make_user()
    client = Client()
    client.force_login(user)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value

    with CaptureQueriesContext(connection) as reading:
        store = SessionStore(session_key=key)
        assert store["_auth_user_id"] == str(user.pk)
    assert len(reading) == 1
    # By key alone, the expiry checked here (Django's store compares it in SQL at every read).
    assert "expire_date" + '" >' not in reading.captured_queries[0]["sql"]
    assert store.session_key == key

    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(seconds=1))
    expired = SessionStore(session_key=key)
    assert "_auth_user_id" not in expired
    assert expired.session_key is None  # as Django's store: the key is dropped
    assert "_auth_user_id" not in SessionStore(session_key="nosuchsessionkey0123456789abcdef")
    # A page with the expired session is the login page's.
    assert client.get("/boards/").status_code == 302


def test_logging_in_with_a_password_signs_in_through_this_backend():
    user = make_user(password="pw-for-tests-1")
    client = Client()
    assert client.login(username=user.username, password="pw-for-tests-1")
    session = SessionStore(session_key=client.cookies[settings.SESSION_COOKIE_NAME].value)
    assert session["_auth_user_backend"] == "kaizen_web.auth.ModelBackend"
    assert client.get("/boards/").status_code == 200
