"""Error pages look like the rest of the product: 404 and 403 extend the site's
layout (header, navigation, stylesheet); 500 stands alone, needing no request
and no context, since it is what shows when those may be what failed."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string
from django.urls import reverse

from tests.factories import make_user

pytestmark = pytest.mark.django_db


def test_an_unknown_page_is_a_styled_404_with_the_navigation(client, user):
    client.force_login(user)

    response = client.get("/boards/no-such-board/")

    assert response.status_code == 404
    html = response.content.decode()
    assert "css/kaizen.css" in html
    assert 'class="site-header"' in html
    assert "<h1>Nothing here</h1>" in html
    assert "/boards/no-such-board/" in html
    assert f'href="{reverse("boards-list")}"' in html


def test_a_refused_page_is_a_styled_403_that_says_what_is_missing(client):
    client.force_login(make_user(username="operator"))

    response = client.post(reverse("andon-cord"), {"reason": "x"})

    assert response.status_code == 403
    html = response.content.decode()
    assert "css/kaizen.css" in html
    assert "<h1>You may not do that</h1>" in html
    assert "Your account (operator) lacks the permission" in html


def test_the_500_page_renders_without_a_request_or_context():
    html = render_to_string("500.html")

    assert "<h1>Something went wrong on our side</h1>" in html
    assert "{%" not in html and "{{" not in html


def test_the_500_page_is_what_an_unhandled_error_shows(client, user, monkeypatch):
    from boards import views

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views, "board_list_get", broken)
    client.raise_request_exception = False
    client.force_login(user)

    response = client.get(reverse("boards-list"))

    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()
