"""The kaizen loop's records in the admin, read-only for everyone, superusers
too: versions are immutable, the audit log is append-only, and proposals and
experiments change only through the evolution review (/kaizen/), whose services
check the human gates and write the audit entries. Changing a row here would
skip both."""

from __future__ import annotations

from django.contrib import admin

from experiments.models import AuditEntry, ChangeProposal, Experiment, PromptVersion
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
