"""The andon's records in the admin, read-only: decisions are made in the inbox,
stops are pulled and restarted from the board and the inbox, and breakers move
on their own. Changing a row here would skip the services that move the tasks.

Budgets are the exception: editable here by people with the budget permissions,
through the same services as the budgets page (andon.budget_services), so a
change here is recorded and applied to the current period like one made there."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from andon import budget_services, waste_services
from andon.forms import WasteThresholdForm
from andon.models import (
    Alert,
    AndonRecord,
    Budget,
    CircuitBreaker,
    Escalation,
    Inspection,
    LineStop,
    WasteThreshold,
)
from kaizen_web.admin import ReadOnlyAdmin


@admin.register(Escalation)
class EscalationAdmin(ReadOnlyAdmin):
    list_display = ["pk", "task", "board", "agent", "status", "created_at", "decided_by", "decided_at"]
    list_filter = ["status", "board", "agent"]
    search_fields = ["task__title", "output", "corrected_output", "note"]
    list_select_related = ["task", "board", "agent", "decided_by"]


@admin.register(Inspection)
class InspectionAdmin(ReadOnlyAdmin):
    list_display = ["pk", "task", "agent", "passed", "waste_tokens", "tokens_out", "created_at"]
    list_filter = ["passed", "agent"]
    list_select_related = ["task", "agent"]


@admin.register(LineStop)
class LineStopAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "board",
        "agent",
        "kind",
        "reason",
        "stopped_by",
        "created_at",
        "restarted_by",
        "restarted_at",
    ]
    list_filter = ["kind", "board", "agent"]
    list_select_related = ["board", "agent", "stopped_by", "restarted_by"]


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = ["label", "scope", "state", "consecutive_failures", "opened_at", "updated_at"]
    list_filter = ["scope", "state"]


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["name", "board", "agent", "unit", "period", "limit", "warn_percent", "updated_at"]
    list_filter = ["unit", "period", "board", "agent"]
    list_select_related = ["board", "agent"]
    fields = ["name", "board", "agent", "unit", "period", "limit", "warn_percent"]
    actions = None  # a bulk delete would skip the service

    def save_model(self, request, obj, form, change):
        values = {name: getattr(obj, name) for name in self.fields}
        if change:
            changed = {name: values[name] for name in form.changed_data if name in values}
            budget_services.budget_update(budget=obj, user=request.user, **changed)
        else:
            saved = budget_services.budget_create(user=request.user, **values)
            obj.pk = saved.pk

    def delete_model(self, request, obj):
        budget_services.budget_delete(budget=obj, user=request.user)


class WasteThresholdAdminForm(forms.ModelForm):
    """The services' checks as form errors, so a bad value is shown inline, not raised."""

    class Meta:
        model = WasteThreshold
        fields = [
            "board",
            "agent",
            "waste",
            "limit",
            "window_outputs",
            "window_hours",
            "stop_line",
            "enabled",
        ]

    def clean(self) -> dict:
        data = super().clean() or {}
        probe = WasteThreshold(**{name: data.get(name) for name in self.Meta.fields})
        try:
            waste_services.threshold_validate(probe)
        except ValidationError as exc:
            for name, errors in exc.error_dict.items():
                for error in errors:
                    self.add_error(None if name == "__all__" else name, error)
        return data


@admin.register(WasteThreshold)
class WasteThresholdAdmin(admin.ModelAdmin):
    """Through the same services as the thresholds page (andon.waste_services):
    checked, recorded, and a deletion lifts the threshold's stop."""

    list_display = [
        "pk",
        "waste",
        "board",
        "agent",
        "limit",
        "window_outputs",
        "window_hours",
        "stop_line",
        "enabled",
    ]
    list_filter = ["waste", "stop_line", "enabled", "board", "agent"]
    list_select_related = ["board", "agent"]
    form = WasteThresholdAdminForm
    fields = ["board", "agent", "waste", "limit", "window_outputs", "window_hours", "stop_line", "enabled"]
    actions = None  # a bulk delete would skip the service

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "waste":
            # The model cannot name the wastes (andon.muda imports the models).
            return forms.ChoiceField(choices=WasteThresholdForm.base_fields["waste"].choices, label="Waste")
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        values = {name: getattr(obj, name) for name in self.fields}
        if change:
            changed = {name: values[name] for name in form.changed_data if name in values}
            waste_services.threshold_update(threshold=obj, user=request.user, **changed)
        else:
            saved = waste_services.threshold_create(user=request.user, **values)
            obj.pk = saved.pk

    def delete_model(self, request, obj):
        waste_services.threshold_delete(threshold=obj, user=request.user)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "kind",
        "title",
        "board",
        "agent",
        "created_at",
        "acknowledged_by",
        "acknowledged_at",
    ]
    list_filter = ["kind", "board", "agent"]
    list_select_related = ["board", "agent", "acknowledged_by"]


@admin.register(AndonRecord)
class AndonRecordAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "action", "budget", "board", "agent", "user", "detail"]
    list_filter = ["action"]
    list_select_related = ["budget", "board", "agent", "user"]
