"""Claiming: a reviewer marks an escalation as theirs (others see who), and
releases it; the row comes back re-rendered."""

from __future__ import annotations

import pytest
from django.urls import reverse

from andon import services as andon_services
from andon.models import Escalation
from tests.factories import HTMX, make_reviewer, make_user

pytestmark = pytest.mark.django_db


def _url(escalation: Escalation) -> str:
    return reverse("andon-escalation-claim", kwargs={"pk": escalation.pk})


def test_reviewer_claims_with_htmx_and_gets_the_row_back(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation), headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<li id="escalation-{escalation.pk}"')
    assert "is-mine" in html and "Claimed by <strong>ana</strong>" in html
    assert "Claimed: “Weld seam 12”." in html
    escalation.refresh_from_db()
    assert escalation.claimed_by == ana


def test_reviewer_claims_without_javascript(client, ana, escalation):
    client.force_login(ana)

    response = client.post(_url(escalation))

    assert response.status_code == 302
    escalation.refresh_from_db()
    assert escalation.claimed_by == ana


def test_reviewer_releases_their_claim(client, ana, escalation):
    andon_services.escalation_claim(escalation=escalation, user=ana)
    client.force_login(ana)

    response = client.post(_url(escalation), {"release": "1"}, headers=HTMX)

    assert response.status_code == 200
    assert "Released: “Weld seam 12”." in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.claimed_by is None


def test_releasing_someone_elses_claim_is_refused_with_409(client, ana, escalation):
    andon_services.escalation_claim(escalation=escalation, user=make_reviewer(username="bob"))
    client.force_login(ana)

    response = client.post(_url(escalation), {"release": "1"}, headers=HTMX)

    assert response.status_code == 409
    assert "Only the reviewer who claimed it can release it." in response.content.decode()
    escalation.refresh_from_db()
    assert escalation.claimed_by.username == "bob"


def test_claiming_a_decided_escalation_is_409(client, ana, escalation):
    andon_services.escalation_approve(escalation=escalation, user=make_reviewer(username="bob"))
    client.force_login(ana)

    response = client.post(_url(escalation), headers=HTMX)

    assert response.status_code == 409
    assert "Already decided: approved by bob" in response.content.decode()


def test_a_non_reviewer_gets_403(client, escalation):
    client.force_login(make_user())

    assert client.post(_url(escalation)).status_code == 403
    escalation.refresh_from_db()
    assert escalation.claimed_by is None
