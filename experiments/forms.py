"""Forms of the evolution review: they parse requests; the services validate.

The note is not required here on purpose: ``experiments.services`` says what a
missing or overlong note means, so each message exists once.
"""

from __future__ import annotations

from django import forms

from boards.models import Agent
from experiments.models import Pattern


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


class SimilarForm(forms.Form):
    """The similar-work page's GET query: a text or a task, and filters."""

    text = forms.CharField(
        required=False, max_length=4000, strip=True, widget=forms.Textarea(attrs={"rows": 3})
    )
    task = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    agent = forms.ModelChoiceField(queryset=Agent.objects.order_by("name"), required=False)
    verdict = forms.ChoiceField(required=False, choices=[("", "Any outcome"), *Pattern.Verdict.choices])
    limit = forms.IntegerField(required=False, min_value=1, max_value=50)

    def clean(self) -> dict:
        data = super().clean()
        if data.get("text") and data.get("task"):
            raise forms.ValidationError("Give a text or a task number, not both.")
        return data

    @property
    def asked(self) -> bool:
        data = getattr(self, "cleaned_data", {})
        return bool(data.get("text") or data.get("task"))
