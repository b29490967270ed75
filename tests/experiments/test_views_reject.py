"""Rejecting a proposal: it never reaches traffic; a note is required; an
approved proposal still waiting for its agent's slot can be rejected too."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments import services as kaizen
from experiments.models import AuditEntry, ChangeProposal, Experiment
from tests.experiments.helpers import HTMX, line_agent, major_proposal, started
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def _url(proposal: ChangeProposal) -> str:
    return reverse("experiments-proposal-reject", kwargs={"pk": proposal.pk})


def test_rejecting_with_a_note(client, ana):
    proposal = major_proposal(line_agent())
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "Too broad a change."})

    assert response.status_code == 302
    proposal.refresh_from_db()
    assert (proposal.status, proposal.decided_by, proposal.decision_note) == (
        ChangeProposal.Status.REJECTED,
        ana,
        "Too broad a change.",
    )
    entry = AuditEntry.objects.get(proposal=proposal, action="rejected")
    assert (entry.user, entry.reason) == (ana, "Too broad a change.")
    assert not Experiment.objects.exists()


def test_rejecting_with_htmx_takes_it_off_the_list(client, ana):
    proposal = major_proposal(line_agent(name="welder"))
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": "No."}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="proposal-{proposal.pk}"' not in html
    assert "Rejected the change to welder (v2)." in html
    assert '<td class="evo-audit-action">Rejected</td>' in html


def test_rejecting_without_a_note_is_422(client, ana):
    proposal = major_proposal(line_agent())
    client.force_login(ana)

    response = client.post(_url(proposal), {"note": ""}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert f'id="proposal-{proposal.pk}-reject" open>' in html
    assert "Say why" in html
    proposal.refresh_from_db()
    assert proposal.status == ChangeProposal.Status.PENDING
    assert not AuditEntry.objects.filter(action="rejected").exists()


def test_an_approved_proposal_waiting_for_its_slot_can_still_be_rejected(client, ana):
    agent = line_agent()
    started(agent)  # the agent's one experiment slot is taken
    waiting = major_proposal(agent)
    kaizen.proposal_approve(proposal=waiting, user=ana, note="next in line")
    waiting.refresh_from_db()
    assert waiting.status == ChangeProposal.Status.APPROVED
    client.force_login(ana)

    html = client.get(reverse("experiments-review")).content.decode()
    assert "Approved: waiting for the agent's running experiment to end" in html
    item = html[html.index(f'id="proposal-{waiting.pk}"') :]
    assert (
        f"/kaizen/proposals/{waiting.pk}/reject/" in item
        and f"/kaizen/proposals/{waiting.pk}/approve/" not in item
    )

    response = client.post(_url(waiting), {"note": "changed my mind"}, headers=HTMX)

    assert response.status_code == 200
    waiting.refresh_from_db()
    assert waiting.status == ChangeProposal.Status.REJECTED


def test_rejecting_a_proposal_in_an_experiment_is_409(client, ana):
    experiment = started(line_agent())
    client.force_login(ana)

    response = client.post(_url(experiment.proposal), {"note": "too late"}, headers=HTMX)

    assert response.status_code == 409
    assert "This proposal is already in an experiment." in response.content.decode()


def test_users_without_the_permission_get_403(client):
    proposal = major_proposal(line_agent())
    client.force_login(make_editor())

    assert client.post(_url(proposal), {"note": "no"}).status_code == 403
    proposal.refresh_from_db()
    assert proposal.status == ChangeProposal.Status.PENDING
