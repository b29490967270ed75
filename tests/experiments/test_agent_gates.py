"""An agent's gate policy (experiments.services.agent_gates_set): which gates its
prompt changes pass, and their sizes, changed by approvers only, within ranges,
audited with what changed; shown on the agent page with its holdout's report,
and changed there with a small form (or in the admin, through the service)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone

from andon.models import Inspection
from boards.models import Agent, Task
from experiments import services as kaizen
from experiments.line import ensure_version
from experiments.models import AgentGates, AuditEntry
from tests.factories import make_agent, make_board, make_editor, make_user

pytestmark = pytest.mark.django_db

Action = AuditEntry.Action


@pytest.fixture
def agent() -> Agent:
    return make_agent(boards=[make_board()], name="triage")


def _url(agent: Agent) -> str:
    return reverse("boards-agent-detail", kwargs={"pk": agent.pk})


# The agent page's form, as a person fills it in (shares in percent).
FORM = {
    "action": "gates",
    "replay": "every",
    "adversarial": "major",
    "shadow": "never",
    "replay_sample": "120",
    "replay_budget_usd": "2.50",
    "probes_per_family": "6",
    "probe_margin_pct": "3",
    "shadow_share_pct": "10",
    "shadow_size": "150",
    "shadow_hours": "12",
    "shadow_budget_usd": "4",
    "holdout_share_pct": "3",
}


# --- the service ---------------------------------------------------------------------------------


def test_an_approver_sets_the_policy_and_the_audit_log_says_what_changed(agent, ana):
    assert not AgentGates.objects.filter(agent=agent).exists()

    gates = kaizen.agent_gates_set(
        agent=agent, user=ana, shadow="every", shadow_share=0.1, replay_budget_usd=Decimal("2.5")
    )

    gates.refresh_from_db()
    assert (gates.shadow, gates.shadow_share, gates.replay_budget_usd) == ("every", 0.1, Decimal("2.5"))
    # What was not given keeps the defaults.
    assert (gates.replay, gates.adversarial, gates.holdout_share) == ("every", "every", 0.0)
    assert gates.kinds_for(major=False) == ["replay", "adversarial", "shadow"]
    entry = AuditEntry.objects.get(agent=agent, action=Action.GATES)
    assert entry.user == ana
    assert entry.reason == "shadow: major → every; shadow share: 20% → 10%; replay budget usd: $5 → $2.5"
    assert entry.get_action_display() == "Gate policy changed"


def test_setting_what_it_already_is_writes_nothing(agent, ana):
    kaizen.agent_gates_set(agent=agent, user=ana, replay="never")
    kaizen.agent_gates_set(agent=agent, user=ana, replay="never", shadow_size=200)

    assert AuditEntry.objects.filter(agent=agent, action=Action.GATES).count() == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replay", "sometimes", "Choose every change, major changes or never."),
        ("replay_sample", -1, "Out of range: 0 (sized by the power calculation) to 5,000 tasks."),
        ("replay_sample", 2.5, "Write a whole number."),
        ("replay_budget_usd", 0, "Out of range: more than $0 and at most $1,000."),
        ("shadow_share", 0, "Out of range: 1% to 100% of the live tasks."),
        ("shadow_share", 1.5, "Out of range: 1% to 100% of the live tasks."),
        ("shadow_size", 5, "Out of range: 10 to 10,000 pairs."),
        ("shadow_hours", 0.1, "Out of range: half an hour to 336 hours (two weeks)."),
        ("probes_per_family", 0, "Out of range: 1 to 100 probes."),
        ("probe_margin", 0.6, "Out of range: 0 to 50 points."),
        ("holdout_share", 0.01, "0 (no holdout), or 2% to 5% of the tasks."),
        ("holdout_share", 0.1, "0 (no holdout), or 2% to 5% of the tasks."),
        ("shadow_hours", "soon", "Write a number."),
    ],
)
def test_values_out_of_range_are_refused_and_nothing_is_written(agent, ana, field, value, message):
    with pytest.raises(ValidationError) as raised:
        kaizen.agent_gates_set(agent=agent, user=ana, **{field: value})

    assert raised.value.message_dict == {field: [message]}
    assert not AgentGates.objects.filter(agent=agent).exists()
    assert not AuditEntry.objects.filter(action=Action.GATES).exists()


@pytest.mark.parametrize("share", [0, 0.02, 0.035, 0.05])
def test_a_holdout_is_off_or_two_to_five_percent(agent, ana, share):
    assert kaizen.agent_gates_set(agent=agent, user=ana, holdout_share=share).holdout_share == share


def test_unknown_fields_are_refused(agent, ana):
    with pytest.raises(ValidationError, match="Not a field of the gate policy: holdout_version"):
        kaizen.agent_gates_set(agent=agent, user=ana, holdout_version=None)


@pytest.mark.parametrize("person", [make_editor, make_user])
def test_only_approvers_set_a_policy(agent, person):
    with pytest.raises(PermissionDenied):
        kaizen.agent_gates_set(agent=agent, user=person(), replay="never")
    assert not AgentGates.objects.filter(agent=agent).exists()


# --- the agent page --------------------------------------------------------------------------------


def test_the_agent_page_shows_the_default_policy_to_everyone_and_its_form_to_approvers(client, agent, ana):
    client.force_login(make_editor())
    html = client.get(_url(agent)).content.decode()

    assert '<section class="panel gate-policy" id="gates"' in html
    assert "the installation's defaults" in html
    assert '<span class="gate-rule gate-rule--every">Every change</span>' in html
    assert '<span class="gate-rule gate-rule--major">Major changes</span>' in html
    assert "as many past tasks as the power calculation asks" in html
    assert "20% of the live tasks, until 200 pairs or 24 hours" in html
    assert "gate-policy-form" not in html

    client.force_login(ana)
    html = client.get(_url(agent)).content.decode()
    assert 'id="gate-policy-form"' in html
    assert '<input type="hidden" name="action" value="gates">' in html
    assert 'name="shadow_share_pct" value="20.0"' in html


def test_an_approver_changes_the_policy_on_the_agent_page(client, agent, ana):
    client.force_login(ana)

    response = client.post(_url(agent), FORM)

    assert (response.status_code, response.url) == (302, f"{_url(agent)}#gates")
    gates = AgentGates.objects.get(agent=agent)
    assert (gates.replay, gates.adversarial, gates.shadow) == ("every", "major", "never")
    assert (gates.replay_sample, gates.replay_budget_usd) == (120, Decimal("2.5"))
    assert (gates.probes_per_family, gates.probe_margin) == (6, pytest.approx(0.03))
    assert (gates.shadow_share, gates.shadow_size, gates.shadow_hours) == (pytest.approx(0.1), 150, 12.0)
    assert (gates.shadow_budget_usd, gates.holdout_share) == (Decimal("4"), pytest.approx(0.03))
    entry = AuditEntry.objects.get(agent=agent, action=Action.GATES)
    assert entry.user == ana and "holdout share: 0% → 3%" in entry.reason
    html = client.get(response.url).content.decode()
    assert "Saved triage&#x27;s gate policy: changes proposed from now on pass these gates" in html
    assert "120 past tasks" in html
    assert (
        "3% of the tasks" in html
        and "will stay on the active version once the next change is promoted" in html
    )


def test_a_bad_value_on_the_agent_page_is_422_with_the_form_open_and_the_message(client, agent, ana):
    client.force_login(ana)

    response = client.post(_url(agent), {**FORM, "holdout_share_pct": "10", "shadow_size": "3"})

    assert response.status_code == 422
    html = response.content.decode()
    assert '<details class="gate-policy-edit" open>' in html
    assert "0 (no holdout), or 2% to 5% of the tasks." in html
    assert "Out of range: 10 to 10,000 pairs." in html
    # What the person wrote stays in the form.
    assert 'name="holdout_share_pct" value="10"' in html
    assert not AgentGates.objects.filter(agent=agent).exists()


@pytest.mark.parametrize("person", [make_editor, make_user])
def test_people_without_the_approve_permission_cannot_post_a_policy(client, agent, person):
    client.force_login(person())

    assert client.post(_url(agent), FORM).status_code == 403
    assert client.post(_url(agent), {"action": "holdout_reset", "note": "x"}).status_code == 403
    assert not AgentGates.objects.filter(agent=agent).exists()


def test_an_unknown_agent_is_404(client, ana):
    client.force_login(ana)

    assert client.post(reverse("boards-agent-detail", kwargs={"pk": 999999}), FORM).status_code == 404


def _holdout(agent: Agent) -> AgentGates:
    """A holdout on v1 since an hour ago, with first attempts on both sides."""
    v1 = ensure_version(agent)
    board = agent.boards.first()
    gates = AgentGates.objects.create(
        agent=agent,
        holdout_share=0.05,
        holdout_version=v1,
        holdout_started_at=timezone.now() - timedelta(hours=1),
    )
    column = board.columns.first()
    for version, passed in [(1, True), (1, False), (2, True), (2, True), (2, True), (2, False)]:
        task = Task.objects.create(board=board, column=column, agent=agent, title="t")
        Inspection.objects.create(task=task, board=board, agent=agent, prompt_version=version, passed=passed)
    return gates


def test_the_agent_page_shows_the_holdouts_report(client, agent, ana):
    _holdout(agent)
    client.force_login(ana)

    html = client.get(_url(agent)).content.decode()

    report = html[html.index('id="holdout-report"') :]
    report = report[: report.index("</table>")]
    assert (
        '<th scope="row">Holdout: v1</th><td class="num">2</td><td class="num">1</td><td class="num">50%</td>'
        in report
    )
    assert '<td class="num">4</td><td class="num">3</td><td class="num">75%</td>' in report
    assert "5% of the tasks" in html and "stay on v1" in html
    assert 'id="holdout-reset-form"' in html


def test_an_approver_ends_a_holdout_with_a_note(client, agent, ana):
    gates = _holdout(agent)
    client.force_login(ana)

    refused = client.post(_url(agent), {"action": "holdout_reset", "note": ""}, follow=True)
    assert "The holdout was not ended" in refused.content.decode()
    response = client.post(_url(agent), {"action": "holdout_reset", "note": "A new series."})

    assert response.status_code == 302
    gates.refresh_from_db()
    assert gates.holdout_version is None
    assert AuditEntry.objects.filter(agent=agent, action=Action.HOLDOUT, user=ana).exists()
    assert 'id="holdout-report"' not in client.get(_url(agent)).content.decode()


# --- the admin ----------------------------------------------------------------------------------------


def test_the_admin_changes_a_policy_through_the_service(client, agent):
    admin = make_user(is_staff=True, is_superuser=True)
    client.force_login(admin)
    url = reverse("admin:experiments_agentgates_add")
    fields = {
        "agent": agent.pk,
        "replay": "never",
        "adversarial": "every",
        "shadow": "major",
        "replay_sample": 0,
        "replay_budget_usd": "5",
        "shadow_share": "0.2",
        "shadow_size": 200,
        "shadow_hours": 24,
        "shadow_budget_usd": "5",
        "probes_per_family": 12,
        "probe_margin": "0.05",
        "holdout_share": "0.5",
    }

    refused = client.post(url, fields)
    assert (
        refused.status_code == 200 and "0 (no holdout), or 2% to 5% of the tasks." in refused.content.decode()
    )
    response = client.post(url, {**fields, "holdout_share": "0"})

    assert response.status_code == 302
    assert AgentGates.objects.get(agent=agent).replay == "never"
    assert AuditEntry.objects.get(agent=agent, action=Action.GATES).reason == "replay: every → never"
    assert client.get(reverse("admin:experiments_replay_changelist")).status_code == 200
    assert client.get(reverse("admin:experiments_gate_changelist")).status_code == 200
    assert client.get(reverse("admin:experiments_replay_add")).status_code == 403


def test_an_approver_sets_the_agents_own_guardrails_and_a_blank_restores_the_installations(
    client, agent, ana
):
    client.force_login(ana)

    response = client.post(_url(agent), {**FORM, "cost_limit_pct": "20", "latency_limit_pct": "35"})

    assert response.status_code == 302
    gates = AgentGates.objects.get(agent=agent)
    assert (gates.cost_limit, gates.latency_limit) == (pytest.approx(0.2), pytest.approx(0.35))
    assert gates.guardrails() == {"cost": pytest.approx(0.2), "latency": pytest.approx(0.35)}
    html = client.get(_url(agent)).content.decode()
    assert "cost per task rises more than 20% or its latency per task more than 35%" in html
    assert "cost limit: the installation&#x27;s → 20%" in html

    client.post(_url(agent), {**FORM, "cost_limit_pct": "", "latency_limit_pct": ""})
    gates.refresh_from_db()
    assert (gates.cost_limit, gates.latency_limit) == (None, None)
    assert gates.guardrails() == {"cost": 1.5, "latency": 0.5}
    refused = client.post(_url(agent), {**FORM, "cost_limit_pct": "-5"})
    assert refused.status_code == 422
    gates.refresh_from_db()
    assert gates.cost_limit is None
