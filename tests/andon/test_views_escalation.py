"""One escalation's page: open (what failed, with the actions as plain forms) or
decided (the decision, who, when, the note, and a correction beside the original)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from andon import services as andon_services
from tests.andon.helpers import GOOD
from tests.factories import make_user

pytestmark = pytest.mark.django_db

FIXED = "The housing has a 4 mm scratch; replace the cover (part 88-12)."


def test_the_url_is_the_escalations_absolute_url(escalation):
    assert escalation.get_absolute_url() == f"/andon/{escalation.pk}/"


def test_an_open_escalation_shows_why_it_stopped_and_plain_action_forms(client, ana, escalation):
    client.force_login(ana)

    response = client.get(escalation.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Weld seam 12</h1>" in html
    assert '<span class="status status--open">Open</span>' in html
    assert "confidence 0.2 is below 0.7" in html
    assert GOOD in html
    approve = reverse("andon-escalation-approve", kwargs={"pk": escalation.pk})
    assert f'action="{approve}"' in html
    assert "hx-post" not in html
    assert '<input type="hidden" name="from" value="escalation">' in html


def test_a_plain_decision_from_the_page_comes_back_to_it(client, ana, escalation):
    client.force_login(ana)
    url = escalation.get_absolute_url()

    response = client.post(
        reverse("andon-escalation-reject", kwargs={"pk": escalation.pk}),
        {"reason": "Quote the part number.", "next": url, "from": "escalation"},
    )

    assert (response.status_code, response.url) == (302, url)
    html = client.get(url).content.decode()
    assert "Rejected" in html and "Quote the part number." in html


def test_a_refused_plain_decision_shows_the_page_with_the_error(client, ana, escalation):
    client.force_login(ana)

    response = client.post(
        reverse("andon-escalation-reject", kwargs={"pk": escalation.pk}),
        {"reason": "", "from": "escalation"},
    )

    assert response.status_code == 422
    html = response.content.decode()
    assert "<h1>Weld seam 12</h1>" in html
    assert "Say what is wrong" in html


def test_a_decided_escalation_shows_the_decision(client, ana, escalation):
    andon_services.escalation_approve(escalation=escalation, user=ana, note="fine after all")
    escalation.refresh_from_db()
    client.force_login(ana)

    html = client.get(escalation.get_absolute_url()).content.decode()

    assert '<span class="status status--approved">Approved</span>' in html
    assert "<dt>Reviewer</dt><dd>ana</dd>" in html
    assert escalation.decided_at.strftime("%H:%M:%S") in html
    assert "fine after all" in html
    assert 'action="' + reverse("andon-escalation-approve", kwargs={"pk": escalation.pk}) not in html


def test_a_correction_is_shown_beside_the_original(client, ana, escalation):
    andon_services.escalation_correct(escalation=escalation, user=ana, output=FIXED)
    client.force_login(ana)

    html = client.get(escalation.get_absolute_url()).content.decode()

    assert "Edited and approved" in html
    original = html.index("The agent's output")
    corrected = html.index("The reviewer's correction")
    assert original < html.index(GOOD) < corrected < html.index(FIXED)


def test_a_non_reviewer_gets_403(client, escalation):
    client.force_login(make_user())

    assert client.get(escalation.get_absolute_url()).status_code == 403


def test_an_unknown_escalation_is_404(client, ana):
    client.force_login(ana)

    assert client.get("/andon/999999/").status_code == 404
