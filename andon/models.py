"""Jidoka and the andon: the verdict on every output, the escalations reviewers
decide, the line stops, and the circuit breakers that stop a failing agent or model.

State changes go through ``andon.services`` (reviewers' actions) and
``andon.jidoka`` (what the line does on its own, inside a run's completion);
these classes hold data and small read-only helpers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from boards.models import Agent, Board, ModelCall, Task

# The demo's simulated reviewer (andon.demo_reviewer) decides as this user: its
# decisions are badged as a program's, and left out of people's figures.
SIMULATED_REVIEWER = "simulated-reviewer"


class Inspection(models.Model):
    """The verdict on one output of one run: every completed run gets one, pass or
    defect, so defect rates, spikes and token waste are counted from here."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="inspections")
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    passed = models.BooleanField()
    # [{"name", "check", "reason"}] for every check that failed.
    failures = models.JSONField(default=list, blank=True)
    # Tokens beyond the estimated optimal length (recorded even when the output passes).
    waste_tokens = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    notes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # Not a column: the escalation this verdict opened, if any, attached for the
    # task page by boards.selectors.task_inspections_get.
    escalation_or_none: Escalation | None

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["agent", "-created_at"], name="inspection_agent_recent"),
            models.Index(fields=["board", "created_at"], name="inspection_board_time"),
        ]

    def __str__(self) -> str:
        return f"{'pass' if self.passed else 'defect'} on task {self.task_id}"

    @property
    def failed_checks(self) -> list[str]:
        return [f.get("name", "") for f in self.failures if isinstance(f, dict)]


@dataclass(frozen=True)
class AgentRecord:
    """An agent's recent record, as the inbox shows it beside an escalation
    (andon.selectors.agent_record_get)."""

    outputs: int
    defects: int
    approved: int
    corrected: int
    rejected: int

    @property
    def defect_rate(self) -> float | None:
        return self.defects / self.outputs if self.outputs else None


@dataclass(frozen=True)
class SimilarCase:
    """A past decided escalation like an open one (andon.failure_warnings), as
    stored in ``Escalation.similar``."""

    task_id: int
    title: str
    board_slug: str
    escalation_id: int | None
    similarity: float  # cosine similarity of the two tasks' texts, 0..1
    verdict: str  # approved, corrected or rejected (experiments.models.Pattern.Verdict)
    reason: str  # the reviewer's reason (rejected) or note, cut short
    correction: str  # the reviewer's corrected output (corrected), cut short
    reviewer: str
    simulated: bool  # decided by the demo's simulated reviewer, not a person
    decided_at: datetime | None

    @property
    def percent(self) -> int:
        return round(self.similarity * 100)

    @property
    def task_url(self) -> str:
        try:
            return reverse("boards-task-detail", args=(self.board_slug, self.task_id))
        except NoReverseMatch:  # a board whose slug no longer parses; the escalation stays
            return ""

    @property
    def escalation_url(self) -> str:
        return reverse("andon-escalation", kwargs={"pk": self.escalation_id}) if self.escalation_id else ""

    @property
    def verdict_label(self) -> str:
        return {
            "approved": "approved",
            "corrected": "approved with a correction",
            "rejected": "rejected",
        }.get(self.verdict, self.verdict)


@dataclass(frozen=True)
class SimilarWarning:
    """What the inbox shows of an escalation's similar past decisions: the
    summary a person reads ("3 of 4 similar tasks were rejected: tone too
    informal"), ``warn`` when most of them were rejected, and the cases."""

    summary: str
    warn: bool
    counts: dict[str, int]
    simulated: int  # how many of the cases the demo's simulated reviewer decided
    cases: list[SimilarCase]

    @property
    def counts_text(self) -> str:
        """The cases by decision, e.g. "3 rejected, 1 approved"."""
        words = (
            ("rejected", "rejected"),
            ("corrected", "approved with a correction"),
            ("approved", "approved"),
        )
        return ", ".join(f"{self.counts[key]} {word}" for key, word in words if self.counts.get(key))

    @property
    def all_simulated(self) -> bool:
        return self.simulated == len(self.cases)

    @classmethod
    def from_json(cls, data: Any) -> SimilarWarning | None:
        """The warning stored in ``Escalation.similar``; None when there is none
        to show (not computed yet, or nothing similar was decided before)."""
        if not isinstance(data, dict) or not data.get("cases"):
            return None
        cases = [
            SimilarCase(
                task_id=int(case.get("task") or 0),
                title=str(case.get("title") or ""),
                board_slug=str(case.get("board") or ""),
                escalation_id=case.get("escalation"),
                similarity=float(case.get("similarity") or 0.0),
                verdict=str(case.get("verdict") or ""),
                reason=str(case.get("reason") or ""),
                correction=str(case.get("correction") or ""),
                reviewer=str(case.get("reviewer") or ""),
                simulated=bool(case.get("simulated")),
                decided_at=parse_datetime(case["decided_at"]) if case.get("decided_at") else None,
            )
            for case in data["cases"]
            if isinstance(case, dict)
        ]
        return cls(
            summary=str(data.get("summary") or ""),
            warn=data.get("tone") == "warn",
            counts={str(k): int(v) for k, v in (data.get("counts") or {}).items()},
            simulated=int(data.get("simulated") or 0),
            cases=cases,
        )


def has_similar_cases(similar: Any) -> bool:
    """Whether a stored ``Escalation.similar`` holds at least one case: a warning
    is shown for it."""
    return isinstance(similar, dict) and bool(similar.get("cases"))


class Escalation(models.Model):
    """An andon call: a defective output stopped in Review until a reviewer decides."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        APPROVED = "approved", "Approved"
        CORRECTED = "corrected", "Edited and approved"
        REJECTED = "rejected", "Rejected"
        # The task left Review without a decision: moved by hand, before such
        # moves were refused (boards.services.EscalationOpen). Kept for those rows.
        WITHDRAWN = "withdrawn", "Withdrawn"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="escalations")
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="escalations")
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="escalations"
    )
    inspection = models.OneToOneField(Inspection, on_delete=models.PROTECT, related_name="escalation")
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    # The output as the agent gave it, kept whatever the reviewer does with it.
    output = models.TextField(blank=True)
    confidence = models.FloatField(null=True, blank=True)
    confidence_source = models.CharField(max_length=20, blank=True)
    failures = models.JSONField(default=list, blank=True)
    # The task's cost when it was escalated (every attempt so far).
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    # The reviewer's reason (required to reject) or remark.
    note = models.TextField(blank=True)
    # Edit and approve: the reviewer's correction, beside the original (for the kaizen loop).
    corrected_output = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The similar past decisions of the same agent (andon.failure_warnings), as
    # the knowledge base's embedder worker computed them once for the open
    # escalation: null until then; ``{"cases": []}`` when nothing similar was decided.
    similar = models.JSONField(null=True, blank=True)
    similar_at = models.DateTimeField(null=True, blank=True)
    # At its decision: whether a warning was shown (``similar`` had a case), and
    # the seconds from the escalation opening to the decision (the inbox compares
    # the two). Null for escalations decided before these were recorded.
    warned = models.BooleanField(null=True, blank=True)
    decision_seconds = models.FloatField(null=True, blank=True)

    # Not columns: what andon.selectors and andon.views attach to the escalations
    # they show. An inbox row is its group's leader, with its members:
    members: list[Escalation]
    member_ids: str  # comma-separated, for the row's forms
    group_checks: list[str]  # the checks any member failed
    agent_record: AgentRecord | None
    # A refused action, shown in the row: the open form, what was typed, the errors.
    form_open: str
    form_values: dict[str, str]
    form_errors: dict[str, list[str]]
    form_error: str

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [("review_escalation", "Can review andon escalations and restart the line")]
        constraints = [
            # A task waits on at most one decision at a time.
            models.UniqueConstraint(fields=["task"], condition=Q(status="open"), name="escalation_one_open"),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="escalation_status_recent")]

    def __str__(self) -> str:
        return f"escalation {self.pk} of task {self.task_id} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("andon-escalation", kwargs={"pk": self.pk})

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.OPEN

    @property
    def group_key(self) -> tuple:
        """What makes escalations identical, so a reviewer decides them once: the
        same board and agent, the same normalised input (``Task.input_key``) and
        the same output. A task without input, or without an agent, is never taken
        for another (as reuse never takes it): its key is its own."""
        task = self.task
        if not task.input_key or self.agent_id is None:
            return ("one", self.pk)
        return (self.board_id, self.agent_id, task.input_key, self.output)

    @property
    def failed_checks(self) -> list[str]:
        return [f.get("name", "") for f in self.failures if isinstance(f, dict)]

    @cached_property
    def similar_warning(self) -> SimilarWarning | None:
        """This escalation's own warning of similar past decisions, if any."""
        return SimilarWarning.from_json(self.similar)

    @property
    def row_warning(self) -> SimilarWarning | None:
        """The warning its inbox row shows: for a group of identical escalations,
        that of the oldest member that has one (their inputs are the same)."""
        members = getattr(self, "members", None) or [self]
        return next((m.similar_warning for m in members if m.similar_warning), None)


class LineStop(models.Model):
    """The line stopped, for a board or for one agent: automatically on a defect
    spike, or by a person pulling the andon cord. Active until a reviewer restarts
    it, with a note; rows are kept as the record of every stop and restart."""

    class Kind(models.TextChoices):
        DEFECT_SPIKE = "defect_spike", "Defect spike"
        CORD = "cord", "Andon cord"
        # A budget reached its limit (andon.budgets): lifts by itself at ``until``,
        # the end of the budget's period, or when a person raises the limit or restarts.
        BUDGET = "budget", "Budget"
        # A waste threshold with stop_line crossed (andon.waste_thresholds): in
        # force until a reviewer restarts the line.
        WASTE = "waste", "Waste threshold"

    board = models.ForeignKey(
        Board, on_delete=models.CASCADE, null=True, blank=True, related_name="line_stops"
    )
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="line_stops"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    reason = models.TextField()
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    restarted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    restarted_at = models.DateTimeField(null=True, blank=True)
    restart_note = models.TextField(blank=True)
    # A budget stop: the budget, and when its period ends (the stop is no longer
    # in force from then on, and is recorded as restarted at that time).
    budget = models.ForeignKey(
        "Budget", on_delete=models.SET_NULL, null=True, blank=True, related_name="line_stops"
    )
    until = models.DateTimeField(null=True, blank=True)
    # A waste stop: the threshold crossed.
    threshold = models.ForeignKey(
        "WasteThreshold", on_delete=models.SET_NULL, null=True, blank=True, related_name="line_stops"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(board__isnull=False) & Q(agent__isnull=True))
                | (Q(board__isnull=True) & Q(agent__isnull=False)),
                name="line_stop_board_xor_agent",
            ),
            # One active stop per board and per agent: pulling the cord twice adds nothing.
            models.UniqueConstraint(
                fields=["board"],
                condition=Q(restarted_at__isnull=True, board__isnull=False),
                name="line_stop_one_per_board",
            ),
            models.UniqueConstraint(
                fields=["agent"],
                condition=Q(restarted_at__isnull=True, agent__isnull=False),
                name="line_stop_one_per_agent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} stop of {self.scope_label}"

    @property
    def is_active(self) -> bool:
        return self.restarted_at is None and not self.expired

    @property
    def expired(self) -> bool:
        """A budget stop whose period has ended: no longer in force, even before
        the andon records it as restarted."""
        return self.until is not None and self.until <= timezone.now()

    @property
    def scope_label(self) -> str:
        if self.agent is not None:
            return f"agent {self.agent.name}"
        assert self.board is not None  # line_stop_board_xor_agent
        return f"board {self.board.name}"


class CircuitBreaker(models.Model):
    """Consecutive errors of an agent, or of a provider's model on one board (across
    the board's agents). Closed: work flows. Open (after the threshold): the agent
    pulls nothing, or the cascade skips the model for the board's tasks. Half-open
    (after the cool-down): one probe is let through; its success closes the
    breaker, its failure opens it again.

    A model's breaker is kept per board, not one for everyone: a board's own bad
    input (a prompt the provider refuses, an input that makes it fail) must not
    stall every other board on that model. A provider that is down for everyone
    opens each board's breaker after that board's own few errors."""

    class Scope(models.TextChoices):
        AGENT = "agent", "Agent"
        MODEL = "model", "Provider model"

    class State(models.TextChoices):
        CLOSED = "closed", "Closed"
        OPEN = "open", "Open"
        HALF_OPEN = "half_open", "Half-open"

    scope = models.CharField(max_length=10, choices=Scope.choices)
    agent = models.OneToOneField(
        Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="breaker"
    )
    # provider/model for a model breaker, and the board whose calls it counts.
    key = models.CharField(max_length=200, blank=True)
    board = models.ForeignKey(
        Board, on_delete=models.CASCADE, null=True, blank=True, related_name="model_breakers"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    # When the half-open probe was let through (a probe that never reports back is
    # given up after the cool-down, and another is tried).
    probe_started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "key"]
        constraints = [
            models.UniqueConstraint(
                fields=["board", "key"], condition=Q(scope="model"), name="breaker_one_per_board_model"
            ),
            models.CheckConstraint(
                condition=Q(scope="agent") | Q(board__isnull=False), name="breaker_model_has_board"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label}: {self.get_state_display()}"

    @property
    def label(self) -> str:
        if self.scope == self.Scope.AGENT and self.agent is not None:
            return f"agent {self.agent.name}"
        return f"{self.key} on {self.board.name}" if self.board is not None else self.key


class Budget(models.Model):
    """A spending limit of a board or an agent, in dollars or tokens, per calendar
    day, week (Monday to Sunday) or month in the project's TIME_ZONE. Spend is
    read from the ledger (ModelCall: cost, and the tokens of real model calls);
    ``BudgetPeriod`` keeps each period's running total. At ``warn_percent`` of the
    limit the andon warns; at the limit the line of the board or agent stops."""

    class Unit(models.TextChoices):
        USD = "usd", "US dollars"
        TOKENS = "tokens", "Tokens"

    class Period(models.TextChoices):
        DAY = "day", "Day"
        WEEK = "week", "Week (Monday to Sunday)"
        MONTH = "month", "Month"

    name = models.CharField(max_length=80, help_text="What the budget is for, as shown in warnings.")
    board = models.ForeignKey(Board, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    unit = models.CharField(max_length=10, choices=Unit.choices, default=Unit.USD)
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.DAY)
    limit = models.DecimalField(max_digits=20, decimal_places=4)
    warn_percent = models.PositiveSmallIntegerField(
        default=80, help_text="Warn when spend reaches this percentage of the limit (1-100)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(board__isnull=False) & Q(agent__isnull=True))
                | (Q(board__isnull=True) & Q(agent__isnull=False)),
                name="budget_board_xor_agent",
            ),
            models.CheckConstraint(condition=Q(limit__gt=0), name="budget_limit_positive"),
            models.CheckConstraint(
                condition=Q(warn_percent__gte=1, warn_percent__lte=100), name="budget_warn_percent_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.scope_label})"

    @property
    def scope_label(self) -> str:
        if self.agent is not None:
            return f"agent {self.agent.name}"
        assert self.board is not None  # budget_board_xor_agent
        return f"board {self.board.name}"

    def amount_label(self, value) -> str:
        """A spend or limit in the budget's unit, as people read it."""
        if self.unit == self.Unit.TOKENS:
            return f"{int(value):,} tokens"
        return f"${value:,.2f}"


class BudgetPeriod(models.Model):
    """One period of a budget: its running total of spend (kept as model calls
    are recorded, and checked against the ledger by ``andon.budgets``), and what
    the andon did in it."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="periods")
    start = models.DateTimeField()
    end = models.DateTimeField()
    spent = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    warned_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # A person restarted the budget's stop in this period: the line runs on
    # past the limit until the period ends (or the limit is reached again after a raise).
    overridden_at = models.DateTimeField(null=True, blank=True)
    overridden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-start"]
        constraints = [models.UniqueConstraint(fields=["budget", "start"], name="budget_period_once")]

    def __str__(self) -> str:
        return f"{self.budget.name} from {self.start:%Y-%m-%d}"


class WasteThreshold(models.Model):
    """A limit on one waste (or measure) of andon.muda for a board or an agent,
    over its last N inspected outputs or its last H hours. The periodic tick
    (andon.waste_thresholds) computes the waste; worse than the limit (above it
    for a waste where lower is better, below it for token efficiency) raises an
    alert in the andon inbox, once per crossing, and with ``stop_line`` stops the
    line of the board or agent until a reviewer restarts it. A new alert only
    after the value went back within the limit."""

    board = models.ForeignKey(
        Board, on_delete=models.CASCADE, null=True, blank=True, related_name="waste_thresholds"
    )
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="waste_thresholds"
    )
    # One of andon.muda.NAMES (checked by andon.waste_services: the model cannot
    # import muda, which imports the models).
    waste = models.CharField(max_length=30)
    # In the waste's unit: percent, or model calls per finished item for transport.
    limit = models.FloatField()
    # The window: the last ``window_outputs`` inspected outputs, or the last
    # ``window_hours`` hours; exactly one of the two.
    window_outputs = models.PositiveIntegerField(null=True, blank=True, default=200)
    window_hours = models.PositiveIntegerField(null=True, blank=True)
    stop_line = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    # The evaluation's state: since when the value is worse than the limit (None:
    # within it, or not yet computed), and the last value seen.
    crossed_at = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["waste", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(board__isnull=False) & Q(agent__isnull=True))
                | (Q(board__isnull=True) & Q(agent__isnull=False)),
                name="waste_threshold_board_xor_agent",
            ),
            models.CheckConstraint(
                condition=(Q(window_outputs__isnull=False) & Q(window_hours__isnull=True))
                | (Q(window_outputs__isnull=True) & Q(window_hours__isnull=False)),
                name="waste_threshold_one_window",
            ),
            models.CheckConstraint(condition=Q(limit__gte=0), name="waste_threshold_limit_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.waste} threshold of {self.scope_label}"

    @property
    def scope_label(self) -> str:
        if self.agent is not None:
            return f"agent {self.agent.name}"
        assert self.board is not None  # waste_threshold_board_xor_agent
        return f"board {self.board.name}"

    @property
    def window_label(self) -> str:
        if self.window_outputs is not None:
            return f"last {self.window_outputs} outputs"
        return f"last {self.window_hours} hours" if self.window_hours != 1 else "last hour"


class Alert(models.Model):
    """An andon alert: something about the line as a whole (a budget, the spend
    rate, later a waste threshold) that a reviewer should see and acknowledge.
    Not an Escalation, which holds one task's output for a decision."""

    class Kind(models.TextChoices):
        BUDGET_WARNING = "budget_warning", "Budget warning"
        BUDGET_REACHED = "budget_reached", "Budget reached"
        COST_ANOMALY = "cost_anomaly", "Cost anomaly"
        WASTE_THRESHOLD = "waste_threshold", "Waste threshold"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    title = models.CharField(max_length=200)
    # What was seen, as figures ({"spent": ..., "limit": ...}; {"last_hour": ...,
    # "hourly": [...]}) and as a sentence for people (``summary``).
    evidence = models.JSONField(default=dict, blank=True)
    summary = models.TextField(blank=True)
    board = models.ForeignKey(Board, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts")
    budget = models.ForeignKey(
        Budget, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    threshold = models.ForeignKey(
        "WasteThreshold", on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    # One alert per cause: a budget's warning once a period, an anomaly once an
    # hour, a waste threshold once per crossing.
    key = models.CharField(max_length=120, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["acknowledged_at", "-created_at"], name="alert_open_recent")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.title}"

    @property
    def scope_label(self) -> str:
        if self.agent is not None:
            return f"agent {self.agent.name}"
        if self.board is not None:
            return f"board {self.board.name}"
        return "the whole line"

    @property
    def is_open(self) -> bool:
        return self.acknowledged_at is None


class AndonRecord(models.Model):
    """The andon's audit log for budgets and alerts (append-only): who did what,
    when, with the figures at that moment. experiments.AuditEntry is the kaizen
    loop's and needs an agent, which a board's budget has not."""

    class Action(models.TextChoices):
        BUDGET_CREATED = "budget_created", "Budget created"
        BUDGET_CHANGED = "budget_changed", "Budget changed"
        BUDGET_DELETED = "budget_deleted", "Budget deleted"
        WARNING_RAISED = "warning_raised", "Budget warning raised"
        LINE_STOPPED = "line_stopped", "Line stopped for budget"
        LINE_RESTARTED = "line_restarted", "Line restarted for budget"
        ANOMALY_RAISED = "anomaly_raised", "Cost anomaly raised"
        ALERT_ACKNOWLEDGED = "alert_acknowledged", "Alert acknowledged"
        THRESHOLD_CREATED = "threshold_created", "Waste threshold created"
        THRESHOLD_CHANGED = "threshold_changed", "Waste threshold changed"
        THRESHOLD_DELETED = "threshold_deleted", "Waste threshold deleted"
        THRESHOLD_CROSSED = "threshold_crossed", "Waste threshold crossed"
        THRESHOLD_RECOVERED = "threshold_recovered", "Waste back within its threshold"
        WASTE_LINE_STOPPED = "waste_line_stopped", "Line stopped for a waste threshold"

    action = models.CharField(max_length=30, choices=Action.choices)
    budget = models.ForeignKey(Budget, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    threshold = models.ForeignKey(
        "WasteThreshold", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    alert = models.ForeignKey(Alert, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    line_stop = models.ForeignKey(
        LineStop, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    board = models.ForeignKey(Board, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # None: the line did it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    detail = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} at {self.created_at:%Y-%m-%d %H:%M}"


# --- the Muda rollups (andon.muda_rollups writes them, andon.muda reads them) -----------
#
# What the seven wastes sum, kept as the line records it so that the Muda page,
# its API and the waste thresholds read a few hundred rows for a week rather than
# every ledger row, inspection and event in it. Each can be rebuilt from the rows
# it summarises (``manage.py muda_rollups_rebuild``). ``agent`` is the agent's
# id, 0 for none: a plain integer, as a unique key cannot hold NULLs that match,
# and history keeps the id of an agent since deleted.


class MudaHour(models.Model):
    """The sums of one board's and one agent's ledger rows, inspections and
    escalations over one clock hour (UTC), each fact in the hour it happened:
    a call in its call's hour, an inspection's counts in the inspection's, an
    escalation's in the hour it was opened. A late fact (a reviewer rejecting a
    draft, a stale run's calls) changes the hours of the facts it changes."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    agent = models.IntegerField(default=0)
    hour = models.DateTimeField()
    # Ledger rows.
    model_calls = models.IntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    passed_over_tokens = models.BigIntegerField(default=0)
    rejected_tokens = models.BigIntegerField(default=0)
    excess_tokens = models.BigIntegerField(default=0)
    overproduction_cost = models.FloatField(default=0)
    served_from_cache = models.IntegerField(default=0)
    reused_results = models.IntegerField(default=0)
    provider_errors = models.IntegerField(default=0)
    # Runs (task, attempt): counted in the hour of the run's first call; their
    # costs in each call's hour.
    answers_taken = models.IntegerField(default=0)
    taken_above_tier_1 = models.IntegerField(default=0)
    with_cheaper_verdict = models.IntegerField(default=0)
    over_processed = models.IntegerField(default=0)
    over_processing_cost = models.FloatField(default=0)
    retries = models.IntegerField(default=0)
    defect_cost = models.FloatField(default=0)
    # Inspections.
    inspected = models.IntegerField(default=0)
    failed_inspection = models.IntegerField(default=0)
    unreviewed_defects = models.IntegerField(default=0)
    # Escalations, by their status now.
    escalations = models.IntegerField(default=0)
    escalations_open = models.IntegerField(default=0)
    escalations_approved = models.IntegerField(default=0)
    escalations_corrected = models.IntegerField(default=0)
    escalations_rejected = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["board", "agent", "hour"], name="mudahour_board_agent_hour")
        ]
        indexes = [models.Index(fields=["agent", "hour"], name="mudahour_agent_hour")]

    def __str__(self) -> str:
        return f"muda of board {self.board_id}, agent {self.agent}, {self.hour:%Y-%m-%d %H:00}"


class MudaContextHour(models.Model):
    """A histogram of context-window use (a model call's prompt tokens over its
    tier's window, in percent) per board, agent, model and clock hour: how many
    calls fell in each bucket, and the largest use in it. Buckets are 5 points
    wide below 50%, 1 point from 50% to 100% (near the 80% target, where it
    matters), 10 points above (andon.muda_rollups.context_bucket)."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    agent = models.IntegerField(default=0)
    provider = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=120, blank=True)
    hour = models.DateTimeField()
    bucket = models.IntegerField()
    calls = models.IntegerField(default=0)
    peak = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["board", "agent", "provider", "model", "hour", "bucket"],
                name="mudacontext_key",
            )
        ]
        indexes = [
            models.Index(fields=["board", "hour"], name="mudacontext_board_hour"),
            models.Index(fields=["agent", "hour"], name="mudacontext_agent_hour"),
        ]

    def __str__(self) -> str:
        return f"context use of board {self.board_id}, {self.hour:%Y-%m-%d %H:00}, bucket {self.bucket}"


class MudaFinish(models.Model):
    """A task entering Done, with what waiting and transport need: the seconds it
    had spent in each queue, blocked and in all (its lead time) up to then, and
    the model calls made for it (all of them, any time) and what those beyond the
    taken answer cost. A task that finishes again supersedes its earlier finish
    from then on (a window counts an item's last finish in it)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    agent = models.IntegerField(default=0)  # the task's agent when it finished
    finished_at = models.DateTimeField()
    superseded_at = models.DateTimeField(null=True, blank=True)
    backlog_s = models.FloatField(default=0)
    ready_s = models.FloatField(default=0)
    review_s = models.FloatField(default=0)
    decision_s = models.FloatField(default=0)
    blocked_s = models.FloatField(default=0)
    lead_s = models.FloatField(default=0)
    model_calls = models.IntegerField(default=0)
    extra_cost = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "finished_at"], name="mudafinish_task_time")]
        indexes = [
            models.Index(fields=["board", "finished_at"], name="mudafinish_board_time"),
            models.Index(fields=["agent", "finished_at"], name="mudafinish_agent_time"),
        ]

    def __str__(self) -> str:
        return f"task {self.task_id} finished at {self.finished_at:%Y-%m-%d %H:%M}"


class MudaRepeat(models.Model):
    """A model call with an identical earlier one (same request key, neither
    failed): whether its own task made it before, and how many seconds after the
    last one on its board and of its agent (null: none within the response
    cache's lifetime when it was recorded). Motion compares the seconds with the
    lifetime when it is read."""

    call = models.OneToOneField(ModelCall, on_delete=models.CASCADE, related_name="+")
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    agent = models.IntegerField(default=0)
    at = models.DateTimeField()
    in_task = models.BooleanField(default=False)
    board_gap_s = models.FloatField(null=True, blank=True)
    agent_gap_s = models.FloatField(null=True, blank=True)
    cost = models.FloatField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["board", "at"], name="mudarepeat_board_time"),
            models.Index(fields=["agent", "at"], name="mudarepeat_agent_time"),
        ]

    def __str__(self) -> str:
        return f"repeat of call {self.call_id}"
