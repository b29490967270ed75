"""The kaizen loop's writes: proposing a change, the human gates (approve,
reject, advance from canary, promote), rollback, and the periodic looks that
judge running experiments (``experiments_evaluate``, run by Celery beat).

Every step writes an AuditEntry in the same transaction, with who, why and the
statistics at that moment. Permissions are checked here as well as in the views:
proposing needs ``boards.change_agent``; approving, advancing, promoting and
rolling back need ``experiments.approve_change``. The line rolls back on its own
(a harm boundary crossed), with no user.
"""

from __future__ import annotations

import difflib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from boards import services as board_services
from boards.agents.spec import (
    GENERATION_PARAMETERS,
    examples_wanted,
)
from boards.models import Agent
from experiments import genchi, plans, stats
from experiments import line as experiment_line
from experiments.audit import audit as _audit
from experiments.line import current_version, ensure_version, next_version_number
from experiments.models import (
    AgentGates,
    AuditEntry,
    ChangeProposal,
    Experiment,
    ExperimentLook,
    ExperimentSample,
    Gate,
    GateRule,
    PromptVersion,
    Replay,
    normal_prompt_fields,
)
from experiments.prompt_diff import diff_lines

logger = logging.getLogger(__name__)

APPROVE_PERMISSION = "experiments.approve_change"
PROPOSE_PERMISSION = "boards.change_agent"
Status = ChangeProposal.Status
Action = AuditEntry.Action

# A minor change: parameters only, each within these steps of the active value.
MINOR_STEPS = {"temperature": 0.3, "top_p": 0.1}
MINOR_MAX_TOKENS_FACTOR = 2.0
# A template edit this similar (difflib ratio) and this small counts as a small edit...
SMALL_EDIT_RATIO = 0.97
SMALL_EDIT_CHARS = 20
MAX_RATIONALE = 5000
NOTHING_CHANGES = "Nothing changes"


def _require(user: User | None, permission: str, what: str) -> None:
    if user is None or not user.is_authenticated or not user.has_perm(permission):
        raise PermissionDenied(f"Only users with the {permission} permission may {what}.")


def can_approve(user: User | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.has_perm(APPROVE_PERMISSION))


def _rationale(text: str, *, field: str = "rationale") -> str:
    text = (text or "").strip()
    if not text:
        raise ValidationError({field: ["Say why: it goes to the audit log with the change."]})
    if len(text) > MAX_RATIONALE:
        raise ValidationError({field: [f"Keep it under {MAX_RATIONALE:,} characters."]})
    return text


# --- what a change is -------------------------------------------------------------------


def classify(base: PromptVersion, fields: dict) -> tuple[bool, str]:
    """(major, why). Major: the template changes beyond a small edit, or the
    variables, cascade or implementation change, or a parameter moves more than a
    small step; minor: small parameter steps and small template edits."""
    reasons_major: list[str] = []
    reasons_minor: list[str] = []
    if fields["cascade"] != base.cascade:
        reasons_major.append("the cascade changes")
    if fields["prompt_variables"] != base.prompt_variables:
        reasons_major.append("the template's variables change")
    if fields["implementation"] != base.implementation:
        reasons_major.append("the implementation changes")
    old, new = base.prompt_template, fields["prompt_template"]
    examples_before, examples_after = examples_wanted(old), examples_wanted(new)
    if examples_before != examples_after:
        # However small the edit: every task then pays for an embedding and a search,
        # and its prompt changes with what the knowledge base holds.
        if examples_before is None:
            reasons_major.append(f"retrieved examples turned on ({examples_after} a task)")
        elif examples_after is None:
            reasons_major.append("retrieved examples turned off")
        else:
            reasons_major.append(f"retrieved examples {examples_before} → {examples_after} a task")
    if old != new:
        matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
        changed = sum(
            max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"
        )
        if matcher.ratio() < SMALL_EDIT_RATIO or changed > SMALL_EDIT_CHARS:
            reasons_major.append(f"the template changes beyond a small edit ({changed} characters)")
        else:
            reasons_minor.append(f"a small template edit ({changed} characters)")
    before, after = base.parameters or {}, fields["parameters"] or {}
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        if name in GENERATION_PARAMETERS and a is None:
            # Setting a parameter the provider defaulted: a value within its range.
            reasons_minor.append(f"{name} set to {b}")
        elif (
            name in MINOR_STEPS and a is not None and b is not None and abs(b - a) <= MINOR_STEPS[name] + 1e-9
        ):
            reasons_minor.append(f"{name} {a} → {b}")
        elif (
            name == "max_tokens"
            and a
            and b
            and 1 / MINOR_MAX_TOKENS_FACTOR <= b / a <= MINOR_MAX_TOKENS_FACTOR
        ):
            reasons_minor.append(f"max_tokens {a} → {b}")
        else:
            reasons_major.append(
                f"{name} {a if a is not None else 'unset'} → {b if b is not None else 'unset'}"
            )
    if reasons_major:
        return True, "Major: " + "; ".join(reasons_major) + "."
    if reasons_minor:
        return False, "Minor: " + "; ".join(reasons_minor) + "."
    raise ValidationError(f"{NOTHING_CHANGES}: the proposal is the active version.")


def _normalised(agent: Agent, fields: dict) -> dict:
    """The proposed fields, checked as the agent's own would be (Agent.clean) and
    stored in their normal form."""
    probe = Agent(
        name=agent.name,
        capabilities=agent.capabilities,
        quality_checks=agent.quality_checks,
        spike_defects=agent.spike_defects,
        spike_window=agent.spike_window,
        **{name: fields.get(name, getattr(agent, name)) for name in PromptVersion.FIELDS},
    )
    probe.clean()
    return normal_prompt_fields({name: getattr(probe, name) for name in PromptVersion.FIELDS})


def proposal_preview(*, agent: Agent, fields: dict) -> dict:
    """What proposing ``fields`` would make, written nowhere: the candidate (unsaved,
    with the number it would get), the version it changes, major or minor and why,
    and the diff. Checked and compared exactly as proposal_create does; a
    ValidationError when the fields are invalid or change nothing."""
    normal = _normalised(agent, fields)
    base = current_version(agent)
    major, why = classify(base, normal)
    candidate = PromptVersion(agent=agent, number=next_version_number(agent), **normal)
    return {
        "base": base,
        "candidate": candidate,
        "major": major,
        "classification": why,
        "diff": diff_lines(base, candidate),
    }


# --- proposing ----------------------------------------------------------------------------


def changes_today(agent: Agent) -> int:
    since = timezone.now() - timedelta(days=1)
    return ChangeProposal.objects.filter(agent=agent, created_at__gte=since).count()


def proposal_create(
    *,
    agent: Agent,
    fields: dict,
    rationale: str,
    user: User | None = None,
    source: str = PromptVersion.Source.PERSON,
    evidence: dict | None = None,
) -> ChangeProposal:
    """Propose a change to the agent's active version. A minor change starts its
    experiment (a canary) at once when the agent has none running; a major one
    waits for approval. At most KAIZEN_MAX_CHANGES_PER_DAY per agent in 24 hours."""
    # The kaizen loop and a config file (applied by whoever may run manage.py, as
    # its direct changes are) propose with no user; a person needs the permission.
    if source not in (PromptVersion.Source.KAIZEN, PromptVersion.Source.CONFIG):
        _require(user, PROPOSE_PERMISSION, "propose prompt changes")
    rationale = _rationale(rationale)
    normal = _normalised(agent, fields)
    with transaction.atomic():
        agent = Agent.objects.select_for_update(of=("self",), no_key=True).get(pk=agent.pk)
        limit = settings.KAIZEN_MAX_CHANGES_PER_DAY
        if changes_today(agent) >= limit:
            raise ValidationError(
                f"{agent.name} has had {limit} changes proposed in the last 24 hours, the most allowed "
                "(KAIZEN_MAX_CHANGES_PER_DAY): let the running ones be judged first."
            )
        base = ensure_version(agent)
        major, why = classify(base, normal)
        number = next_version_number(agent)
        candidate = PromptVersion.objects.create(
            agent=agent,
            number=number,
            parent=base,
            source=source,
            author=user if user is not None and user.is_authenticated else None,
            rationale=rationale,
            **normal,
        )
        proposal = ChangeProposal.objects.create(
            agent=agent,
            base_version=base,
            candidate=candidate,
            source=source,
            author=candidate.author,
            rationale=rationale,
            evidence=evidence or {},
            major=major,
            classification=why,
        )
        _audit(
            agent,
            Action.PROPOSED,
            user=user,
            reason=f"{rationale}\n{why}",
            proposal=proposal,
            version=candidate,
        )
        if not major:
            # No approval needed: its gates start now, then its experiment.
            proposal.status = Status.APPROVED
            proposal.decision_note = "minor change: no approval needed"
            proposal.save(update_fields=["status", "decision_note"])
            _gates_begin(proposal, reason="minor change: starts at once", user=user)
    return proposal


def proposal_approve(*, proposal: ChangeProposal, user: User, note: str = "") -> ChangeProposal:
    """Approve a proposal: its experiment starts (a canary) when the agent has none
    running, else as soon as the running one ends."""
    _require(user, APPROVE_PERMISSION, "approve prompt changes")
    note = _rationale(note, field="note")
    with transaction.atomic():
        proposal = _locked_proposal(proposal.pk)
        if proposal.status != Status.PENDING:
            raise ValidationError(f"This proposal is already {proposal.get_status_display().lower()}.")
        proposal.status = Status.APPROVED
        proposal.decided_by, proposal.decided_at, proposal.decision_note = user, timezone.now(), note
        proposal.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        _audit(
            proposal.agent,
            Action.APPROVED,
            user=user,
            reason=note,
            proposal=proposal,
            version=proposal.candidate,
        )
        _gates_begin(proposal, reason="approved", user=user)
    return proposal


def proposal_reject(*, proposal: ChangeProposal, user: User, note: str) -> ChangeProposal:
    _require(user, APPROVE_PERMISSION, "reject prompt changes")
    note = _rationale(note, field="note")
    with transaction.atomic():
        proposal = _locked_proposal(proposal.pk)
        if proposal.status not in (Status.PENDING, Status.APPROVED, Status.VALIDATING):
            raise ValidationError(f"This proposal is already {proposal.get_status_display().lower()}.")
        proposal.status = Status.REJECTED
        proposal.decided_by, proposal.decided_at, proposal.decision_note = user, timezone.now(), note
        proposal.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        _gates_stop(proposal, note=f"the proposal was rejected: {note}", user=user)
        _audit(proposal.agent, Action.REJECTED, user=user, reason=note, proposal=proposal)
    return proposal


# --- the gates: seeing the change on real work before any live traffic (experiments.genchi) ---


def _gates_begin(proposal: ChangeProposal, *, reason: str, user: User | None = None) -> None:
    """An approved proposal (or a minor one) goes through the gates its agent
    asks for (AgentGates: replay, adversarial probes, shadow), in that order,
    then to its experiment; with no gates, straight to the experiment."""
    kinds = AgentGates.of(proposal.agent).kinds_for(major=proposal.major)
    if not kinds:
        _start_if_free(proposal, reason=reason, user=user)
        return
    Gate.objects.bulk_create(Gate(proposal=proposal, kind=kind, position=i) for i, kind in enumerate(kinds))
    proposal.status = Status.VALIDATING
    proposal.save(update_fields=["status"])
    _gates_walk(proposal, user=user)


def _gate_start(gate: Gate, proposal: ChangeProposal, user: User | None) -> None:
    starts: dict[str, Callable[..., Replay]] = {
        Gate.Kind.REPLAY: genchi.replay_start,
        Gate.Kind.ADVERSARIAL: genchi.probes_start,
        Gate.Kind.SHADOW: genchi.shadow_start,
    }
    start = starts[gate.kind]
    gate.started_at = timezone.now()
    try:
        with transaction.atomic():
            replay = start(agent=proposal.agent, candidate=proposal.candidate, user=user, proposal=proposal)
    except ValidationError as exc:
        # Nothing to see it on (a new agent, with no finished tasks or inputs
        # yet): no evidence either way, said so on the review and in the audit
        # log; the canary that follows still watches for harm.
        gate.state = Gate.State.SKIPPED
        gate.reason = "nothing to see it on yet: " + "; ".join(exc.messages)
        gate.ended_at = timezone.now()
        gate.save(update_fields=["state", "reason", "started_at", "ended_at"])
        _audit(
            proposal.agent,
            Action.GATE_SKIPPED,
            reason=f"{gate.get_kind_display()}: {gate.reason}",
            proposal=proposal,
        )
        return
    except genchi.ReplayOpen as exc:
        replay = exc.replay  # the candidate is being seen already (from the API): the gate waits for it
    gate.state = Gate.State.RUNNING
    gate.replay = replay
    gate.save(update_fields=["state", "replay", "started_at"])
    _audit(
        proposal.agent,
        Action.GATE_STARTED,
        user=user,
        reason=f"{gate.get_kind_display()} started",
        proposal=proposal,
        replay=replay,
    )


def _gates_walk(proposal: ChangeProposal, *, user: User | None = None) -> None:
    """Move a proposal in its gates as far as it goes now: a running gate whose
    replay has concluded passes or fails; a failed gate rejects the proposal with
    its reasons; the next waiting gate starts; when every gate is cleared, the
    experiment starts (or waits for the agent's slot). Idempotent: called after
    each step that may move it, and by the beat."""
    for gate in proposal.gates.select_related("replay").order_by("position"):
        if gate.cleared:
            continue
        if gate.state == Gate.State.RUNNING:
            replay = gate.replay
            if replay is None or replay.is_open:
                return
            if replay.state == Replay.State.DONE:
                gate.state = Gate.State.PASSED if replay.verdict == "pass" else Gate.State.FAILED
                gate.reason = replay.reason
                gate.evidence = replay.stats
            else:
                gate.state = Gate.State.FAILED
                gate.reason = f"its {replay.get_kind_display().lower()} was {replay.state}: {replay.reason}"
            gate.ended_at = timezone.now()
            gate.save(update_fields=["state", "reason", "evidence", "ended_at"])
            _audit(
                proposal.agent,
                Action.GATE_PASSED if gate.state == Gate.State.PASSED else Action.GATE_FAILED,
                reason=f"{gate.get_kind_display()}: {gate.reason}",
                proposal=proposal,
                replay=replay,
                stats_json=gate.evidence,
            )
            if gate.state == Gate.State.PASSED:
                continue
        if gate.state in (Gate.State.FAILED, Gate.State.CANCELLED):
            why = f"{gate.get_kind_display()} failed: {gate.reason}"
            proposal.status = Status.REJECTED
            proposal.decided_at = timezone.now()
            proposal.decision_note = f"{proposal.decision_note}\n{why}".strip()
            proposal.save(update_fields=["status", "decided_at", "decision_note"])
            _audit(proposal.agent, Action.REJECTED, reason=why, proposal=proposal, version=proposal.candidate)
            return
        if gate.state == Gate.State.WAITING:
            _gate_start(gate, proposal, user)
            if gate.state == Gate.State.SKIPPED:
                continue
            return
    proposal.status = Status.APPROVED
    proposal.save(update_fields=["status"])
    cleared = ", ".join(
        f"{gate.get_kind_display().lower()} {gate.get_state_display().lower()}"
        for gate in proposal.gates.order_by("position")
    )
    _start_if_free(proposal, reason=f"its gates are cleared ({cleared})", user=user)


def gates_advance(*, proposal_id: int) -> ChangeProposal | None:
    """Move a proposal in its gates (see _gates_walk), under its row lock."""
    with transaction.atomic():
        try:
            proposal = _locked_proposal(proposal_id)
        except ChangeProposal.DoesNotExist:
            return None
        if proposal.status == Status.VALIDATING:
            _gates_walk(proposal)
    return proposal


def gates_advance_all() -> int:
    """Celery beat, with replays_resume: every proposal in its gates moves on (a
    replay that concluded while its message to move on was lost)."""
    ids = list(ChangeProposal.objects.filter(status=Status.VALIDATING).values_list("pk", flat=True))
    for pk in ids:
        gates_advance(proposal_id=pk)
    return len(ids)


def _gates_stop(proposal: ChangeProposal, *, note: str, user: User | None) -> None:
    """A proposal rejected while in its gates: its running replays stop."""
    for gate in proposal.gates.select_related("replay").filter(
        state__in=(Gate.State.WAITING, Gate.State.RUNNING)
    ):
        if gate.replay is not None and gate.replay.is_open:
            genchi.replay_cancel(replay=gate.replay, user=user, note=note)
        gate.state = Gate.State.CANCELLED
        gate.reason = note
        gate.ended_at = timezone.now()
        gate.save(update_fields=["state", "reason", "ended_at"])


def gate_override(*, gate: Gate, user: User, note: str) -> Gate:
    """A person with the approve permission lets a proposal past a gate, with a
    note for the audit log: a gate not decided yet is skipped (its replay
    stopped), a failed one is overridden (its proposal, rejected by it, goes on)."""
    _require(user, APPROVE_PERMISSION, "skip or override gates")
    note = _rationale(note, field="note")
    with transaction.atomic():
        proposal = _locked_proposal(gate.proposal_id)
        gate = Gate.objects.select_for_update(of=("self",)).select_related("replay").get(pk=gate.pk)
        if gate.state in (Gate.State.WAITING, Gate.State.RUNNING) and proposal.status == Status.VALIDATING:
            if gate.replay is not None and gate.replay.is_open:
                genchi.replay_cancel(replay=gate.replay, user=user, note=f"gate skipped: {note}")
            gate.state, action = Gate.State.SKIPPED, Action.GATE_SKIPPED
        elif gate.state == Gate.State.FAILED and proposal.status == Status.REJECTED:
            # A failed gate rejects its proposal at once: this is that rejection.
            gate.state, action = Gate.State.OVERRIDDEN, Action.GATE_OVERRIDDEN
            proposal.status = Status.VALIDATING
            proposal.save(update_fields=["status"])
        else:
            raise ValidationError(
                f"This gate is {gate.get_state_display().lower()} and its proposal "
                f"{proposal.get_status_display().lower()}: there is nothing to skip or override."
            )
        gate.decided_by, gate.note, gate.ended_at = user, note, timezone.now()
        gate.save(update_fields=["state", "decided_by", "note", "ended_at"])
        _audit(
            proposal.agent,
            action,
            user=user,
            reason=f"{gate.get_kind_display()}: {note}",
            proposal=proposal,
            replay=gate.replay,
            stats_json=gate.evidence,
        )
        _gates_walk(proposal, user=user)
    return gate


def _locked_proposal(pk: int) -> ChangeProposal:
    return (
        ChangeProposal.objects.select_for_update(of=("self",))
        .select_related("agent", "candidate", "base_version")
        .get(pk=pk)
    )


def _start_if_free(proposal: ChangeProposal, *, reason: str, user: User | None = None) -> Experiment | None:
    """Start the proposal's experiment unless the agent has one already (one at a
    time) or its base is no longer the active version (it would test a change
    against the wrong control)."""
    agent = proposal.agent
    if Experiment.objects.filter(agent=agent, status__in=Experiment.ACTIVE).exists():
        return None
    if proposal.base_version.number != agent.prompt_version:
        stop = (
            f"not started: the active version moved on to v{agent.prompt_version} since it was proposed "
            f"against v{proposal.base_version.number}; propose it again"
        )
        proposal.status = Status.STOPPED
        # The approver's note stays; why it did not start is added to it.
        proposal.decision_note = f"{proposal.decision_note}\n{stop}".strip()
        proposal.save(update_fields=["status", "decision_note"])
        _audit(agent, Action.NOT_STARTED, user=user, reason=stop, proposal=proposal)
        return None
    # The settings', or the agent's boards' own (a demo board decides in minutes).
    plan = plans.agent_plan(agent)
    try:
        with transaction.atomic():
            experiment = Experiment.objects.create(
                agent=agent,
                proposal=proposal,
                control=proposal.base_version,
                treatment=proposal.candidate,
                canary_share=plan.canary_share,
                canary_size=plan.canary_size,
                max_n=plan.max_n,
                salt=secrets.token_hex(8),
            )
    except IntegrityError:
        return None  # another started meanwhile: this one waits its turn
    proposal.status = Status.EXPERIMENTING
    proposal.save(update_fields=["status"])
    _audit(
        agent,
        Action.STARTED,
        user=user,
        reason=f"{reason}: canary at {experiment.canary_share:.0%} of {agent.name}'s tasks",
        proposal=proposal,
        experiment=experiment,
        version=proposal.candidate,
    )
    return experiment


# --- the human gates on a running experiment ----------------------------------------------


def _locked_experiment(pk: int) -> Experiment:
    return (
        Experiment.objects.select_for_update(of=("self",))
        .select_related("agent", "proposal", "control", "treatment")
        .get(pk=pk)
    )


def experiment_advance(*, experiment: Experiment, user: User, note: str) -> Experiment:
    """Approve the canary's result: the efficacy stage starts at 50/50, counting
    only tasks from now on."""
    _require(user, APPROVE_PERMISSION, "advance experiments")
    note = _rationale(note, field="note")
    with transaction.atomic():
        experiment = _locked_experiment(experiment.pk)
        if experiment.status != Experiment.Status.CANARY_PASSED:
            raise ValidationError("Only a canary that passed can be advanced to the efficacy stage.")
        experiment.stage = Experiment.Stage.EFFICACY
        experiment.status = Experiment.Status.RUNNING
        experiment.stage_started_at = timezone.now()
        experiment.status_reason = ""
        experiment.save(update_fields=["stage", "status", "stage_started_at", "status_reason"])
        _audit(
            experiment.agent,
            Action.ADVANCED,
            user=user,
            reason=note,
            experiment=experiment,
            stats_json=_latest(experiment),
        )
    return experiment


def experiment_resume(*, experiment: Experiment, user: User, note: str) -> Experiment:
    """Resume an experiment paused for a sample-ratio mismatch (once its cause is understood)."""
    _require(user, APPROVE_PERMISSION, "resume experiments")
    note = _rationale(note, field="note")
    with transaction.atomic():
        experiment = _locked_experiment(experiment.pk)
        if experiment.status != Experiment.Status.PAUSED:
            raise ValidationError("Only a paused experiment can be resumed.")
        experiment.status = Experiment.Status.RUNNING
        # The mismatched data is not trusted: the stage starts again.
        experiment.stage_started_at = timezone.now()
        experiment.save(update_fields=["status", "stage_started_at"])
        _audit(experiment.agent, Action.RESUMED, user=user, reason=note, experiment=experiment)
    return experiment


def experiment_promote(*, experiment: Experiment, user: User, note: str) -> Experiment:
    """Make the treatment the agent's active version (the efficacy test said
    better, and its lower bound is within the margin of the control)."""
    _require(user, APPROVE_PERMISSION, "promote prompt changes")
    note = _rationale(note, field="note")
    with transaction.atomic():
        experiment = _locked_experiment(experiment.pk)
        if experiment.status != Experiment.Status.PROMOTE_READY:
            raise ValidationError(
                "Only an experiment whose efficacy test found the change better can be promoted "
                f"(this one is {experiment.get_status_display().lower()})."
            )
        counts = arm_counts(experiment)
        allowed, lower = stats.promotion_guard(
            stats.ArmCounts(n=counts["control"]["n"], successes=counts["control"]["successes"]),
            stats.ArmCounts(n=counts["treatment"]["n"], successes=counts["treatment"]["successes"]),
        )
        if not allowed:
            raise ValidationError(
                f"Not promoted: the candidate's lower bound of success ({lower:.1%}) is more than "
                f"{stats.PROMOTE_MARGIN:.0%} below the control's rate."
            )
        agent = Agent.objects.select_for_update(of=("self",), no_key=True).get(pk=experiment.agent_id)
        _holdout_keep(agent, experiment.control, user=user)
        _activate(agent, experiment.treatment)
        _end(experiment, Experiment.Status.PROMOTED, note)
        experiment.proposal.status = Status.PROMOTED
        experiment.proposal.save(update_fields=["status"])
        _audit(
            agent,
            Action.PROMOTED,
            user=user,
            reason=note,
            experiment=experiment,
            proposal=experiment.proposal,
            version=experiment.treatment,
            stats_json=_latest(experiment),
        )
        _start_next(agent)
    return experiment


def experiment_rollback(
    *, experiment: Experiment, user: User | None, note: str, stats_json: dict | None = None
) -> Experiment:
    """Stop the treatment at once: the next task runs the active version. By a
    person (one click, any time) or by the line (a harm boundary crossed)."""
    if user is not None:
        _require(user, APPROVE_PERMISSION, "roll back prompt changes")
    note = _rationale(note, field="note")
    with transaction.atomic():
        experiment = _locked_experiment(experiment.pk)
        if not experiment.is_active:
            raise ValidationError(
                f"This experiment has already ended ({experiment.get_status_display().lower()})."
            )
        _end(experiment, Experiment.Status.ROLLED_BACK, note)
        experiment.proposal.status = Status.ROLLED_BACK
        experiment.proposal.save(update_fields=["status"])
        _audit(
            experiment.agent,
            Action.ROLLED_BACK,
            user=user,
            reason=note,
            experiment=experiment,
            proposal=experiment.proposal,
            version=experiment.control,
            stats_json=stats_json or _latest(experiment),
        )
        _start_next(experiment.agent)
    return experiment


def prompt_version_rollback(*, agent: Agent, version: PromptVersion, user: User, note: str) -> Agent:
    """Make an earlier version active again (after a promotion turned out badly):
    effective for the next task. Any running experiment of the agent is rolled back first."""
    _require(user, APPROVE_PERMISSION, "roll back prompt versions")
    note = _rationale(note, field="note")
    if version.agent_id != agent.pk:
        raise ValidationError("That version belongs to another agent.")
    with transaction.atomic():
        for experiment in Experiment.objects.filter(agent=agent, status__in=Experiment.ACTIVE):
            experiment_rollback(
                experiment=experiment,
                user=user,
                note=f"the agent was rolled back to v{version.number}: {note}",
            )
        agent = Agent.objects.select_for_update(of=("self",), no_key=True).get(pk=agent.pk)
        if agent.prompt_version == version.number:
            raise ValidationError(f"v{version.number} is already the active version.")
        ensure_version(agent)
        _activate(agent, version)
        _audit(agent, Action.ROLLED_BACK, user=user, reason=note, version=version)
    return agent


def _holdout_keep(agent: Agent, before: PromptVersion, *, user: User | None) -> None:
    """The first promotion while the agent keeps a holdout (AgentGates.holdout_share)
    fixes its version: the one active before this series of promotions, which
    the holdout's share of tasks keeps running, so the series' wins can be seen
    to last (or not) against it."""
    gates = AgentGates.objects.filter(agent=agent, holdout_share__gt=0, holdout_version__isnull=True).first()
    if gates is None:
        return
    gates.holdout_version = before
    gates.holdout_started_at = timezone.now()
    gates.holdout_salt = secrets.token_hex(8)
    gates.save(update_fields=["holdout_version", "holdout_started_at", "holdout_salt"])
    transaction.on_commit(experiment_line.genchi.clear)
    _audit(
        agent,
        Action.HOLDOUT,
        user=user,
        reason=f"holdout started: {gates.holdout_share:.0%} of {agent.name}'s tasks stay on v{before.number}",
        version=before,
    )


def holdout_reset(*, agent: Agent, user: User, note: str) -> None:
    """End the agent's holdout series: the next promotion starts a new one."""
    _require(user, APPROVE_PERMISSION, "reset holdouts")
    note = _rationale(note, field="note")
    with transaction.atomic():
        gates = (
            AgentGates.objects.select_for_update().filter(agent=agent, holdout_version__isnull=False).first()
        )
        if gates is None:
            raise ValidationError(f"{agent.name} keeps no holdout.")
        version = gates.holdout_version
        assert version is not None  # filtered so
        gates.holdout_version, gates.holdout_started_at = None, None
        gates.save(update_fields=["holdout_version", "holdout_started_at"])
        transaction.on_commit(experiment_line.genchi.clear)
        _audit(
            agent,
            Action.HOLDOUT,
            user=user,
            reason=f"holdout on v{version.number} ended: {note}",
            version=version,
        )


# --- the gate policy: which gates an agent's changes pass, and their sizes ---------------------

# What a person may set of an agent's AgentGates (the holdout's version and start
# are the promotions' to fix), with the bounds each is checked against.
GATE_RULES = ("replay", "adversarial", "shadow")
GATE_LIMITS: dict[str, tuple[float, float, str]] = {
    # name: (lowest, highest, what to write)
    "replay_sample": (0, 5000, "0 (sized by the power calculation) to 5,000 tasks"),
    "replay_budget_usd": (0.0001, 1000, "more than $0 and at most $1,000"),
    "shadow_share": (0.01, 1.0, "1% to 100% of the live tasks"),
    "shadow_size": (10, 10_000, "10 to 10,000 pairs"),
    "shadow_hours": (0.5, 336, "half an hour to 336 hours (two weeks)"),
    "shadow_budget_usd": (0.0001, 1000, "more than $0 and at most $1,000"),
    "probes_per_family": (1, 100, "1 to 100 probes"),
    "probe_margin": (0.0, 0.5, "0 to 50 points"),
    # Blank: the installation's (KAIZEN_REPLAY_COST_LIMIT, KAIZEN_REPLAY_LATENCY_LIMIT).
    "cost_limit": (0.0, 10.0, "0% to 1,000% more, or blank for the installation's"),
    "latency_limit": (0.0, 10.0, "0% to 1,000% more, or blank for the installation's"),
}
# Fields a blank leaves to the installation's settings.
_OPTIONAL = {"cost_limit", "latency_limit"}
# A holdout keeps this share of the tasks on an old version: off, or small enough
# to cost little and large enough to show a difference within weeks.
HOLDOUT_SHARE_RANGE = (0.02, 0.05)
GATE_FIELDS = (*GATE_RULES, *GATE_LIMITS, "holdout_share")
_WHOLE = {"replay_sample", "shadow_size", "probes_per_family"}
_MONEY = {"replay_budget_usd", "shadow_budget_usd"}


def agent_gates_clean(fields: dict) -> dict:
    """The gate policy's fields, checked and in their types: a ValidationError
    names every field out of its range, and what it may be."""
    unknown = sorted(set(fields) - set(GATE_FIELDS))
    if unknown:
        raise ValidationError(f"Not a field of the gate policy: {', '.join(unknown)}.")
    errors: dict[str, list[str]] = {}
    clean: dict = {}
    for name, value in fields.items():
        if name in _OPTIONAL and value in (None, ""):
            clean[name] = None
            continue
        if name in GATE_RULES:
            if value not in GateRule.values:
                errors[name] = ["Choose every change, major changes or never."]
            else:
                clean[name] = value
            continue
        try:
            number = Decimal(str(value)) if name in _MONEY else float(value)
        except (TypeError, ValueError, ArithmeticError):
            errors[name] = ["Write a number."]
            continue
        if name == "holdout_share":
            low, high = HOLDOUT_SHARE_RANGE
            if number != 0 and not low - 1e-9 <= number <= high + 1e-9:
                errors[name] = [f"0 (no holdout), or {low:.0%} to {high:.0%} of the tasks."]
            else:
                clean[name] = float(number)
            continue
        low, high, words = GATE_LIMITS[name]
        if name in _WHOLE and float(number) != int(number):
            errors[name] = ["Write a whole number."]
        elif not Decimal(str(low)) <= Decimal(str(number)) <= Decimal(str(high)):
            errors[name] = [f"Out of range: {words}."]
        elif name in _WHOLE:
            clean[name] = int(number)
        else:
            clean[name] = number
    if errors:
        raise ValidationError(errors)
    return clean


def _gate_value(name: str, value) -> str:
    if value is None:
        return "the installation's"
    if name in _MONEY:
        return f"${value:,.4f}".rstrip("0").rstrip(".")
    if name in ("shadow_share", "holdout_share", "probe_margin", "cost_limit", "latency_limit"):
        return f"{value:.0%}" if value * 100 == round(value * 100) else f"{value:.1%}"
    return f"{value:g}" if isinstance(value, float) else str(value)


@transaction.atomic
def agent_gates_set(*, agent: Agent, user: User, **fields) -> AgentGates:
    """Change which gates the agent's prompt changes pass before their canary,
    and their sizes (AgentGates; an agent without a row gets one). Audited, with
    each change; proposals already in their gates keep the gates they began
    with. Setting nothing new writes nothing."""
    _require(user, APPROVE_PERMISSION, "change gate policies")
    clean = agent_gates_clean(fields)
    gates = AgentGates.objects.select_for_update().filter(agent=agent).first()
    if gates is None:
        gates = AgentGates(agent=agent)
    changes = []
    for name, value in clean.items():
        before = getattr(gates, name)
        if before == value or (name in _MONEY and Decimal(before) == value):
            continue
        setattr(gates, name, value)
        changes.append(f"{name.replace('_', ' ')}: {_gate_value(name, before)} → {_gate_value(name, value)}")
    if not changes:
        return gates
    gates.save()
    transaction.on_commit(experiment_line.genchi.clear)
    _audit(agent, Action.GATES, user=user, reason="; ".join(changes))
    return gates


def _activate(agent: Agent, version: PromptVersion) -> None:
    for name, value in version.fields().items():
        setattr(agent, name, value)
    agent.prompt_version = version.number
    agent.save(update_fields=[*PromptVersion.FIELDS, "prompt_version"])
    for board_id in agent.boards.values_list("pk", flat=True):
        board_services.board_config_changed(board_id=board_id)


def _end(experiment: Experiment, status: str, reason: str) -> None:
    experiment.status = status
    experiment.status_reason = reason
    experiment.ended_at = timezone.now()
    experiment.save(update_fields=["status", "status_reason", "ended_at"])


def _start_next(agent: Agent) -> None:
    """An approved proposal waiting for the agent's experiment slot starts now."""
    waiting = (
        ChangeProposal.objects.filter(agent=agent, status=Status.APPROVED)
        .select_related("agent", "base_version", "candidate")
        .order_by("created_at")
        .first()
    )
    if waiting is not None:
        waiting.agent = Agent.objects.get(pk=agent.pk)
        _start_if_free(waiting, reason="approved earlier; the agent's previous experiment has ended")


def _latest(experiment: Experiment) -> dict:
    look = experiment.looks.order_by("-created_at", "-pk").first()
    return look.stats if look is not None else {}


# --- the looks ------------------------------------------------------------------------------


def arm_counts(experiment: Experiment) -> dict[str, dict]:
    """Per arm, this stage's samples: n, successes, mean cost and latency."""
    rows = (
        ExperimentSample.objects.filter(experiment=experiment, stage=experiment.stage)
        .values("arm")
        .annotate(
            n=Count("pk"),
            successes=Count("pk", filter=Q(success=True)),
            cost=Sum("cost"),
            latency=Sum("latency_ms"),
        )
    )
    counts = {
        arm: {"n": 0, "successes": 0, "cost": 0.0, "latency_ms": 0.0} for arm in ExperimentSample.Arm.values
    }
    for row in rows:
        n = row["n"]
        counts[row["arm"]] = {
            "n": n,
            "successes": row["successes"],
            "cost": float(row["cost"] or 0) / n if n else 0.0,
            "latency_ms": float(row["latency"] or 0) / n if n else 0.0,
        }
    return counts


def experiment_look(*, experiment: Experiment) -> ExperimentLook | None:
    """Evaluate one running experiment now, record the look and act on it: roll
    back on harm, pause on a sample-ratio mismatch, stop for futility, mark a
    passed canary or a promotable efficacy result for a person to act on."""
    with transaction.atomic():
        experiment = _locked_experiment(experiment.pk)
        if experiment.status != Experiment.Status.RUNNING:
            return None
        active = Agent.objects.filter(pk=experiment.agent_id).values_list("prompt_version", flat=True).first()
        if active != experiment.control.number:
            # The prompt was changed directly (a config file, the admin) meanwhile:
            # the control is no longer what runs, so the comparison means nothing.
            experiment_rollback(
                experiment=experiment,
                user=None,
                note=f"automatic: the active version moved from v{experiment.control.number} to v{active} "
                "by a direct change while the experiment ran",
            )
            return None
        counts = arm_counts(experiment)
        control, treatment = counts["control"], counts["treatment"]
        history = tuple(
            look.stats.get("fraction")
            for look in experiment.looks.filter(
                stage=experiment.stage, created_at__gte=experiment.stage_started_at
            )
            if look.stats.get("fraction") is not None
        )
        result = stats.evaluate(
            experiment.stage,
            stats.ArmCounts(n=control["n"], successes=control["successes"]),
            stats.ArmCounts(n=treatment["n"], successes=treatment["successes"]),
            history=history,
            # A canary is planned to its treatment size; the efficacy stage to max_n per arm.
            max_n=experiment.canary_size if experiment.stage == Experiment.Stage.CANARY else experiment.max_n,
            expected_share=experiment.share,
        )
        figures = {**result.to_json(), "guardrails": {"control": control, "treatment": treatment}}
        look = ExperimentLook.objects.create(
            experiment=experiment, stage=experiment.stage, decision=result.decision, stats=figures
        )
        _audit(experiment.agent, Action.LOOK, reason=result.reason, experiment=experiment, stats_json=figures)
        decision = result.decision
        if decision == "rollback":
            experiment_rollback(
                experiment=experiment, user=None, note=f"automatic: {result.reason}", stats_json=figures
            )
        elif decision == "pause_srm":
            _hold(experiment, Experiment.Status.PAUSED, Action.PAUSED, result.reason, figures)
        elif decision == "futility":
            _end(experiment, Experiment.Status.FUTILE, result.reason)
            experiment.proposal.status = Status.STOPPED
            experiment.proposal.save(update_fields=["status"])
            _audit(
                experiment.agent,
                Action.FUTILE,
                reason=result.reason,
                experiment=experiment,
                stats_json=figures,
            )
            _start_next(experiment.agent)
        elif decision == "promote":
            _hold(experiment, Experiment.Status.PROMOTE_READY, Action.PROMOTE_READY, result.reason, figures)
        elif (
            experiment.stage == Experiment.Stage.CANARY
            and treatment["n"] >= experiment.canary_size
            and control["n"] >= stats.MIN_PER_ARM
        ):
            reason = (
                f"no harm found in {treatment['n']} treatment and {control['n']} control tasks: "
                "approve it to start the efficacy stage at 50/50"
            )
            _hold(experiment, Experiment.Status.CANARY_PASSED, Action.CANARY_PASSED, reason, figures)
    return look


def _hold(experiment: Experiment, status: str, action: str, reason: str, figures: dict) -> None:
    """Stop assigning traffic and wait for a person (to advance, promote or resume)."""
    experiment.status = status
    experiment.status_reason = reason
    experiment.save(update_fields=["status", "status_reason"])
    _audit(experiment.agent, action, reason=reason, experiment=experiment, stats_json=figures)


def experiments_evaluate() -> int:
    """Every running experiment, looked at (Celery beat, at least every 5 minutes).
    Returns how many were evaluated; one's error does not stop the others."""
    count = 0
    for experiment in Experiment.objects.filter(status=Experiment.Status.RUNNING).order_by("pk"):
        try:
            if experiment_look(experiment=experiment) is not None:
                count += 1
        except Exception:
            logger.exception("evaluating experiment %s failed", experiment.pk)
    # Approved proposals whose agent's slot is free (an experiment ended elsewhere).
    for agent_id in (
        ChangeProposal.objects.filter(status=Status.APPROVED).values_list("agent_id", flat=True).distinct()
    ):
        with transaction.atomic():
            _start_next(Agent.objects.get(pk=agent_id))
    return count
