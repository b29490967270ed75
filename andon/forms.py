"""Forms of the andon pages: they parse requests; the services validate.

Text fields are not required here on purpose: the services say what a missing
reason or correction means (``andon.services``), so each message exists once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from andon.models import Budget, WasteThreshold
from andon.muda import LABELS, NAMES, TARGETS, window_problems
from boards.models import Agent, Board


class InboxFilterForm(forms.Form):
    """The inbox's GET filters. A value that is not a number is dropped (the
    filter is then off) rather than refused: a stale bookmark still opens."""

    board = forms.IntegerField(required=False, min_value=1)
    agent = forms.IntegerField(required=False, min_value=1)
    check = forms.CharField(required=False, max_length=100)

    def filters(self) -> dict[str, int | str | None]:
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        return {
            "board_id": data.get("board"),
            "agent_id": data.get("agent"),
            "check": data.get("check") or "",
        }

    def scope(self) -> tuple[Board | None, Agent | None]:
        """The board and agent the filters name (None where they name none or
        one that is gone): what the budgets and thresholds pages are about."""
        filters = self.filters()
        board = Board.objects.filter(pk=filters["board_id"]).first() if filters["board_id"] else None
        agent = Agent.objects.filter(pk=filters["agent_id"]).first() if filters["agent_id"] else None
        return board, agent


# A group's row posts its members' ids; more than any Review column holds.
MAX_MEMBERS = 500


class MembersForm(forms.Form):
    """The escalations one decision covers: a group of identical ones, whose
    row posts its members' ids (``members=12,15,18``). Missing or unreadable:
    the escalation of the URL alone (a stale or hand-made form decides no more
    than the one it names)."""

    members = forms.CharField(required=False, max_length=20 * MAX_MEMBERS)

    def member_ids(self, pk: int) -> list[int]:
        """``pk`` first, then the other members, each once."""
        raw = self.cleaned_data.get("members", "") if self.is_valid() else ""
        ids = [pk]
        for part in raw.split(","):
            part = part.strip()
            if part.isascii() and part.isdigit() and int(part) not in ids:
                ids.append(int(part))
        return ids[:MAX_MEMBERS]


class ClaimForm(MembersForm):
    release = forms.BooleanField(required=False)


class ApproveForm(MembersForm):
    note = forms.CharField(required=False, strip=False)


class CorrectForm(MembersForm):
    output = forms.CharField(required=False, strip=False)
    note = forms.CharField(required=False, strip=False)


class RejectForm(MembersForm):
    reason = forms.CharField(required=False, strip=False)


class RestartForm(forms.Form):
    note = forms.CharField(required=False, strip=False)


class CordForm(forms.Form):
    """Pull the andon cord on a board or on one agent."""

    board = forms.ModelChoiceField(queryset=Board.objects.all(), required=False)
    agent = forms.ModelChoiceField(queryset=Agent.objects.all(), required=False)
    reason = forms.CharField(required=False, strip=False)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns, never None
        if not self.errors and (data.get("board") is None) == (data.get("agent") is None):
            raise forms.ValidationError("Choose a board or an agent to stop (one of them).")
        return data


class MudaFilterForm(forms.Form):
    """The Muda page's window and agent. Unlike the inbox's filters, a bad value
    is refused with a message beside its field: a window that means nothing
    would show numbers that look real."""

    since = forms.DateTimeField(
        required=False,
        label="From",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Default: 7 days before the end, or the board's start if later.",
        error_messages={"invalid": "Give a date and time, such as 2026-01-05 09:00."},
    )
    until = forms.DateTimeField(
        required=False,
        label="To",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Default: now (the page then updates live).",
        error_messages={"invalid": "Give a date and time, such as 2026-01-12 09:00."},
    )
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.none(),
        required=False,
        empty_label="Every agent",
        to_field_name="name",
        error_messages={"invalid_choice": "That agent does not serve this board: choose one from the list."},
    )

    def __init__(self, *args, board: Board, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        agent = self.fields["agent"]
        assert isinstance(agent, forms.ModelChoiceField)
        agent.queryset = Agent.objects.filter(boards=board).order_by("name")

    def clean(self) -> dict[str, Any]:
        # The window's rules are written once (andon.muda); the API says the same.
        super().clean()
        data = self.cleaned_data
        for field, messages in window_problems(data.get("since"), data.get("until")).items():
            for message in messages:
                self.add_error(field, message)
        return data


class BudgetForm(forms.Form):
    """A budget's fields as a person fills them in; the service checks the rest
    (one of board or agent, a positive limit, whole tokens)."""

    name = forms.CharField(max_length=80)
    scope = forms.ChoiceField(choices=[("board", "A board"), ("agent", "An agent")], initial="board")
    board = forms.ModelChoiceField(queryset=Board.objects.order_by("name"), required=False)
    agent = forms.ModelChoiceField(queryset=Agent.objects.order_by("name"), required=False)
    unit = forms.ChoiceField(choices=Budget.Unit.choices, initial=Budget.Unit.USD)
    period = forms.ChoiceField(choices=Budget.Period.choices, initial=Budget.Period.DAY)
    limit = forms.DecimalField(
        min_value=Decimal("0.0001"),
        max_digits=20,
        decimal_places=4,
        help_text="In dollars, or in tokens (in and out) for a tokens budget.",
    )
    warn_percent = forms.IntegerField(
        min_value=1, max_value=100, initial=80, label="Warn at (%)", help_text="Of the limit, 1-100."
    )

    def clean(self) -> dict:
        data = super().clean() or {}
        scope = data.get("scope")
        if scope == "board":
            if data.get("board") is None:
                self.add_error("board", "Choose the board this budget limits.")
            data["agent"] = None
        elif scope == "agent":
            if data.get("agent") is None:
                self.add_error("agent", "Choose the agent this budget limits.")
            data["board"] = None
        return data

    def values(self) -> dict:
        data = self.cleaned_data
        return {
            name: data[name] for name in ("name", "board", "agent", "unit", "period", "limit", "warn_percent")
        }

    @classmethod
    def of(cls, budget: Budget) -> BudgetForm:
        return cls(
            initial={
                "name": budget.name,
                "scope": "agent" if budget.agent_id else "board",
                "board": budget.board_id,
                "agent": budget.agent_id,
                "unit": budget.unit,
                "period": budget.period,
                "limit": budget.limit,
                "warn_percent": budget.warn_percent,
            }
        )


def _waste_choices() -> list[tuple[str, str]]:
    choices = []
    for name in NAMES:
        target, better, unit = TARGETS[name]
        side = "lower" if better == "lower" else "higher"
        choices.append((name, f"{LABELS[name]} ({unit}, {side} is better; target {target:g})"))
    return choices


class WasteThresholdForm(forms.Form):
    """A waste threshold's fields as a person fills them in; the service checks
    the rest (one of board or agent, a limit in the waste's range, the window)."""

    scope = forms.ChoiceField(choices=[("board", "A board"), ("agent", "An agent")], initial="board")
    board = forms.ModelChoiceField(queryset=Board.objects.order_by("name"), required=False)
    agent = forms.ModelChoiceField(queryset=Agent.objects.order_by("name"), required=False)
    waste = forms.ChoiceField(choices=_waste_choices, initial="escalation_rate")
    limit = forms.FloatField(
        min_value=0,
        help_text="In the waste's unit: percent, or model calls per finished item for transport. "
        "The alarm sounds when the value is worse than this: above it where lower is better, "
        "below it where higher is better (token efficiency).",
    )
    window = forms.ChoiceField(
        choices=[("outputs", "Last N inspected outputs"), ("hours", "Last N hours")], initial="outputs"
    )
    window_size = forms.IntegerField(min_value=1, initial=200, label="N", help_text="Outputs or hours.")
    stop_line = forms.BooleanField(
        required=False,
        label="Stop the line when crossed",
        help_text="The board's or agent's line stops until a reviewer restarts it.",
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def clean(self) -> dict:
        data = super().clean() or {}
        scope = data.get("scope")
        if scope == "board":
            if data.get("board") is None:
                self.add_error("board", "Choose the board this threshold watches.")
            data["agent"] = None
        elif scope == "agent":
            if data.get("agent") is None:
                self.add_error("agent", "Choose the agent this threshold watches.")
            data["board"] = None
        return data

    def values(self) -> dict[str, Any]:
        data = self.cleaned_data
        hours = data["window"] == "hours"
        return {
            "board": data["board"],
            "agent": data["agent"],
            "waste": data["waste"],
            "limit": data["limit"],
            "window_outputs": None if hours else data["window_size"],
            "window_hours": data["window_size"] if hours else None,
            "stop_line": data["stop_line"],
            "enabled": data["enabled"],
        }

    @classmethod
    def of(cls, threshold: WasteThreshold) -> WasteThresholdForm:
        return cls(
            initial={
                "scope": "agent" if threshold.agent_id else "board",
                "board": threshold.board_id,
                "agent": threshold.agent_id,
                "waste": threshold.waste,
                "limit": threshold.limit,
                "window": "outputs" if threshold.window_outputs is not None else "hours",
                "window_size": threshold.window_outputs or threshold.window_hours,
                "stop_line": threshold.stop_line,
                "enabled": threshold.enabled,
            }
        )
