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
from django.utils import timezone

from andon.inspection import parse_checks
from boards import flow
from boards.agents import registry
from boards.agents.spec import (
    ConfigError,
    Tier,
    check_template,
    parse_cascade,
    parse_parameters,
    parse_variables,
)

# Task.capability's length: a longer name offered by an agent could never be asked for.
CAPABILITY_MAX_LENGTH = 60

# Django's permission rules (ModelBackend's, kept by kaizen_web.auth), which a
# token's query can answer itself (ApiToken).
MODEL_BACKEND = "kaizen_web.auth.ModelBackend"


def default_cascade() -> list[dict]:
    return [{"provider": "simulated", "model": "sim-small", "threshold": None}]


def default_quality_checks() -> list[dict]:
    # The same as andon.inspection.DEFAULT_CHECKS (a literal here: migrations name this function).
    return [
        {"check": "confidence", "min": 0.7},
        {"check": "uncertainty"},
        {"check": "token_waste", "ratio": 1.5},
    ]


class Board(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    paused = models.BooleanField(
        default=False, help_text="A paused board pulls nothing; resuming it pulls at once."
    )
    # Example tasks the demo feed draws from (see boards.services.demo_task_feed):
    # fixed tasks, or templates with slots (boards.demo_feed).
    demo_tasks = models.JSONField(default=list, blank=True)
    # The demo feed's settings (boards.demo_feed.FeedSettings: seed, repeat_share,
    # batch); empty means the defaults.
    demo_feed = models.JSONField(default=dict, blank=True)
    # How many tasks the demo feed has added: the number of the next one, which
    # with the seed decides what it is (so a run replays exactly).
    demo_feed_count = models.PositiveBigIntegerField(default=0, editable=False)
    # How the kaizen loop tries changes to the agents serving this board
    # (experiments.plans: canary_share, canary_size, max_n); empty means the
    # installation's settings. Faster plans for demo boards, never looser tests.
    experiment_plan = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The flow rollups (FlowHour, FlowLineHour, FlowItem) hold every whole hour of
    # this board's history before this time (None: none yet); the flow measures
    # read the event log itself only after it (boards.services.flow_fold).
    flow_folded_until = models.DateTimeField(null=True, blank=True, editable=False)

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
        "exceed it and marks the column. Agents never pull past either limit of In "
        "progress. On Review, a hard limit stops the pull while Review is full; a soft "
        "one is a signal: the board says how many decisions wait, and agents keep pulling.",
    )

    class Meta:
        ordering = ["board", "position"]
        constraints = [
            models.UniqueConstraint(fields=["board", "role"], name="column_one_per_role"),
            models.UniqueConstraint(fields=["board", "name"], name="column_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.board.name} / {self.name}"

    def wip_state(self, count: int) -> Column.WipState:
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
    prompt_template = models.TextField(
        default="{input}",
        help_text="What the model is asked. {input}, {title} and {last_error} are always "
        "available; other {names} must be declared as variables. Write {{ and }} for braces.",
    )
    prompt_variables = models.JSONField(
        default=list,
        blank=True,
        help_text='Variables the template may use beyond the built-in ones, such as ["customer"]; '
        "a task gives them as fields of a JSON object input.",
    )
    parameters = models.JSONField(
        default=dict,
        blank=True,
        help_text='Generation parameters for every tier: temperature, top_p, max_tokens, such as {"temperature": 0.2}.',
    )
    cascade = models.JSONField(
        default=default_cascade,
        help_text="Tiers tried cheapest first. Each: provider, model, parameters, price_in and price_out "
        "(dollars per 1k tokens) and threshold (accept an output whose confidence reaches it; "
        "the last tier's output is always taken).",
    )
    reuse_results = models.BooleanField(
        default=True,
        help_text="A task whose input matches one this agent already completed (with the same prompt "
        "version) takes that result instead of calling a model.",
    )
    cache_responses = models.BooleanField(
        default=True,
        help_text="Serve a call identical to an earlier one (provider, model, prompt, parameters) from the "
        "response cache.",
    )
    implementation = models.CharField(
        max_length=200,
        blank=True,
        help_text="A custom agent class (registered in KAIZEN_AGENT_CLASSES) that does the work "
        "instead of the prompt and cascade.",
    )
    # Goes up by one each time the prompt, its variables, parameters or cascade change;
    # tasks and ledger rows record the version they ran, and only results of the
    # current version are reused.
    prompt_version = models.PositiveIntegerField(default=1, editable=False)
    concurrency = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1)], help_text="Tasks in flight at once."
    )
    max_attempts = models.PositiveSmallIntegerField(default=3, validators=[MinValueValidator(1)])
    paused = models.BooleanField(default=False)
    # Jidoka (see andon.inspection): every output is inspected with these checks.
    quality_checks = models.JSONField(
        default=default_quality_checks,
        blank=True,
        help_text="Checks run on every output; a failed one sends the task to Review. Each: "
        '{"check": kind, "name": label, ...parameters}; kinds: confidence, uncertainty, json, length, '
        "token_waste, regex, custom. An empty list inspects nothing.",
    )
    breaker_threshold = models.PositiveSmallIntegerField(
        default=5,
        validators=[MinValueValidator(1)],
        help_text="Consecutive failed attempts that open the agent's circuit breaker (it then pulls nothing).",
    )
    breaker_cooldown_seconds = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1)],
        help_text="How long an open breaker waits before one probe task is tried.",
    )
    spike_defects = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1)],
        help_text="Defects among the agent's last outputs (see spike window) that stop its line.",
    )
    spike_window = models.PositiveSmallIntegerField(
        default=10,
        validators=[MinValueValidator(1)],
        help_text="How many recent outputs a defect spike counts.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Not columns: the agent's andon state on a board page, attached by
    # boards.selectors.board_agents_get for the template: its line stop in force
    # and its models' open breakers (andon.models' LineStop and CircuitBreaker,
    # named loosely: boards.models cannot import andon.models).
    line_stop: models.Model | None
    model_breakers: list[models.Model]

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("boards-agent-detail", kwargs={"pk": self.pk})

    @property
    def tiers(self) -> list[Tier]:
        """The cascade, parsed; an empty list if the stored value is malformed (a row
        written around ``clean``), which the runtime reports as a failed attempt."""
        try:
            return parse_cascade(self.cascade)
        except ConfigError:
            return []

    @property
    def is_simulated(self) -> bool:
        if self.implementation:
            return registry.is_simulated(self)
        # Read without parsing the whole cascade: boards ask this of every card.
        cascade = self.cascade if isinstance(self.cascade, list) else []
        return any(isinstance(tier, dict) and tier.get("provider") == "simulated" for tier in cascade)

    @property
    def model_summary(self) -> str:
        if self.implementation:
            return self.implementation.rsplit(".", 1)[-1]
        cascade = self.cascade if isinstance(self.cascade, list) else []
        return " → ".join(str(tier.get("model", "?")) for tier in cascade if isinstance(tier, dict))

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        try:
            variables = parse_variables(self.prompt_variables)
        except ConfigError as exc:
            errors["prompt_variables"] = [message for _, message in exc.problems]
            variables = []
        problems = check_template(self.prompt_template or "", variables)
        if problems:
            errors["prompt_template"] = problems
        for field_name, parse in (("parameters", parse_parameters), ("cascade", parse_cascade)):
            try:
                parse(getattr(self, field_name))
            except ConfigError as exc:
                errors[field_name] = [f"{where}: {message}" for where, message in exc.problems]
        if self.implementation and self.implementation not in settings.KAIZEN_AGENT_CLASSES:
            registered = ", ".join(settings.KAIZEN_AGENT_CLASSES) or "none"
            errors["implementation"] = [
                f"{self.implementation!r} is not a registered agent class (registered: {registered}); "
                "add its dotted path to KAIZEN_AGENT_CLASSES"
            ]
        try:
            parse_checks(self.quality_checks)
        except ConfigError as exc:
            errors["quality_checks"] = [f"{where}: {message}" for where, message in exc.problems]
        if self.spike_defects and self.spike_window and self.spike_defects > self.spike_window:
            errors["spike_defects"] = [
                f"{self.spike_defects} defects can never happen among the last {self.spike_window} outputs: "
                "make it at most the spike window."
            ]
        if errors:
            raise ValidationError(errors)
        self._clean_capabilities()

    def _clean_capabilities(self) -> None:
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
        one (rows written before ``clean`` checked them, or outside the admin).
        A custom agent class says its own (``capabilities()``)."""
        if self.implementation:
            return registry.custom_capabilities(self)
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

    # No index of their own: task_board_status and task_column_order (below) lead
    # with them, and every index is written again at each insert and each move.
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    column = models.ForeignKey(Column, on_delete=models.PROTECT, related_name="tasks", db_index=False)
    title = models.CharField(max_length=200)
    input = models.TextField(blank=True)
    capability = models.CharField(max_length=CAPABILITY_MAX_LENGTH, blank=True)
    priority = models.SmallIntegerField(default=0, help_text="Higher is more urgent.")
    # Order within a column. Gapped, so one task can be slotted between two
    # others without renumbering the column.
    position = models.BigIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.BACKLOG)
    # task_reuse_newest (below) leads with it.
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="tasks", db_index=False
    )
    output = models.TextField(blank=True)
    confidence = models.FloatField(null=True, blank=True)
    # How the confidence was obtained: logprobs, structured, simulated, none, or
    # custom (an agent class's own).
    confidence_source = models.CharField(max_length=20, blank=True)
    allow_reuse = models.BooleanField(
        default=True,
        help_text="Take the result of an identical completed task instead of calling a model "
        "(when the agent allows it too).",
    )
    # A digest of the normalised input (see boards.services.input_key): what reuse matches on.
    input_key = models.CharField(max_length=64, blank=True)
    reused_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    # The experiment (kaizen loop) this task's run took part in, and its arm
    # (control or treatment): which prompt version it ran. Set when it is claimed.
    experiment = models.ForeignKey(
        "experiments.Experiment", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    arm = models.CharField(max_length=10, blank=True)
    # The cascade tier (1 = cheapest) whose output was taken.
    accepted_tier = models.PositiveSmallIntegerField(null=True, blank=True)
    # Totals over the task's ledger rows (every attempt), kept with the task so
    # a card shows them without a query of its own.
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    model_calls = models.PositiveIntegerField(default=0)
    cache_hits = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # A reviewer's reason for rejecting the last output: given to the next attempt
    # (the {review_feedback} variable, or appended to the prompt), cleared once done.
    review_feedback = models.TextField(blank=True)
    blocked_note = models.TextField(blank=True)
    blocked_at = models.DateTimeField(null=True, blank=True)
    # The lease of the current run: only the holder of this token may finish it.
    lease_token = models.UUIDField(null=True, blank=True, unique=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The worker process running the current run (boards.workers), set when the
    # run begins there and cleared when the task leaves In progress: empty while
    # the claimed run waits for a worker to pick it up. Its heartbeat stopping
    # hands the task back long before the lease would run out.
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not columns. boards.services.task_move's note when a move took the column
    # past its soft WIP limit ("" otherwise), for the view's message:
    wip_note: str
    # Why the next pull will not take a drawn Ready card, and how hard it waits
    # (a HoldLevel), for the board's cards (boards.selectors.BoardPullStatus):
    # "" on the other cards. A default, not a missing attribute: the template
    # asks every card, and each lookup that fails costs Django a dir() of the
    # task (a fifth of the board's rendering at 150 cards).
    pull_hold: str = ""
    pull_hold_level: str = ""
    # A card in flight's work item age (seconds from its first claim), its level
    # against the board's service level expectation and that SLE
    # (boards.selectors.cards_age_set); "" on cards not in flight:
    flow_age: float
    flow_age_level: str = ""
    flow_sle: flow.Percentiles
    # The task's page, for the board's cards (boards.selectors.board_columns_get),
    # and the card drawn (boards.fragments.cards_html_set): "" until it is.
    card_url: str
    card_html: str = ""

    class Meta:
        ordering = ["position", "created_at"]
        indexes = [
            models.Index(fields=["column", "position", "created_at"], name="task_column_order"),
            # The board draws Done's latest first (boards.selectors.CARD_ORDER): with
            # a long history, the first cards come from this index (read backwards),
            # not from sorting every task ever finished (216 ms at 100,000 tasks).
            models.Index(fields=["column", "finished_at", "id"], name="task_column_finished"),
            models.Index(fields=["status", "lease_expires_at"], name="task_status_lease"),
            models.Index(fields=["board", "status"], name="task_board_status"),
            # Reuse takes the newest passing match: in this order the database reads
            # the matches newest first and stops at the first that passed, instead
            # of inspecting every earlier identical task (thousands, in a bulk batch).
            models.Index(
                fields=["agent", "input_key", "status", "finished_at", "id"], name="task_reuse_newest"
            ),
            # Where a task goes in a column asks whether a task of lower priority
            # waits there (boards.services.primitives._slots). Without
            # this, PostgreSQL answered by reading every task of the table (a hashed
            # subplan): 14 ms a task added with 58,000 tasks on record, growing with
            # the history. Only unfinished tasks are in it (a condition with no
            # parameter, so a prepared statement's generic plan can use it too), so
            # a task leaves it when it is done and the history never enters it.
            models.Index(
                fields=["column", "priority"],
                name="task_open_priority",
                condition=models.Q(finished_at__isnull=True),
            ),
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
        DEFERRED = "deferred"
        ESCALATED = "escalated"
        APPROVED = "approved"
        CORRECTED = "corrected"
        REJECTED = "rejected"

    class Actor(models.TextChoices):
        AGENT = "agent"
        USER = "user"
        SYSTEM = "system"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    # event_board_time (below) leads with it.
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="events", db_index=False)
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
        indexes = [
            models.Index(fields=["board", "created_at"], name="event_board_time"),
            # The flow measures' arrivals in a status over a window: finishes
            # (to_status done), returns to Ready (boards.flow_selectors).
            models.Index(fields=["board", "to_status", "created_at"], name="event_board_to_status_time"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.from_status}->{self.to_status}"

    @property
    def actor_name(self) -> str:
        if self.actor == self.Actor.AGENT and self.agent is not None:
            return self.agent.name
        if self.actor == self.Actor.USER and self.user is not None:
            return self.user.get_username()
        return self.actor


class LiveCallManager(models.Manager["ModelCall"]):
    """The production ledger: only the calls the line made for its work.

    Calls made to see a prompt change work before it touches the line (a replay on
    past tasks, a shadow run on mirrored live tasks, an adversarial probe; see
    experiments.genchi) are ledger rows too, marked with their purpose, and are
    "the price of seeing": every production figure (cost, budgets, the seven
    wastes, flow, metrics, the agent page) reads this manager, so none of them
    counts those calls. ``ModelCall.every`` reads all rows."""

    def get_queryset(self) -> models.QuerySet[ModelCall]:
        return super().get_queryset().filter(purpose=ModelCall.Purpose.LIVE)


class ModelCall(models.Model):
    """The ledger: one row per model call (or call avoided: a cache hit or a reused
    result), from which cost and waste are measured. Rows are history: they copy
    what the call used rather than pointing at configuration that may change.

    ``objects`` holds the line's own calls only (LiveCallManager)."""

    class Source(models.TextChoices):
        MODEL = "model", "Model call"
        CACHE = "cache", "Cache hit"
        REUSE = "reuse", "Reused result"

    class Purpose(models.TextChoices):
        LIVE = "live", "Live work"
        REPLAY = "replay", "Replay of past work"
        SHADOW = "shadow", "Shadow run on mirrored live work"
        PROBE = "probe", "Adversarial probe"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="model_call_rows")
    # No index of their own: modelcall_board_time and modelcall_agent_time lead with them.
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+", db_index=False)
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    # 1 for the cheapest tier; null for a reused result, which calls no tier.
    tier = models.PositiveSmallIntegerField(null=True, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MODEL)
    provider = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=120, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    latency_ms = models.FloatField(default=0)
    confidence = models.FloatField(null=True, blank=True)
    confidence_source = models.CharField(max_length=20, blank=True)
    # This call's output was the one taken (it cleared its tier's threshold, or was the last tier's).
    accepted = models.BooleanField(default=False)
    # The call belongs to a run whose result came after its lease had expired (the
    # task had gone back, or another run finished it): recorded because it was
    # made and paid for, never as the accepted one (accepted is then False).
    stale = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    # For a reused result: the task whose result was taken.
    reused_from = models.ForeignKey(Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # What the seven wastes (andon.muda) need, recorded as the call is made:
    # a SHA-256 of (provider, model, rendered prompt, parameters), the response
    # cache's key, so identical calls (motion) are found by an index, not by
    # comparing prompts; empty for a reused result and custom agents' calls.
    request_key = models.CharField(max_length=64, blank=True)
    # The tier's context window in tokens when the call was made (null: not known):
    # tokens_in / context_window is the call's context-window utilisation (inventory).
    context_window = models.PositiveIntegerField(null=True, blank=True)
    # For an output the cascade passed over: would it have passed the agent's
    # inspection (null: not accepted-or-not, or could not be told, e.g. custom
    # checks)? A later tier paid for after a passing one is over-processing.
    would_pass = models.BooleanField(null=True, blank=True)
    # When the call was made, which may be well before its row is written (at the
    # end of the run).
    created_at = models.DateTimeField(default=timezone.now)
    # Why the call was made: the line's work, or seeing a prompt change before it
    # touches the line (replay, shadow, probe), which no production figure counts.
    purpose = models.CharField(max_length=10, choices=Purpose.choices, default=Purpose.LIVE)

    objects = LiveCallManager()
    every: models.Manager[ModelCall] = models.Manager()

    class Meta:
        ordering = ["created_at", "pk"]
        # Deletions cascading from a task, and related lookups, see every row.
        base_manager_name = "every"
        indexes = [
            models.Index(fields=["board", "created_at"], name="modelcall_board_time"),
            models.Index(fields=["agent", "created_at"], name="modelcall_agent_time"),
            models.Index(fields=["request_key", "created_at"], name="modelcall_request_time"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.provider}/{self.model} for task {self.task_id}"

    @property
    def simulated(self) -> bool:
        return self.provider == "simulated"


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only a SHA-256 of the token is stored.

    A token has a scope: the boards it may use (all, or those listed) and whether
    it may only read or also add tasks. Writing also needs its user to hold the
    ``boards.add_task`` permission, checked on every request, so a token never
    outlasts what its user may do."""

    class Access(models.TextChoices):
        READ = "read", "Read only"
        WRITE = "write", "Read and add tasks"

    # The permission a write token's user needs to add tasks through the API.
    WRITE_PERMISSION = "boards.add_task"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80, blank=True)
    prefix = models.CharField(max_length=12, help_text="The start of the token, to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    # Read only unless said otherwise: tokens made before scopes existed became
    # read-only (migration 0006), and writing is granted on purpose.
    access = models.CharField(
        max_length=5,
        choices=Access.choices,
        default=Access.READ,
        help_text="Read only, or read and add tasks (which also needs the user's boards.add_task permission).",
    )
    all_boards = models.BooleanField(
        default=True, help_text="The token may use every board; otherwise only the boards listed."
    )
    boards = models.ManyToManyField(
        Board, blank=True, related_name="+", help_text="The boards the token may use when not all boards."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def can_write(self) -> bool:
        return self.access == self.Access.WRITE

    def board_slugs(self) -> list[str] | None:
        """The slugs of the boards this token may use, or None for every board."""
        if self.all_boards:
            return None
        if not hasattr(self, "_board_slugs"):
            self._board_slugs = sorted(self.boards.values_list("slug", flat=True))
        return self._board_slugs

    def board_problem(self, board: Board) -> str | None:
        """Why this token may not use ``board``, or None when it may."""
        slugs = self.board_slugs()
        if slugs is None or board.slug in slugs:
            return None
        allowed = ", ".join(repr(slug) for slug in slugs) or "none"
        return (
            f"This API token may not use board {board.slug!r}: it is limited to the boards {allowed}. "
            "Use a token for that board (`manage.py create_api_token USER --board SLUG`)."
        )

    def write_problem(self) -> str | None:
        """Why this token may not add tasks, or None when it may."""
        if not self.can_write:
            return (
                "This API token is read-only: adding tasks needs a write token "
                "(`manage.py create_api_token USER`, without --read-only)."
            )
        if not self._may_add_task():
            return (
                f"User {self.user.get_username()!r} may not add tasks: an administrator must give them the "
                f"“Can add task” permission ({self.WRITE_PERMISSION}) in the admin."
            )
        return None

    def _may_add_task(self) -> bool:
        # Read with the token (services.api_token_authenticate: ModelBackend's
        # rules, in the same query) when only ModelBackend decides permissions;
        # asked of the user, through every backend, otherwise.
        may = getattr(self, "may_add_task", None)
        if may is not None and settings.AUTHENTICATION_BACKENDS == [MODEL_BACKEND]:
            return bool(may)
        return self.user.has_perm(self.WRITE_PERMISSION)

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def generate_key() -> str:
        return "kz_" + secrets.token_urlsafe(32)


# --- Flow rollups ------------------------------------------------------------------
# What the flow measures (boards.flow_selectors) would otherwise read from every
# event, ledger row, inspection and escalation of a window, summed per whole hour
# once the hour is over (boards.services.flow_fold). Like a continuous aggregate
# with real-time aggregation: a window reads these for the hours folded and the
# event log itself for the rest (the edges and the last hour), so every figure is
# the one the event log gives. The agent and capability of a change or an item
# are its task's when the hour was folded.


class FlowHour(models.Model):
    """Status changes of a board in one hour, by the task's agent and capability,
    the statuses left and entered, and whether a person made them."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    # Hours since the Unix epoch (UTC): floor(epoch seconds / 3600).
    hour = models.BigIntegerField()
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    capability = models.CharField(max_length=CAPABILITY_MAX_LENGTH, blank=True)
    from_status = models.CharField(max_length=10, blank=True)
    to_status = models.CharField(max_length=10, blank=True)
    by_person = models.BooleanField(default=False)
    changes = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["board", "hour"], name="flowhour_board_hour")]

    def __str__(self) -> str:
        return f"{self.hour}: {self.from_status}->{self.to_status} x{self.changes}"


class FlowLineHour(models.Model):
    """Inspections, escalations and ledger cost of a board in one hour, by the
    row's own agent and its task's capability."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    hour = models.BigIntegerField()
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    capability = models.CharField(max_length=CAPABILITY_MAX_LENGTH, blank=True)
    inspections = models.PositiveIntegerField(default=0)
    escalations = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=10, default=0)

    class Meta:
        indexes = [models.Index(fields=["board", "hour"], name="flowlinehour_board_hour")]

    def __str__(self) -> str:
        return f"{self.hour}: agent {self.agent_id} {self.capability}"


class FlowItem(models.Model):
    """One arrival of a task in Done (a finished item) in a folded hour, with
    what its cycle and lead time and first-pass yield need."""

    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="+")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField()
    # The first claim (None: never claimed, finished by a person's move).
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField()
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    capability = models.CharField(max_length=CAPABILITY_MAX_LENGTH, blank=True)
    first_pass = models.BooleanField()

    class Meta:
        indexes = [models.Index(fields=["board", "finished_at"], name="flowitem_board_finished")]

    def __str__(self) -> str:
        return f"task {self.task_id} finished {self.finished_at:%Y-%m-%d %H:%M}"


def board_agent_ids(board_id: int) -> models.QuerySet:
    """The ids of the board's agents, as a subquery (no join to the agents): what
    the line's compiled queries (kaizen_web.prepared) name a board's agents by."""
    return Agent.boards.through.objects.filter(board_id=board_id).values("agent_id")
