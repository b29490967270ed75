"""The login page (django.contrib.auth's view, our template)."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_it_renders_the_form_for_anonymous_users(client):
    response = client.get(reverse("login"))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<label for="id_username">Username</label>' in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_it_logs_in_and_goes_to_the_page_asked_for(client, user, board):
    response = client.post(
        reverse("login"),
        {"username": user.username, "password": "pw-for-tests-1", "next": board.get_absolute_url()},
    )

    assert response.status_code == 302
    assert response.url == board.get_absolute_url()


def test_a_wrong_password_shows_an_error(client, user):
    response = client.post(reverse("login"), {"username": user.username, "password": "wrong"})

    assert response.status_code == 200
    assert "Please enter a correct username and password." in response.content.decode()
