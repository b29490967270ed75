"""``python manage.py create_api_token <username> [--name NAME]``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.test import Client

from boards.models import ApiToken
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def create_token(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_it_prints_a_token_that_authenticates(user):
    key, note = create_token(user.username)

    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/v1/boards")

    assert response.status_code == 200
    assert "shown only this once" in note
    # stdout is the token and nothing else, so scripts can capture it.
    assert len(key.split()) == 1


def test_it_stores_the_token_hashed_under_its_name(user):
    key, _ = create_token(user.username, "--name", "ci runner")

    token = ApiToken.objects.get(user=user)
    assert token.name == "ci runner"
    assert token.key_hash == ApiToken.hash_key(key)
    assert key not in {token.name, token.prefix, token.key_hash}


def test_each_run_makes_a_new_token(user):
    first, _ = create_token(user.username)
    second, _ = create_token(user.username)

    assert first != second
    assert ApiToken.objects.filter(user=user).count() == 2


def test_it_names_an_unknown_user(db):
    with pytest.raises(CommandError, match="There is no user 'nobody'"):
        create_token("nobody")

    assert not ApiToken.objects.exists()


def test_it_exits_non_zero_for_an_unknown_user(db, capsys):
    # Through the command line itself, as a shell script would see it.
    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", "create_api_token", "nobody"]).execute()

    assert exit_info.value.code != 0
    assert "nobody" in capsys.readouterr().err


def test_it_refuses_an_inactive_user(db):
    user = make_user(is_active=False)

    with pytest.raises(CommandError, match="inactive"):
        create_token(user.username)

    assert not ApiToken.objects.exists()


def test_it_refuses_a_name_too_long_to_store(user):
    with pytest.raises(CommandError, match="--name"):
        create_token(user.username, "--name", "x" * 81)

    assert not ApiToken.objects.exists()
