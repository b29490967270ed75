"""A group of identical escalations in the inbox page: one row with its count
and tasks, whose forms post every member, so one decision covers them all."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from andon import services as andon_services
from andon.models import Escalation
from boards.models import Column
from tests.andon.helpers import DEFECTIVE, claim_one, complete
from tests.factories import HTMX, column, make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db


@pytest.fixture
def board():
    board = make_board()
    review = column(board, Column.Role.REVIEW)
    review.wip_limit = None
    review.save()
    make_agent(boards=[board], spike_defects=1000, spike_window=1000)
    return board


@pytest.fixture
def client(ana):
    client = Client()
    client.force_login(ana)
    return client


def escalated(board, title: str, *, input: str = "scratch on housing") -> Escalation:
    task, claim = claim_one(board, title=title, input=input)
    assert complete(claim, confidence=DEFECTIVE)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def status(escalation: Escalation) -> str:
    escalation.refresh_from_db()
    return escalation.status


def test_the_inbox_shows_identical_escalations_as_one_row_with_its_tasks(board, client):
    first = escalated(board, "Part 7, morning")
    second = escalated(board, "Part 7, night")

    html = client.get("/andon/").content.decode()

    assert len(re.findall(r'<li id="escalation-\d+"', html)) == 1
    row = html[html.index(f'<li id="escalation-{first.pk}"') :]
    assert 'data-count="2"' in row
    assert "2 identical escalations" in row
    assert "Part 7, morning" in row and "Part 7, night" in row
    assert f'name="members" value="{first.pk},{second.pk}"' in row
    assert "Approve all 2" in row and "Reject all 2…" in row
    assert "<title>(2) Andon inbox" in html


def test_approving_a_row_decides_every_member(board, client, ana):
    first = escalated(board, "Part 7, morning")
    second = escalated(board, "Part 7, night")

    response = client.post(
        f"/andon/{first.pk}/approve/", {"members": f"{first.pk},{second.pk}"}, headers=HTMX
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert "Approved 2 identical escalations: “Part 7, morning”." in html
    assert "<li id=" not in html
    assert status(first) == status(second) == Escalation.Status.APPROVED


def test_a_member_decided_meanwhile_is_named_in_the_message(board, client):
    first = escalated(board, "Part 7, morning")
    second = escalated(board, "Part 7, night")
    andon_services.escalation_reject(
        escalation=second, user=make_reviewer(username="bob"), reason="Wrong part."
    )

    response = client.post(
        f"/andon/{first.pk}/approve/", {"members": f"{first.pk},{second.pk}"}, headers=HTMX
    )

    html = response.content.decode()
    assert "Approved: “Part 7, morning”." in html
    assert f"Escalation {second.pk} was left as it was: Already decided: rejected by bob" in html
    assert status(second) == Escalation.Status.REJECTED


def test_a_member_that_arrived_after_the_page_is_left_open_and_its_row_returned(board, client):
    first = escalated(board, "Part 7, morning")
    late = escalated(board, "Part 7, late")

    response = client.post(
        f"/andon/{first.pk}/reject/", {"members": str(first.pk), "reason": "Wrong."}, headers=HTMX
    )

    html = response.content.decode()
    assert status(first) == Escalation.Status.REJECTED
    assert status(late) == Escalation.Status.OPEN
    assert html.lstrip().startswith(f'<li id="escalation-{late.pk}"')


def test_without_members_only_the_escalation_of_the_url_is_decided(board, client):
    first = escalated(board, "Part 7, morning")
    second = escalated(board, "Part 7, night")

    client.post(f"/andon/{first.pk}/approve/", headers=HTMX)

    assert (status(first), status(second)) == (Escalation.Status.APPROVED, Escalation.Status.OPEN)


def test_members_that_are_not_identical_are_refused_and_nothing_is_decided(board, client):
    first = escalated(board, "Part 7")
    other = escalated(board, "Part 9", input="a dent in the lid")

    response = client.post(
        f"/andon/{first.pk}/correct/", {"members": f"{first.pk},{other.pk}", "output": "Fine."}, headers=HTMX
    )

    assert response.status_code == 409
    assert "not identical" in response.content.decode()
    assert status(first) == status(other) == Escalation.Status.OPEN


@pytest.mark.parametrize("members", ["x,y", "1²", "", ",,,"])
def test_unreadable_members_decide_the_one_escalation(board, client, members):
    first = escalated(board, "Part 7")
    second = escalated(board, "Part 7 again")

    client.post(f"/andon/{first.pk}/approve/", {"members": members}, headers=HTMX)

    assert (status(first), status(second)) == (Escalation.Status.APPROVED, Escalation.Status.OPEN)


def test_a_plain_post_of_a_group_redirects_with_the_message(board, client):
    first = escalated(board, "Part 7, morning")
    second = escalated(board, "Part 7, night")

    response = client.post(
        f"/andon/{first.pk}/reject/", {"members": f"{first.pk},{second.pk}", "reason": "Wrong."}, follow=True
    )

    html = response.content.decode()
    assert "Rejected 2 identical escalations: “Part 7, morning”; each goes back" in html
    assert status(first) == status(second) == Escalation.Status.REJECTED


def test_the_escalation_page_points_to_its_identical_escalations(board, client):
    first = escalated(board, "Part 7, morning")
    escalated(board, "Part 7, night")

    html = client.get(f"/andon/{first.pk}/").content.decode()

    assert "1 more identical escalation (the same agent, input and output) waits too" in html
    assert f'href="/andon/#escalation-{first.pk}"' in html
