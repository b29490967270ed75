"""The board's websocket, end to end through the real ASGI application: the
session cookie authenticates, the origin is checked, and a change committed by
a service reaches the browser as fragments, through the real broadcaster and
the Redis pub/sub channel layer (REDIS_URL)."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from boards import broadcast, services
from boards.models import Board
from kaizen_web.asgi import application
from tests.factories import column, make_board, make_user
from tests.websockets import ORIGIN, WebsocketCommunicator, connects, session_cookie

# Services broadcast after commit: these tests need real commits.
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live_board() -> Board:
    return make_board()


def test_anonymous_connections_are_refused(live_board):
    assert connects(f"/ws/boards/{live_board.slug}/", [ORIGIN]) is False


def test_a_logged_in_user_connects(live_board):
    assert connects(f"/ws/boards/{live_board.slug}/", [ORIGIN, session_cookie(make_user())]) is True


def test_an_unknown_board_is_refused(live_board):
    assert connects("/ws/boards/no-such-board/", [ORIGIN, session_cookie(make_user())]) is False


def test_a_foreign_origin_is_refused(live_board):
    headers = [(b"origin", b"http://evil.example"), session_cookie(make_user())]
    assert connects(f"/ws/boards/{live_board.slug}/", headers) is False


def test_a_committed_task_reaches_a_connected_browser_as_a_fragment():
    # No Backlog and no agents: the task lands in Ready and nothing pulls it on,
    # so exactly one change is broadcast.
    live_board = make_board(backlog=False)
    cookie = session_cookie(make_user())
    ready = column(live_board, "ready")

    async def scenario() -> tuple[int, str]:
        communicator = WebsocketCommunicator(
            application, f"/ws/boards/{live_board.slug}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect()
        assert connected
        task = await database_sync_to_async(services.task_create)(board=live_board, title="Pushed card")
        html = await communicator.receive_from()
        await communicator.disconnect()
        return task.pk, html

    try:
        task_pk, html = async_to_sync(scenario)()
    finally:
        broadcast.flush()

    assert re.search(rf'<section id="column-{ready.pk}"[^>]*hx-swap-oob="outerHTML"', html)
    assert f'<li id="task-{task_pk}"' in html
    assert "Pushed card" in html


def test_a_move_reaches_a_connected_browser_as_a_fragment(live_board):
    user = make_user()
    cookie = session_cookie(user)
    task = services.task_create(board=live_board, title="Moving card")
    # What a worker does when the commit asks it to pull: Backlog -> Ready.
    services.board_pull(board_id=live_board.pk)
    broadcast.flush()
    task.refresh_from_db()
    ready, done = column(live_board, "ready"), column(live_board, "done")
    assert task.column == ready

    async def scenario() -> str:
        communicator = WebsocketCommunicator(
            application, f"/ws/boards/{live_board.slug}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect()
        assert connected
        await database_sync_to_async(services.task_move)(task=task, to_column=done, user=user)
        html = await communicator.receive_from()
        await communicator.disconnect()
        return html

    try:
        html = async_to_sync(scenario)()
    finally:
        broadcast.flush()

    sections = {int(pk) for pk in re.findall(r'<section id="column-(\d+)"', html)}
    assert sections == {ready.pk, done.pk}
    done_html = html[html.index(f'<section id="column-{done.pk}"') :]
    assert f'<li id="task-{task.pk}"' in done_html
    assert html.count(f'<li id="task-{task.pk}"') == 1


def test_updates_published_for_another_redis_database_do_not_arrive(live_board):
    """Redis pub/sub ignores the database number, so instances sharing a Redis
    server must not share group names: the layer's prefix names the database."""
    # The next database, wrapping round Redis's default 16 (a run may be given the last one).
    other_db = (int(settings.REDIS_URL.rsplit("/", 1)[1] or 0) + 1) % 16
    other_url = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{other_db}"
    other_instance = RedisPubSubChannelLayer(hosts=[other_url], prefix=f"kaizen-db{other_db}")
    group = broadcast.board_group(live_board.pk)
    cookie = session_cookie(make_user())

    async def scenario() -> str:
        communicator = WebsocketCommunicator(
            application, f"/ws/boards/{live_board.slug}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect()
        assert connected
        await other_instance.group_send(group, {"type": "board.update", "html": "from another instance"})
        await get_channel_layer().group_send(group, {"type": "board.update", "html": "from this instance"})
        html = await communicator.receive_from()
        await communicator.disconnect()
        await other_instance.flush()
        return html

    assert async_to_sync(scenario)() == "from this instance"


def test_an_update_is_forwarded_without_a_trip_to_the_database_thread(live_board, monkeypatch):
    # Channels closes stale database connections in a thread before every
    # handler; forwarding rendered HTML needs none of it (one hop per socket
    # per update made a quarter of the web server's work with 50 watchers).
    import channels.consumer

    hops = []
    original = channels.consumer.aclose_old_connections

    async def counted() -> None:
        hops.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    cookie = session_cookie(make_user())
    group = broadcast.board_group(live_board.pk)

    async def scenario() -> tuple[list[str], int]:
        communicator = WebsocketCommunicator(
            application, f"/ws/boards/{live_board.slug}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect()
        assert connected
        before = len(hops)
        for n in range(3):
            await get_channel_layer().group_send(group, {"type": "board.update", "html": f"update {n}"})
        received = [await communicator.receive_from() for _ in range(3)]
        during = len(hops) - before
        await communicator.disconnect()
        return received, during

    received, hops_during = async_to_sync(scenario)()
    assert received == ["update 0", "update 1", "update 2"]
    assert hops_during == 0
    assert hops  # the connection's own messages still go through channels' dispatch
