"""Live updates of the boards: after a change commits, the changed columns of a
board are re-rendered once, from the page's own template partials
(``boards.fragments``), and published to the board's Channels group; consumers
forward the HTML as it is.

They travel through the project's one transport (``kaizen_web.live``): the
columns asked for one board within a burst merge, so a burst of moves becomes
one message per board, each column rendered at its latest state only once.
After a Redis outage a board is sent whole (every column, banner and agents).
"""

from __future__ import annotations

from collections.abc import Iterable

from boards.fragments import render_board_update
from boards.models import Column
from kaizen_web import live

# Kept here for the tests and benchmarks that flush the board's updates or time them.
from kaizen_web.live import Broadcaster, flush  # noqa: F401


def board_group(board_id: int) -> str:
    return f"board_{board_id}"


def _render_columns(board_id: int, column_ids: set[int]) -> list[live.Message]:
    html = render_board_update(board_id=board_id, column_ids=column_ids)
    return [(board_group(board_id), {"type": "board.update", "html": html})] if html else []


def _render_board(board_id: int) -> list[live.Message]:
    # Every column: which ones changed while the update could not be sent is not known.
    column_ids = set(Column.objects.filter(board_id=board_id).values_list("pk", flat=True))
    return _render_columns(board_id, column_ids)


BOARD_COLUMNS = live.Topic(
    name="board", render=_render_columns, render_whole=_render_board, group=board_group
)


def columns_changed(board_id: int, column_ids: Iterable[int]) -> None:
    """Schedule a live update of these columns of a board (call after commit)."""
    live.changed(BOARD_COLUMNS, board_id, column_ids)
