"""Kaizen: how an agent's prompt evolves. Immutable prompt versions, the changes
proposed to them, the experiments that try a change on live traffic, their
samples and looks, and the append-only audit log of every step.

State changes go through ``experiments.services``; these classes hold data and
small read-only helpers only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from boards.agents.spec import ConfigError, cascade_json, parse_cascade, parse_parameters, parse_variables
from boards.models import Agent, Task
from experiments import plans


class PromptVersion(models.Model):
    """What an agent asks its models, frozen: the prompt template, its variables,
    the generation parameters and the cascade (or the custom implementation).
    Numbered per agent; the agent's ``prompt_version`` is the active one's number,
    and every task records the number it ran with."""

    class Source(models.TextChoices):
        INITIAL = "initial", "First version"
        PERSON = "person", "A person"
        KAIZEN = "kaizen", "The kaizen loop"
        CONFIG = "config", "A config file or the admin"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="prompt_versions")
    number = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    prompt_template = models.TextField()
    prompt_variables = models.JSONField(default=list, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    cascade = models.JSONField(default=list)
    implementation = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    rationale = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # Not columns: what the agent page (boards.agents.views) attaches to the
    # versions it lists.
    is_active: bool
    candidate_of: ChangeProposal | None
    can_roll_back: bool

    class Meta:
        ordering = ["agent", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="prompt_version_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.agent.name} v{self.number}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None and not kwargs.pop("force_history", False):
            raise PermissionDenied("A prompt version is immutable: propose a new one instead.")
        super().save(*args, **kwargs)

    @property
    def author_label(self) -> str:
        if self.source == self.Source.KAIZEN:
            return "the kaizen loop"
        return self.author.get_username() if self.author is not None else self.get_source_display()

    # What makes a version, the one list of it: what does the work and what the
    # model is asked. A change to any of these is a new version, whose results are
    # not taken for the old one's (an agent saved, a proposal, a config file).
    FIELDS = ("prompt_template", "prompt_variables", "parameters", "cascade", "implementation")

    def fields(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


def normal_prompt_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A version's fields (PromptVersion.FIELDS, from an agent, a version or a
    proposal) in the normal form a version stores, so that versions compare by
    meaning: the variables, parameters and cascade parsed and written out again
    (a cascade's prices as decimal strings, its defaults filled in), no
    implementation as "". A field that does not parse is kept as it is: a
    malformed row is recorded as what ran."""
    normal = {name: fields.get(name) for name in PromptVersion.FIELDS}
    for name, parse in (
        ("prompt_variables", parse_variables),
        ("parameters", parse_parameters),
        ("cascade", lambda value: cascade_json(parse_cascade(value))),
    ):
        try:
            normal[name] = parse(normal[name])
        except ConfigError:
            pass
    normal["implementation"] = normal["implementation"] or ""
    return normal


class ChangeProposal(models.Model):
    """A change to an agent's prompt, proposed by a person or by the kaizen loop:
    the candidate version beside the version it changes, why, and the evidence."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        # Being seen on real work before any live traffic: its gates (replay,
        # adversarial probes, shadow) are running, in that order.
        VALIDATING = "validating", "In its gates"
        REJECTED = "rejected", "Rejected"
        EXPERIMENTING = "experimenting", "In an experiment"
        PROMOTED = "promoted", "Promoted"
        ROLLED_BACK = "rolled_back", "Rolled back"
        STOPPED = "stopped", "Stopped"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="change_proposals")
    base_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    candidate = models.OneToOneField(PromptVersion, on_delete=models.PROTECT, related_name="proposal")
    source = models.CharField(max_length=10, choices=PromptVersion.Source.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    rationale = models.TextField()
    # What the proposal is based on (counts, examples), for reviewers to judge it.
    evidence = models.JSONField(default=dict, blank=True)
    major = models.BooleanField(help_text="Needs approval before any traffic sees it.")
    # Why it is major or minor, in words.
    classification = models.TextField(blank=True)
    status = models.CharField(max_length=15, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    # Not columns: what experiments.selectors.proposal_details_get and the agent
    # page attach to the proposals they show.
    diff_rows: list[tuple[str, str]]
    evidence_items: list[dict[str, Any]]
    author_label: str
    active_moved: bool
    url: str
    state: str
    gate_list: list[Gate]

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [("approve_change", "Can approve, promote and roll back prompt changes")]

    def __str__(self) -> str:
        return f"{self.agent.name}: v{self.base_version.number} → v{self.candidate.number} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("experiments-proposal", kwargs={"pk": self.pk})


class Experiment(models.Model):
    """A candidate version tried on live traffic against the active one: first a
    canary (a small share, looking only for harm), then, once a person approves
    the canary's result, an efficacy stage at 50/50 that decides."""

    class Stage(models.TextChoices):
        CANARY = "canary", "Canary"
        EFFICACY = "efficacy", "Efficacy"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        # The canary reached its size without harm: a person may advance it.
        CANARY_PASSED = "canary_passed", "Canary passed: waiting to advance"
        # The efficacy test says promote: a person may promote it.
        PROMOTE_READY = "promote_ready", "Better: waiting to promote"
        PAUSED = "paused", "Paused (sample-ratio mismatch)"
        PROMOTED = "promoted", "Promoted"
        ROLLED_BACK = "rolled_back", "Rolled back"
        FUTILE = "futile", "Stopped for futility"

    ACTIVE = (Status.RUNNING, Status.CANARY_PASSED, Status.PROMOTE_READY, Status.PAUSED)
    # Statuses in which the treatment still gets traffic.
    ASSIGNING = (Status.RUNNING,)

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="experiments")
    proposal = models.OneToOneField(ChangeProposal, on_delete=models.PROTECT, related_name="experiment")
    control = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    treatment = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    stage = models.CharField(max_length=10, choices=Stage.choices, default=Stage.CANARY)
    status = models.CharField(max_length=15, choices=Status.choices, default=Status.RUNNING)
    canary_share = models.FloatField(default=0.05)
    efficacy_share = models.FloatField(default=0.5)
    # Treatment samples the canary needs before its result can be approved.
    canary_size = models.PositiveIntegerField(default=200)
    max_n = models.PositiveIntegerField(default=2000, help_text="Planned samples per arm (efficacy).")
    # Hashed with the task's id to assign arms: sticky, deterministic, and
    # independent between experiments.
    salt = models.CharField(max_length=32)
    started_at = models.DateTimeField(auto_now_add=True)
    stage_started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.TextField(blank=True)

    # Not columns: what experiments.selectors.experiment_details_get and the
    # agent page attach to the experiments they show.
    counts: dict[str, dict[str, Any]]
    latest_look_id: int | None  # an annotation of experiments.selectors
    latest_look: ExperimentLook | None
    next_look_at: datetime | None
    summary: str
    reason_note: str
    chart: str | None
    url: str

    class Meta:
        ordering = ["-started_at", "-pk"]
        constraints = [
            # One experiment per agent at a time.
            models.UniqueConstraint(
                fields=["agent"],
                condition=Q(status__in=["running", "canary_passed", "promote_ready", "paused"]),
                name="experiment_one_active_per_agent",
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent.name}: v{self.control.number} vs v{self.treatment.number} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("experiments-detail", kwargs={"pk": self.pk})

    @property
    def share(self) -> float:
        return self.canary_share if self.stage == self.Stage.CANARY else self.efficacy_share

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class ExperimentSample(models.Model):
    """One task's outcome in an experiment: success is an output that passed
    inspection (and so was not rejected by a reviewer), with its cost and latency."""

    class Arm(models.TextChoices):
        CONTROL = "control", "Control"
        TREATMENT = "treatment", "Treatment"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="samples")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    stage = models.CharField(max_length=10, choices=Experiment.Stage.choices)
    arm = models.CharField(max_length=10, choices=Arm.choices)
    success = models.BooleanField()
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    latency_ms = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["experiment", "stage", "task"], name="sample_once_per_stage"),
        ]
        indexes = [models.Index(fields=["experiment", "stage", "arm"], name="sample_arm")]

    def __str__(self) -> str:
        return f"{self.arm} {'success' if self.success else 'failure'} (task {self.task_id})"


class ExperimentLook(models.Model):
    """One evaluation of an experiment (every few minutes): the counts and the
    statistics at that moment, and what was decided."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="looks")
    stage = models.CharField(max_length=10, choices=Experiment.Stage.choices)
    decision = models.CharField(max_length=20)
    stats = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    # Not columns: the figures experiments.selectors shows with a look.
    decision_label: str
    diff_points: float
    ci_low_points: float
    ci_high_points: float

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"look at {self.created_at:%Y-%m-%d %H:%M}: {self.decision}"


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionDenied("The audit log is append-only.")

    def delete(self):
        raise PermissionDenied("The audit log is append-only.")


class AuditEntry(models.Model):
    """Append-only: every proposal, approval, stage change, look, promotion and
    rollback, with who, when, why and the statistics at that moment."""

    class Action(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        STARTED = "started", "Experiment started"
        NOT_STARTED = "not_started", "Not started"
        LOOK = "look", "Look"
        CANARY_PASSED = "canary_passed", "Canary passed"
        ADVANCED = "advanced", "Advanced to efficacy"
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"
        PROMOTE_READY = "promote_ready", "Ready to promote"
        PROMOTED = "promoted", "Promoted"
        ROLLED_BACK = "rolled_back", "Rolled back"
        FUTILE = "futile", "Stopped for futility"
        VERSION = "version", "Version recorded"
        GATE_STARTED = "gate_started", "Gate started"
        GATE_PASSED = "gate_passed", "Gate passed"
        GATE_FAILED = "gate_failed", "Gate failed"
        GATE_SKIPPED = "gate_skipped", "Gate skipped"
        GATE_OVERRIDDEN = "gate_overridden", "Gate overridden"
        REPLAY_STARTED = "replay_started", "Replay started"
        REPLAY_CANCELLED = "replay_cancelled", "Replay cancelled"
        REPLAY_FINISHED = "replay_finished", "Replay finished"
        HOLDOUT = "holdout", "Holdout"
        GATES = "gates", "Gate policy changed"

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=20, choices=Action.choices)
    proposal = models.ForeignKey(
        ChangeProposal, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    experiment = models.ForeignKey(
        Experiment, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    version = models.ForeignKey(
        PromptVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    replay = models.ForeignKey("Replay", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # None: the kaizen loop or the line did it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    stats = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditQuerySet.as_manager()

    # Not columns: what the agent page attaches to the entries it lists.
    who: str
    proposal_url: str
    experiment_url: str

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.get_action_display()} ({self.agent.name})"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise PermissionDenied("The audit log is append-only: entries cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionDenied("The audit log is append-only: entries cannot be deleted.")

    @property
    def actor(self) -> str:
        if self.user is not None:
            return self.user.get_username()
        if self.action == self.Action.VERSION:
            return "a config file or the admin"
        if (
            self.action == self.Action.PROPOSED
            and self.proposal is not None
            and self.proposal.source == PromptVersion.Source.CONFIG
        ):
            return "a config file"
        return "the kaizen loop"


# --- genchi genbutsu: seeing a change work before it touches the line ----------------------


class GateRule(models.TextChoices):
    EVERY = "every", "Every change"
    MAJOR = "major", "Major changes"
    NEVER = "never", "Never"


class AgentGates(models.Model):
    """Which gates an agent's prompt changes pass before their canary, and how
    each is sized. An agent without a row takes the installation's defaults
    (``AgentGates.defaults``): replay and probes for every change, shadow for
    major ones; no holdout."""

    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, related_name="gates")
    replay = models.CharField(max_length=5, choices=GateRule.choices, default=GateRule.EVERY)
    adversarial = models.CharField(max_length=5, choices=GateRule.choices, default=GateRule.EVERY)
    shadow = models.CharField(max_length=5, choices=GateRule.choices, default=GateRule.MAJOR)
    # Replay: the pairs wanted (0: sized by the power calculation) and its spending cap.
    replay_sample = models.PositiveIntegerField(default=0)
    replay_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, default=5)
    # The replay's and the shadow's guardrails: how much the mean cost and latency
    # per task may rise (relative; 1.5 is +150%) before the gate fails. Null: the
    # installation's (KAIZEN_REPLAY_COST_LIMIT, KAIZEN_REPLAY_LATENCY_LIMIT).
    cost_limit = models.FloatField(null=True, blank=True)
    latency_limit = models.FloatField(null=True, blank=True)
    # Shadow: the share of live tasks mirrored, the pairs planned, the time limit, the cap.
    shadow_share = models.FloatField(default=0.2)
    shadow_size = models.PositiveIntegerField(default=plans.DEFAULT_SHADOW_SIZE)
    shadow_hours = models.FloatField(default=plans.DEFAULT_SHADOW_HOURS)
    shadow_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, default=5)
    # Probes per family, and how much worse a family's hit rate may get.
    probes_per_family = models.PositiveIntegerField(default=12)
    probe_margin = models.FloatField(default=0.05)
    # Holdout (off at 0): this share of tasks stays on the version that was active
    # before a series of promotions, to show whether their wins last.
    holdout_share = models.FloatField(default=0.0)
    holdout_version = models.ForeignKey(
        PromptVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    holdout_started_at = models.DateTimeField(null=True, blank=True)
    holdout_salt = models.CharField(max_length=32, blank=True)

    class Meta:
        verbose_name_plural = "agent gates"

    def __str__(self) -> str:
        return f"gates of {self.agent.name}"

    @classmethod
    def of(cls, agent: Agent) -> AgentGates:
        """The agent's row, or the defaults (unsaved) when it has none: the
        shadow sized by its boards' plan (a demo board decides in minutes)."""
        found = cls.objects.filter(agent=agent).first()
        if found is not None:
            return found
        plan = plans.agent_plan(agent)
        return cls(agent=agent, shadow_size=plan.shadow_size, shadow_hours=plan.shadow_hours)

    def guardrails(self) -> dict[str, float]:
        limits = dict(settings.KAIZEN_REPLAY_GUARDRAILS)
        if self.cost_limit is not None:
            limits["cost"] = self.cost_limit
        if self.latency_limit is not None:
            limits["latency"] = self.latency_limit
        return limits

    def kinds_for(self, *, major: bool) -> list[str]:
        """The gates a change passes, in the order they run: the offline ones
        first (replay, then the probes), then the shadow on live traffic."""
        rules = (
            (Gate.Kind.REPLAY, self.replay),
            (Gate.Kind.ADVERSARIAL, self.adversarial),
            (Gate.Kind.SHADOW, self.shadow),
        )
        return [kind for kind, rule in rules if rule == GateRule.EVERY or (rule == GateRule.MAJOR and major)]


class Replay(models.Model):
    """One way of seeing a candidate version beside the baseline on real work,
    item by item, with the same inspection the line runs: a replay of past tasks,
    a shadow on mirrored live tasks, or the adversarial probes. Its calls are
    ledger rows marked with its purpose (never production cost), capped by
    ``budget_usd``."""

    class Kind(models.TextChoices):
        REPLAY = "replay", "Replay"
        SHADOW = "shadow", "Shadow"
        PROBE = "probe", "Adversarial probes"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN = (State.QUEUED, State.RUNNING)

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="replays")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.REPLAY)
    baseline = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    candidate = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    proposal = models.ForeignKey(
        ChangeProposal, on_delete=models.SET_NULL, null=True, blank=True, related_name="replays"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    # Items planned and finished (a shadow's total is its planned pairs).
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    # How the sample was drawn and sized (strata, power, assumptions), for the review.
    plan = models.JSONField(default=dict, blank=True)
    seed = models.PositiveIntegerField(default=0)
    # What seeing costs, capped: both arms' model calls.
    budget_usd = models.DecimalField(max_digits=12, decimal_places=4, default=5)
    spent_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    # Shadow: the share of live tasks mirrored, and when it stops at the latest.
    share = models.FloatField(default=0.0)
    deadline = models.DateTimeField(null=True, blank=True)
    salt = models.CharField(max_length=32, blank=True)
    # The result: the paired statistics (or the probe hit rates), the verdict and why.
    stats = models.JSONField(default=dict, blank=True)
    verdict = models.CharField(max_length=4, blank=True)  # pass, fail or "" (not decided)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The worker stepping through the items holds this lease; one that stops
    # (killed, restarted) lets it run out and the next resume carries on.
    lease_until = models.DateTimeField(null=True, blank=True)

    # Not columns: what experiments.selectors attaches for the pages.
    eta_seconds: float | None
    eta_text: str
    percent: int
    flips: dict[str, list]
    families: list[dict]
    url: str
    baseline_simulated: bool
    candidate_simulated: bool

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["candidate", "kind"],
                condition=Q(state__in=["queued", "running"]),
                name="replay_one_open_per_candidate",
            )
        ]
        indexes = [models.Index(fields=["kind", "state"], name="replay_kind_state")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.agent.name} v{self.candidate.number} ({self.state})"

    def get_absolute_url(self) -> str:
        return reverse("experiments-replay", kwargs={"pk": self.pk})

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN

    @property
    def purpose(self) -> str:
        """The ledger's ModelCall.purpose of its calls (the kinds are named alike)."""
        return str(self.kind)


class ReplayItem(models.Model):
    """One task seen through both versions: what each made of it and whether it
    passed (the inspection, or a person's earlier verdict on the same output).
    For a probe, the mutated input and whether each version was hit."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        SKIPPED = "skipped", "Skipped"

    replay = models.ForeignKey(Replay, on_delete=models.CASCADE, related_name="items")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    # The stratum it was drawn from (replay), or the probe family and mutator.
    stratum = models.CharField(max_length=120, blank=True)
    # What a person said of the task's output before (approved, corrected, rejected), if anything.
    past_verdict = models.CharField(max_length=10, blank=True)
    # A probe's input (the task's own input is read from the task).
    probe_input = models.TextField(blank=True)
    probe = models.JSONField(default=dict, blank=True)
    baseline_pass = models.BooleanField(null=True)
    candidate_pass = models.BooleanField(null=True)
    baseline_output = models.TextField(blank=True)
    candidate_output = models.TextField(blank=True)
    baseline_reason = models.TextField(blank=True)
    candidate_reason = models.TextField(blank=True)
    baseline_cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    candidate_cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    baseline_latency_ms = models.FloatField(default=0)
    candidate_latency_ms = models.FloatField(default=0)
    baseline_tokens = models.PositiveIntegerField(default=0)
    candidate_tokens = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["replay", "position"]
        constraints = [
            models.UniqueConstraint(fields=["replay", "position"], name="replay_item_position"),
        ]
        indexes = [models.Index(fields=["replay", "state", "position"], name="replay_item_state")]

    def __str__(self) -> str:
        return f"item {self.position} of replay {self.replay_id} (task {self.task_id})"


class Gate(models.Model):
    """One gate a proposal passes before its canary: its state and its evidence."""

    class Kind(models.TextChoices):
        REPLAY = "replay", "Replay on past work"
        ADVERSARIAL = "adversarial", "Adversarial probes"
        SHADOW = "shadow", "Shadow on mirrored live work"

    class State(models.TextChoices):
        WAITING = "waiting", "Waiting"
        RUNNING = "running", "Running"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        # By a person with a note, or by the line when there was nothing to see.
        SKIPPED = "skipped", "Skipped"
        # Failed, and let through by a person with a note.
        OVERRIDDEN = "overridden", "Overridden"
        CANCELLED = "cancelled", "Cancelled"

    # States that let the proposal go on.
    CLEARED = (State.PASSED, State.SKIPPED, State.OVERRIDDEN)
    REPLAY_KIND = {
        Kind.REPLAY: Replay.Kind.REPLAY,
        Kind.ADVERSARIAL: Replay.Kind.PROBE,
        Kind.SHADOW: Replay.Kind.SHADOW,
    }

    proposal = models.ForeignKey(ChangeProposal, on_delete=models.CASCADE, related_name="gates")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    position = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.WAITING)
    replay = models.OneToOneField(
        Replay, on_delete=models.SET_NULL, null=True, blank=True, related_name="gate"
    )
    # The verdict's figures and reasons, as the review shows them.
    evidence = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["proposal", "position"]
        constraints = [models.UniqueConstraint(fields=["proposal", "kind"], name="gate_once_per_proposal")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of proposal {self.proposal_id} ({self.state})"

    @property
    def cleared(self) -> bool:
        return self.state in self.CLEARED


class Pattern(models.Model):
    """One finished attempt of a task with its known outcome: the knowledge base's
    row (issue 14). Written when the outcome is known, in the transaction that
    decides it (an attempt that passed its inspection, or a reviewer's verdict),
    without its vector: the embedder (experiments.knowledge) embeds pending rows
    off the line's hot path, so the line never waits on an embedding.

    ``vector`` holds the float32 bytes of the L2-normalised embedding of ``text``
    (title and input) made by ``embed_model``; the exact numpy search reads it,
    and where PostgreSQL has pgvector the same vector is mirrored into an
    HNSW-indexed table (experiments.vectors)."""

    class Verdict(models.TextChoices):
        # Passed its inspection and went to Done with no person involved.
        PASSED = "passed", "Passed inspection"
        APPROVED = "approved", "Approved"
        # Approved with the reviewer's correction in place of the output.
        CORRECTED = "corrected", "Corrected"
        REJECTED = "rejected", "Rejected"
        # Failed inspection on a board with no Review column (Done, marked a defect).
        DEFECT = "defect", "Defect"

    # Verdicts whose output (or correction) may serve as an example to follow.
    GOOD = (Verdict.PASSED, Verdict.APPROVED, Verdict.CORRECTED)
    # Verdicts a reviewer gave.
    REVIEWED = (Verdict.APPROVED, Verdict.CORRECTED, Verdict.REJECTED)

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="patterns")
    board = models.ForeignKey("boards.Board", on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    escalation = models.OneToOneField(
        "andon.Escalation", on_delete=models.SET_NULL, null=True, blank=True, related_name="pattern"
    )
    attempt = models.PositiveSmallIntegerField(default=1)
    capability = models.CharField(max_length=80, blank=True)
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    # The cascade tier whose output this was (1 = cheapest), its model and the
    # parameters it was called with.
    tier = models.PositiveSmallIntegerField(null=True, blank=True)
    model = models.CharField(max_length=120, blank=True)
    params = models.JSONField(default=dict, blank=True)
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    output = models.TextField(blank=True)
    # The reviewer's corrected output (corrected), their reason (rejected) or
    # note (approved), or the inspection's failures (defect).
    correction = models.TextField(blank=True)
    reason = models.TextField(blank=True)
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    latency_ms = models.FloatField(default=0)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    # What is embedded (the task's title and input) and its digest: identical
    # texts are embedded once.
    text = models.TextField(blank=True)
    text_hash = models.CharField(max_length=64, db_index=True)
    embed_model = models.CharField(max_length=120, blank=True)
    dim = models.PositiveSmallIntegerField(null=True, blank=True)
    vector = models.BinaryField(null=True, blank=True, editable=False)
    embedded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(fields=["task", "attempt"], name="pattern_once_per_attempt"),
        ]
        indexes = [
            # The embedder's queue and the numpy index's refresh.
            models.Index(fields=["embed_model", "embedded_at"], name="pattern_embedded"),
            # The embedder's queue of new rows: only rows with no vector yet.
            models.Index(fields=["id"], condition=Q(embedded_at__isnull=True), name="pattern_unembedded"),
            models.Index(fields=["agent", "verdict", "-created_at"], name="pattern_agent_verdict"),
            models.Index(fields=["agent", "prompt_version", "verdict"], name="pattern_agent_version"),
        ]

    def __str__(self) -> str:
        return f"pattern of task {self.task_id} attempt {self.attempt} ({self.verdict})"

    @property
    def good_output(self) -> str:
        """The output to follow: the correction where a reviewer wrote one."""
        return self.correction if self.verdict == self.Verdict.CORRECTED and self.correction else self.output
