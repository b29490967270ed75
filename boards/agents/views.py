"""The agent pages: the list of agents, and an agent's page with its settings,
metrics, latest ledger rows and the history of its prompt, where people propose
a change to its prompt and cascade, switch how it runs, or roll its prompt back.

Thin like the board's views: forms parse the request, the kaizen loop's
services (``experiments.services``) and ``boards.services.agent_save`` do the
writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import plotly
from django import forms
from django.contrib import messages
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_http_methods

from boards import services
from boards.agents.cascade import implementation_for
from boards.agents.forms import (
    AgentGatesForm,
    AgentOperationsForm,
    AgentPromptForm,
    BaseTierFormSet,
    PromptRollbackForm,
    TierForm,
    TierFormSet,
)
from boards.agents.spec import cascade_json, parse_cascade
from boards.models import Agent
from boards.selectors import agent_list_get, agent_model_calls_get
from experiments import services as kaizen
from experiments.evidence import PAGE_PATTERNS, agent_tuning_evidence_get
from experiments.forms import NoteForm
from experiments.models import AgentGates, AuditEntry, ChangeProposal, Experiment, PromptVersion
from experiments.prompt_diff import diff_lines, diff_rows
from experiments.selectors import holdout_report_get
from experiments.tuning_charts import figure_json, frontier_figure
from kaizen_web.http import AuthenticatedHttpRequest, error_message, form_add_service_errors

logger = logging.getLogger(__name__)

# The figures every agent's metrics() gives (boards.selectors.agent_metrics_get), in the
# order the page shows them; anything else a custom class adds follows under its own key.
AGENT_METRICS: tuple[tuple[str, str], ...] = (
    ("tasks_done", "Tasks done"),
    ("tasks_failed", "Tasks failed"),
    ("tasks_running", "Running now"),
    ("model_calls", "Model calls"),
    ("cache_hits", "Cache hits"),
    ("reused", "Reused results"),
    ("errors", "Call errors"),
    ("cost", "Total cost"),
    ("tokens_in", "Tokens in"),
    ("tokens_out", "Tokens out"),
    ("mean_latency_ms", "Mean latency"),
)
RECENT_CALLS = 20
# Proposals, experiments and audit entries shown on the agent page; the kaizen pages have all.
HISTORY_ROWS = 20


def _agent_metrics(agent: Agent) -> dict[str, Any]:
    """The agent's ``metrics()`` for its page: the known figures as (key, label,
    value) rows, the share taken from each tier, whatever else a custom class adds,
    and an error if its class could not give them (the page shows the rest)."""
    try:
        metrics = dict(implementation_for(agent).metrics())
    except Exception as exc:
        # A custom class's bug costs its figures, not the page.
        logger.exception("agent %s: metrics() failed", agent.pk)
        metrics, error = {}, f"{agent.implementation or agent.name} could not give its metrics: {exc}"
    else:
        error = ""
    rows = [(key, label, metrics.pop(key)) for key, label in AGENT_METRICS if key in metrics]
    return {
        "metric_rows": rows,
        "accepted_by_tier": metrics.pop("accepted_by_tier", None),
        "extra_metrics": metrics,
        "metrics_error": error,
    }


def _tier_initial(agent: Agent) -> list[dict[str, Any]]:
    cascade = agent.cascade if isinstance(agent.cascade, list) else []
    return [TierForm.initial_for(tier) for tier in cascade if isinstance(tier, dict)]


@dataclass
class _AgentEdit:
    """The forms of the agent page for people who may change agents: the proposed
    prompt change with its cascade, its preview, and the operational switches."""

    form: AgentPromptForm
    formset: BaseTierFormSet
    operations: AgentOperationsForm
    preview: dict[str, Any] | None = None


def _agent_edit(agent: Agent, data=None, *, proposing: bool = False) -> _AgentEdit:
    return _AgentEdit(
        form=AgentPromptForm(data, agent=agent, proposing=proposing),
        formset=TierFormSet(data, prefix="tier", initial=_tier_initial(agent)),
        operations=AgentOperationsForm(agent=agent),
    )


def _attach_errors(form: forms.Form, exc: ValidationError) -> None:
    """What a service refused after the form passed (a rule the form does not
    check, a limit, an agent changed meanwhile): on its field, or above the form."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
    for name, messages_ in errors.items():
        form.add_error(name if name in form.fields else None, messages_)


def _kaizen_url(obj: ChangeProposal | Experiment) -> str:
    """The page of a proposal or an experiment. Those pages belong to the kaizen
    app's own URLs; until they are installed, the path they are planned at."""
    try:
        return obj.get_absolute_url()
    except NoReverseMatch:
        kind = "proposals" if isinstance(obj, ChangeProposal) else "experiments"
        return f"/kaizen/{kind}/{obj.pk}/"


def _audit_url(agent: Agent) -> str:
    try:
        path = reverse("experiments-audit")
    except NoReverseMatch:
        path = "/kaizen/audit/"
    return f"{path}?agent={agent.pk}"


def _proposal_state(proposal: ChangeProposal) -> str:
    """Where a proposal stands, in the words its author needs."""
    experiment = getattr(proposal, "experiment", None)
    if proposal.status == ChangeProposal.Status.EXPERIMENTING and experiment is not None:
        if experiment.stage == Experiment.Stage.CANARY:
            return f"experiment started (canary at {experiment.canary_share:.0%})"
        return f"in its experiment's {experiment.get_stage_display().lower()} stage"
    if proposal.status == ChangeProposal.Status.PENDING:
        return "waiting for approval"
    if proposal.status == ChangeProposal.Status.VALIDATING:
        return "in its gates: being seen on past, probed and mirrored work before its canary"
    if proposal.status == ChangeProposal.Status.APPROVED:
        # Approved (a minor change needs no approval) and waiting for the agent's slot.
        return "approved: it starts when the agent's running experiment ends"
    if proposal.status == ChangeProposal.Status.STOPPED and proposal.decision_note:
        return f"stopped: {proposal.decision_note}"
    return proposal.get_status_display().lower()


def _proposed_fields(agent: Agent, form: AgentPromptForm, formset: BaseTierFormSet) -> dict[str, Any]:
    """The forms' values as a prompt version holds them (normal form), so that the
    preview compares them as ``proposal_create`` will."""
    data = form.cleaned_data
    return {
        "prompt_template": data["prompt_template"],
        "prompt_variables": data["variables"],
        "parameters": data["parameters"],
        "cascade": cascade_json(parse_cascade(formset.cascade)),
        # Not edited on the page: a class is chosen in the admin or a config file.
        "implementation": agent.implementation,
    }


def _proposal_preview(agent: Agent, fields: dict[str, Any]) -> dict[str, Any]:
    """experiments.services.proposal_preview, with the diff's lines marked for the page."""
    preview = kaizen.proposal_preview(agent=agent, fields=fields)
    preview["diff"] = diff_rows(preview["diff"])
    return preview


def _agent_history(agent: Agent, user) -> dict[str, Any]:
    """The agent's prompt versions, proposals, experiments and latest audit
    entries, each list one query."""
    versions = list(
        PromptVersion.objects.filter(agent=agent).select_related("author", "proposal").order_by("-number")
    )
    if not any(v.number == agent.prompt_version for v in versions):
        # Agents older than the kaizen loop have no row for their version until a
        # change records it: show it as the agent holds it.
        Source = PromptVersion.Source
        versions.append(
            PromptVersion(
                agent=agent,
                number=agent.prompt_version,
                source=Source.INITIAL if agent.prompt_version == 1 else Source.CONFIG,
                **{name: getattr(agent, name) for name in PromptVersion.FIELDS},
            )
        )
        versions.sort(key=lambda v: -v.number)
    approver = kaizen.can_approve(user)
    for version in versions:
        proposal = getattr(version, "proposal", None) if version.pk else None
        version.is_active = version.number == agent.prompt_version
        version.candidate_of = proposal
        # Only a version that was the agent's own once may be made active again, not
        # a candidate that never passed its gates.
        was_active = proposal is None or proposal.status == ChangeProposal.Status.PROMOTED
        version.can_roll_back = bool(approver and version.pk and was_active and not version.is_active)
    proposals = list(
        ChangeProposal.objects.filter(agent=agent)
        .select_related("base_version", "candidate", "author", "experiment")
        .order_by("-created_at", "-pk")[:HISTORY_ROWS]
    )
    for proposal in proposals:
        proposal.url = _kaizen_url(proposal)
        proposal.state = _proposal_state(proposal)
    experiments = list(
        Experiment.objects.filter(agent=agent)
        .select_related("control", "treatment")
        .order_by("-started_at", "-pk")[:HISTORY_ROWS]
    )
    for experiment in experiments:
        experiment.url = _kaizen_url(experiment)
    audit = list(
        AuditEntry.objects.filter(agent=agent)
        .select_related("user", "version", "proposal", "experiment")
        .order_by("-created_at", "-pk")[:HISTORY_ROWS]
    )
    for entry in audit:
        if entry.user is not None:
            entry.who = entry.user.get_username()
        elif entry.action == AuditEntry.Action.VERSION:
            entry.who = "a config file or the admin"
        else:
            entry.who = "kaizen loop"
        entry.proposal_url = _kaizen_url(entry.proposal) if entry.proposal is not None else ""
        entry.experiment_url = _kaizen_url(entry.experiment) if entry.experiment is not None else ""
    return {
        "versions": versions,
        "proposals": proposals,
        "experiments": experiments,
        "audit_entries": audit,
        "audit_url": _audit_url(agent),
        "history_rows": HISTORY_ROWS,
        "can_approve": approver,
    }


def _proposal_result(agent: Agent, pk: str | None) -> dict[str, Any] | None:
    """The proposal just made (``?proposed=<pk>``), for its author to see where it stands."""
    if not pk or not pk.isdigit():
        return None
    proposal = (
        ChangeProposal.objects.filter(agent=agent, pk=int(pk))
        .select_related("base_version", "candidate", "experiment")
        .first()
    )
    if proposal is None:
        return None
    return {
        "proposal": proposal,
        "url": _kaizen_url(proposal),
        "state": _proposal_state(proposal),
        "diff": diff_rows(diff_lines(proposal.base_version, proposal.candidate)),
    }


def _agent_gates(agent: Agent, user, form: AgentGatesForm | None = None) -> dict[str, Any]:
    """The agent's gate policy (its own, or the installation's defaults), its
    holdout's report, and for approvers the form that changes the policy."""
    policy = AgentGates.of(agent)
    if form is None and kaizen.can_approve(user):
        form = AgentGatesForm(policy=policy)
    return {"gate_policy": policy, "gates_form": form, "holdout": holdout_report_get(agent, policy)}


def _agent_tuning(agent: Agent) -> dict[str, Any]:
    """What each tier and generation setting of the agent has delivered, per
    capability (experiments.evidence), with each capability's cost / pass-rate
    chart: two queries, whatever the history."""
    evidence = agent_tuning_evidence_get(agent, limit=PAGE_PATTERNS)
    panels = [
        {
            "evidence": capability,
            "chart_id": f"tuning-chart-{number}",
            # A frontier needs two points or more.
            "chart": figure_json(frontier_figure(capability)) if len(capability.depths) > 1 else "",
        }
        for number, capability in enumerate(evidence.capabilities, start=1)
    ]
    return {
        "tuning": evidence,
        "tuning_panels": panels,
        "tuning_drawn": any(panel["chart"] for panel in panels),
        "plotly_version": plotly.__version__,
    }


def _agent_detail_page(
    request: AuthenticatedHttpRequest,
    agent: Agent,
    *,
    edit: _AgentEdit | None,
    rollback_form: PromptRollbackForm | None = None,
    gates_form: AgentGatesForm | None = None,
    status: int = 200,
) -> HttpResponse:
    tiers = agent.tiers
    context = {
        "agent": agent,
        "agent_boards": list(agent.boards.order_by("name")),
        "tiers": tiers,
        # A stored cascade that no longer parses (written around Agent.clean).
        "cascade_broken": not tiers,
        **_agent_metrics(agent),
        "calls": agent_model_calls_get(agent=agent, limit=RECENT_CALLS),
        "recent_calls": RECENT_CALLS,
        "form": edit.form if edit else None,
        "formset": edit.formset if edit else None,
        "operations_form": edit.operations if edit else None,
        "preview": edit.preview if edit else None,
        "proposed": _proposal_result(agent, request.GET.get("proposed")),
        **_agent_history(agent, request.user),
        "rollback_form": rollback_form,
        "rollback_version": _posted_pk(rollback_form.data.get("version")) if rollback_form else None,
        **_agent_gates(agent, request.user, gates_form),
        **_agent_tuning(agent),
        "nav": "agents",
    }
    return render(request, "boards/agent_detail.html", context, status=status)


def _posted_pk(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


@require_GET
def agent_list(request: HttpRequest) -> HttpResponse:
    return render(request, "boards/agent_list.html", {"agents": agent_list_get(), "nav": "agents"})


@require_http_methods(["GET", "POST"])
def agent_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The agent's page: its settings, metrics, latest ledger rows and the history
    of its prompt. With the boards.change_agent permission, also the form that
    proposes a change to its prompt and cascade (previewed as a diff first, if
    wished) and its operational switches; with experiments.approve_change, the
    rollback of its prompt to an earlier version and its gate policy. One URL,
    the POST's ``action`` says which: ``preview``, ``propose`` (the default),
    ``settings``, ``rollback``, ``gates`` or ``holdout_reset``."""
    agent = get_object_or_404(Agent, pk=pk)
    can_edit = request.user.has_perm(kaizen.PROPOSE_PERMISSION)
    if request.method == "GET":
        return _agent_detail_page(request, agent, edit=_agent_edit(agent) if can_edit else None)

    action = request.POST.get("action", "propose")
    if action == "rollback":
        return _agent_rollback(request, agent, can_edit=can_edit)
    if action in ("gates", "holdout_reset"):
        if not kaizen.can_approve(request.user):
            raise PermissionDenied("Changing gate policies needs the experiments.approve_change permission.")
        if action == "gates":
            return _agent_gates_save(request, agent, can_edit=can_edit)
        return _agent_holdout_reset(request, agent)
    if not can_edit:
        raise PermissionDenied("Changing an agent needs the boards.change_agent permission.")
    if action == "settings":
        return _agent_operations_save(request, agent)
    if action not in ("preview", "propose"):
        return HttpResponseBadRequest(
            "Unknown action: use preview, propose, settings, rollback, gates or holdout_reset."
        )
    return _agent_propose(request, agent, preview=action == "preview")


def _agent_propose(request: AuthenticatedHttpRequest, agent: Agent, *, preview: bool) -> HttpResponse:
    """A person's change to the prompt and cascade: previewed (the diff against
    the active version and its classification) or proposed. Proposing changes
    nothing the agent runs: the proposal waits for approval, or starts its canary."""
    edit = _agent_edit(agent, request.POST, proposing=not preview)
    form = edit.form
    if form.is_valid() and edit.formset.is_valid():
        fields = _proposed_fields(agent, form, edit.formset)
        started_from = form.cleaned_data["based_on_version"]
        if started_from is not None and started_from != agent.prompt_version:
            form.add_error(
                None,
                f"{agent.name}'s active prompt moved on to version {agent.prompt_version} while you were "
                f"editing (you started from {started_from}). Nothing was proposed: reload the page to see "
                "it, then make your change against it.",
            )
        elif preview:
            try:
                edit.preview = _proposal_preview(agent, fields)
            except ValidationError as exc:
                _attach_errors(form, exc)
        else:
            try:
                proposal = kaizen.proposal_create(
                    agent=agent, fields=fields, rationale=form.cleaned_data["rationale"], user=request.user
                )
            except ValidationError as exc:
                _attach_errors(form, exc)
            else:
                messages.success(
                    request,
                    f"Proposed version {proposal.candidate.number} of {agent.name}'s prompt: "
                    f"{_proposal_state(proposal)}. The agent runs version {proposal.base_version.number} "
                    "until the change passes its gates.",
                )
                return redirect(f"{agent.get_absolute_url()}?proposed={proposal.pk}#proposal-{proposal.pk}")
    status = 422 if form.errors or edit.formset.total_error_count() else 200
    if request.htmx:
        context = {
            "agent": agent,
            "form": form,
            "formset": edit.formset,
            "preview": edit.preview,
        }
        return render(request, "boards/agent_detail.html#edit-panel", context, status=status)
    return _agent_detail_page(request, agent, edit=edit, status=status)


def _agent_operations_save(request: AuthenticatedHttpRequest, agent: Agent) -> HttpResponse:
    """The reuse and cache switches: how the agent runs, not what it asks, so they
    are saved at once, with no proposal and no new prompt version."""
    edit = _agent_edit(agent)
    edit.operations = AgentOperationsForm(request.POST, agent=agent)
    if edit.operations.is_valid():
        agent.reuse_results = edit.operations.cleaned_data["reuse_results"]
        agent.cache_responses = edit.operations.cleaned_data["cache_responses"]
        try:
            # The version just read: a prompt saved meanwhile is refused, not undone.
            agent = services.agent_save(agent=agent, based_on_version=agent.prompt_version, user=request.user)
        except ValidationError as exc:
            _attach_errors(edit.operations, exc)
            agent.refresh_from_db()
        else:
            messages.success(
                request,
                f"Saved {agent.name}: reuse results {'on' if agent.reuse_results else 'off'}, cache responses "
                f"{'on' if agent.cache_responses else 'off'}; the prompt is unchanged (version {agent.prompt_version}).",
            )
            return redirect(agent)
    return _agent_detail_page(request, agent, edit=edit, status=422)


def _agent_rollback(request: AuthenticatedHttpRequest, agent: Agent, *, can_edit: bool) -> HttpResponse:
    """Make an earlier prompt version active again (approvers only), with a note."""
    if not kaizen.can_approve(request.user):
        raise PermissionDenied("Rolling back a prompt needs the experiments.approve_change permission.")
    form = PromptRollbackForm(request.POST, agent=agent)
    if form.is_valid():
        version = form.cleaned_data["version"]
        try:
            agent = kaizen.prompt_version_rollback(
                agent=agent, version=version, user=request.user, note=form.cleaned_data["note"]
            )
        except ValidationError as exc:
            _attach_errors(form, exc)
        else:
            messages.success(
                request,
                f"Version {version.number} of {agent.name}'s prompt is active again: the next task runs it.",
            )
            return redirect(agent)
    edit = _agent_edit(agent) if can_edit else None
    return _agent_detail_page(request, agent, edit=edit, rollback_form=form, status=422)


def _agent_gates_save(request: AuthenticatedHttpRequest, agent: Agent, *, can_edit: bool) -> HttpResponse:
    """The agent's gate policy (approvers only): which gates its changes pass, and their sizes."""
    form = AgentGatesForm(request.POST, policy=AgentGates.of(agent))
    if form.is_valid():
        try:
            kaizen.agent_gates_set(agent=agent, user=request.user, **form.policy())
        except ValidationError as exc:
            form_add_service_errors(form, exc, fields={v: k for k, v in AgentGatesForm.PERCENTS.items()})
        else:
            messages.success(
                request,
                f"Saved {agent.name}'s gate policy: changes proposed from now on pass these gates "
                "(those in their gates already keep theirs).",
            )
            return redirect(f"{agent.get_absolute_url()}#gates")
    edit = _agent_edit(agent) if can_edit else None
    return _agent_detail_page(request, agent, edit=edit, gates_form=form, status=422)


def _agent_holdout_reset(request: AuthenticatedHttpRequest, agent: Agent) -> HttpResponse:
    """End the agent's holdout series (approvers only), with a note: the next
    promotion starts a new one."""
    note = NoteForm(request.POST).value()
    try:
        kaizen.holdout_reset(agent=agent, user=request.user, note=note)
    except ValidationError as exc:
        messages.error(request, f"The holdout was not ended: {error_message(exc)}")
    else:
        messages.success(request, f"Ended {agent.name}'s holdout: the next promotion starts a new one.")
    return redirect(f"{agent.get_absolute_url()}#gates")
