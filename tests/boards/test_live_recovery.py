"""Live updates that could not be sent are not lost: while Redis is down the
broadcaster remembers what it owed, and once Redis is back (and the web server's
channel layer has subscribed again) a board gets its whole update and the other
pages are told to catch up. And a process that ends (a management command) sends
what it changed before it exits.

A Redis server of the test's own, on a free port, stopped and started again;
the real ASGI application through WebsocketCommunicator; real commits."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async

from andon import broadcast as andon_broadcast
from boards import broadcast, services
from boards.models import Column
from kaizen_web import live
from kaizen_web.asgi import application
from tests.factories import column, make_board, make_reviewer, make_user
from tests.live import BASE_DIR, child_env, free_port
from tests.websockets import ORIGIN, WebsocketCommunicator, session_cookie

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class OwnRedis:
    """A redis-server on a free loopback port, with no persistence: stopping it
    loses every key and subscription, as a crash would."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path, settings) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    # The channel layer (web server side and broadcaster) on this Redis; Celery and
    # the rest stay on the suite's.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [server.url], "prefix": "kaizen-recovery"},
        }
    }
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broadcaster(own_redis, monkeypatch) -> Iterator[live.Broadcaster]:
    """A broadcaster of the test's own (its thread takes the layer above), quick to retry."""
    fresh = live.Broadcaster()
    fresh.RETRY_FIRST = 0.2
    fresh.RETRY_MAX = 0.5
    fresh.SETTLE = 1.5
    monkeypatch.setattr(live, "_broadcaster", fresh)
    yield fresh
    fresh.flush(10)


async def _until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(0.05)


def test_a_board_change_made_while_redis_is_down_reaches_the_browser_once_it_is_back(own_redis, broadcaster):
    # No Backlog, no agents: a task lands in Ready, and nothing else moves.
    board = make_board(backlog=False)
    cookie = session_cookie(make_user())
    ready = column(board, "ready")
    all_columns = set(Column.objects.filter(board=board).values_list("pk", flat=True))

    async def scenario() -> tuple[int, str]:
        communicator = WebsocketCommunicator(
            application, f"/ws/boards/{board.slug}/", headers=[ORIGIN, cookie]
        )
        connected, _ = await communicator.connect()
        assert connected
        await database_sync_to_async(services.task_create)(board=board, title="Before the outage")
        assert "Before the outage" in await communicator.receive_from()

        await sync_to_async(own_redis.stop)()
        task = await database_sync_to_async(services.task_create)(board=board, title="Made while down")
        await _until("the broadcaster to fail and fall behind", lambda: broadcaster._behind)
        await sync_to_async(own_redis.start)()

        html = await communicator.receive_from()
        await communicator.disconnect()
        return task.pk, html

    task_pk, html = async_to_sync(scenario)()

    # The whole board: every column (which changed is not known), banner and agents.
    assert {int(pk) for pk in re.findall(r'<section id="column-(\d+)"', html)} == all_columns
    ready_html = html[html.index(f'<section id="column-{ready.pk}"') :].split("</section>")[0]
    assert f'<li id="task-{task_pk}"' in ready_html and "Made while down" in ready_html
    assert 'id="board-banner"' in html and 'id="board-agents"' in html
    assert broadcaster.flush(10) is True


def test_the_inbox_is_told_to_catch_up_on_what_it_missed_while_redis_was_down(own_redis, broadcaster):
    reviewer = make_reviewer()
    cookie = session_cookie(reviewer)

    async def scenario() -> dict:
        communicator = WebsocketCommunicator(application, "/ws/andon/", headers=[ORIGIN, cookie])
        connected, _ = await communicator.connect()
        assert connected
        await sync_to_async(own_redis.stop)()
        # What a line stop sends the inbox (its banner), rendered and lost.
        await sync_to_async(andon_broadcast.line_stops_changed)()
        await _until("the broadcaster to fall behind", lambda: broadcaster._behind)
        await sync_to_async(own_redis.start)()
        # The consumer closes with 1012: the ws extension reconnects, and the
        # page re-fetches what it shows (inbox.js does on every wsOpen).
        return await communicator.receive_output(timeout=30)

    assert async_to_sync(scenario)() == {"type": "websocket.close", "code": 1012}
    assert broadcaster.flush(10) is True


def test_a_change_made_by_a_management_command_is_pushed_before_it_exits(tmp_path):
    # apply_config in a second terminal: its process ends right after the
    # commit, and the broadcaster thread (a daemon) used to die unsent with it.
    config = tmp_path / "line.yaml"
    text = """\
boards:
  - name: Exit line
    slug: exit-line
    columns:
      - {{name: Ready, role: ready, wip_limit: {limit}}}
      - {{name: Doing, role: in_progress, wip_limit: 2}}
      - {{name: Done, role: done}}
"""
    config.write_text(text.format(limit=3))
    run = [sys.executable, str(BASE_DIR / "manage.py"), "apply_config", str(config)]
    first = subprocess.run(run, env=child_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    cookie = session_cookie(make_user())
    ready = Column.objects.get(board__slug="exit-line", role="ready")
    broadcast.flush()
    config.write_text(text.format(limit=7))

    async def scenario() -> tuple[subprocess.CompletedProcess, str]:
        communicator = WebsocketCommunicator(application, "/ws/boards/exit-line/", headers=[ORIGIN, cookie])
        connected, _ = await communicator.connect()
        assert connected
        done = await sync_to_async(subprocess.run)(
            run, env=child_env(), capture_output=True, text=True, timeout=120
        )
        html = await communicator.receive_from()
        await communicator.disconnect()
        return done, html

    done, html = async_to_sync(scenario)()

    assert done.returncode == 0, done.stderr
    ready_html = html[html.index(f'<section id="column-{ready.pk}"') :].split("</section>")[0]
    assert re.search(r"0\s*/\s*7", ready_html)
