"""The andon's records in the admin, read-only: decisions are made in the inbox,
stops are pulled and restarted from the board and the inbox, and breakers move
on their own. Changing a row here would skip the services that move the tasks."""

from __future__ import annotations

from django.contrib import admin

from andon.models import CircuitBreaker, Escalation, Inspection, LineStop
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
