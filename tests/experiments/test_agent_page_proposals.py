"""A person's change to an agent's prompt, made on the agent page: it becomes a
proposal (a major one waits for approval, a minor one starts its canary), with a
required rationale and a preview of the diff against the active version; the
daily limit; the prompt's history on the page; rollback by approvers; and the
versions that direct changes (a config file, the admin, a script) record."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import NoReverseMatch, reverse

from boards import services
from boards.models import Agent
from experiments import services as kaizen
from experiments.models import AuditEntry, ChangeProposal, Experiment, PromptVersion
from tests.factories import HTMX, make_agent, make_approver, make_board, make_user

pytestmark = pytest.mark.django_db

Action = AuditEntry.Action
LONG_LINE = "Read the inspection report below and answer in two sentences: the defect, then its class."
REWRITE = "You are a meticulous inspector. Describe the defect first, then classify it.\n{input}"


@pytest.fixture
def agent():
    return make_agent(boards=[make_board()], parameters={"temperature": 0.5})


def _url(agent: Agent) -> str:
    return reverse("boards-agent-detail", kwargs={"pk": agent.pk})


def _proposal_url(proposal: ChangeProposal) -> str:
    try:
        return reverse("experiments-proposal", kwargs={"pk": proposal.pk})
    except NoReverseMatch:  # the kaizen pages' URLs are not installed
        return f"/kaizen/proposals/{proposal.pk}/"


def _audit_url() -> str:
    try:
        return reverse("experiments-audit")
    except NoReverseMatch:  # the kaizen pages' URLs are not installed
        return "/kaizen/audit/"


def _data(agent: Agent, action: str = "propose", **changes: str) -> dict[str, str]:
    """What the agent page's proposal form sends for ``agent`` as it is, changed by ``changes``."""
    data = {
        "action": action,
        "based_on_version": str(agent.prompt_version),
        "prompt_template": agent.prompt_template,
        "prompt_variables": ", ".join(agent.prompt_variables),
        "temperature": str(agent.parameters.get("temperature", "")),
        "top_p": "",
        "max_tokens": "",
        "rationale": "Reviewers keep correcting the order of the answer.",
        "tier-TOTAL_FORMS": str(len(agent.cascade) + 1),
        "tier-INITIAL_FORMS": str(len(agent.cascade)),
        "tier-MIN_NUM_FORMS": "0",
        "tier-MAX_NUM_FORMS": "8",
    }
    for i, tier in enumerate(agent.cascade):
        data.update(
            {
                f"tier-{i}-ORDER": str(i + 1),
                f"tier-{i}-provider": tier["provider"],
                f"tier-{i}-model": tier["model"],
                f"tier-{i}-parameters": "",
                f"tier-{i}-threshold": "" if tier.get("threshold") is None else str(tier["threshold"]),
            }
        )
        if tier.get("parameters"):
            data[f"tier-{i}-parameters"] = json.dumps(tier["parameters"])
    # The spare row, as a browser sends it: its provider select's first option.
    data[f"tier-{len(agent.cascade)}-provider"] = "simulated"
    data.update(changes)
    return data


def _fields(agent: Agent, **changes) -> dict:
    return {**{name: getattr(agent, name) for name in PromptVersion.FIELDS}, **changes}


def _bump(agent: Agent, template: str) -> Agent:
    """A direct change (as a config file or a script makes one): a new active version."""
    agent.prompt_template = template
    return services.agent_save(agent=agent)


# --- proposing ------------------------------------------------------------------------------


def test_a_persons_major_edit_makes_a_proposal_that_waits_for_approval(client, agent, editor):
    client.force_login(editor)

    response = client.post(_url(agent), _data(agent, prompt_template=REWRITE), follow=True)

    proposal = ChangeProposal.objects.get(agent=agent)
    assert proposal.major and proposal.status == ChangeProposal.Status.PENDING
    assert proposal.author == editor and proposal.source == "person"
    assert proposal.rationale == "Reviewers keep correcting the order of the answer."
    assert proposal.candidate.prompt_template == REWRITE
    assert not Experiment.objects.filter(agent=agent).exists()
    agent.refresh_from_db()
    assert (agent.prompt_template, agent.prompt_version) == ("{input}", 1)
    # The page shows the new proposal: major, why, where it stands, and a link to it.
    html = response.content.decode()
    result = re.search(
        rf'<section class="panel proposal-result" id="proposal-{proposal.pk}"(.*?)</section>', html, re.S
    )
    assert result, "the page does not show the new proposal"
    shown = result.group(1)
    assert "badge--major" in shown and "Waiting for approval." in shown
    assert "Major: the template changes beyond a small edit" in shown
    assert f'href="{_proposal_url(proposal)}"' in shown
    assert 'diff-line--add">+You are a meticulous inspector.' in shown
    (entry,) = AuditEntry.objects.filter(agent=agent, action=Action.PROPOSED)
    assert entry.user == editor and entry.proposal == proposal


def test_a_persons_minor_edit_starts_its_experiment_at_once(client, agent, editor):
    client.force_login(editor)

    response = client.post(_url(agent), _data(agent, temperature="0.6"), follow=True)

    proposal = ChangeProposal.objects.get(agent=agent)
    assert not proposal.major and proposal.status == ChangeProposal.Status.EXPERIMENTING
    assert proposal.classification == "Minor: temperature 0.5 → 0.6."
    experiment = Experiment.objects.get(agent=agent)
    assert (experiment.stage, experiment.status, experiment.treatment) == (
        "canary",
        "running",
        proposal.candidate,
    )
    agent.refresh_from_db()
    assert agent.parameters == {"temperature": 0.5}  # the active version is still v1
    html = response.content.decode()
    assert "Experiment started (canary at 5%)." in html and "badge--minor" in html


def test_a_minor_edit_waits_while_the_agent_has_an_experiment_running(client, agent, editor):
    client.force_login(editor)
    client.post(_url(agent), _data(agent, temperature="0.6"))

    response = client.post(_url(agent), _data(agent, temperature="0.4"), follow=True)

    second = ChangeProposal.objects.filter(agent=agent).order_by("-pk").first()
    assert not second.major and second.status == ChangeProposal.Status.APPROVED
    assert "Approved: it starts when the agent&#x27;s running experiment ends." in response.content.decode()
    assert Experiment.objects.filter(agent=agent).count() == 1
    # It starts on its own once the running experiment ends.
    first = Experiment.objects.get(agent=agent)
    approver = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    kaizen.experiment_rollback(experiment=first, user=approver, note="make room")
    assert Experiment.objects.get(proposal=second).status == "running"


@pytest.mark.parametrize("rationale", ["", "   "])
def test_the_rationale_is_required(client, agent, editor, rationale):
    client.force_login(editor)

    response = client.post(_url(agent), _data(agent, prompt_template=REWRITE, rationale=rationale))

    assert response.status_code == 422
    html = response.content.decode()
    errors = re.search(r'<ul class="errorlist" id="id_rationale_error">(.*?)</ul>', html, re.S)
    assert errors and "Say why you propose this change" in errors.group(1)
    assert not ChangeProposal.objects.exists() and not PromptVersion.objects.exists()


def test_the_page_asks_for_the_rationale_beside_the_preview_and_propose_buttons(client, agent, editor):
    client.force_login(editor)

    html = client.get(_url(agent)).content.decode()

    form = html[html.index('id="proposal-form"') : html.index("</form>", html.index('id="proposal-form"'))]
    assert re.search(r'<textarea name="rationale"[^>]*required', form)
    assert re.search(r'<button type="submit" name="action" value="preview"[^>]*formnovalidate', form)
    assert 'hx-post="' + _url(agent) + '"' in form and 'hx-target="#edit"' in form
    assert '<button type="submit" name="action" value="propose"' in form


# --- the preview ----------------------------------------------------------------------------


def test_the_preview_shows_removed_and_added_lines_and_writes_nothing(client, agent, editor):
    # Long enough that one word changed is a small edit.
    agent = _bump(agent, f"{LONG_LINE}\nLine two: {{input}}\nLine three")
    versions_before = PromptVersion.objects.count()
    client.force_login(editor)

    response = client.post(
        _url(agent),
        _data(agent, "preview", prompt_template=f"{LONG_LINE}\nLine 2: {{input}}\nLine three", rationale=""),
    )

    assert response.status_code == 200
    html = response.content.decode()
    preview = html[html.index('id="proposal-preview"') :]
    assert "version 2 → 3" in preview
    assert '<span class="diff-line diff-line--del">-Line two: {input}</span>' in preview
    assert '<span class="diff-line diff-line--add">+Line 2: {input}</span>' in preview
    assert f'<span class="diff-line diff-line--context"> {LONG_LINE}</span>' in preview
    assert "Minor: a small template edit" in preview and "badge--minor" in preview
    # the form keeps what was typed, to propose it next
    assert "Line 2: {input}\nLine three</textarea>" in html
    assert not ChangeProposal.objects.exists()
    assert PromptVersion.objects.count() == versions_before
    assert not AuditEntry.objects.filter(action=Action.PROPOSED).exists()


def test_the_preview_classifies_as_the_proposal_will(client, agent, editor):
    client.force_login(editor)
    data = _data(agent, prompt_template=REWRITE, prompt_variables="", temperature="1.5")

    preview = client.post(_url(agent), {**data, "action": "preview"}).content.decode()
    client.post(_url(agent), data)

    proposal = ChangeProposal.objects.get(agent=agent)
    assert proposal.classification.startswith("Major:") and "temperature 0.5 → 1.5" in proposal.classification
    assert proposal.classification in preview
    assert "parameters:" in preview  # the other fields that changed follow the template's diff


def test_the_htmx_preview_answers_with_the_form_panel_only(client, agent, editor):
    client.force_login(editor)

    response = client.post(_url(agent), _data(agent, "preview", prompt_template=REWRITE), headers=HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="panel" id="edit"')
    assert "<html" not in html and 'id="history"' not in html
    assert 'diff-line--add">+You are a meticulous inspector.' in html
    assert 'diff-line--context"> {input}</span>' in html
    assert not ChangeProposal.objects.exists()


def test_previewing_no_change_says_so(client, agent, editor):
    client.force_login(editor)

    response = client.post(_url(agent), _data(agent, "preview"), headers=HTMX)

    assert response.status_code == 422
    html = response.content.decode()
    assert "Nothing changes: the proposal is the active version." in html
    assert 'id="proposal-preview"' not in html


# --- limits and permissions ----------------------------------------------------------------


def test_the_daily_limit_is_shown_and_nothing_is_written(client, agent, editor, settings):
    settings.KAIZEN_MAX_CHANGES_PER_DAY = 3
    for n in range(3):
        kaizen.proposal_create(
            agent=agent,
            fields=_fields(agent, prompt_template=f"Attempt {n}: a different prompt altogether. {{input}}"),
            rationale="Trying.",
            user=editor,
        )
    versions = PromptVersion.objects.count()
    client.force_login(editor)

    response = client.post(_url(agent), _data(agent, prompt_template=REWRITE))

    assert response.status_code == 422
    html = response.content.decode()
    errors = html[html.index('id="edit-errors"') :]
    assert "has had 3 changes proposed in the last 24 hours" in errors[: errors.index("</div>")]
    assert ChangeProposal.objects.filter(agent=agent).count() == 3
    assert PromptVersion.objects.count() == versions
    assert f"{REWRITE}</textarea>" in html  # kept, to propose tomorrow


def test_a_user_without_change_agent_gets_403_and_nothing_is_written(client, agent):
    client.force_login(make_approver())  # approving is not proposing

    for action in ("propose", "preview", "settings"):
        response = client.post(_url(agent), _data(agent, action, prompt_template=REWRITE))
        assert response.status_code == 403

    assert not ChangeProposal.objects.exists() and not PromptVersion.objects.exists()
    agent.refresh_from_db()
    assert agent.prompt_template == "{input}"


def test_an_unknown_action_is_refused(client, agent, editor):
    client.force_login(editor)

    assert client.post(_url(agent), _data(agent, "promote")).status_code == 400


# --- the history ----------------------------------------------------------------------------


def test_the_history_lists_versions_proposals_experiments_and_audit_entries(client, agent, editor):
    agent = _bump(agent, "A config's prompt: {input}")  # v1 recorded, v2 active
    major = kaizen.proposal_create(
        agent=agent, fields=_fields(agent, prompt_template=REWRITE), rationale="Defect first.", user=editor
    )
    minor = kaizen.proposal_create(
        agent=agent,
        fields=_fields(agent, parameters={"temperature": 0.7}),
        rationale="Warmer.",
        user=editor,
    )
    experiment = Experiment.objects.get(agent=agent)
    client.force_login(make_user())  # reading the history needs no permission

    html = client.get(_url(agent)).content.decode()

    history = html[html.index('id="history"') :]
    numbers = [int(n) for n in re.findall(r'<li class="version[^"]*" id="version-(\d+)"', history)]
    assert numbers == [4, 3, 2, 1]
    v4, v3, v2, v1 = re.findall(r'<li class="version.*?</li>', history, re.S)
    assert "version--active" in v2 and "active</span>" in v2
    assert "version--active" not in v1 + v3 + v4
    assert "A config file or the admin" in v2 and "applied from a config file or the admin" in v2
    assert "First version" in v1
    assert editor.get_username() in v3 and "(a person)" in v3 and "Defect first." in v3
    assert "proposed: waiting for approval" in v3 and "proposed: in an experiment" in v4
    # each version's template, expandable
    assert re.search(
        r"<details class=\"version-prompt\">.*?<pre class=\"text-block\">You are a meticulous", v3, re.S
    )
    assert "A config&#x27;s prompt: {input}</pre>" in v2
    # proposals and experiments, with links
    assert f'href="{_proposal_url(major)}"' in history and f'href="{_proposal_url(minor)}"' in history
    assert f'id="history-experiment-{experiment.pk}"' in history
    assert "v2 vs v4" in history
    # the audit log: the latest entries, and the whole of it
    audit = history[history.index('id="audit-log"') :]
    assert "Version recorded" in audit and "Proposed" in audit and "Experiment started" in audit
    assert "a config file or the admin" in audit and editor.get_username() in audit
    assert f'href="{_audit_url()}?agent={agent.pk}"' in history
    # readers see no rollback
    assert "Make this version active again" not in html


def test_the_audit_log_on_the_page_shows_the_latest_twenty(client, agent, editor):
    for n in range(12):
        _bump(agent, f"Config change {n}: {{input}}")
    client.force_login(editor)

    html = client.get(_url(agent)).content.decode()

    audit = html[html.index('id="audit-log"') :]
    rows = re.findall(r'<tr id="audit-(\d+)"', audit)
    latest = AuditEntry.objects.filter(agent=agent).order_by("-created_at", "-pk")
    assert AuditEntry.objects.filter(agent=agent).count() == 12
    assert [int(pk) for pk in rows] == list(latest.values_list("pk", flat=True)[:20])
    assert "v12 → v13" in audit


def test_another_agents_proposal_is_not_shown_as_this_ones(client, agent, editor):
    other = make_agent(boards=[make_board()])
    proposal = kaizen.proposal_create(
        agent=other, fields=_fields(other, prompt_template=REWRITE), rationale="Other.", user=editor
    )
    client.force_login(editor)

    html = client.get(f"{_url(agent)}?proposed={proposal.pk}").content.decode()

    assert "proposal-result" not in html


# --- rollback -------------------------------------------------------------------------------


def test_the_rollback_button_is_only_for_approvers_and_only_on_earlier_versions(
    client, agent, editor, approver
):
    agent = _bump(agent, "Second: {input}")
    v1 = PromptVersion.objects.get(agent=agent, number=1)
    v2 = PromptVersion.objects.get(agent=agent, number=2)
    pending = kaizen.proposal_create(
        agent=agent, fields=_fields(agent, prompt_template=REWRITE), rationale="Try.", user=editor
    )

    client.force_login(editor)
    as_editor = client.get(_url(agent)).content.decode()
    client.force_login(approver)
    as_approver = client.get(_url(agent)).content.decode()

    assert "Make this version active again" not in as_editor and 'name="note"' not in as_editor
    assert f'id="rollback-{v1.pk}"' in as_approver
    # not the active version, nor a candidate that never passed its gates
    assert f'id="rollback-{v2.pk}"' not in as_approver
    assert f'id="rollback-{pending.candidate.pk}"' not in as_approver


def test_an_approver_makes_an_earlier_version_active_again(client, agent, approver):
    agent = _bump(agent, "Second: {input}")
    v1 = PromptVersion.objects.get(agent=agent, number=1)
    client.force_login(approver)

    response = client.post(
        _url(agent), {"action": "rollback", "version": v1.pk, "note": "v2 doubled the defects."}, follow=True
    )

    assert response.redirect_chain == [(_url(agent), 302)]
    agent.refresh_from_db()
    assert (agent.prompt_version, agent.prompt_template) == (1, "{input}")
    (entry,) = AuditEntry.objects.filter(agent=agent, action=Action.ROLLED_BACK)
    assert (entry.user, entry.version, entry.reason) == (approver, v1, "v2 doubled the defects.")
    html = response.content.decode()
    assert "Version 1 of" in html and "is active again" in html
    assert re.search(r'<li class="version version--active" id="version-1">', html)


def test_a_rollback_needs_a_note(client, agent, approver):
    agent = _bump(agent, "Second: {input}")
    v1 = PromptVersion.objects.get(agent=agent, number=1)
    client.force_login(approver)

    response = client.post(_url(agent), {"action": "rollback", "version": v1.pk, "note": "  "})

    assert response.status_code == 422
    html = response.content.decode()
    assert "Nothing was rolled back" in html and "Say why" in html
    assert re.search(
        rf'<details class="rollback" open>\s*<summary>[^<]*</summary>\s*<form[^>]*id="rollback-{v1.pk}"', html
    )
    agent.refresh_from_db()
    assert agent.prompt_version == 2
    assert not AuditEntry.objects.filter(action=Action.ROLLED_BACK).exists()


def test_a_proposed_version_cannot_be_rolled_to(client, agent, approver):
    proposal = kaizen.proposal_create(
        agent=agent, fields=_fields(agent, prompt_template=REWRITE), rationale="Try.", user=approver
    )
    client.force_login(approver)

    response = client.post(
        _url(agent), {"action": "rollback", "version": proposal.candidate.pk, "note": "Skip the gates."}
    )

    assert response.status_code == 422
    assert "a proposed version goes through approval and an experiment" in response.content.decode()
    agent.refresh_from_db()
    assert (agent.prompt_version, agent.prompt_template) == (1, "{input}")


def test_rolling_back_needs_the_approve_permission(client, agent, editor):
    agent = _bump(agent, "Second: {input}")
    v1 = PromptVersion.objects.get(agent=agent, number=1)
    client.force_login(editor)

    response = client.post(_url(agent), {"action": "rollback", "version": v1.pk, "note": "Please."})

    assert response.status_code == 403
    agent.refresh_from_db()
    assert agent.prompt_version == 2


# --- direct changes leave no gap in the history ---------------------------------------------


def test_a_direct_change_records_both_versions_and_who_made_it(agent):
    user = make_user()
    agent.prompt_template = "Changed by a script: {input}"

    services.agent_save(agent=agent, user=user, rationale="a migration script")

    agent.refresh_from_db()
    assert agent.prompt_version == 2
    old, new = PromptVersion.objects.filter(agent=agent).order_by("number")
    assert (old.number, old.prompt_template, old.source, old.parameters) == (
        1,
        "{input}",
        "initial",
        {"temperature": 0.5},
    )
    assert (new.number, new.prompt_template, new.source, new.author, new.parent) == (
        2,
        "Changed by a script: {input}",
        "config",
        user,
        old,
    )
    (entry,) = AuditEntry.objects.filter(agent=agent)
    assert (entry.action, entry.user, entry.version) == ("version", user, new)
    assert entry.reason == "v1 → v2: applied from a config file or the admin (a migration script)"


def test_saving_what_runs_records_no_version(agent):
    agent.reuse_results = False
    agent.concurrency = 2

    services.agent_save(agent=agent)

    agent.refresh_from_db()
    assert (agent.prompt_version, agent.reuse_results) == (1, False)
    assert not PromptVersion.objects.exists() and not AuditEntry.objects.exists()


def test_a_direct_change_after_a_rollback_takes_a_new_number(agent, approver):
    _bump(agent, "Second: {input}")
    _bump(agent, "Third: {input}")
    kaizen.prompt_version_rollback(
        agent=agent, version=PromptVersion.objects.get(agent=agent, number=1), user=approver, note="Back."
    )
    agent.refresh_from_db()
    assert agent.prompt_version == 1

    _bump(agent, "Fourth: {input}")

    agent.refresh_from_db()
    # Not 2: v2 is another prompt, whose results and history must not mix with this one's.
    assert agent.prompt_version == 4
    assert PromptVersion.objects.get(agent=agent, number=2).prompt_template == "Second: {input}"
    assert PromptVersion.objects.get(agent=agent, number=4).prompt_template == "Fourth: {input}"
