"""The boards list."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from boards import services
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db


def test_it_redirects_anonymous_users_to_login(client):
    response = client.get(reverse("boards-list"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_the_site_root_leads_to_the_boards(client, user):
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 302
    assert response.url == reverse("boards-list")


def test_it_lists_boards_with_their_column_counts(client, user):
    board = make_board(name="Support triage")
    make_agent(boards=[board])
    for i in range(3):
        services.task_create(board=board, title=f"Ticket {i}")
    make_board(name="Research")
    client.force_login(user)

    response = client.get(reverse("boards-list"))

    assert response.status_code == 200
    html = response.content.decode()
    assert f'<a href="{board.get_absolute_url()}">Support triage</a>' in html
    assert "Research" in html
    assert re.search(r"<dt>Backlog</dt>\s*<dd>3</dd>", html)
    assert re.search(r'<dt>Ready</dt>\s*<dd>0<span class="muted"> / 5</span></dd>', html)
    assert "1 agent<" in html


def test_a_column_without_a_wip_limit_is_counted_up_to_the_cap(client, user, settings):
    settings.KAIZEN_COLUMN_COUNT_CAP = 2
    settings.KAIZEN_COLUMN_CARD_LIMIT = 1  # the cap is at least one more than the cards drawn
    board = make_board(name="Support triage")
    for i in range(3):
        services.task_create(board=board, title=f"Ticket {i}")
    client.force_login(user)

    html = client.get(reverse("boards-list")).content.decode()

    assert re.search(r"<dt>Backlog</dt>\s*<dd>2\+</dd>", html)
    assert re.search(r'<dt>Ready</dt>\s*<dd>0<span class="muted"> / 5</span></dd>', html)


def test_its_query_count_does_not_grow_with_boards(client, user, django_assert_max_num_queries):
    for _ in range(5):
        services.task_create(board=make_board(), title="A task")
    client.force_login(user)
    # +2: the nav asks for the user's permissions (the andon link is for reviewers only).
    with django_assert_max_num_queries(7):
        client.get(reverse("boards-list"))


def test_the_nav_links_admin_for_staff_only(client, user):
    client.force_login(user)
    assert reverse("admin:index") not in client.get(reverse("boards-list")).content.decode()

    user.is_staff = True
    user.save()
    assert reverse("admin:index") in client.get(reverse("boards-list")).content.decode()


def test_logout_is_a_post_form(client, user):
    client.force_login(user)

    html = client.get(reverse("boards-list")).content.decode()

    assert re.search(rf'<form method="post" action="{reverse("logout")}"', html)
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("boards-list")).status_code == 302
