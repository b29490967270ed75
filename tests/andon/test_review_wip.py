"""Review has a WIP limit like any column. A hard one is jidoka: when reviewers
fall behind and Review is full, agents pull nothing, so the line waits instead
of piling up unchecked work. A soft one is a signal (Kanban practice): the
column shows it is over, the board says how many decisions wait, and agents
keep pulling."""

from __future__ import annotations

import pytest

from andon import services as andon_services
from boards import services
from boards.models import Column, Task
from boards.selectors import board_pull_status_get
from tests.andon.helpers import complete, escalate, pull
from tests.factories import column, make_agent, make_reviewer


@pytest.fixture
def review_limited(board):
    review = column(board, Column.Role.REVIEW)
    review.wip_limit = 2
    review.save()
    make_agent(boards=[board], concurrency=10)
    return board


@pytest.mark.django_db
def test_with_review_full_the_pull_claims_nothing(review_limited):
    board = review_limited
    escalate(board, input="first")
    escalate(board, input="second")
    services.task_create(board=board, title="waiting", input="third")

    assert pull(board) == []
    assert Task.objects.filter(board=board, status=Task.Status.READY).count() == 1


@pytest.mark.django_db
def test_review_with_room_left_still_lets_agents_pull(review_limited):
    board = review_limited
    escalate(board, input="first")
    services.task_create(board=board, title="waiting", input="second")

    assert len(pull(board)) == 1


@pytest.mark.django_db
def test_deciding_an_escalation_frees_review_and_the_next_pull_claims_again(review_limited):
    board = review_limited
    first = escalate(board, input="first")
    escalate(board, input="second")
    waiting = services.task_create(board=board, title="waiting", input="third")
    assert pull(board) == []

    andon_services.escalation_approve(escalation=first, user=make_reviewer())

    [claim] = pull(board)
    assert claim.task_id == waiting.pk
    # And it runs and completes as usual.
    assert complete(claim)


@pytest.mark.django_db
def test_a_soft_review_limit_is_a_signal_agents_keep_pulling(review_limited):
    board = review_limited
    Column.objects.filter(board=board, role=Column.Role.REVIEW).update(hard_limit=False)
    escalate(board, input="first")
    escalate(board, input="second")
    waiting = services.task_create(board=board, title="waiting", input="third")

    [claim] = pull(board)

    assert claim.task_id == waiting.pk
    # Past the limit, the board says so, with the decisions waiting.
    escalate(board, input="fourth")
    status = board_pull_status_get(board=board)
    [signal] = [h for h in status.holds if h.kind == "review_over"]
    assert signal.text.startswith("Review is over its soft limit by 1 (3/2): 3 decisions are needed")


@pytest.mark.django_db
def test_a_hard_review_limit_says_why_the_line_waits(review_limited):
    board = review_limited
    escalate(board, input="first")
    escalate(board, input="second")
    services.task_create(board=board, title="waiting", input="third")
    assert pull(board) == []

    status = board_pull_status_get(board=board)

    assert status.state == "stalled"
    assert status.board_hold.text == (
        "Waiting for review: Review is full (2/2), 2 decisions are needed in the andon inbox."
    )
