"""Resuming an experiment paused for a sample-ratio mismatch, with a note
saying what caused it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import AuditEntry, Experiment
from tests.experiments.helpers import HTMX, experiment_in
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def _url(experiment: Experiment) -> str:
    return reverse("experiments-resume", kwargs={"pk": experiment.pk})


def test_a_paused_experiment_shows_why_and_resumes_with_a_note(client, ana):
    experiment = experiment_in("paused")
    client.force_login(ana)
    page = client.get(reverse("experiments-review")).content.decode()
    assert '<span class="evo-status evo-status--paused">Paused (sample-ratio mismatch)</span>' in page
    assert "sample ratio mismatch" in page

    response = client.post(_url(experiment), {"note": "A retry loop double-counted control tasks; fixed."})

    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == "running"
    entry = AuditEntry.objects.get(experiment=experiment, action="resumed")
    assert (entry.user, entry.reason) == (ana, "A retry loop double-counted control tasks; fixed.")


def test_resuming_with_htmx(client, ana):
    experiment = experiment_in("paused")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "fixed"}, headers=HTMX)

    assert response.status_code == 200
    assert '<span class="evo-status evo-status--running">Running</span>' in response.content.decode()


def test_resuming_needs_a_note(client, ana):
    experiment = experiment_in("paused")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": ""}, headers=HTMX)

    assert response.status_code == 422
    assert f'id="experiment-{experiment.pk}-resume" open>' in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.status == "paused"


def test_a_running_experiment_cannot_be_resumed(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "go on"}, headers=HTMX)

    assert response.status_code == 409
    assert "Only a paused experiment can be resumed." in response.content.decode()


def test_users_without_the_permission_get_403(client):
    experiment = experiment_in("paused")
    client.force_login(make_editor())

    assert client.post(_url(experiment), {"note": "go"}).status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == "paused"
