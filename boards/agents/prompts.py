"""An agent's prompt for a task: its template filled with the task's variables,
and a reviewer's feedback on an earlier answer carried into the next attempt."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from boards.agents.spec import EXAMPLES_VARIABLE, template_fields

if TYPE_CHECKING:
    from boards.models import Task


class PromptError(ValueError):
    """The prompt cannot be rendered for this task."""


class _Block(str):
    """A value whose format spec is not a width: ``{examples:5}`` is how many
    examples were fetched, not a padding of the block to five characters."""

    def __format__(self, spec: str) -> str:
        return str(self)


def render_prompt(template: str, variables: dict[str, str]) -> str:
    """Fill ``{name}`` fields of a template; ``{{`` and ``}}`` are literal braces."""
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise PromptError(str(exc)) from None
    missing = sorted({f for f in fields if f not in variables})
    if missing:
        raise PromptError(
            "prompt template uses unknown variable(s): "
            + ", ".join(missing)
            + f" (available: {', '.join(sorted(variables))})"
        )
    if EXAMPLES_VARIABLE in variables:
        variables = {**variables, EXAMPLES_VARIABLE: _Block(variables[EXAMPLES_VARIABLE])}
    return template.format_map(variables)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def task_variables(task: Task, declared: list[str], *, examples: str = "") -> dict[str, str]:
    """The values a template is rendered with: ``input``, ``title``, ``last_error``,
    ``review_feedback`` and ``examples`` (the retrieved examples the caller fetched
    for a template that asks for them; see experiments.few_shot) always; each
    declared variable from the field of that name when the task's
    input is a JSON object. A declared variable the input lacks is a PromptError
    naming it (the input cannot be rendered as the agent expects)."""
    variables = {
        "input": task.input,
        "title": task.title,
        "last_error": task.last_error,
        "review_feedback": task.review_feedback,
        EXAMPLES_VARIABLE: examples,
    }
    if not declared:
        return variables
    try:
        data = json.loads(task.input)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PromptError(
            f"the agent's prompt uses {', '.join(declared)}, which a task gives as fields of a JSON object "
            'input (such as {"' + declared[0] + '": "..."}); this task\'s input is not a JSON object'
        )
    missing = [name for name in declared if name not in data]
    if missing:
        raise PromptError(
            f"the task's input has no field {', '.join(repr(m) for m in missing)}, which the agent's prompt "
            f"uses (it has: {', '.join(sorted(map(str, data))) or 'no fields'})"
        )
    variables.update({name: _as_text(data[name]) for name in declared})
    return variables


REVIEW_FEEDBACK_NOTE = (
    "\n\nA reviewer rejected an earlier answer to this task and said: {feedback}\n"
    "Answer again, taking this into account."
)


def with_review_feedback(prompt: str, template: str, feedback: str) -> str:
    """A reviewer's reason for rejecting the last output reaches the next attempt:
    through {review_feedback} where the template places it, else appended. (The
    prompt then differs, so the response cache cannot serve the rejected answer.)"""
    if not feedback or "review_feedback" in template_fields(template):
        return prompt
    return prompt + REVIEW_FEEDBACK_NOTE.format(feedback=feedback)
