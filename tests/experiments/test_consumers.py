"""The evolution review's websocket, end to end through the real ASGI
application: approvers only; proposals_changed reaches review pages as their
sections; experiment_changed reaches review pages as the experiment's row (its
chart data in it) and the pages of that experiment only as its row, look
history and audit entries; a replay's progress reaches its own page, its
proposal's page (the gates) and the review (that proposal's gates) only; a
proposal's gates moving reach that proposal's page only. Through the real
broadcaster and the Redis channel layer."""

from __future__ import annotations

import json
import re

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from boards import broadcast
from experiments import broadcast as kaizen_broadcast
from experiments import services as kaizen
from kaizen_web.asgi import application
from tests.experiments.genchi_support import history_agent, proposal_in_gates, replay_chunk
from tests.experiments.helpers import experiment_in, line_agent, look, major_proposal, samples, tasks_of
from tests.factories import make_approver, make_editor, make_user
from tests.websockets import ORIGIN, WebsocketCommunicator, connects, session_cookie

# The broadcaster renders in its own thread, from committed data.
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

TIMEOUT = 30
# Sent after everything else: once a connection has it, it has had the rest.
LAST = "<!-- the test's last message -->"


def _last_message(path: str) -> tuple[str, dict]:
    """A message for ``path``'s connections only, through the group they listen to."""
    page = re.search(r"(experiment|proposal|replay)=(\d+)", path)
    if page is None:
        return kaizen_broadcast.REVIEW_GROUP, {"type": "review.update", "html": LAST}
    kind, pk = page.group(1), int(page.group(2))
    return kaizen_broadcast.REVIEW_GROUP, {"type": f"{kind}.update", f"{kind}_id": pk, "html": LAST}


def _last(messages: list[str], kind=lambda message: True) -> str:
    """The last message of this kind: each push carries whole fragments, so the
    last one is what the page shows in the end, however the broadcaster split a
    burst of updates into pushes (under load it may send one update twice)."""
    matching = [message for message in messages if kind(message)]
    assert matching, f"none of the {len(messages)} messages received is of the kind expected"
    return matching[-1]


def _receive_after(paths: list[str], user, action) -> list[list[str]]:
    """Connect to each path as ``user``, run ``action`` (a database call that
    publishes), and collect everything each connection receives for it.

    Once the broadcaster has sent all it had, a last message goes to each
    connection's group: Redis delivers a channel's messages in the order they
    were published, so a connection has had everything once that one arrives."""
    cookie = session_cookie(user)

    async def scenario() -> list[list[str]]:
        communicators = []
        for path in paths:
            communicator = WebsocketCommunicator(application, path, headers=[ORIGIN, cookie])
            connected, _ = await communicator.connect()
            assert connected
            communicators.append(communicator)
        await database_sync_to_async(action)()
        # Rendering a chart takes a moment, and the broadcaster paces itself to
        # its CPU budget: wait for everything to go out, however long it takes.
        assert await database_sync_to_async(broadcast.flush)(timeout=60), "the broadcaster did not finish"
        layer = get_channel_layer()
        for path in dict.fromkeys(paths):
            await layer.group_send(*_last_message(path))
        received = []
        for communicator in communicators:
            messages = []
            while (message := await communicator.receive_from(timeout=TIMEOUT)) != LAST:
                messages.append(message)
            received.append(messages)
            await communicator.disconnect()
        return received

    try:
        return async_to_sync(scenario)()
    finally:
        broadcast.flush(timeout=60)


def test_anonymous_connections_are_refused():
    assert connects("/ws/kaizen/", [ORIGIN]) is False


def test_users_without_the_approve_permission_are_refused():
    assert connects("/ws/kaizen/", [ORIGIN, session_cookie(make_user())]) is False
    assert connects("/ws/kaizen/", [ORIGIN, session_cookie(make_editor())]) is False


def test_an_approver_connects():
    assert connects("/ws/kaizen/", [ORIGIN, session_cookie(make_approver())]) is True
    assert connects("/ws/kaizen/?experiment=1", [ORIGIN, session_cookie(make_approver())]) is True


def test_a_foreign_origin_is_refused():
    headers = [(b"origin", b"http://evil.example"), session_cookie(make_approver())]
    assert connects("/ws/kaizen/", headers) is False


def test_a_new_proposal_reaches_review_pages_as_their_sections():
    agent = line_agent(name="welder")
    made = []

    def propose() -> None:
        made.append(major_proposal(agent))
        kaizen_broadcast.proposals_changed()

    [review] = _receive_after(["/ws/kaizen/"], make_approver(), propose)

    [proposal] = made
    message = _last(review)
    assert re.search(r'<section id="proposals"[^>]*hx-swap-oob="outerHTML"', message)
    assert re.search(r'<section id="experiments"[^>]*hx-swap-oob="outerHTML"', message)
    assert re.search(r'<section id="audit-recent"[^>]*hx-swap-oob="outerHTML"', message)
    assert f'<li id="proposal-{proposal.pk}"' in message
    # Items inside a section are not swapped on their own.
    assert message.count("hx-swap-oob") == 3
    # Rendered without a request: no CSRF token (htmx posts carry the page's).
    assert "csrfmiddlewaretoken" not in message


def test_a_look_reaches_review_pages_as_the_row_with_its_chart_data_and_its_page_as_more():
    experiment = experiment_in("efficacy")
    other = experiment_in("running")
    tasks = tasks_of(experiment.agent, 200)
    broadcast.flush(timeout=60)

    def look_and_publish() -> None:
        # 100 more per arm: 300 each in the efficacy stage.
        samples(experiment, tasks, control=(100, 70), treatment=(100, 75))
        # The look's audit entry publishes the experiment's update (after commit).
        look(experiment)

    review, watching, watching_other = _receive_after(
        ["/ws/kaizen/", f"/ws/kaizen/?experiment={experiment.pk}", f"/ws/kaizen/?experiment={other.pk}"],
        make_approver(),
        look_and_publish,
    )

    row_message = _last(review)
    assert re.match(
        rf'\s*<div id="experiment-{experiment.pk}" class="evo-experiment evo-experiment--running"[^>]*'
        r'hx-swap-oob="outerHTML"',
        row_message,
    )
    assert '<td class="num">300</td><td class="num">225</td><td class="num">75.0%</td>' in row_message
    data = re.search(
        rf'<script type="application/json" id="chart-data-{experiment.pk}">(.*?)</script>', row_message, re.S
    )
    # Three looks: the canary's and two in the efficacy stage (whose line starts anew).
    drawn = json.loads(data.group(1))["data"][0]["y"]
    assert len([y for y in drawn if y is not None]) == 3
    assert re.search(r'<section id="audit-recent"[^>]*hx-swap-oob="outerHTML"', row_message)
    # The review page's forms post with htmx...
    assert f'hx-post="/kaizen/experiments/{experiment.pk}/rollback/"' in row_message
    page_message = _last(watching)
    assert f'<section id="looks-{experiment.pk}"' in page_message
    assert f'<section id="experiment-audit-{experiment.pk}"' in page_message
    assert page_message.count('<tr id="look-') == 3
    # ...the experiment page's plainly, and come back to it.
    assert "hx-post" not in page_message
    assert f'<input type="hidden" name="next" value="/kaizen/experiments/{experiment.pk}/">' in page_message
    assert watching_other == []


def test_a_rollback_reaches_review_pages_as_the_row_ended():
    experiment = experiment_in("running")
    broadcast.flush(timeout=60)

    def roll_back_and_publish() -> None:
        kaizen.experiment_rollback(experiment=experiment, user=make_approver(), note="enough seen")
        kaizen_broadcast.experiment_changed(experiment.pk)
        kaizen_broadcast.proposals_changed()

    [review] = _receive_after(["/ws/kaizen/"], make_approver(), roll_back_and_publish)

    # Two kinds of message, in either order: the row and the sections.
    row = _last(review, lambda message: message.lstrip().startswith("<div id="))
    sections = _last(review, lambda message: not message.lstrip().startswith("<div id="))
    assert '<span class="evo-status evo-status--rolled_back">Rolled back</span>' in row
    assert "enough seen" in row and "/rollback/" not in row
    assert re.search(r'<section id="experiments"[^>]*hx-swap-oob="outerHTML"', sections)
    assert "Recently ended" in sections


# --- the gates: a proposal's page and a replay's page take their own updates only ---------------


def test_the_pages_of_a_proposal_and_a_replay_refuse_non_approvers():
    for path in ("/ws/kaizen/?proposal=1", "/ws/kaizen/?replay=1"):
        assert connects(path, [ORIGIN]) is False, path
        assert connects(path, [ORIGIN, session_cookie(make_user())]) is False, path
        assert connects(path, [ORIGIN, session_cookie(make_editor())]) is False, path
        assert connects(path, [ORIGIN, session_cookie(make_approver())]) is True, path


def _two_proposals_in_gates(settings):
    settings.KAIZEN_REPLAY_RATE = 100_000.0  # unpaced: no live line to spare here
    proposal = proposal_in_gates(history_agent(tasks=60, gates={"shadow": "never", "replay_sample": 60}))
    other = proposal_in_gates(history_agent(tasks=30, gates={"shadow": "never"}))
    broadcast.flush(timeout=60)
    return proposal, other


def test_a_replays_progress_reaches_its_page_its_proposals_page_and_the_review_only(settings):
    proposal, other = _two_proposals_in_gates(settings)
    replay_id = proposal.gates.get(kind="replay").replay_id
    other_replay_id = other.gates.get(kind="replay").replay_id

    review, replay_page, proposal_page, other_replay_page, other_proposal_page = _receive_after(
        [
            "/ws/kaizen/",
            f"/ws/kaizen/?replay={replay_id}",
            f"/ws/kaizen/?proposal={proposal.pk}",
            f"/ws/kaizen/?replay={other_replay_id}",
            f"/ws/kaizen/?proposal={other.pk}",
        ],
        make_approver(),
        # A worker's step: 24 items, then replay_changed after commit.
        lambda: replay_chunk(replay_id),
    )

    page = _last(replay_page)
    assert re.match(rf'\s*<div id="replay-{replay_id}" hx-swap-oob="outerHTML">', page)
    assert '<span class="replay-count">24 / 60</span>' in page
    assert re.search(rf'<section id="replay-items-{replay_id}"[^>]*hx-swap-oob="outerHTML"', page)
    assert page.count('class="replay-item replay-item--done"') == 24
    gates = _last(proposal_page)
    assert re.match(rf'\s*<div id="gates-{proposal.pk}" hx-swap-oob="outerHTML">', gates)
    assert '<span class="replay-count">24 / 60</span>' in gates
    # The gates section is swapped whole: nothing in it on its own.
    assert gates.count("hx-swap-oob") == 1
    strip = _last(review)
    assert re.match(
        rf'\s*<div id="proposal-{proposal.pk}-gates" class="gate-strip" hx-swap-oob="outerHTML">', strip
    )
    assert '<span class="replay-count">24 / 60</span>' in strip
    assert f'hx-post="/kaizen/gates/{proposal.gates.get(kind="replay").pk}/override/"' in strip
    assert other_replay_page == [] and other_proposal_page == []


def test_a_skipped_gate_reaches_its_proposals_page_and_not_another(settings):
    proposal, other = _two_proposals_in_gates(settings)
    gate = proposal.gates.get(kind="replay")

    def skip() -> None:
        kaizen.gate_override(gate=gate, user=make_approver(), note="Replayed by hand.")

    review, proposal_page, replay_page, other_proposal_page = _receive_after(
        [
            "/ws/kaizen/",
            f"/ws/kaizen/?proposal={proposal.pk}",
            f"/ws/kaizen/?replay={gate.replay_id}",
            f"/ws/kaizen/?proposal={other.pk}",
        ],
        make_approver(),
        skip,
    )

    page = _last(proposal_page, lambda message: "proposal-badges" in message)
    for part in ("proposal-badges", "proposal-decision", "gates", "proposal-experiment", "proposal-audit"):
        assert re.search(rf'id="{part}-{proposal.pk}"[^>]*hx-swap-oob="outerHTML"', page), part
    assert '<span class="evo-status evo-status--skipped">Skipped</span>' in page
    assert "Replayed by hand." in page
    # The next gate started: its probes run.
    assert page.count('<span class="evo-status evo-status--running">Running</span>') == 1
    assert "csrfmiddlewaretoken" not in page
    assert '<span class="evo-status evo-status--cancelled">Cancelled</span>' in _last(replay_page)
    sections = _last(review, lambda message: '<section id="proposals"' in message)
    assert f'<li class="gate-chip gate-chip--skipped" id="gate-chip-{gate.pk}">' in sections
    assert other_proposal_page == []
