"""Forms of the live board. They parse and bound what a person sends; the rules
(WIP limits, which moves are allowed, what a valid task is) live in
``boards.services``, whose ValidationErrors the views attach to these forms."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.db.models import Q
from django.forms.formsets import DELETION_FIELD_NAME, ORDERING_FIELD_NAME
from django.utils import timezone

from boards.agents.providers import PROVIDER_NAMES
from boards.agents.spec import (
    GENERATION_PARAMETERS,
    MAX_CASCADE_TIERS,
    ConfigError,
    check_template,
    parse_cascade,
    parse_parameters,
    parse_variables,
)
from boards.models import Agent, Board, Column, Task
from boards.task_search import SORT_LABELS, TaskFilter
from boards.text import text_problem
from experiments.models import ChangeProposal, PromptVersion
from experiments.services import MAX_RATIONALE


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


# --- the agent page ------------------------------------------------------------------


def _config_problems(exc: ConfigError, prefix: str) -> list[tuple[str, str]]:
    """A ConfigError's problems as (path below ``prefix``, message): for
    ``cascade[1].parameters.timeout`` under ``cascade[1]`` that is ``parameters.timeout``."""
    problems = []
    for where, message in exc.problems:
        rest = where[len(prefix) :].lstrip(".") if where.startswith(prefix) else where
        problems.append((rest, message))
    return problems


class AgentPromptForm(forms.Form):
    """A change to an agent's prompt as a person proposes it on the agent page:
    template, declared variables and generation parameters (the cascade comes
    from ``TierFormSet``), with the rationale that goes to the audit log. Checked
    through ``boards.agents.spec``, the module ``Agent.clean`` checks them with,
    so each problem lands on the field it is about;
    ``experiments.services.proposal_create`` has the last word."""

    prompt_template = forms.CharField(
        label="Prompt template",
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="{input}, {title} and {last_error} are always available; other {names} must be "
        "declared below. Write {{ and }} for literal braces.",
    )
    prompt_variables = forms.CharField(
        label="Variables",
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "customer, tone", "autocomplete": "off"}),
        help_text="Comma-separated names the template may use; a task gives them as fields of a JSON object input.",
    )
    temperature = forms.FloatField(
        required=False, widget=forms.NumberInput(attrs={"step": "any", "min": 0, "max": 2})
    )
    top_p = forms.FloatField(
        label="Top p", required=False, widget=forms.NumberInput(attrs={"step": "any", "min": 0, "max": 1})
    )
    max_tokens = forms.IntegerField(
        label="Max tokens", required=False, widget=forms.NumberInput(attrs={"step": 1, "min": 1})
    )
    rationale = forms.CharField(
        label="Why this change?",
        max_length=MAX_RATIONALE,
        # Required to propose, not to preview: the view says which (``proposing``).
        required=False,
        widget=forms.Textarea(
            attrs={
                "rows": 3,
                "required": True,
                "placeholder": "Reviewers keep asking for the defect first; see tasks 412 and 419.",
            }
        ),
        help_text="Goes to the audit log with the change, for whoever approves or reviews it.",
    )
    # The version the editor started from: a proposal against a version that has
    # since been replaced would be diffed and judged against the wrong one.
    based_on_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args, agent: Agent, proposing: bool = False, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        parameters = agent.parameters if isinstance(agent.parameters, dict) else {}
        variables = agent.prompt_variables if isinstance(agent.prompt_variables, list) else []
        kwargs.setdefault(
            "initial",
            {
                "prompt_template": agent.prompt_template,
                "prompt_variables": ", ".join(str(v) for v in variables),
                **{name: parameters.get(name) for name in GENERATION_PARAMETERS},
                "based_on_version": agent.prompt_version,
            },
        )
        super().__init__(*args, **kwargs)
        self.proposing = proposing

    def clean_prompt_template(self) -> str:
        # Browsers send a textarea's lines ending in CRLF: compare the template as
        # written, so sending it back unchanged is no change.
        return self.cleaned_data["prompt_template"].replace("\r\n", "\n")

    def clean_rationale(self) -> str:
        text = self.cleaned_data["rationale"].strip()
        if self.proposing and not text:
            raise forms.ValidationError(
                "Say why you propose this change: it goes to the audit log, and approvers judge it by it."
            )
        return text

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        variables: list[str] = []
        try:
            variables = parse_variables(data.get("prompt_variables") or "")
        except ConfigError as exc:
            for _, message in exc.problems:
                self.add_error("prompt_variables", message)
        if "prompt_template" in data:
            for message in check_template(data["prompt_template"], variables):
                self.add_error("prompt_template", message)
        parameters = {name: data.get(name) for name in GENERATION_PARAMETERS if data.get(name) is not None}
        try:
            data["parameters"] = parse_parameters(parameters)
        except ConfigError as exc:
            for where, message in _config_problems(exc, "parameters"):
                self.add_error(where if where in self.fields else None, message)
        data["variables"] = variables
        return data


class AgentOperationsForm(forms.Form):
    """How an agent runs, not what it asks: saved directly, no new prompt version."""

    reuse_results = forms.BooleanField(
        label="Reuse results",
        required=False,
        help_text="A task whose input matches one this agent completed with the same prompt version takes that result.",
    )
    cache_responses = forms.BooleanField(
        label="Cache responses",
        required=False,
        help_text="Serve a call identical to an earlier one from the response cache.",
    )

    def __init__(self, *args, agent: Agent, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        kwargs.setdefault(
            "initial", {"reuse_results": agent.reuse_results, "cache_responses": agent.cache_responses}
        )
        super().__init__(*args, **kwargs)


class PromptRollbackForm(forms.Form):
    """Make an earlier version of the agent's prompt active again, and why. Only
    a version that was the agent's active one before: a proposal's candidate that
    never passed its gates goes through them, not around them."""

    version = forms.ModelChoiceField(
        queryset=PromptVersion.objects.none(),
        widget=forms.HiddenInput,
        error_messages={
            "invalid_choice": "Only a version this agent ran as its active one can be made active again; "
            "a proposed version goes through approval and an experiment. Reload the page to see its versions."
        },
    )
    note = forms.CharField(
        label="Why roll back?",
        max_length=MAX_RATIONALE,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Say why: the rollback goes to the audit log with your note."},
    )

    def __init__(self, *args, agent: Agent, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = PromptVersion.objects.filter(agent=agent).filter(
            Q(proposal__isnull=True) | Q(proposal__status=ChangeProposal.Status.PROMOTED)
        )


class TierForm(forms.Form):
    """One tier of a cascade. Its values are checked with the whole cascade
    (``TierFormSet.clean``), by ``parse_cascade``."""

    provider = forms.ChoiceField(choices=[(name, name) for name in PROVIDER_NAMES], initial="simulated")
    model = forms.CharField(
        required=False, max_length=200, widget=forms.TextInput(attrs={"placeholder": "sim-small"})
    )
    price_in = forms.CharField(
        label="$ per 1k in",
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "list price"}),
    )
    price_out = forms.CharField(
        label="$ per 1k out",
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "list price"}),
    )
    threshold = forms.FloatField(
        required=False,
        widget=forms.NumberInput(attrs={"step": "any", "min": 0, "max": 1, "placeholder": "take any"}),
    )
    parameters = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "placeholder": '{"latency_ms": 400}'}),
    )

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def clean_parameters(self) -> dict[str, Any]:
        text = self.cleaned_data["parameters"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(
                f'Parameters must be JSON, such as {{"temperature": 0.2}}: {exc.msg} at character {exc.pos + 1}.'
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Parameters must be a JSON object, such as {"temperature": 0.2}.')
        return value

    def tier(self) -> dict[str, Any]:
        """The tier as the agent's cascade holds it, for ``parse_cascade``; a blank
        price is left out, so a simulated model takes its list price."""
        data = self.cleaned_data
        tier: dict[str, Any] = {
            "provider": data["provider"],
            "model": data["model"].strip(),
            "parameters": data["parameters"],
            "threshold": data["threshold"],
        }
        for key in ("price_in", "price_out"):
            if data[key].strip():
                tier[key] = data[key].strip()
        return tier

    @staticmethod
    def initial_for(tier: dict[str, Any]) -> dict[str, Any]:
        parameters = tier.get("parameters") or {}
        return {
            "provider": tier.get("provider"),
            "model": tier.get("model"),
            "parameters": json.dumps(parameters, ensure_ascii=False) if parameters else "",
            "price_in": tier.get("price_in") if tier.get("price_in") is not None else "",
            "price_out": tier.get("price_out") if tier.get("price_out") is not None else "",
            "threshold": tier.get("threshold"),
        }


class BaseTierFormSet(forms.BaseFormSet):
    """The cascade, a tier a row, cheapest first: rows are ordered by their
    position, a ticked row is removed, and the spare row adds a tier."""

    def add_fields(self, form: forms.Form, index: int | None) -> None:
        super().add_fields(form, index)
        form.fields[ORDERING_FIELD_NAME].label = "Position"
        form.fields[ORDERING_FIELD_NAME].widget.attrs.update({"min": 1, "class": "tier-position"})
        form.fields[DELETION_FIELD_NAME].label = "Remove"

    def clean(self) -> None:
        self.cascade: list[dict[str, Any]] = []
        if any(self.errors):
            return
        forms_in_order = self.ordered_forms
        self.cascade = [form.tier() for form in forms_in_order]
        try:
            parse_cascade(self.cascade)
        except ConfigError as exc:
            problems = exc.problems
        else:
            return
        # Each problem on the row and field it names; what is about the whole
        # cascade (no tier left, too many) above the table.
        whole = []
        for where, message in problems:
            match = _TIER_PATH.match(where)
            if match is None:
                whole.append(message)
                continue
            form = forms_in_order[int(match["index"])]
            field, _, rest = (match["rest"] or "").partition(".")
            if field in form.fields:
                form.add_error(field, f"{rest}: {message}" if rest else message)
            else:
                form.add_error(None, message)
        if whole:
            raise forms.ValidationError(whole)


# cascade[2].parameters.timeout -> index 2, rest "parameters.timeout"
_TIER_PATH = re.compile(r"^cascade\[(?P<index>\d+)\](?:\.(?P<rest>.+))?$")

TierFormSet = forms.formset_factory(
    TierForm,
    formset=BaseTierFormSet,
    extra=1,
    max_num=MAX_CASCADE_TIERS,
    can_order=True,
    can_delete=True,
)


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
        self.fields["column"].choices = [("", "Any column"), *((c.pk, c.name) for c in columns)]
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
        data = super().clean()
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
