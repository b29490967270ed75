"""Approving from the inbox: the task goes to Done with the agent's output, as a
plain form (redirect back with a message) or an htmx one (the row goes, a
message for the live region comes); once only; reviewers only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from andon import services as andon_services
from andon.models import Escalation
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import GOOD, where
from tests.factories import HTMX, make_reviewer, make_user

pytestmark = pytest.mark.django_db


def _url(escalation: Escalation) -> str:
    return reverse("andon-escalation-approve", kwargs={"pk": escalation.pk})


def _approvals(escalation: Escalation) -> int:
    return escalation.task.events.filter(kind=TaskEvent.Kind.APPROVED).count()


def test_reviewer_approves_from_the_inbox(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"next": "/andon/?board=1"})

    assert response.status_code == 302
    assert response.url == "/andon/?board=1"
    assert where(escalation.task) == (Column.Role.DONE, Task.Status.DONE)
    assert escalation.task.output == GOOD
    escalation.refresh_from_db()
    assert (escalation.status, escalation.decided_by) == (Escalation.Status.APPROVED, ana)
    page = client.get(response.url).content.decode()
    assert "Approved: “Weld seam 12”." in page


def test_a_foreign_next_is_ignored(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"next": "https://evil.example/"})

    assert response.url == reverse("andon-inbox")


def test_reviewer_approves_with_htmx_and_the_row_goes(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    # Nothing replaces the row; the message goes to the live region, the figures to theirs.
    assert f'id="escalation-{escalation.pk}"' not in html
    assert '<div id="inbox-status" hx-swap-oob="innerHTML">' in html
    assert "Approved: “Weld seam 12”." in html
    assert 'id="inbox-stats" class="inbox-stats" aria-label="Inbox figures" hx-swap-oob="outerHTML"' in html
    assert where(escalation.task) == (Column.Role.DONE, Task.Status.DONE)


def test_a_second_decision_is_refused_with_409_naming_the_first(client, ana, escalation):
    bob = make_reviewer(username="bob")
    andon_services.escalation_approve(escalation=escalation, user=bob)
    events = escalation.task.events.count()
    client.force_login(ana)

    response = client.post(_url(escalation), headers=HTMX)

    assert response.status_code == 409
    html = response.content.decode()
    assert "Already decided: approved by bob at" in html
    # The row is shown as decided, without its actions.
    assert 'class="escalation escalation--decided escalation--error"' in html
    assert "andon-escalation-approve" not in html and 'data-action="approve"' not in html
    assert escalation.task.events.count() == events
    assert _approvals(escalation) == 1


def test_a_second_decision_without_javascript_shows_the_inbox_with_409(client, ana, escalation):
    andon_services.escalation_approve(escalation=escalation, user=make_reviewer(username="bob"))
    client.force_login(ana)

    response = client.post(_url(escalation))

    assert response.status_code == 409
    html = response.content.decode()
    assert "<title>(0) Andon inbox · Kaizen</title>" in html
    assert "Already decided: approved by bob at" in html
    assert _approvals(escalation) == 1


def test_approving_twice_applies_once(client, ana, escalation):
    client.force_login(ana)

    first = client.post(_url(escalation), headers=HTMX)
    second = client.post(_url(escalation), headers=HTMX)

    assert (first.status_code, second.status_code) == (200, 409)
    assert "Already decided: approved by ana" in second.content.decode()
    assert _approvals(escalation) == 1


def test_a_non_reviewer_gets_403_and_nothing_changes(client, escalation):
    client.force_login(make_user())

    response = client.post(_url(escalation), headers=HTMX)

    assert response.status_code == 403
    assert where(escalation.task) == (Column.Role.REVIEW, Task.Status.REVIEW)


def test_get_is_not_allowed(client, ana, escalation):
    client.force_login(ana)

    assert client.get(_url(escalation)).status_code == 405


def test_an_unknown_escalation_is_404(client, ana):
    client.force_login(ana)

    assert client.post(reverse("andon-escalation-approve", kwargs={"pk": 999999})).status_code == 404
