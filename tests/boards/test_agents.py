"""Agents: what they offer is a list of capability names, checked when an agent
is saved through a form (the admin) and read defensively everywhere else; a
pause or resume reaches the board's live view."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.core.exceptions import ValidationError

from boards import broadcast, services
from boards.models import Agent
from kaizen_web.asgi import application
from tests.factories import make_agent, make_board, make_user
from tests.websockets import ORIGIN, WebsocketCommunicator, session_cookie


@pytest.mark.parametrize(
    ("capabilities", "message"),
    [
        ("summarise", "Capabilities must be a list of names"),
        ({"summarise": True}, "Capabilities must be a list of names"),
        (["summarise", ""], "Each capability must be a non-empty name"),
        (["summarise", 3], "Each capability must be a non-empty name"),
        ([" summarise"], "has spaces around it"),
        (["x" * 61], "longer than 60 characters"),
    ],
)
def test_clean_refuses_capabilities_that_are_not_a_list_of_names(capabilities, message):
    agent = Agent(name="checker", capabilities=capabilities)

    with pytest.raises(ValidationError) as err:
        agent.clean()

    assert list(err.value.message_dict) == ["capabilities"]
    assert message in err.value.message_dict["capabilities"][0]


def test_clean_accepts_a_list_of_names():
    Agent(name="checker", capabilities=["summarise", "classify"]).clean()
    Agent(name="checker", capabilities=[]).clean()


def test_can_do_never_matches_part_of_a_name():
    assert Agent(capabilities="summarise").can_do("sum") is False
    assert Agent(capabilities=["summarise"]).can_do("sum") is False
    assert Agent(capabilities=["summarise"]).can_do("summarise") is True
    assert Agent(capabilities="summarise").can_do("") is True


@pytest.mark.django_db
def test_a_string_stored_as_capabilities_offers_nothing(board):
    agent = make_agent(boards=[board])
    # Written past clean(), as a row saved before it checked would be.
    Agent.objects.filter(pk=agent.pk).update(capabilities="summarise")

    with pytest.raises(ValidationError) as err:
        services.task_create(board=board, title="t", input="x", capability="s")

    assert "No agent on this board offers 's' (offered: none)" in err.value.message_dict["capability"][0]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_pausing_an_agent_reaches_a_connected_browser():
    board = make_board(backlog=False)
    agent = make_agent(boards=[board], name="welder")
    headers = [ORIGIN, session_cookie(make_user())]

    async def scenario() -> str:
        communicator = WebsocketCommunicator(application, f"/ws/boards/{board.slug}/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        await database_sync_to_async(services.agent_set_paused)(agent=agent, paused=True)
        html = await communicator.receive_from()
        await communicator.disconnect()
        return html

    try:
        html = async_to_sync(scenario)()
    finally:
        broadcast.flush()

    assert 'id="board-agents"' in html
    assert "badge--paused" in html
    assert "welder" in html
