"""The line: boards, their columns, the agents that serve them, tasks and their events.

State changes go through ``boards.services``; these classes hold data and small
read-only helpers only.
"""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.urls import reverse

# Task.capability's length: a longer name offered by an agent could never be asked for.
CAPABILITY_MAX_LENGTH = 60


class Board(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    paused = models.BooleanField(
        default=False, help_text="A paused board pulls nothing; resuming it pulls at once."
    )
    # Example tasks the demo feed draws from (see boards.services.demo_task_feed).
    demo_tasks = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("boards-detail", kwargs={"slug": self.slug})


class Column(models.Model):
    class Role(models.TextChoices):
        BACKLOG = "backlog", "Backlog"
        READY = "ready", "Ready"
        IN_PROGRESS = "in_progress", "In progress"
        REVIEW = "review", "Review"
        DONE = "done", "Done"

    class WipState(models.TextChoices):
        UNLIMITED = "unlimited"
        UNDER = "under"
        ONE_LEFT = "one_left"
        REACHED = "reached"
        EXCEEDED = "exceeded"

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="columns")
    name = models.CharField(max_length=60)
    role = models.CharField(max_length=20, choices=Role.choices)
    position = models.PositiveSmallIntegerField(default=0)
    wip_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most tasks the column may hold; empty for no limit.",
    )
    hard_limit = models.BooleanField(
        default=True,
        help_text="A hard limit refuses tasks once reached; a soft one lets people "
        "exceed it and marks the column. Agents never pull past either.",
    )

    class Meta:
        ordering = ["board", "position"]
        constraints = [
            models.UniqueConstraint(fields=["board", "role"], name="column_one_per_role"),
            models.UniqueConstraint(fields=["board", "name"], name="column_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.board.name} / {self.name}"

    def wip_state(self, count: int) -> str:
        """The Kanban state of the column header for ``count`` tasks."""
        if self.wip_limit is None:
            return self.WipState.UNLIMITED
        if count > self.wip_limit:
            return self.WipState.EXCEEDED
        if count == self.wip_limit:
            return self.WipState.REACHED
        if count == self.wip_limit - 1:
            return self.WipState.ONE_LEFT
        return self.WipState.UNDER


class Agent(models.Model):
    name = models.CharField(max_length=80, unique=True)
    boards = models.ManyToManyField(Board, related_name="agents", blank=True)
    capabilities = models.JSONField(
        default=list,
        blank=True,
        help_text="Capabilities this agent offers; a task asking for one is only "
        "pulled by an agent that lists it.",
    )
    provider = models.CharField(max_length=40, default="simulated")
    model = models.CharField(max_length=120, default="sim-small")
    provider_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="Provider and generation settings (for the simulated provider, "
        "latency_ms overrides the model profile's latency).",
    )
    prompt_template = models.TextField(default="{input}")
    concurrency = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1)], help_text="Tasks in flight at once."
    )
    max_attempts = models.PositiveSmallIntegerField(default=3, validators=[MinValueValidator(1)])
    paused = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_simulated(self) -> bool:
        return self.provider == "simulated"

    def clean(self) -> None:
        # The admin's JSON field takes any JSON: a bare string such as "summarise"
        # would be read character by character as capabilities.
        value = self.capabilities
        example = 'a list of names, such as ["summarise", "classify"]'
        if not isinstance(value, list):
            raise ValidationError({"capabilities": f"Capabilities must be {example}; got {value!r}."})
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise ValidationError(
                    {"capabilities": f"Each capability must be a non-empty name ({example}); got {item!r}."}
                )
            if item != item.strip():
                # Tasks ask for a stripped name, so a padded one would never match.
                raise ValidationError(
                    {"capabilities": f"Capability {item!r} has spaces around it: remove them."}
                )
            if len(item) > CAPABILITY_MAX_LENGTH:
                raise ValidationError(
                    {
                        "capabilities": f"Capability {item!r} is longer than {CAPABILITY_MAX_LENGTH} "
                        "characters, so no task could ask for it: shorten it."
                    }
                )

    @property
    def offered_capabilities(self) -> list[str]:
        """The capability names this agent offers, ignoring anything that is not
        one (rows written before ``clean`` checked them, or outside the admin)."""
        value = self.capabilities
        if not isinstance(value, list):
            return []
        return [c for c in value if isinstance(c, str) and c]

    def can_do(self, capability: str) -> bool:
        # Membership in a list of names, never a substring test on a string.
        return not capability or capability in self.offered_capabilities


class Task(models.Model):
    class Status(models.TextChoices):
        BACKLOG = "backlog", "Backlog"
        READY = "ready", "Ready"
        RUNNING = "running", "In progress"
        REVIEW = "review", "Review"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="tasks")
    column = models.ForeignKey(Column, on_delete=models.PROTECT, related_name="tasks")
    title = models.CharField(max_length=200)
    input = models.TextField(blank=True)
    capability = models.CharField(max_length=CAPABILITY_MAX_LENGTH, blank=True)
    priority = models.SmallIntegerField(default=0, help_text="Higher is more urgent.")
    # Order within a column. Gapped, so one task can be slotted between two
    # others without renumbering the column.
    position = models.BigIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.BACKLOG)
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="tasks")
    output = models.TextField(blank=True)
    confidence = models.FloatField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    blocked_note = models.TextField(blank=True)
    blocked_at = models.DateTimeField(null=True, blank=True)
    # The lease of the current run: only the holder of this token may finish it.
    lease_token = models.UUIDField(null=True, blank=True, unique=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "created_at"]
        indexes = [
            models.Index(fields=["column", "position", "created_at"], name="task_column_order"),
            models.Index(fields=["status", "lease_expires_at"], name="task_status_lease"),
            models.Index(fields=["board", "status"], name="task_board_status"),
        ]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("boards-task-detail", kwargs={"slug": self.board.slug, "pk": self.pk})

    @property
    def is_blocked(self) -> bool:
        return self.blocked_at is not None


class TaskEvent(models.Model):
    """One thing that happened to a task; moves carry from/to so flow metrics
    (cycle time, lead time, throughput, aging, cumulative flow) can be derived."""

    class Kind(models.TextChoices):
        CREATED = "created"
        MOVED = "moved"
        CLAIMED = "claimed"
        COMPLETED = "completed"
        ATTEMPT_FAILED = "attempt_failed"
        LEASE_EXPIRED = "lease_expired"
        BLOCKED = "blocked"
        UNBLOCKED = "unblocked"
        REORDERED = "reordered"

    class Actor(models.TextChoices):
        AGENT = "agent"
        USER = "user"
        SYSTEM = "system"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    from_column = models.ForeignKey(
        Column, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    to_column = models.ForeignKey(Column, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    from_status = models.CharField(max_length=10, blank=True)
    to_status = models.CharField(max_length=10, blank=True)
    actor = models.CharField(max_length=10, choices=Actor.choices)
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["board", "created_at"], name="event_board_time")]

    def __str__(self) -> str:
        return f"{self.kind} {self.from_status}->{self.to_status}"

    @property
    def actor_name(self) -> str:
        if self.actor == self.Actor.AGENT and self.agent_id:
            return self.agent.name
        if self.actor == self.Actor.USER and self.user_id:
            return self.user.get_username()
        return self.actor


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only a SHA-256 of the token is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80, blank=True)
    prefix = models.CharField(max_length=12, help_text="The start of the token, to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def generate_key() -> str:
        return "kz_" + secrets.token_urlsafe(32)
