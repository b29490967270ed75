"""The admin: boards with their columns, agents, and read-only tasks and tokens.

What changes the line goes through the services, as everywhere else: pausing
and resuming are actions that call them (``paused`` is read-only on the forms),
and after columns or agents are saved here ``services.board_config_changed``
sends the board to the browsers and pulls, as a changed WIP limit or a new
agent may have freed capacity.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.text import get_text_list

from boards import services
from boards.config import REQUIRED_ROLES, ROLE_ORDER
from boards.models import Agent, ApiToken, Board, Column, Task, TaskEvent
from experiments.models import PromptVersion

Role = Column.Role


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _paused_state(paused: bool, noun: str) -> str:
    """What a read-only ``paused`` says on a change form, and where to change it."""
    if paused:
        return f"Paused. Resume it with the “Resume selected {noun}s” action on the list of {noun}s."
    return f"Running. Pause it with the “Pause selected {noun}s” action on the list of {noun}s."


# --- boards and their columns ---------------------------------------------------


class ColumnForm(forms.ModelForm):
    class Meta:
        model = Column
        fields = ["position", "name", "role", "wip_limit", "hard_limit"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns, never None
        if data.get("role") == Role.DONE and data.get("wip_limit") is not None:
            self.add_error("wip_limit", "Done collects finished work; it takes no WIP limit.")
        if self.instance.pk and "role" in self.changed_data and self.instance.tasks.exists():
            # A task's status follows its column's role: changing the role would
            # leave them saying one thing while the column says another.
            self.add_error(
                "role",
                f"“{self.instance.name}” holds tasks; move them out before changing its role.",
            )
        return data


class ColumnFormSet(BaseInlineFormSet):
    """The rules a board's columns keep together: one column per role, the roles
    the line needs, in the order work flows (the same rules as apply_config)."""

    def get_unique_error_message(self, unique_check) -> str:
        # Django's own check of the unique constraints across the rows; in words
        # that say what to do.
        fields = [field for field in unique_check if field != self.fk.name]
        if fields == ["role"]:
            return "A board has one column per role: give each column a different role."
        if fields == ["name"]:
            return "Each column of a board needs its own name."
        return super().get_unique_error_message(unique_check)

    def clean(self) -> None:
        super().clean()  # also refuses two rows with one role, or one name
        if any(self.errors):
            return  # the rows' own errors first; these rules need valid rows
        kept = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        errors: list[str] = []
        roles = {column["role"] for column in kept}
        missing = [Role(role).label for role in REQUIRED_ROLES if role not in roles]
        if missing:
            errors.append(
                f"No {get_text_list(missing, 'or')} column: every board needs a Ready, an In progress "
                "and a Done column (Backlog and Review are optional). A row is saved once it has a name."
            )
        by_position = sorted(kept, key=lambda c: c["position"])
        for before, after in zip(by_position, by_position[1:], strict=False):
            if before["position"] == after["position"]:
                errors.append(
                    f"“{before['name']}” and “{after['name']}” have the same position "
                    f"({after['position']}): give each column its own, left to right."
                )
            elif ROLE_ORDER.index(after["role"]) < ROLE_ORDER.index(before["role"]):
                errors.append(
                    f"“{after['name']}” ({Role(after['role']).label}) comes after “{before['name']}” "
                    f"({Role(before['role']).label}): order the columns as work flows, "
                    f"{', '.join(Role(r).label for r in ROLE_ORDER)}."
                )
        if errors:
            raise ValidationError(errors)


class ColumnInline(admin.TabularInline):
    model = Column
    form = ColumnForm
    formset = ColumnFormSet
    fields = ["position", "name", "role", "wip_limit", "hard_limit"]
    ordering = ["position", "pk"]

    def get_extra(self, request: HttpRequest, obj: Board | None = None, **kwargs) -> int:
        # A row per role on a new board (BoardAdmin fills in role and position;
        # a row left without a name is not saved); none added to an existing one.
        return len(ROLE_ORDER) if obj is None else 0


@admin.register(Board)
class BoardAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "paused", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    # Pausing and resuming are actions: the services stop or restart the pull
    # and tell the browsers, which saving the field would not.
    exclude = ["paused"]
    readonly_fields = ["line_state"]
    inlines = [ColumnInline]
    actions = ["pause", "resume"]

    @admin.display(description="State")
    def line_state(self, board: Board) -> str:
        return _paused_state(board.paused, "board")

    @admin.action(description="Pause selected boards", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Board]) -> None:
        for board in queryset:
            services.board_set_paused(board=board, paused=True)
        self.message_user(
            request, f"Paused {_plural(len(queryset), 'board')}: agents pull nothing from them until resumed."
        )

    @admin.action(description="Resume selected boards", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Board]) -> None:
        for board in queryset:
            services.board_set_paused(board=board, paused=False)
        self.message_user(request, f"Resumed {_plural(len(queryset), 'board')}.", messages.SUCCESS)

    def get_formset_kwargs(self, request: HttpRequest, obj: Board, inline, prefix: str) -> dict:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, ColumnInline) and obj.pk is None:
            kwargs["initial"] = [{"position": i, "role": role} for i, role in enumerate(ROLE_ORDER)]
        return kwargs

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if any(formset.has_changed() for formset in formsets):
            services.board_config_changed(board_id=form.instance.pk)


# --- agents ------------------------------------------------------------------------


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        # Not ``paused``: pausing is an action that goes through the services.
        fields = [
            "name",
            "boards",
            "capabilities",
            "concurrency",
            "max_attempts",
            "prompt_template",
            "prompt_variables",
            "parameters",
            "cascade",
            "reuse_results",
            "cache_responses",
            "implementation",
            "quality_checks",
            "breaker_threshold",
            "breaker_cooldown_seconds",
            "spike_defects",
            "spike_window",
        ]
        widgets = {
            "prompt_template": forms.Textarea(attrs={"rows": 8, "cols": 90}),
            "cascade": forms.Textarea(attrs={"rows": 8, "cols": 90}),
            "quality_checks": forms.Textarea(attrs={"rows": 6, "cols": 90}),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "implementation" not in self.fields:
            return  # read-only: an existing agent's class changes through a proposal
        # Only a registered class can be chosen; blank runs the prompt and cascade.
        choices = [("", "— the prompt and cascade —")] + [(p, p) for p in settings.KAIZEN_AGENT_CLASSES]
        current = self.instance.implementation
        if current and current not in settings.KAIZEN_AGENT_CLASSES:
            choices.append((current, f"{current} (no longer registered)"))
        self.fields["implementation"].widget = forms.Select(choices=choices)


# What the model is asked (PromptVersion.FIELDS). An existing agent's change to
# these is a proposal on the agent page, with a rationale, a diff, the approval a
# major change needs and a canary: the admin would skip every one of those gates.
PROMPT_FIELDS = list(PromptVersion.FIELDS)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ["name", "models", "concurrency", "prompt_version", "paused"]
    list_filter = ["paused", "boards"]
    filter_horizontal = ["boards"]
    readonly_fields = ["state", "prompt_version", "agent_page"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "state",
                    "agent_page",
                    "boards",
                    "capabilities",
                    "concurrency",
                    "max_attempts",
                ]
            },
        ),
        (
            "Prompt and cascade",
            {
                "fields": [
                    "prompt_version",
                    "prompt_template",
                    "prompt_variables",
                    "parameters",
                    "cascade",
                    "reuse_results",
                    "cache_responses",
                ]
            },
        ),
        (
            "Jidoka: inspection, circuit breaker, defect spike",
            {
                "fields": [
                    "quality_checks",
                    "breaker_threshold",
                    "breaker_cooldown_seconds",
                    "spike_defects",
                    "spike_window",
                ]
            },
        ),
        ("Custom agent", {"fields": ["implementation"], "classes": ["collapse"]}),
    ]
    actions = ["pause", "resume"]

    def get_readonly_fields(self, request: HttpRequest, obj: Agent | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        # A new agent still sets its first prompt here.
        return fields if obj is None else [*fields, *PROMPT_FIELDS]

    def get_fieldsets(self, request: HttpRequest, obj: Agent | None = None) -> list:
        if obj is None:
            return self.fieldsets
        note = format_html(
            "Read-only here: a change to the prompt, its variables, parameters, cascade or class goes "
            'through <a href="{}#edit">the agent page</a> as a proposal, with a rationale and a diff '
            "against the active version; a major one waits for approval, and each is tried on a canary "
            'first. Its <a href="{}#history">history</a> lists every version.',
            obj.get_absolute_url(),
            obj.get_absolute_url(),
        )
        fieldsets = []
        for name, options in self.fieldsets:
            if name in ("Prompt and cascade", "Custom agent"):
                options = {**options, "description": note}
            fieldsets.append((name, options))
        return fieldsets

    @admin.display(description="State")
    def state(self, agent: Agent) -> str:
        return _paused_state(agent.paused, "agent")

    @admin.display(description="Cascade")
    def models(self, agent: Agent) -> str:
        label = agent.model_summary
        return f"{label} (simulated)" if agent.is_simulated else label

    @admin.display(description="Agent page")
    def agent_page(self, agent: Agent) -> str:
        if agent.pk is None:
            return "Shown once the agent is saved."
        return format_html(
            '<a href="{}">{}</a> (metrics, the prompt\'s history, and changes to it proposed tier by tier)',
            agent.get_absolute_url(),
            agent.get_absolute_url(),
        )

    def save_model(self, request: HttpRequest, obj: Agent, form, change: bool) -> None:
        # The prompt fields are read-only for an existing agent, so this saves a new
        # agent's first prompt or how an agent runs; the service still records a
        # version (and who) should any caller change the prompt.
        # The admin lets in signed-in staff only; this says so to the type checker.
        user = request.user if request.user.is_authenticated else None
        services.agent_save(agent=obj, user=user, rationale="saved in the admin")

    @admin.action(description="Pause selected agents", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            services.agent_set_paused(agent=agent, paused=True)
        self.message_user(
            request,
            f"Paused {_plural(len(queryset), 'agent')}: they take no new tasks and finish what they run.",
        )

    @admin.action(description="Resume selected agents", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            services.agent_set_paused(agent=agent, paused=False)
        self.message_user(request, f"Resumed {_plural(len(queryset), 'agent')}.", messages.SUCCESS)

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        # The boards it served before this save, too: one it left must stop showing it.
        before = set(form.instance.boards.values_list("pk", flat=True))
        super().save_related(request, form, formsets, change)
        if form.has_changed():
            after = set(form.instance.boards.values_list("pk", flat=True))
            for board_id in sorted(before | after):
                services.board_config_changed(board_id=board_id)

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        self.delete_queryset(request, Agent.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        board_ids = set(Board.objects.filter(agents__in=queryset).values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        for board_id in sorted(board_ids):
            services.board_config_changed(board_id=board_id)


# --- tasks and tokens: read-only -----------------------------------------------------


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    extra = 0
    can_delete = False
    # A tuple: the stubs type fields and readonly_fields as different lists.
    fields = ("created_at", "kind", "from_status", "to_status", "actor", "agent", "user", "note")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    # Tasks change state through the board and the services, which record every
    # move and keep the WIP counts; the admin only shows them. Deleting one here
    # would drop it, and its history, without an event or a live update.
    list_display = ["title", "board", "status", "agent", "priority", "attempts", "created_at"]
    list_filter = ["board", "status", "agent"]
    search_fields = ["title", "input"]
    inlines = [TaskEventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        # Tokens are made with `manage.py create_api_token`, which shows the key once.
        return False
