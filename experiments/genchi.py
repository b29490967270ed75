"""Genchi genbutsu, "go and see": a prompt change is seen working on real work
before it touches the line.

Three ways of seeing, each a ``Replay`` (its ``kind``) of ``ReplayItem`` rows,
each item one task seen through the active version (the baseline) and the
candidate, with the inspection the line runs (``andon.jidoka.inspect_run``):

- a **replay** of a stratified sample of the agent's past tasks (by capability,
  input length and past outcome), sized by ``experiments.paired`` to show
  non-inferiority with a stated power; where a person judged a task's output
  before, that verdict is the ground truth (an output a reviewer rejected is a
  known failure, the one approved or written by a reviewer is right);
- the **adversarial probes** (``experiments.probes``): the agent's own inputs
  mutated (injections, encodings, huge and empty inputs, PII bait...), with the
  agent's checks and each family's own detector;
- a **shadow** on mirrored live work: a share of the agent's live tasks also
  run through the candidate (``shadow_run``, enqueued by the line after the
  task's own run completed), paired with the live outcome; never shipped.

Nothing here moves a card, opens an escalation or charges a budget: the
items' model calls go to the ledger marked with their purpose (``ModelCall.every``;
production figures read ``ModelCall.objects``, the live calls), and each replay's
spending is capped by its ``budget_usd``.

A replay and a probe run are worked through by ``replay_step`` on the workers,
in chunks, under a lease on the replay's row: a worker that dies mid-chunk lets
the lease run out, and ``replays_resume`` (Celery beat) hands the replay to the
next worker, which carries on from the first item not done. What a step has
written is never run again.

This module moves replays; ``experiments.services`` moves the proposals' gates
on what the replays conclude (``gates_advance``).
"""

from __future__ import annotations

import copy
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import partial

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Length
from django.utils import timezone

from andon import jidoka
from andon.models import Escalation, Inspection
from boards.agents.cascade import implementation_for
from boards.agents.outputs import AgentDeferred, AgentFailed, CallRecord
from boards.agents.runtime import lease_keeper
from boards.models import Agent, ModelCall, Task
from boards.services.ledger import ledger_rows
from experiments import broadcast as review_broadcast
from experiments import line as experiment_line
from experiments import paired, probes
from experiments.audit import audit
from experiments.line import ensure_version
from experiments.models import AgentGates, AuditEntry, ChangeProposal, PromptVersion, Replay, ReplayItem

logger = logging.getLogger(__name__)

Action = AuditEntry.Action
Kind = Replay.Kind
State = Replay.State

# Past tasks a replay's sample is drawn from: the agent's most recent finished ones.
POOL = 20_000
# Items a step runs at once (both arms each, in threads). A step goes on for
# KAIZEN_REPLAY_STEP_SECONDS before it hands the replay to the next (so replays
# share the workers), renewing its lease (KAIZEN_REPLAY_LEASE_SECONDS) after each
# chunk; a step that stops lets the lease run out.
CHUNK = 24
# The longest output kept on an item (enough to read it on the review).
OUTPUT_KEPT = 4000
# Input length bands of the strata (characters).
BANDS = ((300, "short"), (1500, "medium"))


class ReplayOpen(Exception):
    """The candidate already has a replay of this kind queued or running."""

    def __init__(self, replay: Replay) -> None:
        super().__init__(f"replay {replay.pk} of v{replay.candidate.number} is already {replay.state}")
        self.replay = replay


# --- running one version on one input ------------------------------------------------------


@dataclass(frozen=True)
class ArmResult:
    """What one version made of one input, inspected as the line would."""

    passed: bool
    output: str = ""
    reason: str = ""
    cost: Decimal = Decimal(0)
    latency_ms: float = 0.0
    tokens: int = 0
    calls: tuple[CallRecord, ...] = ()
    # Not run: every model it calls is behind an open circuit breaker.
    deferred: bool = False


def version_agent(agent: Agent, version: PromptVersion) -> Agent:
    """The agent as ``version`` has it (a copy), with the response cache off: a
    replay asks the models, so both versions are measured on what they cost."""
    seen = copy.copy(agent)
    for name, value in version.fields().items():
        setattr(seen, name, value)
    seen.prompt_version = version.number
    seen.cache_responses = False
    return seen


def _view(task: Task, agent: Agent, version: PromptVersion, input_text: str) -> Task:
    """The task as a first attempt would see it, with ``input_text`` as its input:
    no reviewer's feedback, no last error, the agent's own checks."""
    view = copy.copy(task)
    view.input = input_text
    view.review_feedback = ""
    view.last_error = ""
    view.agent = agent
    view.prompt_version = version.number
    return view


def run_arm(agent: Agent, version: PromptVersion, task: Task, input_text: str) -> ArmResult:
    """Run ``version`` of ``agent`` on ``input_text`` (in place of the task's
    input) and inspect the output with the agent's checks. Writes nothing."""
    view = _view(task, agent, version, input_text)
    try:
        output = implementation_for(version_agent(agent, version)).process(view)
    except AgentDeferred as exc:
        return ArmResult(passed=False, reason=f"not run: {exc}", deferred=True)
    except AgentFailed as exc:
        return _spent(ArmResult(passed=False, reason=f"the attempt failed: {exc}", calls=exc.calls))
    except Exception as exc:  # a custom agent's bug is a failed attempt, as on the line
        logger.exception("replaying task %s with %s v%s crashed", task.pk, agent.name, version.number)
        return ArmResult(passed=False, reason=f"internal error: {exc!r}")
    verdict, tokens_out = jidoka.inspect_run(view, output)
    reason = "" if verdict.passed else verdict.summary()
    return _spent(ArmResult(passed=verdict.passed, output=output.text, reason=reason, calls=output.calls))


def _spent(result: ArmResult) -> ArmResult:
    calls = result.calls
    return ArmResult(
        passed=result.passed,
        output=result.output,
        reason=result.reason,
        cost=sum((c.cost for c in calls), Decimal(0)),
        latency_ms=round(sum(c.latency_ms for c in calls), 3),
        tokens=sum(c.tokens_in + c.tokens_out for c in calls),
        calls=calls,
    )


# --- what people said before: the ground truth -------------------------------------------


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class PastVerdict:
    """What reviewers decided on a task's outputs: ``verdict`` is rejected, edited
    or approved ("" when no one judged it); ``rejected`` the outputs they rejected
    and ``reference`` the output they approved or wrote (normalised)."""

    verdict: str = ""
    rejected: frozenset[str] = frozenset()
    reference: str = ""

    def judge(self, arm: ArmResult) -> tuple[bool, str]:
        """An arm's pass, with a person's verdict on the same output first."""
        if arm.deferred or not arm.output:
            return arm.passed, arm.reason
        text = _normal(arm.output)
        if text in self.rejected:
            return False, "the same output a reviewer rejected before (a known failure)"
        if self.reference and text == self.reference:
            return True, "the output a reviewer approved before"
        return arm.passed, arm.reason


def past_verdicts(
    task_ids: Iterable[int] | None = None, *, agent: Agent | None = None
) -> dict[int, PastVerdict]:
    """What reviewers decided, by task: of these tasks, or of all the agent's."""
    found_rows = Escalation.objects.all()
    if task_ids is not None:
        found_rows = found_rows.filter(task_id__in=list(task_ids))
    if agent is not None:
        found_rows = found_rows.filter(agent=agent)
    rows = (
        found_rows.filter(
            status__in=(Escalation.Status.APPROVED, Escalation.Status.CORRECTED, Escalation.Status.REJECTED)
        )
        .order_by("created_at", "pk")
        .values_list("task_id", "status", "output", "corrected_output")
    )
    found: dict[int, dict] = {}
    for task_id, status, output, corrected in rows:
        seen = found.setdefault(task_id, {"statuses": set(), "rejected": set(), "reference": ""})
        seen["statuses"].add(status)
        if status == Escalation.Status.REJECTED:
            seen["rejected"].add(_normal(output))
        elif status == Escalation.Status.CORRECTED:
            seen["reference"] = _normal(corrected or output)
        else:
            seen["reference"] = _normal(output)
    verdicts = {}
    for task_id, seen in found.items():
        statuses = seen["statuses"]
        verdict = (
            "rejected"
            if Escalation.Status.REJECTED in statuses
            else "edited"
            if Escalation.Status.CORRECTED in statuses
            else "approved"
        )
        verdicts[task_id] = PastVerdict(
            verdict=verdict, rejected=frozenset(seen["rejected"]), reference=seen["reference"]
        )
    return verdicts


# --- drawing the sample ----------------------------------------------------------------------


@dataclass(frozen=True)
class PoolTask:
    task_id: int
    stratum: str
    outcome: str


def _band(length: int) -> str:
    for limit, name in BANDS:
        if length < limit:
            return name
    return "long"


def replay_pool(agent: Agent) -> list[PoolTask]:
    """The agent's past tasks a replay may draw from (its most recent ones with an
    outcome: done, or judged by a reviewer), each with its stratum: capability,
    input length band and past outcome (passed, approved, edited, rejected).

    Tasks that failed every attempt (their model calls failed) are left out:
    a provider's failure says nothing of the prompt, and with a deterministic
    model the old prompt would fail again where the new one draws afresh."""
    judged = Escalation.objects.filter(
        agent=agent,
        status__in=(Escalation.Status.APPROVED, Escalation.Status.CORRECTED, Escalation.Status.REJECTED),
    ).values("task_id")
    rows = list(
        Task.objects.filter(agent=agent)
        .filter(Q(status=Task.Status.DONE) | Q(pk__in=judged))
        .annotate(input_length=Length("input"))
        .order_by("-pk")
        .values_list("pk", "capability", "input_length")[:POOL]
    )
    if not rows:
        return []
    oldest = rows[-1][0]
    # By agent and id rather than a list of ids: a pool of 20,000 would pass
    # SQLite's limit on a query's parameters.
    verdicts = past_verdicts(agent=agent)
    first_inspections = dict(
        Inspection.objects.filter(agent=agent, attempt=1, task_id__gte=oldest)
        .order_by("-pk")
        .values_list("task_id", "passed")
    )
    pool = []
    for pk, capability, length in rows:
        past = verdicts.get(pk)
        if past is not None:
            outcome = past.verdict
        else:
            # Done without a reviewer: its inspection passed, or a defect was
            # marked on its card (a board without a Review column).
            outcome = "passed" if first_inspections.get(pk, True) else "defect"
        pool.append(PoolTask(pk, f"{capability or 'any'} · {_band(length or 0)} · {outcome}", outcome))
    return pool


def draw_sample(pool: Sequence[PoolTask], size: int, rng: random.Random) -> list[PoolTask]:
    """A stratified sample of ``size`` tasks: each stratum gets its share of the
    pool (largest remainders), at least one when the size allows, drawn at random
    within it. The sample keeps the pool's mix of capabilities, lengths and
    outcomes, so its pass rates estimate the line's."""
    size = min(size, len(pool))
    strata: dict[str, list[PoolTask]] = {}
    for task in pool:
        strata.setdefault(task.stratum, []).append(task)
    names = sorted(strata)
    quotas = {name: size * len(strata[name]) / len(pool) for name in names}
    counts = {name: int(quotas[name]) for name in names}
    if size >= len(names):
        for name in names:
            counts[name] = max(counts[name], 1)
    left = size - sum(counts.values())
    by_remainder = sorted(names, key=lambda n: (counts[n] - quotas[n], n))
    index = 0
    while left > 0 and by_remainder:
        name = by_remainder[index % len(by_remainder)]
        if counts[name] < len(strata[name]):
            counts[name] += 1
            left -= 1
        index += 1
    while left < 0:  # the minimum of one took more than the size: take back from the largest
        name = max(names, key=lambda n: counts[n])
        counts[name] -= 1
        left += 1
    sample = []
    for name in names:
        sample.extend(rng.sample(strata[name], counts[name]))
    rng.shuffle(sample)
    return sample


# --- starting -------------------------------------------------------------------------------


def _baseline(agent: Agent, candidate: PromptVersion) -> PromptVersion:
    if candidate.agent_id != agent.pk:
        raise ValidationError({"candidate": [f"v{candidate.number} is not a version of {agent.name}."]})
    baseline = ensure_version(agent)
    if candidate.pk == baseline.pk:
        raise ValidationError(
            {
                "candidate": [
                    f"v{candidate.number} is the active version: there is nothing to compare it with."
                ]
            }
        )
    return baseline


def _create(replay: Replay) -> Replay:
    try:
        with transaction.atomic():
            replay.save()
    except IntegrityError:
        existing = (
            Replay.objects.filter(candidate=replay.candidate, kind=replay.kind, state__in=Replay.OPEN)
            .select_related("candidate")
            .first()
        )
        if existing is None:
            raise
        raise ReplayOpen(existing) from None
    return replay


def replay_start(
    *,
    agent: Agent,
    candidate: PromptVersion,
    sample: int | None = None,
    user: User | None = None,
    proposal: ChangeProposal | None = None,
    budget_usd: Decimal | None = None,
    seed: int | None = None,
    enqueue: bool = True,
) -> Replay:
    """Queue a replay of ``candidate`` against the agent's active version on a
    stratified sample of its past tasks (``sample`` of them, or as many as the
    power calculation asks, at most the tasks there are). Raises ValidationError
    (bad input, nothing to replay) or ReplayOpen."""
    if sample is not None and sample < 1:
        raise ValidationError({"sample": ["Replay at least one task."]})
    baseline = _baseline(agent, candidate)
    gates = AgentGates.of(agent)
    pool = replay_pool(agent)
    if not pool:
        raise ValidationError({"sample": [f"{agent.name} has no finished tasks to replay yet."]})
    planned = paired.replay_sample_size()
    wanted = sample or gates.replay_sample or planned
    size = min(wanted, len(pool))
    seed = seed if seed is not None else secrets.randbelow(2**31)
    drawn = draw_sample(pool, size, random.Random(seed))
    plan = {
        "pool": len(pool),
        "planned": planned,
        "wanted": wanted,
        "guardrails": gates.guardrails(),
        "size": size,
        "margin": paired.DEFAULT_MARGIN,
        "alpha": paired.DEFAULT_ALPHA,
        "target_power": paired.DEFAULT_POWER,
        "assumed_discordance": paired.DEFAULT_DISCORDANCE,
        "power": round(paired.achieved_power(size, paired.DEFAULT_DISCORDANCE), 4),
        "strata": dict(sorted(Counter(t.stratum for t in drawn).items())),
        "outcomes": dict(sorted(Counter(t.outcome for t in drawn).items())),
    }
    replay = Replay(
        agent=agent,
        kind=Kind.REPLAY,
        baseline=baseline,
        candidate=candidate,
        proposal=proposal,
        total=size,
        plan=plan,
        seed=seed,
        budget_usd=budget_usd if budget_usd is not None else gates.replay_budget_usd,
    )
    items = (
        ReplayItem(task_id=t.task_id, position=i, stratum=t.stratum, past_verdict=t.outcome)
        for i, t in enumerate(drawn)
    )
    said = (
        f"replay of v{candidate.number} against v{baseline.number} on {size} past tasks "
        f"({plan['power']:.0%} power to show it no worse by {paired.DEFAULT_MARGIN:.0%})"
    )
    return _queue(replay, items, user=user, reason=said, enqueue=enqueue)


def _queue(
    replay: Replay, items: Iterable[ReplayItem], *, user: User | None, reason: str, enqueue: bool = True
) -> Replay:
    """Write a replay (or a probe run) and its items, audit its start, and send
    its first step to the workers after commit. Raises ReplayOpen."""
    replay.created_by = user if user is not None and user.is_authenticated else None
    with transaction.atomic():
        _create(replay)
        rows = list(items)
        for item in rows:
            item.replay = replay
        ReplayItem.objects.bulk_create(rows)
        audit(
            replay.agent,
            Action.REPLAY_STARTED,
            user=user,
            reason=reason,
            proposal=replay.proposal,
            version=replay.candidate,
            replay=replay,
            stats_json=replay.plan,
        )
        if enqueue:
            transaction.on_commit(partial(enqueue_step, replay.pk))
    return replay


def _json_output(agent: Agent) -> bool:
    specs = jidoka.checks_for(agent) or ()
    return any(spec.kind == "json" for spec in specs)


def probes_start(
    *,
    agent: Agent,
    candidate: PromptVersion,
    user: User | None = None,
    proposal: ChangeProposal | None = None,
    seed: int | None = None,
) -> Replay:
    """Queue the adversarial probes: built from the agent's own recent inputs,
    deterministically from ``seed``, run through both versions."""
    baseline = _baseline(agent, candidate)
    gates = AgentGates.of(agent)
    sources = list(
        Task.objects.filter(agent=agent).exclude(input="").order_by("-pk").values_list("pk", "input")[:200]
    )
    if not sources:
        raise ValidationError({"candidate": [f"{agent.name} has no task inputs to build probes from yet."]})
    seed = seed if seed is not None else secrets.randbelow(2**31)
    json_output = _json_output(agent)
    built = probes.build_probes(
        sources, seed=seed, per_family=gates.probes_per_family, json_output=json_output
    )
    plan = {
        "sources": len(sources),
        "probes": len(built),
        "per_family": gates.probes_per_family,
        "json_output": json_output,
        "margin": gates.probe_margin,
        "families": dict(sorted(Counter(p.family for p in built).items())),
    }
    replay = Replay(
        agent=agent,
        kind=Kind.PROBE,
        baseline=baseline,
        candidate=candidate,
        proposal=proposal,
        total=len(built),
        plan=plan,
        seed=seed,
        budget_usd=gates.replay_budget_usd,
    )
    items = (
        ReplayItem(
            task_id=p.source,
            position=i,
            stratum=f"{p.family} · {p.mutator}",
            probe_input=p.text,
            probe={"family": p.family, "mutator": p.mutator, "canary": p.canary, "bait": list(p.bait)},
        )
        for i, p in enumerate(built)
    )
    said = f"{len(built)} adversarial probes of v{candidate.number} against v{baseline.number}"
    return _queue(replay, items, user=user, reason=said)


def shadow_start(
    *,
    agent: Agent,
    candidate: PromptVersion,
    user: User | None = None,
    proposal: ChangeProposal | None = None,
) -> Replay:
    """Start mirroring a share of the agent's live tasks to the candidate, until
    the planned pairs are in or the time limit passes."""
    baseline = _baseline(agent, candidate)
    gates = AgentGates.of(agent)
    now = timezone.now()
    plan = {
        "share": gates.shadow_share,
        "size": gates.shadow_size,
        "guardrails": gates.guardrails(),
        "hours": gates.shadow_hours,
        "margin": paired.DEFAULT_MARGIN,
        "power": round(paired.achieved_power(gates.shadow_size, paired.DEFAULT_DISCORDANCE), 4),
    }
    with transaction.atomic():
        replay = _create(
            Replay(
                agent=agent,
                kind=Kind.SHADOW,
                baseline=baseline,
                candidate=candidate,
                proposal=proposal,
                state=State.RUNNING,
                total=gates.shadow_size,
                share=gates.shadow_share,
                deadline=now + timedelta(hours=gates.shadow_hours),
                salt=secrets.token_hex(8),
                plan=plan,
                budget_usd=gates.shadow_budget_usd,
                started_at=now,
                created_by=user if user is not None and user.is_authenticated else None,
            )
        )
        audit(
            agent,
            Action.REPLAY_STARTED,
            user=user,
            reason=(
                f"shadow of v{candidate.number}: {gates.shadow_share:.0%} of {agent.name}'s live tasks "
                f"also run through it, for {gates.shadow_size} pairs or {gates.shadow_hours:g} hours"
            ),
            proposal=proposal,
            version=candidate,
            replay=replay,
            stats_json=plan,
        )
        # This process's line mirrors it at once (the others within seconds).
        transaction.on_commit(experiment_line.genchi.clear)
    return replay


def replay_cancel(*, replay: Replay, user: User | None, note: str = "") -> Replay:
    """Stop a replay: no more items run; what is done stays, undecided."""
    with transaction.atomic():
        replay = (
            Replay.objects.select_for_update(of=("self",))
            .select_related("agent", "candidate")
            .get(pk=replay.pk)
        )
        if not replay.is_open:
            raise ValidationError(
                f"This {replay.get_kind_display().lower()} has already ended ({replay.state})."
            )
        replay.state = State.CANCELLED
        replay.finished_at = timezone.now()
        replay.reason = note or "cancelled"
        replay.lease_until = None
        replay.save(update_fields=["state", "finished_at", "reason", "lease_until"])
        audit(
            replay.agent,
            Action.REPLAY_CANCELLED,
            user=user,
            reason=note or f"{replay.get_kind_display()} cancelled after {replay.done} of {replay.total}",
            proposal=replay.proposal,
            version=replay.candidate,
            replay=replay,
        )
        transaction.on_commit(partial(review_broadcast.replay_changed, replay.pk))
    return replay


# --- working through a replay ------------------------------------------------------------------


def enqueue_step(replay_id: int) -> None:
    from celery import current_app

    current_app.send_task("experiments.tasks.replay_step", args=(replay_id,))


def _take_lease(replay_id: int) -> bool:
    """Hold the replay's lease (compare and set): one step at a time works on it."""
    now = timezone.now()
    taken = Replay.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        pk=replay_id,
        state__in=Replay.OPEN,
        kind__in=(Kind.REPLAY, Kind.PROBE),
    ).update(lease_until=now + timedelta(seconds=settings.KAIZEN_REPLAY_LEASE_SECONDS), state=State.RUNNING)
    if not taken:
        return False
    Replay.objects.filter(pk=replay_id, started_at__isnull=True).update(started_at=now)
    return True


@dataclass
class _Step:
    replay: Replay
    agent: Agent
    json_output: bool
    tasks: dict[int, Task] = field(default_factory=dict)


def replay_step(replay_id: int, *, seconds: float | None = None, hand_on: bool = True) -> str:
    """Work through a replay's items for up to ``seconds``; then enqueue the next
    step (unless not ``hand_on``: the caller steps again), or finish it. Returns
    what happened: busy (another step holds it), ended, more, finished or capped."""
    if not _take_lease(replay_id):
        still_open = Replay.objects.filter(pk=replay_id, state__in=Replay.OPEN).exists()
        return "busy" if still_open else "ended"
    replay = Replay.objects.select_related("agent", "baseline", "candidate").get(pk=replay_id)
    step = _Step(replay=replay, agent=replay.agent, json_output=_json_output(replay.agent))
    seconds = settings.KAIZEN_REPLAY_STEP_SECONDS if seconds is None else seconds
    began = time.monotonic()
    next_at = began
    while True:
        replay.refresh_from_db(fields=["state", "spent_usd", "done", "budget_usd"])
        if replay.state != State.RUNNING:
            return "ended"
        if replay.spent_usd >= replay.budget_usd:
            replay_finish(replay_id, capped=True)
            return "capped"
        items = list(
            ReplayItem.objects.filter(replay_id=replay_id, state=ReplayItem.State.PENDING).order_by(
                "position"
            )[:CHUNK]
        )
        if not items:
            replay_finish(replay_id)
            return "finished"
        _run_chunk(step, items)
        # Paced: a replay takes a steady small share of the workers, never a
        # burst that would hold up the live line (KAIZEN_REPLAY_RATE items a
        # second), and yields more while live runs are in flight in this process.
        rate = settings.KAIZEN_REPLAY_RATE
        if lease_keeper.busy():
            rate *= settings.KAIZEN_REPLAY_BUSY_SHARE
        next_at = max(next_at, time.monotonic() - 1.0) + len(items) / rate
        ahead = next_at - time.monotonic()
        if ahead > 0:
            time.sleep(min(ahead, max(0.0, seconds - (time.monotonic() - began))))
        if time.monotonic() - began >= seconds:
            Replay.objects.filter(pk=replay_id).update(lease_until=None)
            if hand_on:
                enqueue_step(replay_id)
            return "more"
        Replay.objects.filter(pk=replay_id).update(
            lease_until=timezone.now() + timedelta(seconds=settings.KAIZEN_REPLAY_LEASE_SECONDS)
        )


def _run_chunk(step: _Step, items: list[ReplayItem]) -> None:
    missing = {item.task_id for item in items} - set(step.tasks)
    if missing:
        step.tasks.update(Task.objects.select_related("agent").in_bulk(missing))
    pasts = past_verdicts({item.task_id for item in items}) if step.replay.kind == Kind.REPLAY else {}
    jobs = []
    for item in items:
        task = step.tasks.get(item.task_id)
        if task is None:
            continue
        text = item.probe_input if step.replay.kind == Kind.PROBE else task.input
        for version in (step.replay.baseline, step.replay.candidate):
            jobs.append((item, version, task, text))
    if connection.in_atomic_block:
        # Inside a caller's transaction (a test, a shell): the arms run here,
        # where its writes are seen.
        results = [run_arm(step.agent, version, task, text) for _item, version, task, text in jobs]
    else:
        workers = max(1, min(settings.KAIZEN_REPLAY_CONCURRENCY, len(jobs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replay") as pool:
            results = list(pool.map(_arm_and_close, [(step.agent, *job[1:]) for job in jobs]))
    arms: dict[int, list[ArmResult]] = {}
    for (item, _version, _task, _text), result in zip(jobs, results, strict=True):
        arms.setdefault(item.pk, []).append(result)
    _record(step, items, arms, pasts)


def _arm_and_close(job: tuple[Agent, PromptVersion, Task, str]) -> ArmResult:
    try:
        return run_arm(*job)
    finally:
        # This thread ends with the chunk: hand its connection back.
        connection.close()


def _record(step: _Step, items: list[ReplayItem], arms: dict[int, list[ArmResult]], pasts) -> None:
    replay = step.replay
    now = timezone.now()
    rows: list[ModelCall] = []
    spent = Decimal(0)
    finished = []
    for item in items:
        pair = arms.get(item.pk)
        task = step.tasks.get(item.task_id)
        if pair is None or task is None or any(arm.deferred for arm in pair):
            # The task is gone, or a model is out of service: not a fair pair.
            item.state = ReplayItem.State.SKIPPED
            item.baseline_reason = (
                "; ".join(arm.reason for arm in pair or () if arm.deferred) or "task deleted"
            )
            item.finished_at = now
            finished.append(item)
            continue
        baseline, candidate = pair
        for version, arm in ((replay.baseline, baseline), (replay.candidate, candidate)):
            rows.extend(_ledger(task, version, arm, replay.purpose))
            spent += arm.cost
        if replay.kind == Kind.PROBE:
            _judge_probe(item, baseline, candidate, step.json_output)
        else:
            past = pasts.get(item.task_id, PastVerdict())
            item.baseline_pass, item.baseline_reason = past.judge(baseline)
            item.candidate_pass, item.candidate_reason = past.judge(candidate)
        _fill(item, baseline, candidate)
        item.state = ReplayItem.State.DONE
        item.finished_at = now
        finished.append(item)
    with transaction.atomic():
        # Only items still pending are written: a step that lost its lease and
        # finished late adds nothing twice.
        written = []
        for item in finished:
            if ReplayItem.objects.filter(pk=item.pk, state=ReplayItem.State.PENDING).update(
                **{name: getattr(item, name) for name in _ITEM_FIELDS}
            ):
                written.append(item)
        if not written:
            return
        kept = {item.task_id for item in written}
        ModelCall.objects.bulk_create([row for row in rows if row.task_id in kept])
        Replay.objects.filter(pk=replay.pk).update(
            done=F("done") + sum(1 for item in written if item.state == ReplayItem.State.DONE),
            spent_usd=F("spent_usd") + spent,
        )
        transaction.on_commit(partial(review_broadcast.replay_changed, replay.pk))


_ITEM_FIELDS = (
    "state",
    "baseline_pass",
    "candidate_pass",
    "baseline_output",
    "candidate_output",
    "baseline_reason",
    "candidate_reason",
    "baseline_cost",
    "candidate_cost",
    "baseline_latency_ms",
    "candidate_latency_ms",
    "baseline_tokens",
    "candidate_tokens",
    "finished_at",
)


def _fill(item: ReplayItem, baseline: ArmResult, candidate: ArmResult) -> None:
    item.baseline_output = baseline.output[:OUTPUT_KEPT]
    item.candidate_output = candidate.output[:OUTPUT_KEPT]
    item.baseline_cost, item.candidate_cost = baseline.cost, candidate.cost
    item.baseline_latency_ms, item.candidate_latency_ms = baseline.latency_ms, candidate.latency_ms
    item.baseline_tokens, item.candidate_tokens = baseline.tokens, candidate.tokens


def _judge_probe(item: ReplayItem, baseline: ArmResult, candidate: ArmResult, json_output: bool) -> None:
    """A probe item's pass is "not hit": the agent's checks held and the family's
    own detector found nothing."""
    probe = probes.Probe(
        family=item.probe.get("family", ""),
        mutator=item.probe.get("mutator", ""),
        source=item.task_id,
        text=item.probe_input,
        canary=item.probe.get("canary", ""),
        bait=tuple(item.probe.get("bait", ())),
    )
    for side, arm in (("baseline", baseline), ("candidate", candidate)):
        hit = probes.detect(probe, arm.output, inspection_passed=arm.passed, json_output=json_output)
        setattr(item, f"{side}_pass", not hit)
        setattr(item, f"{side}_reason", hit)


def _ledger(task: Task, version: PromptVersion, arm: ArmResult, purpose: str) -> list[ModelCall]:
    if not arm.calls:
        return []
    view = copy.copy(task)
    view.prompt_version = version.number
    rows = ledger_rows(view, arm.calls, attempt=1)
    for row in rows:
        row.purpose = purpose
    return rows


# --- concluding --------------------------------------------------------------------------------


def pairs_of(replay: Replay) -> list[paired.Pair]:
    rows = ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).values_list(
        "baseline_pass",
        "candidate_pass",
        "baseline_cost",
        "candidate_cost",
        "baseline_latency_ms",
        "candidate_latency_ms",
        "baseline_tokens",
        "candidate_tokens",
    )
    return [
        paired.Pair(
            baseline_pass=bool(bp),
            candidate_pass=bool(cp),
            baseline_cost=float(bc),
            candidate_cost=float(cc),
            baseline_latency_ms=bl,
            candidate_latency_ms=cl,
            baseline_tokens=bt,
            candidate_tokens=ct,
        )
        for bp, cp, bc, cc, bl, cl, bt, ct in rows
    ]


def conclusion(replay: Replay) -> tuple[dict, str, str]:
    """(statistics, verdict, reason) from the items done."""
    if replay.kind == Kind.PROBE:
        rows = ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).values_list(
            "probe", "baseline_pass", "candidate_pass"
        )
        rates = probes.hit_rates((probe.get("family", ""), not bp, not cp) for probe, bp, cp in rows)
        margin = float(replay.plan.get("margin", 0.05))
        passed, reasons = probes.probe_gate(rates, margin=margin)
        if not rates:
            passed, reasons = False, ["no probe could be run"]
        return {"families": rates, "margin": margin}, "pass" if passed else "fail", "; ".join(reasons)
    # The limits the run was started with (in its plan), so a policy changed
    # meanwhile does not move the goalposts.
    guardrails = replay.plan.get("guardrails") or AgentGates.of(replay.agent).guardrails()
    result = paired.replay_stats(pairs_of(replay), seed=replay.seed, guardrails=guardrails)
    figures = result.as_json()
    reasons = list(result.reasons)
    if replay.kind == Kind.SHADOW:
        figures["live_latency_ms"] = _live_latency(replay)
        # Its pairs are live tasks mirrored, not past ones replayed.
        reasons = [reason.replace("replayed tasks", "mirrored live tasks") for reason in reasons]
        figures["reasons"] = reasons
    return figures, result.verdict, "; ".join(reasons)


def _live_latency(replay: Replay) -> dict:
    rows = list(
        ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE).values_list(
            "baseline_latency_ms", "candidate_latency_ms"
        )
    )
    if not rows:
        return {}
    baseline = sorted(r[0] for r in rows)
    candidate = sorted(r[1] for r in rows)
    middle = len(rows) // 2
    return {"baseline_median": baseline[middle], "candidate_median": candidate[middle]}


def replay_finish(replay_id: int, *, capped: bool = False, expired: bool = False) -> Replay | None:
    """Decide a replay on the items done: the paired statistics (or the probes'
    hit rates), its verdict, in the audit log. Stopped by its cost cap or time
    limit, it is decided on what it has: the test is valid at any size (stopping
    did not depend on the outcome), only its power is lower."""
    with transaction.atomic():
        replay = (
            Replay.objects.select_for_update(of=("self",))
            .select_related("agent", "candidate", "baseline", "proposal")
            .get(pk=replay_id)
        )
        if not replay.is_open:
            return None
        figures, verdict, reason = conclusion(replay)
        done = replay.done
        if capped:
            reason = (
                f"stopped by its cost cap (${replay.budget_usd}) after {done} of {replay.total}; {reason}"
            )
        elif expired:
            reason = f"stopped at its time limit after {done} of {replay.total}; {reason}"
        figures["stopped"] = "cost cap" if capped else "time limit" if expired else ""
        replay.stats, replay.verdict, replay.reason = figures, verdict, reason
        replay.state = State.DONE
        replay.finished_at = timezone.now()
        replay.lease_until = None
        replay.save(update_fields=["stats", "verdict", "reason", "state", "finished_at", "lease_until"])
        audit(
            replay.agent,
            Action.REPLAY_FINISHED,
            reason=f"{replay.get_kind_display()} of v{replay.candidate.number}: {verdict}. {reason}",
            proposal=replay.proposal,
            version=replay.candidate,
            replay=replay,
            stats_json=figures,
        )
        transaction.on_commit(partial(review_broadcast.replay_changed, replay.pk))
        if replay.kind == Kind.SHADOW:
            transaction.on_commit(experiment_line.genchi.clear)
        if replay.proposal_id is not None:
            transaction.on_commit(partial(enqueue_gates, replay.proposal_id))
    return replay


def enqueue_gates(proposal_id: int) -> None:
    from celery import current_app

    current_app.send_task("experiments.tasks.advance_gates", args=(proposal_id,))


def replays_resume() -> int:
    """Celery beat: every replay whose step stopped (its lease ran out: a worker
    killed or restarted) goes on with the next worker; every shadow that reached
    its size or time limit is decided. Returns how many were touched."""
    now = timezone.now()
    touched = 0
    stranded = Replay.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        kind__in=(Kind.REPLAY, Kind.PROBE),
        state__in=Replay.OPEN,
    ).values_list("pk", flat=True)
    for pk in stranded:
        enqueue_step(pk)
        touched += 1
    for shadow in Replay.objects.filter(kind=Kind.SHADOW, state=State.RUNNING):
        if shadow.done >= shadow.total:
            replay_finish(shadow.pk)
        elif shadow.deadline is not None and shadow.deadline <= now:
            replay_finish(shadow.pk, expired=True)
        elif shadow.spent_usd >= shadow.budget_usd:
            replay_finish(shadow.pk, capped=True)
        else:
            continue
        touched += 1
    return touched


# --- the shadow: mirrored live work ---------------------------------------------------------------


def shadow_run(replay_id: int, task_id: int) -> str:
    """Run the candidate on a live task that has just completed (the line chose it
    for the shadow) and pair it with the live outcome: the live run's inspection,
    cost, latency and tokens. The candidate's output is recorded, never shipped,
    never escalated. Returns what happened."""
    try:
        replay = Replay.objects.select_related("agent", "candidate", "baseline").get(pk=replay_id)
    except Replay.DoesNotExist:
        return "gone"
    if replay.state != State.RUNNING or replay.kind != Kind.SHADOW:
        return "ended"
    if replay.done >= replay.total or replay.spent_usd >= replay.budget_usd:
        return "full"
    task = Task.objects.select_related("agent").filter(pk=task_id).first()
    if task is None or task.agent_id != replay.agent_id:
        return "gone"
    live = _live_outcome(task)
    if live is None:
        return "unjudged"
    candidate = run_arm(replay.agent, replay.candidate, task, task.input)
    if candidate.deferred:
        return "deferred"
    baseline_pass, output, reason, cost, latency, tokens = live
    item = ReplayItem(
        replay=replay,
        task=task,
        stratum=task.capability or "any",
        state=ReplayItem.State.DONE,
        baseline_pass=baseline_pass,
        baseline_output=output[:OUTPUT_KEPT],
        baseline_reason=reason,
        baseline_cost=cost,
        baseline_latency_ms=latency,
        baseline_tokens=tokens,
        candidate_pass=candidate.passed,
        candidate_output=candidate.output[:OUTPUT_KEPT],
        candidate_reason=candidate.reason,
        candidate_cost=candidate.cost,
        candidate_latency_ms=candidate.latency_ms,
        candidate_tokens=candidate.tokens,
        finished_at=timezone.now(),
    )
    with transaction.atomic():
        locked = Replay.objects.select_for_update(of=("self",)).get(pk=replay_id)
        if locked.state != State.RUNNING or locked.done >= locked.total:
            return "full"
        if ReplayItem.objects.filter(replay_id=replay_id, task_id=task_id).exists():
            return "seen"
        item.position = locked.done
        item.save()
        ModelCall.objects.bulk_create(_ledger(task, replay.candidate, candidate, replay.purpose))
        Replay.objects.filter(pk=replay_id).update(
            done=F("done") + 1, spent_usd=F("spent_usd") + candidate.cost
        )
        transaction.on_commit(partial(review_broadcast.replay_changed, replay_id))
    return "paired"


def _live_outcome(task: Task) -> tuple[bool, str, str, Decimal, float, int] | None:
    """The live run's outcome for the pair: its first inspection (on the version
    the shadow compares with), and the calls of that attempt."""
    inspection = Inspection.objects.filter(task_id=task.pk).order_by("pk").first()
    if inspection is None:
        return None
    calls = list(
        ModelCall.objects.filter(task_id=task.pk, attempt=inspection.attempt).values_list(
            "cost", "latency_ms", "tokens_in", "tokens_out"
        )
    )
    failures = "; ".join(f.get("reason", "") for f in inspection.failures or [])
    return (
        inspection.passed,
        task.output,
        failures,
        sum((c[0] for c in calls), Decimal(0)),
        round(sum(c[1] for c in calls), 3),
        sum(c[2] + c[3] for c in calls),
    )
