"""The demo user ``make run`` prints must be able to log in, and open the admin."""

from __future__ import annotations

from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command


def test_it_creates_a_staff_superuser_with_the_default_password(db, monkeypatch):
    monkeypatch.delenv("KAIZEN_DEMO_PASSWORD", raising=False)
    call_command("ensure_demo_user")
    user = authenticate(username="demo", password="demo")
    assert user is not None
    assert user.is_staff and user.is_superuser


def test_it_takes_the_password_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("KAIZEN_DEMO_PASSWORD", "line-demo-7")
    call_command("ensure_demo_user")
    assert authenticate(username="demo", password="line-demo-7") is not None
    assert authenticate(username="demo", password="demo") is None


def test_it_leaves_an_existing_user_alone_without_reset(db, monkeypatch):
    monkeypatch.delenv("KAIZEN_DEMO_PASSWORD", raising=False)
    get_user_model().objects.create_user(username="demo", password="someone-elses-password")
    call_command("ensure_demo_user")
    user = get_user_model().objects.get(username="demo")
    assert user.check_password("someone-elses-password")
    assert not user.is_superuser


def test_it_repairs_an_existing_demo_user_with_reset(db, monkeypatch):
    monkeypatch.delenv("KAIZEN_DEMO_PASSWORD", raising=False)
    get_user_model().objects.create_user(username="demo", password="changed-in-admin", is_active=False)
    call_command("ensure_demo_user", "--reset")
    assert get_user_model().objects.filter(username="demo").count() == 1
    user = authenticate(username="demo", password="demo")
    assert user is not None
    assert user.is_active and user.is_staff and user.is_superuser
