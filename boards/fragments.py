"""What the websocket pushes: the changed parts of a board, rendered from the
same partials as the page (``boards/board.html``), each marked hx-swap-oob so
the htmx websocket extension swaps it into place by id.

Called by the broadcaster thread (boards.broadcast) after commit, outside any
request: the partials it renders must not need one (no CSRF token, no user).
"""

from __future__ import annotations

from django.template.loader import render_to_string

from boards.models import Board
from boards.selectors import board_agents_get, board_columns_get, board_line_stops_get


def render_board_update(*, board_id: int, column_ids: set[int]) -> str:
    """HTML that brings a browser's board up to date after ``column_ids`` changed:
    those columns, whole, plus the paused banner and the agents' load, which
    any change may have altered. Empty when the board no longer exists."""
    board = Board.objects.filter(pk=board_id).first()
    if board is None:
        return ""
    context = {
        "board": board,
        # Empty column_ids (a board paused or resumed) sends the banner and agents only.
        "columns": board_columns_get(board=board, column_ids=set(column_ids)) if column_ids else [],
        "agents": board_agents_get(board=board),
        "oob": True,
    }
    line_stops = board_line_stops_get(board=board)
    context.update(line_stops=line_stops, board_stopped=any(stop.board_id for stop in line_stops))
    return render_to_string("boards/board.html#board-update", context)
