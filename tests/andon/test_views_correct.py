"""Edit and approve: the task goes to Done with the reviewer's output, the agent's
original kept on the escalation; an empty or unchanged correction is refused in
the row (422) and nothing changes."""

from __future__ import annotations

import pytest
from django.urls import reverse

from andon.models import Escalation
from boards.models import Column, Task, TaskEvent
from tests.andon.helpers import GOOD, where
from tests.factories import HTMX, make_user

pytestmark = pytest.mark.django_db

FIXED = "The housing has a 4 mm scratch; replace the cover (part 88-12)."


def _url(escalation: Escalation) -> str:
    return reverse("andon-escalation-correct", kwargs={"pk": escalation.pk})


def test_reviewer_corrects_from_the_inbox(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"output": FIXED})

    assert response.status_code == 302
    assert response.url == reverse("andon-inbox")
    assert where(escalation.task) == (Column.Role.DONE, Task.Status.DONE)
    assert escalation.task.output == FIXED
    escalation.refresh_from_db()
    assert escalation.status == Escalation.Status.CORRECTED
    assert (escalation.output, escalation.corrected_output) == (GOOD, FIXED)


def test_reviewer_corrects_with_htmx_and_the_row_goes(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"output": FIXED}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="escalation-{escalation.pk}"' not in html
    assert "Approved with your correction: “Weld seam 12”." in html
    assert escalation.task.events.filter(kind=TaskEvent.Kind.CORRECTED).count() == 1


def test_an_empty_correction_is_shown_in_the_row_with_422(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"output": "   "}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert html.lstrip().startswith(f'<li id="escalation-{escalation.pk}"')
    assert "Write the corrected output, or reject the task instead." in html
    assert '<details class="action-edit" open>' in html
    assert 'aria-invalid="true"' in html
    assert where(escalation.task) == (Column.Role.REVIEW, Task.Status.REVIEW)


def test_an_unchanged_correction_is_refused_and_keeps_the_text(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"output": GOOD + "\n"}, headers=HTMX)

    assert response.status_code == 422
    assert "The output is unchanged" in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.is_open


def test_an_empty_correction_without_javascript_shows_the_inbox_with_422(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), {"output": ""})

    assert response.status_code == 422
    html = response.content.decode()
    assert "<title>(1) Andon inbox · Kaizen</title>" in html
    assert "Write the corrected output" in html
    assert '<details class="action-edit" open>' in html


def test_a_non_reviewer_gets_403(client, escalation):
    client.force_login(make_user())

    assert client.post(_url(escalation), {"output": FIXED}).status_code == 403
    assert escalation.task.events.filter(kind=TaskEvent.Kind.CORRECTED).count() == 0
