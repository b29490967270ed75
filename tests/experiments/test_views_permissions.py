"""Every page and action of the evolution review: anonymous visitors are sent
to log in; logged-in users without experiments.approve_change get 403 and
change nothing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import AuditEntry, ChangeProposal, Experiment
from tests.experiments.helpers import HTMX, experiment_in, line_agent, major_proposal
from tests.factories import make_editor

pytestmark = pytest.mark.django_db

PAGES = ["experiments-review", "experiments-review-live", "experiments-audit"]
PROPOSAL_PAGES = ["experiments-proposal"]
EXPERIMENT_PAGES = ["experiments-detail", "experiments-detail-live"]
PROPOSAL_ACTIONS = ["experiments-proposal-approve", "experiments-proposal-reject"]
EXPERIMENT_ACTIONS = [
    "experiments-advance",
    "experiments-promote",
    "experiments-rollback",
    "experiments-resume",
]


@pytest.fixture
def items(db) -> tuple[ChangeProposal, Experiment]:
    return major_proposal(line_agent()), experiment_in("canary_passed")


def _urls(proposal: ChangeProposal, experiment: Experiment) -> tuple[list[str], list[str]]:
    pages = [reverse(name) for name in PAGES]
    pages += [reverse(name, kwargs={"pk": proposal.pk}) for name in PROPOSAL_PAGES]
    pages += [reverse(name, kwargs={"pk": experiment.pk}) for name in EXPERIMENT_PAGES]
    actions = [reverse(name, kwargs={"pk": proposal.pk}) for name in PROPOSAL_ACTIONS]
    actions += [reverse(name, kwargs={"pk": experiment.pk}) for name in EXPERIMENT_ACTIONS]
    return pages, actions


def test_anonymous_visitors_are_sent_to_log_in_everywhere(client, items):
    pages, actions = _urls(*items)

    for url in pages:
        response = client.get(url)
        assert (response.status_code, response.url) == (302, f"/accounts/login/?next={url}"), url
    for url in actions:
        assert client.post(url, {"note": "x"}).status_code == 302, url
        # htmx gets a redirect it understands (HX-Redirect), not the login page's HTML.
        response = client.post(url, {"note": "x"}, headers=HTMX)
        assert response.status_code == 401 and response["HX-Redirect"].startswith("/accounts/login/"), url


def test_users_without_the_permission_get_403_everywhere_and_nothing_changes(client, items):
    proposal, experiment = items
    pages, actions = _urls(proposal, experiment)
    entries = AuditEntry.objects.count()
    # boards.change_agent lets one propose changes, not judge them.
    client.force_login(make_editor())

    for url in pages:
        assert client.get(url).status_code == 403, url
    for url in actions:
        assert client.post(url, {"note": "x"}).status_code == 403, url
        assert client.post(url, {"note": "x"}, headers=HTMX).status_code == 403, url

    proposal.refresh_from_db()
    experiment.refresh_from_db()
    assert (proposal.status, experiment.status, experiment.stage) == ("pending", "canary_passed", "canary")
    assert AuditEntry.objects.count() == entries
