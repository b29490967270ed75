"""Rolling back an experiment from the review: one click and a note, at any
stage and status while it is active; the agent's next task runs the active
version; plain or htmx; a note is required; an ended experiment is 409."""

from __future__ import annotations

import pytest
from django.urls import reverse

from boards import services as board_services
from experiments.models import AuditEntry, ChangeProposal, Experiment
from tests.experiments.helpers import HTMX, experiment_in, line_agent
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def _url(experiment: Experiment) -> str:
    return reverse("experiments-rollback", kwargs={"pk": experiment.pk})


@pytest.mark.parametrize("status", ["running", "canary_passed", "paused", "promote_ready"])
def test_any_active_experiment_rolls_back_with_a_note(client, ana, status):
    experiment = experiment_in(status)
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "Outputs read worse."})

    assert (response.status_code, response.url) == (302, reverse("experiments-review"))
    experiment.refresh_from_db()
    assert (experiment.status, experiment.status_reason) == ("rolled_back", "Outputs read worse.")
    assert experiment.proposal.status == ChangeProposal.Status.ROLLED_BACK
    entry = AuditEntry.objects.get(experiment=experiment, action="rolled_back")
    assert (entry.user, entry.reason, entry.version) == (ana, "Outputs read worse.", experiment.control)


def test_after_a_rollback_the_agents_next_task_runs_the_active_version(client, ana):
    agent = line_agent()
    experiment = experiment_in("running", agent=agent)
    client.force_login(ana)
    client.post(_url(experiment), {"note": "stop it"}, headers=HTMX)
    board = agent.boards.first()

    task = board_services.task_create(board=board, title="next one", input="scratch")
    board_services.board_pull(board_id=board.pk)

    task.refresh_from_db()
    agent.refresh_from_db()
    assert task.agent_id == agent.pk
    assert (task.prompt_version, task.experiment_id, task.arm) == (agent.prompt_version, None, "")
    assert agent.prompt_version == 1


def test_rolling_back_with_htmx_answers_the_row_as_ended(client, ana):
    experiment = experiment_in("running", agent=line_agent(name="welder"))
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "stop it"}, headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    row = html[html.index(f'<div id="experiment-{experiment.pk}"') :]
    row = row[: row.index("</li>")]
    assert '<span class="evo-status evo-status--rolled_back">Rolled back</span>' in row
    assert "/rollback/" not in row
    assert "Rolled back welder&#x27;s experiment: its next task runs the active version." in html
    assert '<td class="evo-audit-action">Rolled back</td>' in html


def test_rolling_back_without_a_note_is_422_and_keeps_it_running(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": " "}, headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert (
        f'<details class="evo-action evo-action--rollback" id="experiment-{experiment.pk}-rollback" open>'
        in html
    )
    assert "Say why: it goes to the audit log with the change." in html
    experiment.refresh_from_db()
    assert experiment.status == "running"
    assert not AuditEntry.objects.filter(action="rolled_back").exists()


def test_a_refused_plain_rollback_from_the_experiment_page_shows_that_page(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)

    response = client.post(_url(experiment), {"note": "", "from": "experiment"})

    assert response.status_code == 422
    html = response.content.decode()
    assert "Look history" in html
    assert f'id="experiment-{experiment.pk}-rollback" open>' in html


def test_a_plain_rollback_from_the_experiment_page_comes_back_to_it(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)
    url = experiment.get_absolute_url()

    response = client.post(_url(experiment), {"note": "stop", "next": url, "from": "experiment"})

    assert (response.status_code, response.url) == (302, url)
    assert "Rolled back" in client.get(url).content.decode()


def test_rolling_back_an_ended_experiment_is_409(client, ana):
    experiment = experiment_in("running")
    client.force_login(ana)
    client.post(_url(experiment), {"note": "first"})

    response = client.post(_url(experiment), {"note": "second"}, headers=HTMX)

    assert response.status_code == 409
    assert "This experiment has already ended (rolled back)." in response.content.decode()
    assert AuditEntry.objects.filter(experiment=experiment, action="rolled_back").count() == 1


def test_users_without_the_permission_get_403(client):
    experiment = experiment_in("running")
    client.force_login(make_editor())

    assert client.post(_url(experiment), {"note": "stop"}).status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == "running"
