"""Review has a WIP limit like any column: when reviewers fall behind and Review
is full, agents pull nothing, so the line slows instead of piling up unchecked work."""

from __future__ import annotations

import pytest

from andon import services as andon_services
from boards import services
from boards.models import Column, Task
from tests.andon.helpers import complete, escalate, pull, reviewer
from tests.factories import column, make_agent


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

    andon_services.escalation_approve(escalation=first, user=reviewer())

    [claim] = pull(board)
    assert claim.task_id == waiting.pk
    # And it runs and completes as usual.
    assert complete(claim)


@pytest.mark.django_db
def test_a_soft_review_limit_holds_the_pull_back_too(review_limited):
    board = review_limited
    Column.objects.filter(board=board, role=Column.Role.REVIEW).update(hard_limit=False)
    escalate(board, input="first")
    escalate(board, input="second")
    services.task_create(board=board, title="waiting", input="third")

    assert pull(board) == []
