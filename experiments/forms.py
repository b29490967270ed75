"""Forms of the evolution review: they parse requests; the services validate.

The note is not required here on purpose: ``experiments.services`` says what a
missing or overlong note means, so each message exists once.
"""

from __future__ import annotations

from django import forms

from boards.models import Agent


class NoteForm(forms.Form):
    """Every reviewer action (approve, reject, advance, promote, roll back,
    resume) carries a note: why, for the audit log."""

    note = forms.CharField(required=False, strip=False)

    def value(self) -> str:
        self.is_valid()
        return getattr(self, "cleaned_data", {}).get("note", "")


class AuditFilterForm(forms.Form):
    """The audit log's GET filter. An unknown agent is dropped (the filter is
    then off) rather than refused: a stale bookmark still opens."""

    agent = forms.ModelChoiceField(queryset=Agent.objects.order_by("name"), required=False)

    def agent_id(self) -> int | None:
        self.is_valid()
        agent = getattr(self, "cleaned_data", {}).get("agent")
        return agent.pk if agent is not None else None
