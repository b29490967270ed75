"""An agent's settings, saved from the admin, a script, a config file or the
agent page's switches: a change to what the model is asked starts a new prompt
version.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction

from boards.agents.spec import cascade_json, parse_cascade, parse_parameters, parse_variables
from boards.models import Agent
from boards.services.moves import board_config_changed
from experiments import line as experiment_line
from experiments.models import AuditEntry, PromptVersion

# What does the work and what the model is asked: a change to any of these is a
# new prompt version (whose results are not taken for the old one's).
PROMPT_FIELDS = PromptVersion.FIELDS


def agent_save(
    *,
    agent: Agent,
    based_on_version: int | None = None,
    user: User | None = None,
    rationale: str = "",
) -> Agent:
    """Save an agent's settings (from the admin, a script, or the agent page's
    operational switches): validate, store the prompt settings in their normal
    form (a cascade's prices as exact decimal strings, its simulated prices filled
    in), and start a new prompt version when what the model is asked has changed,
    so results of the old prompt are no longer reused and the ledger tells the
    versions apart.

    Such a prompt change is a direct one, past the kaizen loop's gates: people
    propose theirs on the agent page (``experiments.services.proposal_create``).
    So that the agent's history still has no gaps, the version it replaces and
    the new one are recorded as prompt versions, with an audit entry saying where
    the change came from (``rationale`` adds to it; ``user`` when a person made it).
    The new number follows every version the agent has had, proposals' candidates
    included: after a rollback the active number is not the highest, and reusing
    a number would mix two prompts' results and history.

    ``based_on_version`` is the prompt version the editor started from: if the
    prompt has moved on since (someone else saved), nothing is written and a
    ValidationError says so, rather than one edit silently undoing the other.

    Its boards are refreshed and pulled after commit (a new model or a higher
    concurrency may change what the board shows and can take)."""
    agent.full_clean()
    agent.prompt_variables = parse_variables(agent.prompt_variables)
    agent.parameters = parse_parameters(agent.parameters)
    agent.cascade = cascade_json(parse_cascade(agent.cascade))
    why = "applied from a config file or the admin" + (f" ({rationale.strip()})" if rationale.strip() else "")
    with transaction.atomic():
        replaced: PromptVersion | None = None
        if agent.pk is not None:
            before = (
                Agent.objects.select_for_update(of=("self",), no_key=True)
                .filter(pk=agent.pk)
                .values("prompt_version", *PROMPT_FIELDS)
                .first()
            )
            if before is not None:
                if based_on_version is not None and before["prompt_version"] != based_on_version:
                    raise ValidationError(
                        f"Someone else saved a new prompt for {agent.name} while you were editing "
                        f"(version {before['prompt_version']}; you started from {based_on_version}). "
                        "Nothing was saved: reload the page to see their change, then make yours."
                    )
                agent.prompt_version = before["prompt_version"]
                if any(before[name] != getattr(agent, name) for name in PROMPT_FIELDS):
                    # The stored fields, as they were: the version being replaced.
                    replaced = experiment_line.ensure_version(Agent(pk=agent.pk, name=agent.name, **before))
                    agent.prompt_version = experiment_line.next_version_number(agent)
        agent.save()
        if replaced is not None:
            version = experiment_line.ensure_version(
                agent, source=PromptVersion.Source.CONFIG, author=user, rationale=why
            )
            AuditEntry.objects.create(
                agent=agent,
                action=AuditEntry.Action.VERSION,
                version=version,
                user=user if user is not None and user.is_authenticated else None,
                reason=f"v{replaced.number} → v{version.number}: {why}",
            )
        for board_id in agent.boards.values_list("pk", flat=True):
            board_config_changed(board_id=board_id)
    return agent
