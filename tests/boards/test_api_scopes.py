"""API token scopes: which boards a token may use, whether it may add tasks, and
its user's permission to add them. Before scopes, any valid token, even a
permissionless user's, could add tasks to any board."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from boards import services
from boards.models import ApiToken, Task
from tests.boards.api_support import client_for, post_json, token_for
from tests.factories import make_board, make_user, make_writer

pytestmark = pytest.mark.django_db


@pytest.fixture
def boards():
    return make_board(name="Alpha"), make_board(name="Beta")


def test_a_permissionless_users_token_cannot_add_tasks(board):
    # The finding: such a token could add tasks to any board. Even given write
    # access in the admin, its user's missing permission refuses it.
    user = make_user()
    token, key = services.api_token_create(user=user)
    ApiToken.objects.filter(pk=token.pk).update(access=ApiToken.Access.WRITE)

    response = post_json(client_for(key), f"/api/v1/boards/{board.slug}/tasks", {"title": "T"})

    assert response.status_code == 403
    detail = response.json()["detail"]
    assert repr(user.username) in detail and "boards.add_task" in detail
    assert not Task.objects.exists()


def test_a_read_only_token_reads_but_may_not_add_tasks(board):
    client = client_for(token_for(access=ApiToken.Access.READ))

    assert client.get(f"/api/v1/boards/{board.slug}/tasks").status_code == 200
    # Refused before the body is even read: a bad body gets the same 403.
    for body in ({"title": "T"}, {"title": 3}):
        response = post_json(client, f"/api/v1/boards/{board.slug}/tasks", body)
        assert response.status_code == 403
        assert response.json() == {
            "detail": "This API token is read-only: adding tasks needs a write token "
            "(`manage.py create_api_token USER`, without --read-only).",
            "errors": {},
        }
    assert not Task.objects.exists()


def test_a_write_token_of_a_user_who_may_add_tasks_adds_them(board):
    response = post_json(
        client_for(token_for(make_writer())), f"/api/v1/boards/{board.slug}/tasks", {"title": "T"}
    )

    assert response.status_code == 201


def test_a_superusers_write_token_adds_tasks(board):
    admin = make_user(is_superuser=True)

    response = post_json(client_for(token_for(admin)), f"/api/v1/boards/{board.slug}/tasks", {"title": "T"})

    assert response.status_code == 201


def test_a_permission_given_through_a_group_lets_the_token_add_tasks(board):
    # Read with the token in one query (services.api_token_authenticate): the
    # user's groups count as ModelBackend counts them.
    user = make_writer()
    client = client_for(token_for(user))
    user.user_permissions.clear()
    group = Group.objects.create(name="Writers")
    group.permissions.add(Permission.objects.get(content_type__app_label="boards", codename="add_task"))

    assert post_json(client, f"/api/v1/boards/{board.slug}/tasks", {"title": "T"}).status_code == 403
    user.groups.add(group)
    assert post_json(client, f"/api/v1/boards/{board.slug}/tasks", {"title": "T"}).status_code == 201


def test_another_authentication_backend_is_asked_through_the_user(board, settings):
    # The query answers for ModelBackend alone; with other backends configured,
    # the user's has_perm (every backend) decides, as before.
    user = make_writer()
    client = client_for(token_for(user))
    user.user_permissions.clear()
    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "tests.boards.test_api_scopes.AllowAddTask",
    ]

    assert post_json(client, f"/api/v1/boards/{board.slug}/tasks", {"title": "T"}).status_code == 201


class AllowAddTask:
    """An authentication backend that lets everyone add tasks (for the test above)."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user, perm, obj=None):
        return perm == "boards.add_task"


def test_a_user_who_loses_the_permission_loses_it_through_the_token_too(board):
    user = make_writer()
    client = client_for(token_for(user))
    user.user_permissions.clear()

    response = post_json(client, f"/api/v1/boards/{board.slug}/tasks", {"title": "T"})

    assert response.status_code == 403


def test_a_board_scoped_token_sees_and_uses_only_its_boards(boards):
    alpha, beta = boards
    client = client_for(token_for(boards=[alpha]))
    task_on_beta = services.task_create(board=beta, title="Beta's")

    listed = client.get("/api/v1/boards").json()
    refused = [
        client.get(f"/api/v1/boards/{beta.slug}"),
        client.get(f"/api/v1/boards/{beta.slug}/tasks"),
        post_json(client, f"/api/v1/boards/{beta.slug}/tasks", {"title": "T"}),
        client.get(f"/api/v1/tasks/{task_on_beta.pk}"),
        client.get(f"/api/v1/tasks/{task_on_beta.pk}/calls"),
    ]

    assert [b["slug"] for b in listed] == [alpha.slug]
    for response in refused:
        assert response.status_code == 403
        detail = response.json()["detail"]
        assert f"may not use board {beta.slug!r}" in detail and repr(alpha.slug) in detail
    assert client.get(f"/api/v1/boards/{alpha.slug}").status_code == 200
    assert post_json(client, f"/api/v1/boards/{alpha.slug}/tasks", {"title": "T"}).status_code == 201
    assert Task.objects.filter(board=beta).count() == 1


def test_an_unknown_board_is_404_for_a_token_of_every_board(db):
    response = client_for(token_for()).get("/api/v1/boards/nope")

    assert response.status_code == 404


def test_the_service_refuses_a_write_token_for_a_user_who_may_not_add_tasks(db):
    with pytest.raises(ValidationError) as refused:
        services.api_token_create(user=make_user(), access=ApiToken.Access.WRITE)

    assert "may not add tasks" in refused.value.message_dict["access"][0]
    assert not ApiToken.objects.exists()


def test_the_service_refuses_a_token_for_no_board(db):
    with pytest.raises(ValidationError, match="at least one board"):
        services.api_token_create(user=make_user(), boards=[])


def test_a_new_token_is_read_only_on_every_board_unless_said_otherwise(db):
    token, _ = services.api_token_create(user=make_user())

    assert (token.access, token.all_boards) == (ApiToken.Access.READ, True)


@pytest.mark.django_db(transaction=True)
def test_tokens_made_before_scopes_become_read_only_on_every_board():
    executor = MigrationExecutor(connection)
    before = [("boards", "0005_task_experiment")]
    # Every app's latest migration, not only boards': going back to boards 0005
    # unapplies the other apps' migrations that depend on later boards ones
    # (andon's budgets), and the tests after this one need them back.
    after = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    User = old_apps.get_model("auth", "User")
    OldToken = old_apps.get_model("boards", "ApiToken")
    user = User.objects.create(username="legacy")
    OldToken.objects.create(user=user, prefix="kz_legacy", key_hash="0" * 64)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)

    token = ApiToken.objects.get(prefix="kz_legacy")
    assert (token.access, token.all_boards) == (ApiToken.Access.READ, True)
