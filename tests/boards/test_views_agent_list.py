"""The agents page: every agent, its boards, models, concurrency, state and prompt version."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from boards import services
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db

URL = reverse("boards-agent-list")


def _row(html: str, agent) -> str:
    return re.search(rf'<tr id="agent-{agent.pk}">(.*?)</tr>', html, re.S).group(1)


def test_it_redirects_anonymous_users_to_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_rejects_post(client, user):
    client.force_login(user)
    assert client.post(URL).status_code == 405


def test_it_lists_each_agent_with_boards_models_concurrency_and_prompt_version(client, user):
    support, sales = make_board(name="Support"), make_board(name="Sales")
    cascade = make_agent(
        boards=[support, sales],
        name="triage",
        concurrency=6,
        cascade=[
            {"provider": "simulated", "model": "sim-small", "threshold": 0.8},
            {"provider": "simulated", "model": "sim-large"},
        ],
    )
    real = make_agent(boards=[], name="real", cascade=[{"provider": "openai", "model": "gpt-4o-mini"}])
    cascade.prompt_template = "Triage: {input}"
    services.agent_save(agent=cascade)
    client.force_login(user)

    html = client.get(URL).content.decode()

    row = _row(html, cascade)
    assert f'<a href="{cascade.get_absolute_url()}">triage</a>' in row
    assert "Sales" in row and "Support" in row and support.get_absolute_url() in row
    assert "sim-small → sim-large" in row
    assert "badge--sim" in row
    assert '<td class="num">6</td>' in row
    assert "v2" in row
    real_row = _row(html, real)
    assert "gpt-4o-mini" in real_row and "badge--sim" not in real_row
    assert "none" in real_row
    assert "v1" in real_row


def test_it_says_in_words_which_agents_are_paused_and_names_custom_classes(client, user):
    resting = make_agent(boards=[make_board()], name="resting")
    services.agent_set_paused(agent=resting, paused=True)
    custom = make_agent(boards=[], name="keywords", implementation="boards.example_agents.KeywordClassifier")
    client.force_login(user)

    html = client.get(URL).content.decode()

    assert re.search(r">\s*paused\s*<", _row(html, resting))
    custom_row = _row(html, custom)
    assert "KeywordClassifier" in custom_row and "custom class" in custom_row
    assert "paused" not in custom_row


def test_the_nav_links_here_and_marks_the_page(client, user):
    client.force_login(user)

    html = client.get(URL).content.decode()

    assert f'<a href="{URL}" aria-current="page">Agents</a>' in html
    board_page = client.get(make_board().get_absolute_url()).content.decode()
    assert f'<a href="{URL}">Agents</a>' in board_page


def test_the_query_count_does_not_grow_with_the_number_of_agents(client, user, django_assert_max_num_queries):
    boards = [make_board() for _ in range(3)]
    for i in range(30):
        make_agent(boards=boards[: 1 + i % 3], name=f"agent {i:02}")
    client.force_login(user)

    # +2: the nav asks for the user's permissions (the andon link is for reviewers only).
    with django_assert_max_num_queries(6):
        response = client.get(URL)

    assert response.content.decode().count('<tr id="agent-') == 30


def test_it_says_when_there_are_no_agents(client, user):
    client.force_login(user)

    assert "No agents yet." in client.get(URL).content.decode()
