"""Every writer that locks a board row takes the same no-key lock, so the lock
excludes the others but never blocks a TaskEvent or Task insert on the board
(which takes KEY SHARE on it through the foreign key)."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from boards import services
from boards.config import config_apply, config_parse
from tests.factories import make_agent, make_board

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

CONFIG = """\
boards:
  - name: Line
    slug: line
    columns:
      - {name: Backlog, role: backlog}
      - {name: Ready, role: ready, wip_limit: 3}
      - {name: Doing, role: in_progress, wip_limit: 2}
      - {name: Done, role: done}
"""


def _board_locks(queries) -> list[str]:
    """The locking clause of every query that locks rows of boards_board."""
    return [
        re.search(r"FOR (NO KEY )?UPDATE", q["sql"]).group(0)
        for q in queries
        if re.search(r'FROM "boards_board"', q["sql"]) and re.search(r"FOR (NO KEY )?UPDATE", q["sql"])
    ]


def test_config_apply_locks_boards_without_blocking_event_inserts():
    config_apply(document=config_parse(CONFIG, filename="line.yaml"))  # the board exists now

    with CaptureQueriesContext(connection) as ctx:
        config_apply(document=config_parse(CONFIG, filename="line.yaml"))

    assert _board_locks(ctx.captured_queries) == ["FOR NO KEY UPDATE"]


def test_services_lock_boards_the_same_way():
    board = make_board()
    make_agent(boards=[board])
    services.task_create(board=board, title="t", input="x")

    with CaptureQueriesContext(connection) as ctx:
        services.board_pull(board_id=board.pk)

    assert _board_locks(ctx.captured_queries) == ["FOR NO KEY UPDATE"]
