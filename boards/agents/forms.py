"""Forms of the agent page: a proposed change to the prompt (``AgentPromptForm``)
and its cascade (``TierFormSet``, a tier a row), the operational switches, the
rollback of the prompt to an earlier version, and the gate policy
(``AgentGatesForm``). They parse and bound what a
person sends; the agent spec (``boards.agents.spec``) checks the values, and the
services the views call have the last word."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from django import forms
from django.db.models import Q
from django.forms.formsets import DELETION_FIELD_NAME, ORDERING_FIELD_NAME

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
from boards.models import Agent
from experiments.models import AgentGates, ChangeProposal, GateRule, PromptVersion
from experiments.services import GATE_FIELDS, GATE_LIMITS, MAX_RATIONALE


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
        "declared below. {examples} shows the accepted answers to the 3 most similar past tasks "
        "({examples:5} for 5). Write {{ and }} for literal braces.",
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
        super().clean()
        data = self.cleaned_data  # what Form.clean returns, never None
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
        version = self.fields["version"]
        assert isinstance(version, forms.ModelChoiceField)  # declared above; self.fields says only Field
        version.queryset = PromptVersion.objects.filter(agent=agent).filter(
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
    # Checked with the cascade (parse_cascade), so a bad value gets the same message
    # here, in the YAML and in the admin.
    context_window = forms.IntegerField(
        label="Context window (tokens)",
        required=False,
        widget=forms.NumberInput(attrs={"min": 1, "placeholder": "the model's"}),
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
        except json.JSONDecodeError as exc:
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
        if data.get("context_window") is not None:
            tier["context_window"] = data["context_window"]
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
            "context_window": tier.get("context_window"),
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

# formset_factory makes a subclass of its formset argument; the stubs only say
# BaseFormSet.
TierFormSet = cast(
    type[BaseTierFormSet],
    forms.formset_factory(
        TierForm,
        formset=BaseTierFormSet,
        extra=1,
        max_num=MAX_CASCADE_TIERS,
        can_order=True,
        can_delete=True,
    ),
)


def _bounds(name: str, *, scale: float = 1, step: str = "any") -> dict[str, Any]:
    """A number input's min and max from the gate policy's limits (the service
    checks them again), in the form's unit (``scale``: 100 for percents)."""
    low, high, _ = GATE_LIMITS[name]
    return {"min": round(low * scale, 4), "max": round(high * scale, 4), "step": step}


class AgentGatesForm(forms.Form):
    """An agent's gate policy (experiments.models.AgentGates): which gates its
    prompt changes pass before their canary, and how each is sized. Shares and
    the probe margin are written in percent here, fractions in the model;
    ``experiments.services.agent_gates_set`` checks the ranges."""

    replay = forms.ChoiceField(label="Replay on past work", choices=GateRule.choices)
    adversarial = forms.ChoiceField(label="Adversarial probes", choices=GateRule.choices)
    shadow = forms.ChoiceField(label="Shadow on mirrored live work", choices=GateRule.choices)
    replay_sample = forms.IntegerField(
        label="Sample (tasks)",
        help_text="0: as many as the power calculation asks.",
        widget=forms.NumberInput(attrs=_bounds("replay_sample", step="1")),
    )
    replay_budget_usd = forms.DecimalField(
        label="Cap ($)",
        help_text="For the replay, and for the probes.",
        decimal_places=4,
        widget=forms.NumberInput(attrs=_bounds("replay_budget_usd")),
    )
    probes_per_family = forms.IntegerField(
        label="Probes per family", widget=forms.NumberInput(attrs=_bounds("probes_per_family", step="1"))
    )
    probe_margin_pct = forms.FloatField(
        label="Probe margin (points)",
        help_text="How much more often a family may hit the candidate than the active version.",
        widget=forms.NumberInput(attrs=_bounds("probe_margin", scale=100)),
    )
    shadow_share_pct = forms.FloatField(
        label="Share (% of live tasks)",
        widget=forms.NumberInput(attrs=_bounds("shadow_share", scale=100)),
    )
    shadow_size = forms.IntegerField(
        label="Pairs", widget=forms.NumberInput(attrs=_bounds("shadow_size", step="1"))
    )
    shadow_hours = forms.FloatField(
        label="Time limit (hours)", widget=forms.NumberInput(attrs=_bounds("shadow_hours"))
    )
    shadow_budget_usd = forms.DecimalField(
        label="Cap ($)", decimal_places=4, widget=forms.NumberInput(attrs=_bounds("shadow_budget_usd"))
    )
    cost_limit_pct = forms.FloatField(
        label="Cost may rise (%)",
        required=False,
        help_text="Per task, before the replay or shadow fails. Blank: the installation's.",
        widget=forms.NumberInput(attrs=_bounds("cost_limit", scale=100)),
    )
    latency_limit_pct = forms.FloatField(
        label="Latency may rise (%)",
        required=False,
        help_text="Per task. Blank: the installation's.",
        widget=forms.NumberInput(attrs=_bounds("latency_limit", scale=100)),
    )
    holdout_share_pct = forms.FloatField(
        label="Share (% of tasks)",
        help_text="0: none. 2 to 5: that share of the tasks stays on the version active before the next "
        "promotions, to show whether their wins last.",
        widget=forms.NumberInput(attrs={"min": 0, "max": 5, "step": "any"}),
    )

    # The form's percent fields and the policy's fractions they are written as.
    PERCENTS = {
        "probe_margin_pct": "probe_margin",
        "shadow_share_pct": "shadow_share",
        "holdout_share_pct": "holdout_share",
        "cost_limit_pct": "cost_limit",
        "latency_limit_pct": "latency_limit",
    }

    def __init__(self, *args, policy: AgentGates, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        initial = {name: getattr(policy, name) for name in GATE_FIELDS if name not in self.PERCENTS.values()}
        initial.update(
            {
                field: None if getattr(policy, name) is None else round(getattr(policy, name) * 100, 2)
                for field, name in self.PERCENTS.items()
            }
        )
        kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)

    def policy(self) -> dict[str, Any]:
        """The cleaned values as ``agent_gates_set`` takes them (fractions, not percents)."""
        data = dict(self.cleaned_data)
        for field, name in self.PERCENTS.items():
            value = data.pop(field)
            data[name] = None if value is None else value / 100
        return data
