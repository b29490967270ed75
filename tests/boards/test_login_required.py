"""Every page needs a login (kaizen_web.middleware.HtmxLoginRequiredMiddleware).

A browser gets the usual redirect to the login page. An htmx request, which
would follow that redirect and swap the login page into the board, gets
HX-Redirect to the login page instead, with `next` set to the page the browser
shows, so htmx sends the whole browser there."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from tests.factories import column

pytestmark = pytest.mark.django_db


def _htmx(page_url: str) -> dict[str, str]:
    return {"HX-Request": "true", "HX-Current-URL": page_url}


def test_a_page_redirects_a_browser_without_a_session_to_the_login_page(client, board):
    response = client.get(board.get_absolute_url())

    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={board.get_absolute_url()}"


def test_an_htmx_request_without_a_session_sends_the_browser_to_log_in(client, board):
    page = f"http://testserver{board.get_absolute_url()}"

    response = client.get(reverse("boards-body", kwargs={"slug": board.slug}), headers=_htmx(page))

    assert response.status_code == 401
    assert response["HX-Redirect"] == f"{reverse('login')}?next={board.get_absolute_url()}"
    # Nothing for htmx to swap into the board, and no redirect for it to follow.
    assert "Location" not in response
    assert b"id_username" not in response.content


def test_an_htmx_post_without_a_session_sends_the_browser_to_log_in(client, board):
    page = f"http://testserver{board.get_absolute_url()}?view=compact"
    task_url = reverse("boards-task-move", kwargs={"slug": board.slug, "pk": 1})

    response = client.post(task_url, {"column": column(board, "done").pk}, headers=_htmx(page))

    assert response.status_code == 401
    login = urlsplit(response["HX-Redirect"])
    assert login.path == reverse("login")
    # The page with its query, not the endpoint the request went to.
    assert parse_qs(login.query) == {"next": [f"{board.get_absolute_url()}?view=compact"]}


def test_a_page_of_another_site_is_not_used_as_next(client, board):
    response = client.get(
        reverse("boards-body", kwargs={"slug": board.slug}), headers=_htmx("https://evil.example/boards/")
    )

    assert response.status_code == 401
    assert response["HX-Redirect"] == reverse("login")


def test_an_htmx_request_with_a_session_is_answered_as_usual(client, user, board):
    client.force_login(user)

    response = client.get(
        reverse("boards-body", kwargs={"slug": board.slug}),
        headers=_htmx(f"http://testserver{board.get_absolute_url()}"),
    )

    assert response.status_code == 200
    assert "HX-Redirect" not in response
    assert f'id="column-{column(board, "ready").pk}"' in response.content.decode()


def test_the_login_page_itself_needs_no_session_for_htmx_either(client):
    response = client.get(reverse("login"), headers=_htmx("http://testserver/accounts/login/"))

    assert response.status_code == 200
    assert "HX-Redirect" not in response
