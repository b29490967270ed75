"""The evolution review: the pages where people with the approve-change
permission judge the kaizen loop's work.

- ``/kaizen/``: proposals waiting for approval (diff, evidence), running and
  recently ended experiments (with a chart each while they run), and the latest
  audit entries; every action asks for a note.
- ``/kaizen/proposals/<pk>/`` and ``/kaizen/experiments/<pk>/``: one proposal
  (with its gates, live while they run), one experiment (its chart and look
  history);
- ``/kaizen/replays/<pk>/``: one replay, probe run or shadow (a gate's
  evidence), live while it runs.
- ``/kaizen/audit/``: the whole audit log, paginated, by agent.

Thin by design: parse the request with a form, call one service, render a
partial of ``experiments/review.html``. Every page needs a login
(LoginRequiredMiddleware) and ``experiments.approve_change`` (403 otherwise; the
services check it again). The review page's forms post with htmx and get its
live sections back (out of band) with the action's message; without JavaScript,
and from the detail pages, they post plainly and are redirected back with the
message. A missing note is answered 422, with the form open and the message in
it; an action the item's state no longer allows (someone else acted first) 409.

The reads that build these pages are in ``experiments.selectors``, shared with
the live pushes (``experiments.broadcast``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import plotly
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from experiments import genchi, services
from experiments.forms import AuditFilterForm, NoteForm
from experiments.models import (
    ChangeProposal,
    Experiment,
    Gate,
    Replay,
)
from experiments.selectors import (
    AUDIT_PAGE,
    REVIEW,
    Failure,
    audit_list,
    experiment_context_get,
    experiment_get,
    proposal_context_get,
    proposal_get,
    proposal_list,
    replay_context_get,
    replay_get,
    review_context_get,
)
from kaizen_web.compressed_files import compressed_file_response
from kaizen_web.http import AuthenticatedHttpRequest, error_message, safe_next

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"

# Anonymous users never get here (the login middleware redirects them first).
approver_required = permission_required(services.APPROVE_PERMISSION, raise_exception=True)

ProposalStatus = ChangeProposal.Status


# --- pages ------------------------------------------------------------------------------


@require_GET
@approver_required
def review(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(request, REVIEW, review_context_get())


@require_GET
@approver_required
def review_live(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The review's live sections, out of band: what a reconnecting browser
    re-fetches to catch up on what it missed."""
    return render(request, f"{REVIEW}#review-update", review_context_get())


@require_GET
@approver_required
def proposal_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _proposal_page(request, pk)


def _proposal_page(request: HttpRequest, pk: int, *, failed: Failure | None = None, status: int = 200):
    proposal = proposal_get(pk)
    if proposal is None:
        raise Http404("No such proposal.")
    context = proposal_context_get(proposal, failed=failed)
    return render(request, "experiments/proposal.html", context, status=status)


@require_GET
@approver_required
def proposal_live(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """A proposal page's live parts, out of band (its catch-up after a reconnect)."""
    proposal = proposal_get(pk)
    if proposal is None:
        raise Http404("No such proposal.")
    return render(request, "experiments/proposal.html#proposal-update", proposal_context_get(proposal))


@require_GET
@approver_required
def experiment_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _experiment_page(request, pk)


def _experiment_page(request: HttpRequest, pk: int, *, failed: Failure | None = None, status: int = 200):
    experiment = experiment_get(pk)
    if experiment is None:
        raise Http404("No such experiment.")
    if failed is not None:
        failed.mark(experiment, "experiment")
    return render(request, "experiments/experiment.html", experiment_context_get(experiment), status=status)


@require_GET
@approver_required
def experiment_live(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """An experiment page's live parts, out of band (its catch-up after a reconnect)."""
    experiment = experiment_get(pk)
    if experiment is None:
        raise Http404("No such experiment.")
    return render(
        request, "experiments/experiment.html#experiment-update", experiment_context_get(experiment)
    )


def _replay_or_404(pk: int) -> Replay:
    replay = replay_get(pk)
    if replay is None:
        raise Http404("No such replay.")
    return replay


@require_GET
@approver_required
def replay_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """A replay, probe run or shadow: its progress, its paired statistics and
    verdict, its flip table, and its items."""
    replay = _replay_or_404(pk)
    return render(request, "experiments/replay.html", replay_context_get(replay))


@require_GET
@approver_required
def replay_live(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """A replay page's live parts, out of band (its catch-up after a reconnect)."""
    replay = _replay_or_404(pk)
    return render(request, "experiments/replay.html#replay-update", replay_context_get(replay))


@require_POST
@approver_required
def replay_cancel(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    replay = _replay_or_404(pk)
    note = NoteForm(request.POST).value() or "cancelled on the evolution review"
    try:
        genchi.replay_cancel(replay=replay, user=request.user, note=note)
    except ValidationError as exc:
        messages.error(request, error_message(exc))
    else:
        messages.success(
            request, f"Cancelled the {replay.get_kind_display().lower()} of v{replay.candidate.number}."
        )
    return redirect(safe_next(request) or replay.get_absolute_url())


@require_POST
@approver_required
def gate_override(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Skip a gate not decided yet, or override a failed one: only with a note.
    Posted like the review's other actions (with htmx from the review, plainly
    from the proposal's page)."""
    gate = get_object_or_404(Gate.objects.select_related("proposal__agent", "proposal__candidate"), pk=pk)
    note = NoteForm(request.POST).value()
    # The form the person used: skip (a gate not decided) or override (a failed one).
    action = "override" if gate.state == Gate.State.FAILED else "skip"

    def run() -> str:
        decided = services.gate_override(gate=gate, user=request.user, note=note)
        done = GATE_MESSAGES[decided.state].format(
            gate=decided.get_kind_display(),
            agent=gate.proposal.agent.name,
            number=gate.proposal.candidate.number,
        )
        return (
            f"{done}: {_after_gates(ChangeProposal.objects.select_related('agent').get(pk=gate.proposal_id))}"
        )

    return _act(request, kind="gate", pk=pk, action=action, note=note, run=run, proposal_pk=gate.proposal_id)


@require_GET
@approver_required
def audit(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The whole audit log, newest first; read-only, like everywhere."""
    form = AuditFilterForm(request.GET)
    agent_id = form.agent_id()
    entries = audit_list()
    if agent_id is not None:
        entries = entries.filter(agent_id=agent_id)
    page = Paginator(entries, AUDIT_PAGE).get_page(request.GET.get("page"))
    agents = form.fields["agent"]
    assert isinstance(agents, forms.ModelChoiceField)  # declared so; self.fields says only Field
    context = {
        "page": page,
        "audit": page.object_list,
        "agents": agents.queryset,
        "agent_id": agent_id,
        "nav": "kaizen",
    }
    return render(request, "experiments/audit.html", context)


@require_GET
def plotly_js(request: HttpRequest) -> HttpResponseBase:
    """plotly.js as the plotly package ships it (not vendored), gzip-compressed for
    browsers that accept it (4.8 MB become 1.5 MB). Its URL carries the package's
    version, so browsers may keep it for a year."""
    return compressed_file_response(
        request,
        PLOTLY_JS,
        content_type="text/javascript; charset=utf-8",
        # Private: like every page here, it is served to logged-in users only.
        cache_control="private, max-age=31536000, immutable",
    )


# --- actions ------------------------------------------------------------------------------


ACTION_MESSAGES = {
    "reject": "Rejected the change to {agent} (v{number}).",
    "advance": "Advanced {agent}'s experiment to the efficacy stage (50/50).",
    "promote": "Promoted v{number}: it is now {agent}'s active version.",
    "rollback": "Rolled back {agent}'s experiment: its next task runs the active version.",
    "resume": "Resumed {agent}'s experiment.",
}


GATE_MESSAGES: dict[str, str] = {
    Gate.State.SKIPPED: "{gate} skipped for the change to {agent} (v{number})",
    Gate.State.OVERRIDDEN: "{gate} overridden for the change to {agent} (v{number})",
}


def _after_gates(proposal: ChangeProposal) -> str:
    """Where a proposal went once a gate was skipped or overridden."""
    if proposal.status == ProposalStatus.VALIDATING:
        return "it goes on to its next gate."
    if proposal.status == ProposalStatus.EXPERIMENTING:
        return "its gates are cleared, and its canary experiment has started."
    if proposal.status == ProposalStatus.APPROVED:
        return f"its gates are cleared; it starts when {proposal.agent.name}'s running experiment ends."
    return f"it is now {proposal.get_status_display().lower()}."


def _approved_message(proposal: ChangeProposal) -> str:
    """What approving did: the canary started, or waits for the agent's slot,
    or could not start (the active version moved on)."""
    done = f"Approved the change to {proposal.agent.name} (v{proposal.candidate.number})"
    if proposal.status == ProposalStatus.EXPERIMENTING:
        return f"{done}: its canary experiment has started."
    if proposal.status == ProposalStatus.VALIDATING:
        return f"{done}: it is being seen on real work first (its gates), then its canary starts."
    if proposal.status == ProposalStatus.APPROVED:
        return f"{done}: it starts when {proposal.agent.name}'s running experiment ends."
    return f"{done}, but it did not start: {proposal.decision_note}."


def _proposal_action(
    request: AuthenticatedHttpRequest, pk: int, action: str, service: Callable
) -> HttpResponse:
    proposal = get_object_or_404(proposal_list(), pk=pk)
    note = NoteForm(request.POST).value()

    def run() -> str:
        decided = service(proposal=proposal, user=request.user, note=note)
        if action == "approve":
            return _approved_message(decided)
        return ACTION_MESSAGES[action].format(agent=proposal.agent.name, number=proposal.candidate.number)

    return _act(request, kind="proposal", pk=pk, action=action, note=note, run=run)


def _experiment_action(
    request: AuthenticatedHttpRequest, pk: int, action: str, service: Callable
) -> HttpResponse:
    experiment = get_object_or_404(Experiment.objects.select_related("agent", "treatment"), pk=pk)
    note = NoteForm(request.POST).value()

    def run() -> str:
        service(experiment=experiment, user=request.user, note=note)
        return ACTION_MESSAGES[action].format(agent=experiment.agent.name, number=experiment.treatment.number)

    return _act(request, kind="experiment", pk=pk, action=action, note=note, run=run)


def _act(
    request: AuthenticatedHttpRequest,
    *,
    kind: str,
    pk: int,
    action: str,
    note: str,
    run: Callable[[], str],
    proposal_pk: int | None = None,
) -> HttpResponse:
    """Run one reviewer action (``run`` returns what it did, to say) and answer
    it. With htmx: the review's sections, out of band, and the message for its
    live region. Without: a redirect back with the message, or the page the
    form was on with the error in its item."""
    try:
        message = run()
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {}
        failed = Failure(
            kind=kind, pk=pk, action=action, message=error_message(exc), errors=errors, note=note
        )
        # A note to write is the reviewer's to fix (422); a state that no longer
        # allows the action (someone acted first) is a conflict (409).
        return _refused(request, failed, status=422 if errors else 409, proposal_pk=proposal_pk)

    if not request.htmx:
        messages.success(request, message)
        return redirect(safe_next(request) or "experiments-review")
    context = {**review_context_get(), "message": message, "level": "success"}
    return render(request, f"{REVIEW}#review-update", context)


def _refused(
    request: AuthenticatedHttpRequest, failed: Failure, *, status: int, proposal_pk: int | None = None
) -> HttpResponse:
    """``proposal_pk``: the proposal whose page shows the failed item (a gate's)."""
    if request.htmx:
        context = {**review_context_get(failed=failed), "message": failed.message, "level": "error"}
        return render(request, f"{REVIEW}#review-update", context, status=status)
    origin = request.POST.get("from")
    if origin == "proposal" and failed.kind == "proposal":
        return _proposal_page(request, failed.pk, failed=failed, status=status)
    if origin == "proposal" and failed.kind == "gate" and proposal_pk is not None:
        return _proposal_page(request, proposal_pk, failed=failed, status=status)
    if origin == "experiment" and failed.kind == "experiment":
        return _experiment_page(request, failed.pk, failed=failed, status=status)
    context = {**review_context_get(failed=failed), "error": failed.message}
    return render(request, REVIEW, context, status=status)


@require_POST
@approver_required
def proposal_approve(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _proposal_action(request, pk, "approve", services.proposal_approve)


@require_POST
@approver_required
def proposal_reject(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _proposal_action(request, pk, "reject", services.proposal_reject)


@require_POST
@approver_required
def experiment_advance(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "advance", services.experiment_advance)


@require_POST
@approver_required
def experiment_promote(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "promote", services.experiment_promote)


@require_POST
@approver_required
def experiment_rollback(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "rollback", services.experiment_rollback)


@require_POST
@approver_required
def experiment_resume(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "resume", services.experiment_resume)
