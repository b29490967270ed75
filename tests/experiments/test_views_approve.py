"""Approving a proposal from the review: its experiment starts as a canary, as
a plain form (redirect back with a message) or with htmx (the review's sections
come back out of band, with the message); a note is required; once only."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from experiments import services as kaizen
from experiments.models import AuditEntry, ChangeProposal, Experiment
from tests.experiments.helpers import HTMX, line_agent, major_proposal, started
from tests.factories import make_approver, make_editor

pytestmark = pytest.mark.django_db


@pytest.fixture
def proposal(db) -> ChangeProposal:
    return major_proposal(line_agent(name="welder"))


def _url(proposal: ChangeProposal) -> str:
    return reverse("experiments-proposal-approve", kwargs={"pk": proposal.pk})


def _actions(proposal: ChangeProposal) -> list[str]:
    return list(AuditEntry.objects.filter(proposal=proposal).order_by("pk").values_list("action", flat=True))


def test_approving_starts_a_canary_and_comes_back_with_a_message(client, ana, proposal):
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "Reads well; the order matters."})

    assert (response.status_code, response.url) == (302, reverse("experiments-review"))
    proposal.refresh_from_db()
    assert (proposal.status, proposal.decided_by, proposal.decision_note) == (
        ChangeProposal.Status.EXPERIMENTING,
        ana,
        "Reads well; the order matters.",
    )
    experiment = Experiment.objects.get(proposal=proposal)
    assert (experiment.stage, experiment.status) == ("canary", "running")
    assert _actions(proposal) == ["proposed", "approved", "started"]
    approved = AuditEntry.objects.get(proposal=proposal, action="approved")
    assert (approved.user, approved.reason) == (ana, "Reads well; the order matters.")
    page = client.get(response.url).content.decode()
    assert "Approved the change to welder (v2): its canary experiment has started." in page


def test_approving_with_htmx_answers_the_sections_and_the_message(client, ana, proposal):
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "Fine."}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    experiment = Experiment.objects.get(proposal=proposal)
    # The proposal left the waiting list; its experiment joined the experiments.
    proposals = html[html.index('<section id="proposals"') : html.index('<section id="experiments"')]
    assert 'hx-swap-oob="outerHTML"' in proposals
    assert f'id="proposal-{proposal.pk}"' not in proposals
    assert "No proposal waits for a decision." in proposals
    assert f'<div id="experiment-{experiment.pk}"' in html
    assert '<span class="evo-status evo-status--running">Running</span>' in html
    assert re.search(r'<section id="audit-recent"[^>]*hx-swap-oob="outerHTML"', html)
    assert '<div id="review-status" hx-swap-oob="innerHTML"><p class="flash flash--success">' in html
    assert "Approved the change to welder (v2): its canary experiment has started." in html
    # Nothing but out-of-band parts: the form's own swap is none.
    assert "<html" not in html


def test_approving_while_the_agent_has_an_experiment_says_it_waits(client, ana):
    agent = line_agent(name="welder")
    started(agent)
    waiting = major_proposal(agent)
    client.force_login(ana)

    response = client.post(_url(waiting), {"note": "next"}, headers=HTMX)

    assert response.status_code == 200
    assert "it starts when welder&#x27;s running experiment ends." in response.content.decode()
    waiting.refresh_from_db()
    assert waiting.status == ChangeProposal.Status.APPROVED


def test_approving_without_a_note_is_422_and_changes_nothing(client, ana, proposal):
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "   "}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert "Say why: it goes to the audit log with the change." in html
    assert (
        f'<details class="evo-action evo-action--approve" id="proposal-{proposal.pk}-approve" open>' in html
    )
    assert 'aria-invalid="true"' in html
    assert '<p class="flash flash--error">Say why' in html
    proposal.refresh_from_db()
    assert proposal.status == ChangeProposal.Status.PENDING
    assert not Experiment.objects.exists()
    assert _actions(proposal) == ["proposed"]


def test_approving_without_a_note_and_without_javascript_shows_the_page_with_422(client, ana, proposal):
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": ""})

    assert response.status_code == 422
    html = response.content.decode()
    assert "<title>(1) Evolution review · Kaizen</title>" in html
    assert "Say why: it goes to the audit log with the change." in html
    assert f'id="proposal-{proposal.pk}-approve" open>' in html


def test_a_refused_approval_from_the_proposal_page_shows_that_page(client, ana, proposal):
    client.force_login(ana)

    response = client.post(
        _url(proposal), {"note": "", "from": "proposal", "next": proposal.get_absolute_url()}
    )

    assert response.status_code == 422
    html = response.content.decode()
    assert "<h1>Change to welder: v2</h1>" in html
    assert "Say why" in html


def test_approving_twice_is_409_and_applies_once(client, ana, proposal):
    kaizen.proposal_approve(proposal=proposal, user=make_approver(username="bob"), note="mine")
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "me too"}, headers=HTMX)

    assert response.status_code == 409
    assert "This proposal is already in an experiment." in response.content.decode()
    assert _actions(proposal).count("approved") == 1


def test_a_plain_approval_goes_back_to_next_but_never_to_another_site(client, ana, proposal):
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "ok", "next": "https://evil.example/"})

    assert response.url == reverse("experiments-review")


def test_a_plain_approval_from_the_proposal_page_comes_back_to_it(client, ana, proposal):
    client.force_login(ana)
    url = proposal.get_absolute_url()

    response = client.post(_url(proposal), {"note": "ok", "next": url, "from": "proposal"})

    assert (response.status_code, response.url) == (302, url)


def test_users_without_the_permission_get_403_and_nothing_changes(client, proposal):
    client.force_login(make_editor())

    response = client.post(_url(proposal), {"note": "let me"}, headers=HTMX)

    assert response.status_code == 403
    proposal.refresh_from_db()
    assert proposal.status == ChangeProposal.Status.PENDING


def test_get_is_not_allowed(client, ana, proposal):
    client.force_login(ana)

    assert client.get(_url(proposal)).status_code == 405


def test_an_unknown_proposal_is_404(client, ana):
    client.force_login(ana)

    assert (
        client.post(reverse("experiments-proposal-approve", kwargs={"pk": 999999}), {"note": "x"}).status_code
        == 404
    )
