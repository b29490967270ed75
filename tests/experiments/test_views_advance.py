"""Advancing a canary that passed to the efficacy stage (50/50): a person's
gate, with a note; only a passed canary."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import AuditEntry, Experiment
from tests.experiments.helpers import HTMX, experiment_in
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def _url(experiment: Experiment) -> str:
    return reverse("experiments-advance", kwargs={"pk": experiment.pk})


def test_advancing_a_passed_canary_starts_the_efficacy_stage(client, ana):
    experiment = experiment_in("canary_passed")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "No harm in 100 tasks."})

    assert response.status_code == 302
    experiment.refresh_from_db()
    assert (experiment.stage, experiment.status) == ("efficacy", "running")
    entry = AuditEntry.objects.get(experiment=experiment, action="advanced")
    assert (entry.user, entry.reason) == (ana, "No harm in 100 tasks.")
    assert entry.stats["decision"] == "continue"


def test_advancing_with_htmx_answers_the_row_in_its_new_stage(client, ana):
    experiment = experiment_in("canary_passed")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "ok"}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert '<span class="evo-stage">Efficacy at 50% of tasks</span>' in html
    assert "to the efficacy stage (50/50)." in html


def test_advancing_needs_a_note(client, ana):
    experiment = experiment_in("canary_passed")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": ""}, headers=HTMX)

    assert response.status_code == 422
    assert f'id="experiment-{experiment.pk}-advance" open>' in response.content.decode()
    experiment.refresh_from_db()
    assert (experiment.stage, experiment.status) == ("canary", "canary_passed")


def test_a_canary_still_running_cannot_be_advanced(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "hurry"}, headers=HTMX)

    assert response.status_code == 409
    assert "Only a canary that passed can be advanced" in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.stage == "canary"


def test_users_without_the_permission_get_403(client):
    experiment = experiment_in("canary_passed")
    client.force_login(make_editor())

    assert client.post(_url(experiment), {"note": "go"}, headers=HTMX).status_code == 403
    experiment.refresh_from_db()
    assert experiment.stage == "canary"
