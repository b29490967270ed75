"""Reject with a reason: the task goes back to Ready with the reason as its review
feedback; without a reason, nothing changes and the row says why (422)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from andon.models import Escalation
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import where
from tests.factories import HTMX, make_reviewer, make_user

pytestmark = pytest.mark.django_db

REASON = "The part number is missing: quote it from the drawing."


def _url(escalation: Escalation) -> str:
    return reverse("andon-escalation-reject", kwargs={"pk": escalation.pk})


def test_reviewer_rejects_from_the_inbox(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"reason": REASON})

    assert response.status_code == 302
    assert where(escalation.task) == (Column.Role.READY, Task.Status.READY)
    assert escalation.task.review_feedback == REASON
    escalation.refresh_from_db()
    assert (escalation.status, escalation.note) == (Escalation.Status.REJECTED, REASON)


def test_reviewer_rejects_with_htmx_and_the_row_goes(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"reason": REASON}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="escalation-{escalation.pk}"' not in html
    assert "Rejected: “Weld seam 12”" in html
    assert where(escalation.task) == (Column.Role.READY, Task.Status.READY)


def test_rejecting_without_a_reason_is_422_and_changes_nothing(client, ana, escalation):
    events = escalation.task.events.count()
    client.force_login(ana)

    response = client.post(_url(escalation), {"reason": "  "}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert html.lstrip().startswith(f'<li id="escalation-{escalation.pk}"')
    assert "Say what is wrong: the next attempt is given your reason." in html
    assert '<details class="action-reject" open>' in html
    assert 'aria-invalid="true"' in html
    assert where(escalation.task) == (Column.Role.REVIEW, Task.Status.REVIEW)
    assert escalation.task.events.count() == events
    escalation.refresh_from_db()
    assert escalation.is_open


def test_rejecting_without_a_reason_and_without_javascript_is_422(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"reason": ""})

    assert response.status_code == 422
    html = response.content.decode()
    assert "Say what is wrong" in html
    assert "<title>(1) Andon inbox · Kaizen</title>" in html


def test_rejecting_after_someone_approved_is_409(client, ana, escalation):
    from andon import services as andon_services

    andon_services.escalation_approve(escalation=escalation, user=make_reviewer(username="bob"))
    client.force_login(ana)

    response = client.post(_url(escalation), {"reason": REASON}, headers=HTMX)

    assert response.status_code == 409
    assert "Already decided: approved by bob" in response.content.decode()
    assert where(escalation.task) == (Column.Role.DONE, Task.Status.DONE)
    assert escalation.task.events.filter(kind=TaskEvent.Kind.REJECTED).count() == 0


def test_a_non_reviewer_gets_403(client, escalation):
    client.force_login(make_user())

    assert client.post(_url(escalation), {"reason": REASON}).status_code == 403
    assert where(escalation.task) == (Column.Role.REVIEW, Task.Status.REVIEW)
