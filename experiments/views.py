"""The evolution review: the pages where people with the approve-change
permission judge the kaizen loop's work.

- ``/kaizen/``: proposals waiting for approval (diff, evidence), running and
  recently ended experiments (with a chart each while they run), and the latest
  audit entries; every action asks for a note.
- ``/kaizen/proposals/<pk>/`` and ``/kaizen/experiments/<pk>/``: one proposal,
  one experiment (its chart and look history).
- ``/kaizen/audit/``: the whole audit log, paginated, by agent.

Thin by design: parse the request with a form, call one service, render a
partial of ``experiments/review.html``. Every page needs a login
(LoginRequiredMiddleware) and ``experiments.approve_change`` (403 otherwise; the
services check it again). The review page's forms post with htmx and get its
live sections back (out of band) with the action's message; without JavaScript,
and from the detail pages, they post plainly and are redirected back with the
message. A missing note is answered 422, with the form open and the message in
it; an action the item's state no longer allows (someone else acted first) 409.

The reads that build these pages live here, not in a selectors module, for now:
``experiments.broadcast`` renders its pushes through them too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Q, Subquery, Sum
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from experiments import services
from experiments.charts import chart_json
from experiments.forms import AuditFilterForm, NoteForm
from experiments.models import (
    AuditEntry,
    ChangeProposal,
    Experiment,
    ExperimentLook,
    ExperimentSample,
    PromptVersion,
)

REVIEW = "experiments/review.html"
RECENT_AUDIT = 50
RECENTLY_ENDED = 10
AUDIT_PAGE = 50
# The look history table shows this many, newest first (the chart shows them all).
LOOK_ROWS = 100
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
DECISIONS = {
    "continue": "Continue",
    "promote": "Better: promote",
    "rollback": "Worse: roll back",
    "futility": "Stop for futility",
    "pause_srm": "Pause: sample-ratio mismatch",
}

# Anonymous users never get here (the login middleware redirects them first).
approver_required = permission_required(services.APPROVE_PERMISSION, raise_exception=True)

ProposalStatus = ChangeProposal.Status


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


# --- reads ------------------------------------------------------------------------------


@dataclass
class Failure:
    """An action that was refused, to show in its item: which item, which form
    to open, the note as typed and the message."""

    kind: str  # "proposal" or "experiment"
    pk: int
    action: str
    message: str
    errors: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""

    def mark(self, item: Any, kind: str) -> None:
        if kind != self.kind or item.pk != self.pk:
            return
        item.form_error = self.message
        # A note to fix opens its form again; a refusal (409) only says why.
        item.form_open = self.action if self.errors else ""
        item.form_errors = self.errors
        item.form_note = self.note


def _diff_rows(lines: Iterable[str]) -> list[tuple[str, str]]:
    """diff_lines' output, each line with its kind (for its colour): file
    headers, hunks, additions, deletions, the other fields' names, context."""
    fields = {f"{name}:" for name in ("prompt_variables", "parameters", "cascade", "implementation")}
    rows = []
    lines = list(lines)
    headers = 2 if lines and lines[0].startswith("--- ") else 0
    for i, line in enumerate(lines):
        if i < headers:
            kind = "file"
        elif line in fields:
            kind = "field"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "context"
        rows.append((kind, line))
    return rows


def _label(key: Any) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str | int | float | bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _ordered_pairs(evidence: Any) -> bool:
    return (
        isinstance(evidence, list)
        and bool(evidence)
        and all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in evidence)
    )


def evidence_items(evidence: Any) -> list[dict]:
    """A proposal's evidence (label → value, as an object or as a list of
    [label, value] pairs), in shapes a template can draw: a value, a list of
    values, a table (a list of records), or pairs (a record). Anything deeper is
    shown as JSON text."""
    if _ordered_pairs(evidence):
        # [[label, value], ...]: the order the author chose (PostgreSQL's jsonb
        # keeps an object's keys in an order of its own).
        pairs = [(key, value) for key, value in evidence]
    elif isinstance(evidence, dict):
        pairs = list(evidence.items())
    else:
        pairs = [("evidence", evidence)] if evidence not in (None, "", []) else []
    items = []
    for key, value in pairs:
        item: dict[str, Any] = {"label": _label(key)}
        if _scalar(value):
            item.update(kind="text", value=_text(value))
        elif isinstance(value, list) and all(_scalar(v) for v in value):
            item.update(kind="list", values=[_text(v) for v in value])
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for record in value:
                columns += [k for k in record if k not in columns]
            item.update(
                kind="table",
                columns=[_label(c) for c in columns],
                rows=[[_text(record.get(c)) for c in columns] for record in value],
            )
        elif isinstance(value, dict):
            item.update(kind="pairs", pairs=[(_label(k), _text(v)) for k, v in value.items()])
        else:
            item.update(kind="text", value=_text(value))
        items.append(item)
    return items


def _proposal_details(proposal: ChangeProposal) -> ChangeProposal:
    proposal.diff_rows = _diff_rows(services.diff_lines(proposal.base_version, proposal.candidate))
    proposal.evidence_items = evidence_items(proposal.evidence)
    if proposal.source == PromptVersion.Source.KAIZEN:
        proposal.author_label = "kaizen loop"
    elif proposal.author_id:
        proposal.author_label = proposal.author.get_username()
    else:
        proposal.author_label = proposal.get_source_display()
    # Proposed against a version that is no longer the active one: it would
    # test the change against the wrong control, so it cannot start.
    proposal.active_moved = proposal.base_version.number != proposal.agent.prompt_version
    return proposal


def _proposals_queryset():
    return ChangeProposal.objects.select_related("agent", "author", "decided_by", "base_version", "candidate")


def waiting_proposals() -> list[ChangeProposal]:
    """Proposals waiting for a decision, and approved ones waiting for their
    agent's running experiment to end (they may still be rejected), oldest first."""
    proposals = _proposals_queryset().filter(status__in=(ProposalStatus.PENDING, ProposalStatus.APPROVED))
    return [_proposal_details(p) for p in proposals.order_by("created_at", "pk")]


def _arm_counts_many(experiments: list[Experiment]) -> dict[int, dict[str, dict]]:
    """services.arm_counts for many experiments in one query: per arm, the
    current stage's samples, successes, mean cost and latency."""
    empty = {"n": 0, "successes": 0, "pct": None, "cost": 0.0, "latency_ms": 0.0}
    counts: dict[int, dict[str, dict]] = {
        e.pk: {arm: dict(empty) for arm in ExperimentSample.Arm.values} for e in experiments
    }
    if not experiments:
        return counts
    current = Q()
    for e in experiments:
        current |= Q(experiment_id=e.pk, stage=e.stage)
    rows = (
        ExperimentSample.objects.filter(current)
        .values("experiment_id", "arm")
        .annotate(
            n=Count("pk"),
            successes=Count("pk", filter=Q(success=True)),
            cost=Sum("cost"),
            latency=Sum("latency_ms"),
        )
    )
    for row in rows:
        n = row["n"]
        counts[row["experiment_id"]][row["arm"]] = {
            "n": n,
            "successes": row["successes"],
            "pct": 100 * row["successes"] / n if n else None,
            "cost": float(row["cost"] or 0) / n if n else 0.0,
            "latency_ms": float(row["latency"] or 0) / n if n else 0.0,
        }
    return counts


def _experiments_queryset():
    latest = ExperimentLook.objects.filter(experiment=OuterRef("pk")).order_by("-created_at", "-pk")
    return Experiment.objects.select_related("agent", "control", "treatment", "proposal").annotate(
        latest_look_id=Subquery(latest.values("pk")[:1])
    )


def experiment_details(experiments: list[Experiment], *, charts: Iterable[int] = ()) -> list[Experiment]:
    """The experiments with what their rows show: counts per arm, the latest
    look; and, for those in ``charts``, their chart's JSON (every look)."""
    counts = _arm_counts_many(experiments)
    charted = set(charts)
    looks_of: dict[int, list[ExperimentLook]] = defaultdict(list)
    if charted:
        for look in ExperimentLook.objects.filter(experiment_id__in=charted).order_by("created_at", "pk"):
            looks_of[look.experiment_id].append(look)
    wanted = [e.latest_look_id for e in experiments if e.latest_look_id and e.pk not in charted]
    latest = ExperimentLook.objects.in_bulk(wanted) if wanted else {}
    for experiment in experiments:
        experiment.counts = counts[experiment.pk]
        if experiment.pk in charted:
            looks = looks_of[experiment.pk]
            experiment.latest_look = looks[-1] if looks else None
            experiment.chart = mark_safe(chart_json(looks))  # escaped for a JSON script by chart_json
        else:
            experiment.latest_look = latest.get(experiment.latest_look_id)
            experiment.chart = None
        if experiment.latest_look is not None:
            _look_details(experiment.latest_look)
    return experiments


def _look_details(look: ExperimentLook) -> ExperimentLook:
    look.decision_label = DECISIONS.get(look.decision, look.decision)
    stats = look.stats
    look.diff_points = 100 * (stats.get("diff") or 0.0)
    look.ci_low_points = 100 * (stats.get("ci_low") or 0.0)
    look.ci_high_points = 100 * (stats.get("ci_high") or 0.0)
    return look


def review_experiments() -> tuple[list[Experiment], list[Experiment]]:
    """(active experiments, the most recently ended), with their details; the
    active ones with their charts."""
    active = list(_experiments_queryset().filter(status__in=Experiment.ACTIVE).order_by("started_at", "pk"))
    ended = list(
        _experiments_queryset()
        .exclude(status__in=Experiment.ACTIVE)
        .order_by("-ended_at", "-pk")[:RECENTLY_ENDED]
    )
    experiment_details(active + ended, charts=[e.pk for e in active])
    return active, ended


def experiment_get(pk: int, *, chart: bool = True) -> Experiment | None:
    experiment = _experiments_queryset().filter(pk=pk).first()
    if experiment is None:
        return None
    return experiment_details([experiment], charts=[pk] if chart else [])[0]


def _audit_queryset():
    return AuditEntry.objects.select_related("agent", "user", "version")


def recent_audit(limit: int = RECENT_AUDIT) -> list[AuditEntry]:
    return list(_audit_queryset()[:limit])


def review_context(*, failed: Failure | None = None) -> dict:
    """What /kaizen/ shows: its three live sections."""
    proposals = waiting_proposals()
    active, ended = review_experiments()
    if failed is not None:
        for proposal in proposals:
            failed.mark(proposal, "proposal")
        for experiment in active + ended:
            failed.mark(experiment, "experiment")
    return {
        "proposals": proposals,
        "pending_count": sum(1 for p in proposals if p.status == ProposalStatus.PENDING),
        "active": active,
        "ended": ended,
        "audit": recent_audit(),
        "audit_limit": RECENT_AUDIT,
        "plotly_version": plotly.__version__,
        "nav": "kaizen",
    }


def experiment_context(experiment: Experiment) -> dict:
    """What an experiment's page shows, beyond its row and chart."""
    looks = list(experiment.looks.order_by("-created_at", "-pk")[: LOOK_ROWS + 1])
    return {
        "experiment": experiment,
        "looks": [_look_details(look) for look in looks[:LOOK_ROWS]],
        "looks_total": experiment.looks.count() if len(looks) > LOOK_ROWS else len(looks),
        "experiment_audit": list(_audit_queryset().filter(experiment=experiment)[:RECENT_AUDIT]),
        # Its forms post plainly and come back here (pushed rows too).
        "plain": True,
        "here": experiment.get_absolute_url(),
        "plotly_version": plotly.__version__,
        "nav": "kaizen",
    }


# --- helpers ----------------------------------------------------------------------------


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


def _message(exc: ValidationError) -> str:
    return " ".join(exc.messages)


# --- pages ------------------------------------------------------------------------------


@require_GET
@approver_required
def review(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, REVIEW, review_context())


@require_GET
@approver_required
def review_live(request: HtmxHttpRequest) -> HttpResponse:
    """The review's live sections, out of band: what a reconnecting browser
    re-fetches to catch up on what it missed."""
    return render(request, f"{REVIEW}#review-update", review_context())


@require_GET
@approver_required
def proposal_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _proposal_page(request, pk)


def _proposal_page(request: HttpRequest, pk: int, *, failed: Failure | None = None, status: int = 200):
    proposal = get_object_or_404(_proposals_queryset(), pk=pk)
    _proposal_details(proposal)
    if failed is not None:
        failed.mark(proposal, "proposal")
    experiment = Experiment.objects.filter(proposal=proposal).first()
    context = {
        "proposal": proposal,
        "experiment": experiment,
        "proposal_audit": list(_audit_queryset().filter(proposal=proposal)[:RECENT_AUDIT]),
        "plain": True,
        "here": proposal.get_absolute_url(),
        "nav": "kaizen",
    }
    return render(request, "experiments/proposal.html", context, status=status)


@require_GET
@approver_required
def experiment_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _experiment_page(request, pk)


def _experiment_page(request: HttpRequest, pk: int, *, failed: Failure | None = None, status: int = 200):
    experiment = experiment_get(pk)
    if experiment is None:
        raise Http404("No such experiment.")
    if failed is not None:
        failed.mark(experiment, "experiment")
    return render(request, "experiments/experiment.html", experiment_context(experiment), status=status)


@require_GET
@approver_required
def experiment_live(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """An experiment page's live parts, out of band (its catch-up after a reconnect)."""
    experiment = experiment_get(pk)
    if experiment is None:
        raise Http404("No such experiment.")
    return render(request, "experiments/experiment.html#experiment-update", experiment_context(experiment))


@require_GET
@approver_required
def audit(request: HtmxHttpRequest) -> HttpResponse:
    """The whole audit log, newest first; read-only, like everywhere."""
    form = AuditFilterForm(request.GET)
    agent_id = form.agent_id()
    entries = _audit_queryset()
    if agent_id is not None:
        entries = entries.filter(agent_id=agent_id)
    page = Paginator(entries, AUDIT_PAGE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "audit": page.object_list,
        "agents": form.fields["agent"].queryset,
        "agent_id": agent_id,
        "nav": "kaizen",
    }
    return render(request, "experiments/audit.html", context)


@require_GET
def plotly_js(request: HttpRequest) -> FileResponse:
    """plotly.js as the plotly package ships it (not vendored). Its URL carries
    the package's version, so browsers may keep it for a year."""
    response = FileResponse(PLOTLY_JS.open("rb"), content_type="text/javascript; charset=utf-8")
    # Private: like every page here, it is served to logged-in users only.
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


# --- actions ------------------------------------------------------------------------------


ACTION_MESSAGES = {
    "reject": "Rejected the change to {agent} (v{number}).",
    "advance": "Advanced {agent}'s experiment to the efficacy stage (50/50).",
    "promote": "Promoted v{number}: it is now {agent}'s active version.",
    "rollback": "Rolled back {agent}'s experiment: its next task runs the active version.",
    "resume": "Resumed {agent}'s experiment.",
}


def _approved_message(proposal: ChangeProposal) -> str:
    """What approving did: the canary started, or waits for the agent's slot,
    or could not start (the active version moved on)."""
    done = f"Approved the change to {proposal.agent.name} (v{proposal.candidate.number})"
    if proposal.status == ProposalStatus.EXPERIMENTING:
        return f"{done}: its canary experiment has started."
    if proposal.status == ProposalStatus.APPROVED:
        return f"{done}: it starts when {proposal.agent.name}'s running experiment ends."
    return f"{done}, but it did not start: {proposal.decision_note}."


def _proposal_action(request: HtmxHttpRequest, pk: int, action: str, service: Callable) -> HttpResponse:
    proposal = get_object_or_404(_proposals_queryset(), pk=pk)
    note = NoteForm(request.POST).value()

    def run() -> str:
        decided = service(proposal=proposal, user=request.user, note=note)
        if action == "approve":
            return _approved_message(decided)
        return ACTION_MESSAGES[action].format(agent=proposal.agent.name, number=proposal.candidate.number)

    return _act(request, kind="proposal", pk=pk, action=action, note=note, run=run)


def _experiment_action(request: HtmxHttpRequest, pk: int, action: str, service: Callable) -> HttpResponse:
    experiment = get_object_or_404(Experiment.objects.select_related("agent", "treatment"), pk=pk)
    note = NoteForm(request.POST).value()

    def run() -> str:
        service(experiment=experiment, user=request.user, note=note)
        return ACTION_MESSAGES[action].format(agent=experiment.agent.name, number=experiment.treatment.number)

    return _act(request, kind="experiment", pk=pk, action=action, note=note, run=run)


def _act(
    request: HtmxHttpRequest,
    *,
    kind: str,
    pk: int,
    action: str,
    note: str,
    run: Callable[[], str],
) -> HttpResponse:
    """Run one reviewer action (``run`` returns what it did, to say) and answer
    it. With htmx: the review's sections, out of band, and the message for its
    live region. Without: a redirect back with the message, or the page the
    form was on with the error in its item."""
    try:
        message = run()
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {}
        failed = Failure(kind=kind, pk=pk, action=action, message=_message(exc), errors=errors, note=note)
        # A note to write is the reviewer's to fix (422); a state that no longer
        # allows the action (someone acted first) is a conflict (409).
        return _refused(request, failed, status=422 if errors else 409)

    if not request.htmx:
        messages.success(request, message)
        return redirect(_safe_next(request) or "experiments-review")
    context = {**review_context(), "message": message, "level": "success"}
    return render(request, f"{REVIEW}#review-update", context)


def _refused(request: HtmxHttpRequest, failed: Failure, *, status: int) -> HttpResponse:
    if request.htmx:
        context = {**review_context(failed=failed), "message": failed.message, "level": "error"}
        return render(request, f"{REVIEW}#review-update", context, status=status)
    origin = request.POST.get("from")
    if origin == "proposal" and failed.kind == "proposal":
        return _proposal_page(request, failed.pk, failed=failed, status=status)
    if origin == "experiment" and failed.kind == "experiment":
        return _experiment_page(request, failed.pk, failed=failed, status=status)
    context = {**review_context(failed=failed), "error": failed.message}
    return render(request, REVIEW, context, status=status)


@require_POST
@approver_required
def proposal_approve(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _proposal_action(request, pk, "approve", services.proposal_approve)


@require_POST
@approver_required
def proposal_reject(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _proposal_action(request, pk, "reject", services.proposal_reject)


@require_POST
@approver_required
def experiment_advance(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "advance", services.experiment_advance)


@require_POST
@approver_required
def experiment_promote(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "promote", services.experiment_promote)


@require_POST
@approver_required
def experiment_rollback(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "rollback", services.experiment_rollback)


@require_POST
@approver_required
def experiment_resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _experiment_action(request, pk, "resume", services.experiment_resume)
