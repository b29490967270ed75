"""The kaizen loop's records in the admin, read-only for everyone, superusers
too: versions are immutable, the audit log is append-only, and proposals,
experiments, gates and replays change only through the evolution review
(/kaizen/), whose services check the human gates and write the audit entries.
Changing a row here would skip both. An agent's gate policy may be changed here
as on its page: through the same service (checked and audited)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from experiments import services
from experiments.models import (
    AgentGates,
    AuditEntry,
    ChangeProposal,
    Experiment,
    Gate,
    PromptVersion,
    Replay,
)
from kaizen_web.admin import ReadOnlyAdmin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "agent", "action", "user", "reason", "proposal", "experiment", "version"]
    list_filter = ["action", "agent"]
    search_fields = ["reason"]
    list_select_related = [
        "agent",
        "user",
        "proposal__agent",
        "proposal__base_version",
        "proposal__candidate",
        "experiment__agent",
        "experiment__control",
        "experiment__treatment",
        "version__agent",
    ]
    date_hierarchy = "created_at"


@admin.register(PromptVersion)
class PromptVersionAdmin(ReadOnlyAdmin):
    list_display = ["agent", "number", "source", "author", "created_at"]
    list_filter = ["agent", "source"]
    search_fields = ["prompt_template", "rationale"]
    list_select_related = ["agent", "author"]


@admin.register(ChangeProposal)
class ChangeProposalAdmin(ReadOnlyAdmin):
    list_display = ["pk", "agent", "base_version", "candidate", "major", "status", "author", "created_at"]
    list_filter = ["status", "major", "agent"]
    search_fields = ["rationale", "decision_note"]
    list_select_related = ["agent", "author", "base_version__agent", "candidate__agent"]


@admin.register(Experiment)
class ExperimentAdmin(ReadOnlyAdmin):
    list_display = ["pk", "agent", "control", "treatment", "stage", "status", "started_at", "ended_at"]
    list_filter = ["status", "stage", "agent"]
    list_select_related = ["agent", "control__agent", "treatment__agent"]


class AgentGatesAdminForm(forms.ModelForm):
    """The service's checks as form errors, so a bad value is shown inline, not raised."""

    class Meta:
        model = AgentGates
        fields = ["agent", *services.GATE_FIELDS]

    def clean(self) -> dict:
        data = super().clean() or {}
        try:
            services.agent_gates_clean({name: data[name] for name in services.GATE_FIELDS if name in data})
        except ValidationError as exc:
            for name, errors in exc.error_dict.items() if hasattr(exc, "error_dict") else []:
                for error in errors:
                    self.add_error(None if name == "__all__" else name, error)
        return data


@admin.register(AgentGates)
class AgentGatesAdmin(admin.ModelAdmin):
    list_display = ["agent", "replay", "adversarial", "shadow", "holdout_share", "holdout_version"]
    list_select_related = ["agent", "holdout_version__agent"]
    form = AgentGatesAdminForm
    fields = ["agent", *services.GATE_FIELDS, "holdout_version", "holdout_started_at"]
    # The holdout's version and start are fixed by the promotions (experiments.services).
    readonly_fields = ["holdout_version", "holdout_started_at"]
    actions = None  # a bulk delete would skip the audit log

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # A policy belongs to its agent: the agent is chosen once.
        return [*self.readonly_fields, "agent"] if obj is not None else self.readonly_fields

    # Changed by approvers only, as on the agent page (the service checks it again).
    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.has_perm(services.APPROVE_PERMISSION) and super().has_change_permission(
            request, obj
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(services.APPROVE_PERMISSION) and super().has_add_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: AgentGates, form, change: bool) -> None:
        # The admin lets in signed-in staff only; this says so to the type checker.
        assert request.user.is_authenticated
        policy = {name: getattr(obj, name) for name in services.GATE_FIELDS}
        saved = services.agent_gates_set(agent=obj.agent, user=request.user, **policy)
        obj.pk = saved.pk


@admin.register(Replay)
class ReplayAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "agent",
        "kind",
        "candidate",
        "baseline",
        "state",
        "done",
        "total",
        "verdict",
        "created_at",
    ]
    list_filter = ["kind", "state", "verdict", "agent"]
    list_select_related = ["agent", "candidate__agent", "baseline__agent"]
    exclude = ["salt"]
    date_hierarchy = "created_at"


@admin.register(Gate)
class GateAdmin(ReadOnlyAdmin):
    list_display = ["pk", "proposal", "position", "kind", "state", "decided_by", "ended_at"]
    list_filter = ["kind", "state"]
    list_select_related = [
        "proposal__agent",
        "proposal__base_version",
        "proposal__candidate",
        "decided_by",
    ]
