"""One proposal's page: the diff (every changed field), the evidence, what
became of it, its experiment and its audit entries; its actions as plain forms."""

from __future__ import annotations

import pytest

from experiments import services as kaizen
from experiments.models import PromptVersion
from tests.experiments.helpers import RATIONALE, fields_of, line_agent, major_proposal, started
from tests.factories import make_editor

pytestmark = pytest.mark.django_db


def test_the_url_is_the_proposals_absolute_url(db):
    proposal = major_proposal(line_agent())

    assert proposal.get_absolute_url() == f"/kaizen/proposals/{proposal.pk}/"


def test_a_pending_proposal_shows_its_diff_evidence_and_plain_actions(client, ana):
    agent = line_agent(name="welder")
    proposal = major_proposal(agent, evidence={"corrections": 7})
    client.force_login(ana)

    html = client.get(proposal.get_absolute_url()).content.decode()

    assert "<h1>Change to welder: v2</h1>" in html
    assert '<span class="evo-status evo-status--pending">Waiting for approval</span>' in html
    assert RATIONALE in html
    assert "<dt>Corrections</dt>" in html
    assert '<span class="evo-diff-line evo-diff-line--add">+You are a meticulous inspector.' in html
    assert f'action="/kaizen/proposals/{proposal.pk}/approve/"' in html
    assert "hx-post" not in html
    assert '<input type="hidden" name="from" value="proposal">' in html
    assert f'<input type="hidden" name="next" value="{proposal.get_absolute_url()}">' in html


def test_the_diff_shows_removed_lines_and_other_fields(client, ana):
    agent = line_agent()
    agent.prompt_template = "Inspect this.\n{input}"
    agent.save()
    cascade = [{"provider": "simulated", "model": "sim-large", "parameters": {"latency_ms": 0}}]
    proposal = kaizen.proposal_create(
        agent=agent,
        fields=fields_of(agent, prompt_template="{input}", cascade=cascade),
        rationale="The cheap tier fails too often.",
        user=make_editor(),
    )
    client.force_login(ana)

    html = client.get(proposal.get_absolute_url()).content.decode()

    assert '<span class="evo-diff-line evo-diff-line--del">-Inspect this.</span>' in html
    assert '<span class="evo-diff-line evo-diff-line--field">cascade:</span>' in html
    assert "sim-large" in html


def test_a_decided_proposal_shows_the_decision_and_its_experiment(client, ana):
    experiment = started(line_agent(), by=ana)
    client.force_login(ana)

    html = client.get(experiment.proposal.get_absolute_url()).content.decode()

    assert '<span class="evo-status evo-status--experimenting">In an experiment</span>' in html
    assert "The diff reads well." in html
    assert f'href="/kaizen/experiments/{experiment.pk}/"' in html
    assert "/approve/" not in html
    audit = html[html.index("Audit log of this proposal") :]
    assert audit.index("Experiment started") < audit.index("Approved") < audit.index("Proposed")


def test_a_proposal_of_the_kaizen_loop_names_it_as_author(client, ana):
    agent = line_agent()
    proposal = kaizen.proposal_create(
        agent=agent,
        fields=fields_of(agent, prompt_template="Be brief.\n{input}"),
        rationale="Outputs are long.",
        source=PromptVersion.Source.KAIZEN,
        evidence={"mean_tokens_out": 812},
    )
    client.force_login(ana)

    html = client.get(proposal.get_absolute_url()).content.decode()

    assert '<strong class="evo-author">kaizen loop</strong>' in html
    assert "<dt>Mean tokens out</dt>" in html


def test_users_without_the_permission_get_403(client):
    proposal = major_proposal(line_agent())
    client.force_login(make_editor())

    assert client.get(proposal.get_absolute_url()).status_code == 403


def test_an_unknown_proposal_is_404(client, ana):
    client.force_login(ana)

    assert client.get("/kaizen/proposals/999999/").status_code == 404
