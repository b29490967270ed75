"""Forms of the live board. They parse and bound what a person sends; the rules
(WIP limits, which moves are allowed, what a valid task is) live in
``boards.services``, whose ValidationErrors the views attach to these forms."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from boards.models import Agent, Board, Column, Task
from boards.task_search import SORT_LABELS, TaskFilter
from boards.text import text_problem


class TaskCreateForm(forms.Form):
    title = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "What needs doing?", "autocomplete": "off"}),
    )
    input = forms.CharField(
        required=False,
        label="Input",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "The text the agent works on"}),
    )
    # A CharField with a select, not a ChoiceField: a capability no agent offers is
    # refused by the service with a message that lists what is offered, and that is
    # the message people should see.
    capability = forms.CharField(required=False, widget=forms.Select)
    priority = forms.IntegerField(
        required=False,
        initial=0,
        min_value=-1000,
        max_value=1000,
        help_text="Higher runs first.",
        widget=forms.NumberInput(attrs={"step": 1}),
    )
    allow_reuse = forms.BooleanField(
        required=False,
        initial=True,
        label="Reuse an earlier identical result",
    )

    def __init__(self, *args, capabilities: list[str], **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["capability"].widget.choices = [("", "Any agent"), *((c, c) for c in capabilities)]


class TaskMoveForm(forms.Form):
    column = forms.IntegerField(min_value=1)
    # The card the moved one now precedes; empty puts it where the column's rules say.
    before = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args, board: Board, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.board = board

    def clean_column(self):
        pk = self.cleaned_data["column"]
        column = self.board.columns.filter(pk=pk).first()
        if column is None:
            raise forms.ValidationError("That column is not on this board.")
        return column

    def clean_before(self) -> Task | None:
        pk = self.cleaned_data.get("before")
        if pk is None:
            return None
        before = Task.objects.filter(board=self.board, pk=pk).first()
        if before is None:
            raise forms.ValidationError("The card to place this one before is not on this board.")
        return before


class TaskStepForm(forms.Form):
    direction = forms.ChoiceField(
        choices=[("up", "up"), ("down", "down"), ("left", "left"), ("right", "right")],
        error_messages={"invalid_choice": "Use up, down, left or right."},
    )


class TaskBlockForm(forms.Form):
    # Not required here: the service refuses an empty note with the message people see.
    note = forms.CharField(
        required=False,
        max_length=2000,
        label="What blocks it?",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Waiting for the supplier's data sheet"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


# --- the task list: filters and import (boards.views_tasks) ----------------------------


class TaskFilterForm(forms.Form):
    """The task list's filters, read from the query string (GET), so a filtered
    list is a link that can be shared, bookmarked and reloaded."""

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Title or input", "autocomplete": "off"}
        ),
    )
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Task.Status.choices])
    column = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    # CharFields with a select, as on the task form: an agent that has left the
    # board still finds the tasks it ran when its name is in the link.
    agent = forms.CharField(required=False, max_length=200, widget=forms.Select)
    capability = forms.CharField(required=False, max_length=200, widget=forms.Select)
    created_from = forms.DateField(
        required=False, label="Created from", widget=forms.DateInput(attrs={"type": "date"})
    )
    created_to = forms.DateField(
        required=False, label="Created to", widget=forms.DateInput(attrs={"type": "date"})
    )
    finished_from = forms.DateField(
        required=False, label="Finished from", widget=forms.DateInput(attrs={"type": "date"})
    )
    finished_to = forms.DateField(
        required=False, label="Finished to", widget=forms.DateInput(attrs={"type": "date"})
    )
    sort = forms.ChoiceField(required=False, choices=list(SORT_LABELS.items()), label="Order")

    def __init__(
        self, *args, columns: list[Column], agents: list[str], capabilities: list[str], **kwargs
    ) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        column = self.fields["column"]
        assert isinstance(column, forms.ChoiceField)  # declared above; self.fields says only Field
        column.choices = [("", "Any column"), *((c.pk, c.name) for c in columns)]
        self.fields["column"].error_messages["invalid_choice"] = "That column is not on this board."
        self.fields["agent"].widget.choices = [("", "Any agent"), *((a, a) for a in agents)]
        self.fields["capability"].widget.choices = [("", "Any capability"), *((c, c) for c in capabilities)]
        for name, known in (("agent", agents), ("capability", capabilities)):
            # A value from a shared link that is not among the choices stays selected.
            value = self.data.get(name)
            if value and value not in known:
                self.fields[name].widget.choices.append((value, value))

    def _clean_line(self, name: str) -> str:
        value = self.cleaned_data[name].strip()
        if problem := text_problem(value):
            raise forms.ValidationError(problem)
        return value

    def clean_q(self) -> str:
        return self._clean_line("q")

    def clean_agent(self) -> str:
        return self._clean_line("agent")

    def clean_capability(self) -> str:
        return self._clean_line("capability")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns, never None
        for start, end in (("created_from", "created_to"), ("finished_from", "finished_to")):
            if data.get(start) and data.get(end) and data[start] > data[end]:
                self.add_error(end, "This date is before the first one: swap them.")
        return data

    @property
    def is_filtered(self) -> bool:
        return any(self.cleaned_data.get(name) for name in self.fields if name != "sort")

    def task_filter(self) -> TaskFilter:
        """The valid form as the selector's filter: days in the site's time zone,
        each ``to`` day included whole."""
        data = self.cleaned_data

        def start_of(day: date | None, *, next_day: bool = False) -> datetime | None:
            if day is None:
                return None
            if next_day:
                if day == date.max:
                    return None
                day += timedelta(days=1)
            return timezone.make_aware(datetime.combine(day, time.min))

        return TaskFilter(
            statuses=(data["status"],) if data.get("status") else (),
            column_id=data.get("column"),
            agent=data.get("agent") or "",
            capability=data.get("capability") or "",
            text=data.get("q") or "",
            created_after=start_of(data.get("created_from")),
            created_before=start_of(data.get("created_to"), next_day=True),
            finished_after=start_of(data.get("finished_from")),
            finished_before=start_of(data.get("finished_to"), next_day=True),
            sort=data.get("sort") or "newest",
        )


# The largest file the import page takes; the import_tasks command has no limit.
MAX_IMPORT_BYTES = 10 * 2**20
MAX_IMPORT_ROWS = 10_000


class TaskImportForm(forms.Form):
    file = forms.FileField(
        label="CSV or JSON Lines file",
        help_text="Columns (or keys): title (required), input, capability, priority, allow_reuse. "
        f"At most {MAX_IMPORT_ROWS:,} tasks and {MAX_IMPORT_BYTES // 2**20} MB.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.jsonl,.ndjson,.json,.txt,text/csv"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_IMPORT_BYTES:
            raise forms.ValidationError(
                f"The file is {upload.size / 2**20:.1f} MB; import at most {MAX_IMPORT_BYTES // 2**20} MB here "
                "(split it, or use `python manage.py import_tasks`)."
            )
        return upload


class BoardCordForm(forms.Form):
    """The board page's andon cord: stop the whole board, or one of its agents.
    The reason is not required here: the andon service says what a missing one
    means (andon.services.line_stop)."""

    scope = forms.CharField(error_messages={"required": "Choose what to stop: the board or one agent."})
    reason = forms.CharField(required=False, strip=False)

    def __init__(self, data=None, *, board: Board, **kwargs) -> None:
        super().__init__(data, **kwargs)
        self.board = board

    def clean_scope(self) -> Board | Agent:
        value = self.cleaned_data["scope"]
        if value == "board":
            return self.board
        prefix, _, pk = value.partition("-")
        if prefix == "agent" and pk.isdigit():
            agent = self.board.agents.filter(pk=int(pk)).first()
            if agent is not None:
                return agent
        raise forms.ValidationError(
            f"{value!r} is neither this board nor one of its agents: choose the board or one agent to stop."
        )


class FlowFilterForm(forms.Form):
    """The Flow page's window, slice and forecast, read from the query string (GET),
    so a view of the flow is a link. Times are UTC. The rules between fields (the
    window's order, its number of periods, a future forecast date) are checked by
    boards.flow_report.flow_query_resolve, whose messages land on these fields."""

    since = forms.DateTimeField(
        required=False,
        label="From (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 60}, format="%Y-%m-%dT%H:%M"),
        help_text="Default: 7 days before the end, or the board's start if later.",
    )
    until = forms.DateTimeField(
        required=False,
        label="To (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 60}, format="%Y-%m-%dT%H:%M"),
        help_text="Default: now.",
    )
    agent = forms.ChoiceField(required=False, label="Agent")
    capability = forms.ChoiceField(required=False, label="Capability")
    resolution = forms.ChoiceField(
        required=False,
        label="Resolution",
        choices=[
            ("", "Automatic"),
            ("1m", "1 minute"),
            ("5m", "5 minutes"),
            ("15m", "15 minutes"),
            ("1h", "1 hour"),
            ("6h", "6 hours"),
            ("1d", "1 day"),
            ("1w", "1 week"),
        ],
        help_text="Period of the WIP chart and the cumulative flow.",
    )
    forecast_items = forms.IntegerField(
        required=False, min_value=1, max_value=100_000, label="When will the next N items be done? N ="
    )
    forecast_date = forms.DateTimeField(
        required=False,
        label="How many items by (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 60}, format="%Y-%m-%dT%H:%M"),
    )
    forecast_period = forms.ChoiceField(
        required=False,
        label="Throughput sampled per",
        choices=[("hour", "hour"), ("day", "day")],
    )
    sample_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=365,
        label="Sampling window (days before the end)",
        help_text="Default 7.",
    )

    def __init__(self, *args: Any, agents: list[str], capabilities: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        agent, capability = self.fields["agent"], self.fields["capability"]
        assert isinstance(agent, forms.ChoiceField) and isinstance(capability, forms.ChoiceField)
        agent.choices = [("", "All agents"), *((a, a) for a in agents)]
        capability.choices = [("", "All capabilities"), *((c, c) for c in capabilities)]
