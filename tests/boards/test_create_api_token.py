"""``python manage.py create_api_token <username> [--name NAME] [--board SLUG ...] [--read-only]``."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.test import Client

from boards.models import ApiToken
from tests.factories import make_board, make_user, make_writer

pytestmark = pytest.mark.django_db


def create_token(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


@pytest.fixture
def user(db):
    # Without options a token may add tasks, which its user must be allowed to do.
    return make_writer()


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


# --- scopes -----------------------------------------------------------------------------


def test_by_default_it_may_read_and_write_every_board(user):
    key, note = create_token(user.username)

    token = ApiToken.objects.get(user=user)
    assert (token.access, token.all_boards) == (ApiToken.Access.WRITE, True)
    assert "read and add tasks to every board" in note


def test_it_limits_a_token_to_the_boards_named(user):
    first, second, other = make_board(), make_board(), make_board()

    key, note = create_token(user.username, "--board", first.slug, "--board", second.slug)

    token = ApiToken.objects.get(user=user)
    assert token.all_boards is False
    assert set(token.boards.all()) == {first, second}
    assert other.slug not in note and first.slug in note
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(f"/api/v1/boards/{other.slug}").status_code == 403
    assert client.get(f"/api/v1/boards/{first.slug}").status_code == 200


def test_it_names_an_unknown_board_and_makes_no_token(user):
    board = make_board()

    with pytest.raises(CommandError, match="There is no board 'nope'"):
        create_token(user.username, "--board", board.slug, "--board", "nope")

    assert not ApiToken.objects.exists()


def test_a_read_only_token_reads_but_cannot_add_tasks(db):
    user = make_user()  # no permission needed to read
    board = make_board()

    key, note = create_token(user.username, "--read-only")

    assert ApiToken.objects.get(user=user).access == ApiToken.Access.READ
    assert "may read every board" in note
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(f"/api/v1/boards/{board.slug}").status_code == 200
    response = client.post(
        f"/api/v1/boards/{board.slug}/tasks", data={"title": "T"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert "read-only" in response.json()["detail"]


def test_it_refuses_a_write_token_for_a_user_who_may_not_add_tasks(db):
    user = make_user()

    with pytest.raises(CommandError, match=r"may not add tasks.*--read-only"):
        create_token(user.username)

    assert not ApiToken.objects.exists()
