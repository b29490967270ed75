"""The andon inbox's websocket, end to end through the real ASGI application:
reviewers only; a new escalation reaches the connections whose filters it
matches, as a row to put on top of the list; a decision reaches everyone as the
row's deletion. Through the real broadcaster and the Redis channel layer."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async

from andon import services as andon_services
from andon.models import Escalation
from boards import broadcast
from kaizen_web.asgi import application
from tests.andon.helpers import escalate
from tests.factories import make_agent, make_board, make_reviewer, make_user
from tests.websockets import ORIGIN, WebsocketCommunicator, connects, session_cookie

# Services broadcast after commit: these tests need real commits.
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

# Long enough for a loaded machine: a receive returns as soon as its message comes.
TIMEOUT = 30


def _stats(message: str) -> bool:
    return 'id="inbox-stats"' in message


def _receive_after(path: str, user, action, until=_stats) -> list[str]:
    """Connect as ``user``, run ``action`` (a database call), and collect the
    messages up to and including the first one ``until`` accepts (by default the
    inbox figures, which every change of escalations ends with)."""
    cookie = session_cookie(user)

    async def scenario() -> list[str]:
        communicator = WebsocketCommunicator(application, path, headers=[ORIGIN, cookie])
        connected, _ = await communicator.connect()
        assert connected
        await database_sync_to_async(action)()
        messages = []
        while not messages or not until(messages[-1]):
            messages.append(await communicator.receive_from(timeout=TIMEOUT))
        await communicator.disconnect()
        return messages

    try:
        return async_to_sync(scenario)()
    finally:
        broadcast.flush()


@pytest.fixture
def line():
    board = make_board(name="Welds")
    make_agent(boards=[board], quality_checks=[{"check": "regex", "must_match": "NEVER-MATCHES"}])
    return board


def test_anonymous_connections_are_refused():
    assert connects("/ws/andon/", [ORIGIN]) is False


def test_users_who_are_not_reviewers_are_refused():
    assert connects("/ws/andon/", [ORIGIN, session_cookie(make_user())]) is False


def test_a_reviewer_connects():
    assert connects("/ws/andon/", [ORIGIN, session_cookie(make_reviewer())]) is True


def test_a_foreign_origin_is_refused():
    headers = [(b"origin", b"http://evil.example"), session_cookie(make_reviewer())]
    assert connects("/ws/andon/", headers) is False


def test_a_reviewer_receives_an_opened_escalation_as_a_row_for_the_top_of_the_list(line):
    made: list[Escalation] = []

    messages = _receive_after(
        "/ws/andon/",
        make_reviewer(),
        lambda: made.append(escalate(line, title="Weld seam 12")),
        until=lambda m: "Weld seam 12" in m,
    )

    [escalation] = made
    row_message = messages[-1]
    assert f'id="escalation-{escalation.pk}"' in row_message
    assert re.match(
        r'\s*<div hx-swap-oob="afterbegin:#escalation-list">\s*<li id="escalation-\d+"', row_message
    )
    row = re.search(r"<li [^>]*>", row_message).group(0)
    assert "hx-swap-oob" not in row
    assert "Weld seam 12" in row_message
    # Rendered without a request: no CSRF token in it, and nobody's "is-mine".
    assert "csrfmiddlewaretoken" not in row_message and "is-mine" not in row_message
    # The row as the page draws it, with the agent's record.
    assert "1 defect in its last 1 output" in row_message


def test_a_filtered_connection_does_not_receive_another_boards_escalation(line):
    other = make_board(name="Paint")
    made: list[Escalation] = []

    messages = _receive_after(
        f"/ws/andon/?board={other.pk}", make_reviewer(), lambda: made.append(escalate(line))
    )

    assert made
    # Only the figures came: the row was for another board.
    assert messages == [messages[-1]]
    assert "escalation-" not in messages[-1]


def test_a_filtered_connection_receives_its_boards_escalation(line):
    made: list[Escalation] = []

    messages = _receive_after(
        f"/ws/andon/?board={line.pk}",
        make_reviewer(),
        lambda: made.append(escalate(line, title="Paint run")),
        until=lambda m: "Paint run" in m,
    )

    assert f'id="escalation-{made[0].pk}"' in messages[-1]


def test_a_check_filter_drops_escalations_without_that_failure(line):
    messages = _receive_after("/ws/andon/?check=confidence", make_reviewer(), lambda: escalate(line))

    assert messages == [messages[-1]]


def test_a_decision_reaches_everyone_as_the_rows_deletion(line):
    escalation = escalate(line)
    broadcast.flush()
    ana = make_reviewer(username="ana")

    gone = f'<div id="escalation-{escalation.pk}" hx-swap-oob="delete"></div>'

    messages = _receive_after(
        f"/ws/andon/?board={make_board().pk}",
        make_reviewer(),
        lambda: andon_services.escalation_approve(escalation=escalation, user=ana),
        until=lambda m: gone in m,
    )

    assert re.search(r'id="inbox-stats"[^>]*hx-swap-oob="outerHTML"', messages[-1])


def test_a_claim_reaches_everyone_as_the_row_replaced(line):
    escalation = escalate(line)
    broadcast.flush()
    ana = make_reviewer(username="ana")
    cookie = session_cookie(make_reviewer())

    async def scenario() -> str:
        communicator = WebsocketCommunicator(application, "/ws/andon/", headers=[ORIGIN, cookie])
        connected, _ = await communicator.connect()
        assert connected
        await database_sync_to_async(andon_services.escalation_claim)(escalation=escalation, user=ana)
        html = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return html

    try:
        html = async_to_sync(scenario)()
    finally:
        broadcast.flush()

    assert re.match(rf'\s*<li id="escalation-{escalation.pk}"[^>]*hx-swap-oob="outerHTML"', html)
    assert 'data-claimed-by="ana"' in html


def test_an_identical_escalation_updates_its_groups_row_in_place(line):
    first = escalate(line, title="Weld seam 12")
    broadcast.flush()
    made: list[Escalation] = []

    messages = _receive_after(
        "/ws/andon/",
        make_reviewer(),
        lambda: made.append(escalate(line, title="Weld seam 12, again")),
        until=lambda m: "Weld seam 12, again" in m,
    )

    row_message = messages[-1]
    # The group keeps its oldest member's id: the browser merges it into that row.
    assert re.match(
        rf'\s*<div hx-swap-oob="afterbegin:#escalation-list">\s*<li id="escalation-{first.pk}"', row_message
    )
    assert f'id="escalation-{made[0].pk}"' not in row_message
    assert "2 identical escalations" in row_message
    assert f'name="members" value="{first.pk},{made[0].pk}"' in row_message


def test_deciding_a_groups_oldest_member_alone_moves_the_row_to_the_next(line):
    first = escalate(line, title="Weld seam 12")
    second = escalate(line, title="Weld seam 12, again")
    broadcast.flush()
    ana = make_reviewer(username="ana")

    messages = _receive_after(
        "/ws/andon/",
        make_reviewer(),
        lambda: andon_services.escalation_approve(escalation=first, user=ana),
        until=lambda m: f'<li id="escalation-{second.pk}"' in m,
    )

    text = "".join(messages)
    assert f'<div id="escalation-{first.pk}" hx-swap-oob="delete"></div>' in text
    assert text.index(f'id="escalation-{first.pk}" hx-swap-oob="delete"') < text.index(
        f'<li id="escalation-{second.pk}"'
    )
    assert 'id="inbox-history"' in text and "Weld seam 12" in text


def test_a_failure_warning_reaches_everyone_as_the_row_replaced(line):
    """The embedder worker's failure warning (andon.failure_warnings) for an open
    escalation: its row, with the warning, for every inbox to merge in."""
    from andon import failure_warnings
    from experiments import knowledge, vectors

    vectors.indexes_clear()
    ana = make_reviewer(username="ana")
    past = escalate(
        line, title="Reply to #48213 (Laura M.)", input="Charged 19.90 twice on 4 March; refunded."
    )
    andon_services.escalation_reject(escalation=past, user=ana, reason="Tone too informal.")
    knowledge.patterns_embed(budget_seconds=60)
    escalation = escalate(
        line, title="Reply to #48500 (Jana)", input="Charged 29.00 twice on 9 March; refunded."
    )
    broadcast.flush()

    try:
        messages = _receive_after(
            "/ws/andon/",
            make_reviewer(),
            failure_warnings.escalation_warnings_compute,
            until=lambda m: "similar-warning" in m,
        )
    finally:
        vectors.indexes_clear()

    row = messages[-1]
    assert re.match(rf'\s*<li id="escalation-{escalation.pk}"[^>]*hx-swap-oob="outerHTML"', row)
    assert f'id="escalation-{escalation.pk}-similar"' in row
    assert "1 similar task was rejected: Tone too informal" in row
    assert "similar-warning--warn" in row
