"""Promoting an experiment the efficacy test found better: the treatment
becomes the agent's active version, and its next tasks run it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services as board_services
from experiments.models import AuditEntry, ChangeProposal, Experiment
from tests.experiments.helpers import HTMX, experiment_in, line_agent
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def _url(experiment: Experiment) -> str:
    return reverse("experiments-promote", kwargs={"pk": experiment.pk})


def test_promoting_makes_the_treatment_active(client, ana):
    agent = line_agent()
    experiment = experiment_in("promote_ready", agent=agent)
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "95% against 70%."})

    assert response.status_code == 302
    experiment.refresh_from_db()
    agent.refresh_from_db()
    assert experiment.status == "promoted"
    assert experiment.proposal.status == ChangeProposal.Status.PROMOTED
    assert agent.prompt_version == experiment.treatment.number
    entry = AuditEntry.objects.get(experiment=experiment, action="promoted")
    assert (entry.user, entry.reason, entry.version) == (ana, "95% against 70%.", experiment.treatment)
    board = agent.boards.first()
    task = board_services.task_create(board=board, title="after", input="x")
    board_services.board_pull(board_id=board.pk)
    task.refresh_from_db()
    assert task.prompt_version == experiment.treatment.number


def test_promoting_with_htmx(client, ana):
    experiment = experiment_in("promote_ready", agent=line_agent(name="welder"))
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "better"}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Promoted v2: it is now welder&#x27;s active version." in html
    assert '<span class="evo-status evo-status--promoted">Promoted</span>' in html


def test_promoting_needs_a_note(client, ana):
    experiment = experiment_in("promote_ready")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": ""}, headers=HTMX)

    assert response.status_code == 422
    assert f'id="experiment-{experiment.pk}-promote" open>' in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.status == "promote_ready"


def test_an_experiment_not_found_better_cannot_be_promoted(client, ana):
    experiment = experiment_in("efficacy")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "I like it"}, headers=HTMX)

    assert response.status_code == 409
    assert "Only an experiment whose efficacy test found the change better can be promoted" in (
        response.content.decode()
    )
    experiment.refresh_from_db()
    assert experiment.status == "running"


def test_users_without_the_permission_get_403(client):
    experiment = experiment_in("promote_ready")
    client.force_login(make_editor())

    assert client.post(_url(experiment), {"note": "go"}).status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == "promote_ready"
