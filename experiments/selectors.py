"""Reads for the evolution review: the page contexts of ``/kaizen/`` and of one
experiment, the proposals waiting with their diffs and evidence, the experiments
with their counts, looks and charts, and the audit log. The views and the live
pushes (``experiments.broadcast``) both render through them, so a pushed
fragment is the fragment the page draws."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import plotly
from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, Subquery, Sum
from django.utils import timezone
from django.utils.safestring import mark_safe

from andon.models import Inspection
from boards.models import Agent, ModelCall
from experiments import stats as stats_module
from experiments.charts import chart_json, money
from experiments.models import (
    AgentGates,
    AuditEntry,
    ChangeProposal,
    Experiment,
    ExperimentLook,
    ExperimentSample,
    Gate,
    PromptVersion,
    Replay,
    ReplayItem,
)
from experiments.prompt_diff import diff_lines, diff_rows

REVIEW = "experiments/review.html"
RECENT_AUDIT = 50
RECENTLY_ENDED = 10
AUDIT_PAGE = 50
# The look history table shows this many, newest first (the chart shows them all).
LOOK_ROWS = 100
DECISIONS = {
    "continue": "Continue",
    "promote": "Better: promote",
    "rollback": "Worse: roll back",
    "futility": "Stop for futility",
    "pause_srm": "Pause: sample-ratio mismatch",
}

ProposalStatus = ChangeProposal.Status
# The proposals the review lists: waiting for a decision, in their gates, or
# approved and waiting for their agent's running experiment to end.
WAITING = (ProposalStatus.PENDING, ProposalStatus.VALIDATING, ProposalStatus.APPROVED)
# The price of seeing the review page states: over this many days.
SEEING_DAYS = 7


# --- ------------------------------------------------------------------------------


@dataclass
class Failure:
    """An action that was refused, to show in its item: which item, which form
    to open, the note as typed and the message."""

    kind: str  # "proposal", "experiment" or "gate"
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


def _label(key: Any) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _text(value: Any, key: Any = "") -> str:
    """A value as a reader takes it in: money as dollars, shares as percents,
    other fractions to four significant figures (0.161765 reads 0.1618), by
    what its key says it is (the PDCA planner's evidence names its figures
    ``upper_tier_cost``, ``waste_share``...)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        name = str(key).lower()
        if "cost" in name or "saving" in name:
            return f"${value:,.4f}"
        if "share" in name:
            return f"{value:.1%}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _ordered_pairs(evidence: Any) -> bool:
    return (
        isinstance(evidence, list)
        and bool(evidence)
        and all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in evidence)
    )


def _evidence_items(evidence: Any) -> list[dict]:
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
            item.update(kind="text", value=_text(value, key))
        elif isinstance(value, list) and all(_scalar(v) for v in value):
            item.update(kind="list", values=[_text(v, key) for v in value])
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for record in value:
                columns += [k for k in record if k not in columns]
            item.update(
                kind="table",
                columns=[_label(c) for c in columns],
                rows=[[_text(record.get(c), c) for c in columns] for record in value],
            )
        elif isinstance(value, dict):
            item.update(kind="pairs", pairs=[(_label(k), _text(v, f"{key} {k}")) for k, v in value.items()])
        else:
            item.update(kind="text", value=_text(value))
        items.append(item)
    return items


def proposal_details_get(proposal: ChangeProposal) -> ChangeProposal:
    proposal.diff_rows = diff_rows(diff_lines(proposal.base_version, proposal.candidate))
    proposal.evidence_items = _evidence_items(proposal.evidence)
    if proposal.source == PromptVersion.Source.KAIZEN:
        proposal.author_label = "kaizen loop"
    elif proposal.author is not None:
        proposal.author_label = proposal.author.get_username()
    elif proposal.source == PromptVersion.Source.CONFIG:
        proposal.author_label = "a config file"
    else:
        proposal.author_label = proposal.get_source_display()
    # Proposed against a version that is no longer the active one: it would
    # test the change against the wrong control, so it cannot start.
    proposal.active_moved = proposal.base_version.number != proposal.agent.prompt_version
    return proposal


def proposal_list():
    return ChangeProposal.objects.select_related("agent", "author", "decided_by", "base_version", "candidate")


def proposal_waiting_list() -> list[ChangeProposal]:
    """Proposals waiting for a decision, in their gates, and approved ones waiting
    for their agent's running experiment to end (they may still be rejected),
    oldest first."""
    proposals = proposal_list().filter(status__in=WAITING)
    waiting = [proposal_details_get(p) for p in proposals.order_by("created_at", "pk")]
    gates_of: dict[int, list[Gate]] = defaultdict(list)
    validating = [p.pk for p in waiting if p.status == ProposalStatus.VALIDATING]
    if validating:
        for gate in _gates().filter(proposal_id__in=validating):
            if gate.replay is not None:
                _replay_progress(gate.replay)
            gates_of[gate.proposal_id].append(gate)
    for proposal in waiting:
        proposal.gate_list = gates_of[proposal.pk]
    return waiting


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


def experiment_details_get(experiments: list[Experiment], *, charts: Iterable[int] = ()) -> list[Experiment]:
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
        for arm in experiment.counts.values():
            arm["cost_text"] = money(arm["cost"])
        if experiment.pk in charted:
            looks = looks_of[experiment.pk]
            experiment.latest_look = looks[-1] if looks else None
        else:
            experiment.latest_look = latest.get(experiment.latest_look_id)
        if experiment.latest_look is not None:
            _look_details(experiment.latest_look)
        experiment.next_look_at = _next_look_at(experiment)
        experiment.summary = experiment_summary_get(experiment)
        # The recorded reason, unless the sentence or the latest look already says it.
        reason = experiment.status_reason or ""
        look_reason = experiment.latest_look.stats.get("reason", "") if experiment.latest_look else ""
        said = reason in experiment.summary or reason.removeprefix("automatic: ") == look_reason
        experiment.reason_note = "" if said else reason
        experiment.chart = (
            # Escaped for a JSON script by chart_json.
            mark_safe(chart_json(looks_of[experiment.pk], experiment, empty_note=_no_looks_yet(experiment)))
            if experiment.pk in charted
            else None
        )
    return experiments


# --- what an experiment's row says, in words --------------------------------------------


def _clock(moment: datetime | None) -> str:
    return timezone.localtime(moment).strftime("%H:%M:%S") if moment else ""


def _next_look_at(experiment: Experiment) -> datetime | None:
    """About when the next look comes (looks run every KAIZEN_EXPERIMENT_LOOK_SECONDS)."""
    if experiment.status != Experiment.Status.RUNNING:
        return None
    every = timedelta(seconds=settings.KAIZEN_EXPERIMENT_LOOK_SECONDS)
    look = experiment.latest_look
    since = (
        look.created_at
        if look is not None and look.stage == experiment.stage
        else experiment.stage_started_at
    )
    moment = since + every
    now = timezone.now()
    # A look overdue by a moment is being taken: the one after it is the next.
    return moment if moment > now else now + every


def _no_looks_yet(experiment: Experiment) -> str:
    when = _clock(experiment.next_look_at)
    return f"No looks yet: the first comes at about {when}." if when else "No looks yet."


def _pct(successes: int, n: int) -> str:
    return f"{100 * successes / n:.0f}%" if n else "–"


def _points(value: float) -> str:
    return f"{100 * value:+.0f}"


def experiment_summary_get(experiment: Experiment) -> str:
    """One or two sentences for a person who is not a statistician: what the
    latest look found, what it decided, and what happens next."""
    counts = experiment.counts
    control, treatment = counts["control"], counts["treatment"]
    n_c, n_t = control["n"], treatment["n"]
    total = n_c + n_t
    new, current = f"v{experiment.treatment.number}", f"v{experiment.control.number}"
    rates = (
        f"the new prompt ({new}) succeeds {_pct(treatment['successes'], n_t)} "
        f"vs {_pct(control['successes'], n_c)} for the current one ({current})"
    )
    after = f"After {total:,} tasks ({n_t:,} on the new prompt)"
    stats = experiment.latest_look.stats if experiment.latest_look is not None else {}
    likely = (
        f"the difference is likely between {_points(stats['ci_low'])} and {_points(stats['ci_high'])} points"
        if stats.get("harm_boundary") is not None and "ci_low" in stats
        else ""
    )
    next_look = f"next look at about {_clock(experiment.next_look_at)}" if experiment.next_look_at else ""
    status = experiment.status
    Status = Experiment.Status
    ended = _clock(experiment.ended_at)
    reason = experiment.status_reason or ""

    if status == Status.RUNNING:
        if total == 0:
            share = f"{experiment.share:.0%}"
            return f"The new prompt ({new}) gets {share} of {experiment.agent.name}'s tasks; none has finished yet; {next_look}."
        if min(n_c, n_t) < stats_module.MIN_PER_ARM:
            return (
                f"{after}, {rates}. Too early to judge: a decision needs {stats_module.MIN_PER_ARM} tasks "
                f"on each prompt; {next_look}."
            )
        if experiment.stage == Experiment.Stage.CANARY:
            left = max(0, experiment.canary_size - n_t)
            return (
                f"{after}, {rates}: no sign of harm so far. The canary is done at {experiment.canary_size:,} "
                f"tasks on the new prompt ({left:,} to go); {next_look}."
            )
        return (
            f"{after}, {rates}: not yet conclusive"
            + (f" ({likely})" if likely else "")
            + f". The test decides by {experiment.max_n:,} tasks on each prompt; {next_look}."
        )
    if status == Status.CANARY_PASSED:
        return (
            f"Canary passed: {after.lower()}, {rates}, with no sign of harm. "
            "Next: a person advances it to a 50/50 test, or rolls it back."
        )
    if status == Status.PROMOTE_READY:
        return (
            f"The new prompt is better: {after.lower()}, {rates}"
            + (f"; {likely}" if likely else "")
            + f". Next: a person promotes it to make it {experiment.agent.name}'s prompt, or rolls it back."
        )
    if status == Status.PAUSED:
        return (
            f"Paused: the tasks were not split as planned ({n_t:,} on the new prompt and {n_c:,} on the current "
            f"one, where {experiment.share:.0%} were to get the new one). Next: a person resumes it once the "
            "cause is understood, or rolls it back."
        )
    if status == Status.PROMOTED:
        return f"Promoted at {ended}: the new prompt ({new}) is now {experiment.agent.name}'s prompt ({rates} at the last look)."
    if status == Status.ROLLED_BACK:
        runs = f"{experiment.agent.name} runs the current prompt ({current}) again"
        if (
            reason.startswith("automatic: ")
            and experiment.latest_look is not None
            and experiment.latest_look.decision == "rollback"
        ):
            return f"Rolled back automatically at {ended}: the new prompt did worse; {after.lower()}, {rates}. {runs}."
        if reason.startswith("automatic: "):
            return f"Rolled back automatically at {ended}: {reason.removeprefix('automatic: ')}. {runs}."
        return f"Rolled back by a person at {ended}: “{reason}”. {runs}."
    if status == Status.FUTILE:
        return (
            f"Stopped at {ended}: no clear difference; {after.lower()}, {rates}. "
            f"{experiment.agent.name} keeps the current prompt ({current})."
        )
    return reason


def _look_details(look: ExperimentLook) -> ExperimentLook:
    look.decision_label = DECISIONS.get(look.decision, look.decision)
    stats = look.stats
    look.diff_points = 100 * (stats.get("diff") or 0.0)
    look.ci_low_points = 100 * (stats.get("ci_low") or 0.0)
    look.ci_high_points = 100 * (stats.get("ci_high") or 0.0)
    return look


def review_experiments_get() -> tuple[list[Experiment], list[Experiment]]:
    """(active experiments, the most recently ended), with their details; the
    active ones with their charts."""
    active = list(_experiments_queryset().filter(status__in=Experiment.ACTIVE).order_by("started_at", "pk"))
    ended = list(
        _experiments_queryset()
        .exclude(status__in=Experiment.ACTIVE)
        .order_by("-ended_at", "-pk")[:RECENTLY_ENDED]
    )
    experiment_details_get(active + ended, charts=[e.pk for e in active])
    return active, ended


def experiment_get(pk: int, *, chart: bool = True) -> Experiment | None:
    experiment = _experiments_queryset().filter(pk=pk).first()
    if experiment is None:
        return None
    return experiment_details_get([experiment], charts=[pk] if chart else [])[0]


def audit_list():
    # The proposal too: the actor of a proposal from a config file says so (AuditEntry.actor).
    return AuditEntry.objects.select_related("agent", "user", "version", "proposal")


def audit_recent_get(limit: int = RECENT_AUDIT) -> list[AuditEntry]:
    """The latest entries but the looks: a running experiment is looked at every
    few seconds in a demo, and its looks (on its own page, and in the whole log)
    would push every decision off the review page."""
    return list(audit_list().exclude(action=AuditEntry.Action.LOOK)[:limit])


def review_context_get(*, failed: Failure | None = None) -> dict:
    """What /kaizen/ shows: its three live sections."""
    proposals = proposal_waiting_list()
    active, ended = review_experiments_get()
    if failed is not None:
        for proposal in proposals:
            failed.mark(proposal, "proposal")
            for gate in proposal.gate_list:
                failed.mark(gate, "gate")
        for experiment in active + ended:
            failed.mark(experiment, "experiment")
    return {
        "proposals": proposals,
        "pending_count": sum(1 for p in proposals if p.status == ProposalStatus.PENDING),
        "active": active,
        "ended": ended,
        "audit": audit_recent_get(),
        "audit_limit": RECENT_AUDIT,
        "seeing_cost": money(
            float(price_of_seeing_get(created_at__gte=timezone.now() - timedelta(days=SEEING_DAYS)))
        ),
        "seeing_days": SEEING_DAYS,
        "plotly_version": plotly.__version__,
        "nav": "kaizen",
    }


def experiment_context_get(experiment: Experiment) -> dict:
    """What an experiment's page shows, beyond its row and chart."""
    looks = list(experiment.looks.order_by("-created_at", "-pk")[: LOOK_ROWS + 1])
    return {
        "experiment": experiment,
        "looks": [_look_details(look) for look in looks[:LOOK_ROWS]],
        "looks_total": experiment.looks.count() if len(looks) > LOOK_ROWS else len(looks),
        # Its looks are in the look history above.
        "experiment_audit": list(
            audit_list().filter(experiment=experiment).exclude(action=AuditEntry.Action.LOOK)[:RECENT_AUDIT]
        ),
        # Its forms post plainly and come back here (pushed rows too).
        "plain": True,
        "here": experiment.get_absolute_url(),
        "plotly_version": plotly.__version__,
        "nav": "kaizen",
    }


# --- helpers ----------------------------------------------------------------------------


# --- genchi genbutsu: replays, probes, shadows and the gates they decide -----------------------

ITEM_ROWS = 200


def replay_get(pk: int) -> Replay | None:
    return (
        Replay.objects.select_related("agent", "baseline", "candidate", "proposal", "created_by")
        .filter(pk=pk)
        .first()
    )


def _replay_progress(replay: Replay) -> Replay:
    """Where a replay stands: its percent done, and the time left at its pace so far."""
    replay.percent = round(100 * replay.done / replay.total) if replay.total else 0
    replay.eta_seconds = None
    if replay.is_open and replay.started_at and 0 < replay.done < replay.total:
        elapsed = (timezone.now() - replay.started_at).total_seconds()
        replay.eta_seconds = elapsed / replay.done * (replay.total - replay.done)
    replay.eta_text = _eta_text(replay.eta_seconds)
    replay.url = replay.get_absolute_url()
    return replay


def _eta_text(seconds: float | None) -> str:
    """The time left, as a person says it: about 40 s, about 3 min, about 2 h."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


def replay_details_get(replay: Replay) -> Replay:
    """Attach what the pages show of a replay: its progress (percent, the time
    left at its pace so far), the flip table (tasks that pass on one version
    only, with links) and, for probes, the families' hit rates."""
    _replay_progress(replay)
    flips = ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).exclude(
        baseline_pass=F("candidate_pass")
    )
    rows = list(flips.select_related("task").order_by("position")[: 2 * ITEM_ROWS])
    replay.flips = {
        "now_fail": [i for i in rows if i.baseline_pass and not i.candidate_pass][:ITEM_ROWS],
        "now_pass": [i for i in rows if i.candidate_pass and not i.baseline_pass][:ITEM_ROWS],
    }
    stats = replay.stats or {}
    margin = float(stats.get("margin", 0.0))
    replay.families = [
        # Worse: hit more often on the candidate by more than the gate's margin.
        {"name": name, **rates, "worse": rates["candidate_rate"] - rates["baseline_rate"] > margin + 1e-12}
        for name, rates in sorted(stats.get("families", {}).items())
    ]
    return replay


def _simulated(agent: Agent, version: PromptVersion) -> bool:
    """Whether ``version`` of the agent runs the offline simulated model: its
    outputs are made up, and say so beside them (as the task page does)."""
    view = copy.copy(agent)
    for name, value in version.fields().items():
        setattr(view, name, value)
    return view.is_simulated


def replay_context_get(replay: Replay) -> dict:
    """What a replay's page shows; its live parts (``replay.html#replay-update``)
    are rendered from the same."""
    replay_details_get(replay)
    replay.baseline_simulated = _simulated(replay.agent, replay.baseline)
    replay.candidate_simulated = _simulated(replay.agent, replay.candidate)
    return {
        "replay": replay,
        "items": list(
            ReplayItem.objects.filter(replay=replay).select_related("task").order_by("position")[:ITEM_ROWS]
        ),
        "replay_audit": list(audit_list().filter(replay=replay)[:RECENT_AUDIT]),
        "can_cancel": replay.is_open,
        "nav": "kaizen",
    }


def _gates():
    return Gate.objects.select_related(
        "replay", "replay__agent", "replay__baseline", "replay__candidate", "decided_by"
    ).order_by("proposal_id", "position")


def proposal_gates_get(proposal: ChangeProposal) -> list[Gate]:
    """A proposal's gates in order, each with its replay's details attached."""
    gates = list(_gates().filter(proposal=proposal))
    for gate in gates:
        if gate.replay is not None:
            replay_details_get(gate.replay)
    return gates


def proposal_get(pk: int) -> ChangeProposal | None:
    proposal = proposal_list().filter(pk=pk).first()
    return proposal_details_get(proposal) if proposal is not None else None


def proposal_context_get(proposal: ChangeProposal, *, failed: Failure | None = None) -> dict:
    """What a proposal's page shows (``proposal_details_get`` attached already);
    its live parts (``proposal.html#proposal-update``) are rendered from the same."""
    gates = proposal_gates_get(proposal)
    if failed is not None:
        failed.mark(proposal, "proposal")
        for gate in gates:
            failed.mark(gate, "gate")
    return {
        "proposal": proposal,
        "gates": gates,
        "experiment": Experiment.objects.filter(proposal=proposal).first(),
        "proposal_audit": list(audit_list().filter(proposal=proposal)[:RECENT_AUDIT]),
        # Its forms post plainly and come back here (pushed ones too).
        "plain": True,
        "here": proposal.get_absolute_url(),
        "nav": "kaizen",
    }


def price_of_seeing_get(**filters) -> Decimal:
    """What replays, shadows and probes spent: the ledger's calls no production
    figure counts (ModelCall.every, less the live ones), filtered by ``filters``."""
    total = (
        ModelCall.every.exclude(purpose=ModelCall.Purpose.LIVE)
        .filter(**filters)
        .aggregate(s=Sum("cost"))["s"]
    )
    return total or Decimal(0)


def holdout_report_get(agent, gates: AgentGates | None = None) -> dict | None:
    """How the agent's holdout (the version active before its series of
    promotions) does beside the versions it runs now, on first attempts since
    the holdout began: whether the promotions' wins last. ``gates``: the agent's
    policy when the caller has read it already."""
    if gates is None:
        gates = (
            AgentGates.objects.filter(agent=agent, holdout_version__isnull=False)
            .select_related("holdout_version")
            .first()
        )
    if gates is None or gates.holdout_version is None or gates.holdout_started_at is None:
        return None
    held = gates.holdout_version.number
    rows = (
        Inspection.objects.filter(agent=agent, attempt=1, created_at__gte=gates.holdout_started_at)
        .values("prompt_version")
        .annotate(n=Count("pk"), passed=Count("pk", filter=Q(passed=True)))
    )
    holdout: dict[str, Any] = {"n": 0, "passed": 0}
    current: dict[str, Any] = {"n": 0, "passed": 0}
    for row in rows:
        side = holdout if row["prompt_version"] == held else current
        side["n"] += row["n"]
        side["passed"] += row["passed"]
    for side in (holdout, current):
        side["rate"] = side["passed"] / side["n"] if side["n"] else None
    return {
        "version": held,
        "share": gates.holdout_share,
        "since": gates.holdout_started_at,
        "holdout": holdout,
        "current": current,
    }
