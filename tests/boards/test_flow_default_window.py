"""The default window of the Flow and Muda pages: the last 7 days, or since the
board was made when that is later, so a new board's charts are not a week of
nothing with its life squeezed into the last pixels."""

from datetime import timedelta

from django.utils import timezone

from andon.muda import muda_window_get
from boards.flow_report import flow_query_resolve
from boards.models import Board
from tests.factories import make_board


def test_a_new_board_s_window_starts_when_the_board_was_made(db):
    board = make_board()
    now = board.created_at + timedelta(minutes=5)

    flow_since = flow_query_resolve(board=board, now=now).where.since
    muda_since, muda_until = muda_window_get(since=None, until=None, now=now, board=board)

    started = board.created_at.replace(second=0, microsecond=0)
    assert flow_since == started and muda_since == started and muda_until == now


def test_an_older_board_s_window_is_the_last_7_days(db):
    board = make_board()
    Board.objects.filter(pk=board.pk).update(created_at=timezone.now() - timedelta(days=30))
    board.refresh_from_db()
    now = timezone.now()

    assert flow_query_resolve(board=board, now=now).where.since == now - timedelta(days=7)
    assert muda_window_get(since=None, until=None, now=now, board=board)[0] == now - timedelta(days=7)


def test_a_window_asked_for_is_kept(db):
    board = make_board()
    now = board.created_at + timedelta(minutes=5)
    asked = board.created_at - timedelta(days=2)

    assert flow_query_resolve(board=board, now=now, since=asked).where.since == asked
    assert muda_window_get(since=asked, until=None, now=now, board=board)[0] == asked
