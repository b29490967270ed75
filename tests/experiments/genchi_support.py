"""Builders for the gates' tests: an agent with a history of finished tasks
(some judged by reviewers), and candidate versions that are better, as good, or
broken, as the simulated model reads them (boards.agents.simulated)."""

from __future__ import annotations

import random

from andon.models import Escalation, Inspection
from boards.models import Column, Task
from experiments import genchi
from experiments import services as kaizen
from experiments.line import ensure_version, next_version_number
from experiments.models import AgentGates, PromptVersion
from tests.experiments.helpers import fields_of
from tests.factories import make_agent, make_approver, make_board, make_editor

PLAIN = "Classify the support ticket. Classes: billing, shipping, account_access, bug, other.\n\n{input}"
# Label definitions: the simulated model is more often right, and more confident.
BETTER = (
    "Classify the support ticket.\n"
    "Classes: billing (charges, refunds, invoices), shipping (deliveries, parcels, tracking), "
    "account_access (logins, passwords, locked accounts), bug (errors, crashes), other (anything else).\n\n"
    "{input}"
)
# The same instruction in other words: as good as PLAIN.
REWORDED = "Classify this support ticket. Classes: billing, shipping, account_access, bug, other.\n\n{input}"
# A placeholder left unfilled: the model is confused, and less often right.
BROKEN = (
    "Classify the support ticket from {{customer}} about {{order}}. "
    "Classes: billing, shipping, account_access, bug, other.\n\n{input}"
)

# One priced simulated tier, no latency and no failed calls: replays cost something.
CASCADE_TIER = {
    "provider": "simulated",
    "model": "sim-small",
    "parameters": {"latency_ms": 0, "error_rate": 0},
    "price_in": "0.0005",
    "price_out": "0.0015",
}

_SUBJECTS = [
    "I was charged twice for my subscription this month",
    "The parcel with order {n} never arrived and tracking shows nothing",
    "I cannot log in: the password reset link has expired",
    "The app crashes when I open the invoices page",
    "Can you tell me your opening hours during the holidays?",
    "My refund for order {n} has not reached my card",
    "The delivery driver left the box at the wrong address",
    "My account is locked after three failed logins",
    "Exporting a report gives an error 500",
    "Do you sell gift cards for the store?",
]
_TAILS = [
    "",
    " Please help quickly.",
    " This is the second time I write about it.",
    " I have attached a screenshot of the problem and the order confirmation.",
    " Thanks in advance for looking into it, it has been a week already and nobody answered my emails.",
]


def ticket(rng: random.Random) -> str:
    subject = rng.choice(_SUBJECTS).format(n=rng.randint(10000, 99999))
    return subject + rng.choice(_TAILS)


def history_agent(
    *, tasks: int = 60, seed: int = 7, gates: dict | None = None, template: str = "", **agent_fields
):
    """A classification agent (sim-small, no latency, the default checks) with
    ``tasks`` finished tasks: most passed, a few approved, corrected or rejected
    by a reviewer. ``gates``: its AgentGates fields (none: the defaults)."""
    board = make_board(ready_limit=None, doing_limit=None)
    agent = make_agent(
        boards=[board],
        concurrency=1000,
        prompt_template=template or PLAIN,
        capabilities=["triage"],
        cascade=[CASCADE_TIER],
        **agent_fields,
    )
    if gates is not None:
        AgentGates.objects.create(agent=agent, **gates)
    ensure_version(agent)
    rng = random.Random(seed)
    done = board.columns.get(role=Column.Role.DONE)
    rows = Task.objects.bulk_create(
        Task(
            board=board,
            column=done,
            agent=agent,
            title=f"ticket {i}",
            input=ticket(rng),
            capability="triage",
            status=Task.Status.DONE,
            output="billing",
            prompt_version=agent.prompt_version,
            attempts=1,
        )
        for i in range(tasks)
    )
    for i, task in enumerate(rows[: tasks // 6]):
        status = [Escalation.Status.APPROVED, Escalation.Status.CORRECTED, Escalation.Status.REJECTED][i % 3]
        inspection = Inspection.objects.create(
            task=task, board=board, agent=agent, prompt_version=agent.prompt_version, passed=False
        )
        Escalation.objects.create(
            task=task,
            board=board,
            agent=agent,
            inspection=inspection,
            output=task.output,
            status=status,
            corrected_output="shipping" if status == Escalation.Status.CORRECTED else "",
            note="wrong class" if status == Escalation.Status.REJECTED else "",
        )
    return agent


def version(agent, template: str, **fields) -> PromptVersion:
    """A candidate version of the agent (not a proposal: what the API and the
    command replay), with ``template``."""
    base = ensure_version(agent)
    return PromptVersion.objects.create(
        agent=agent,
        number=next_version_number(agent),
        parent=base,
        source=PromptVersion.Source.PERSON,
        prompt_template=template,
        prompt_variables=base.prompt_variables,
        parameters={**base.parameters, **fields.pop("parameters", {})},
        cascade=base.cascade,
        implementation=base.implementation,
        **fields,
    )


def proposal_in_gates(agent, template: str = BETTER, *, approver=None):
    """A major change to ``agent`` (``template``), proposed and approved: in its
    gates, the first one running (its replay queued; a worker, or
    ``replay_chunk``, works through it)."""
    proposal = kaizen.proposal_create(
        agent=agent,
        fields=fields_of(agent, prompt_template=template),
        rationale="Define the classes: reviewers keep correcting billing and shipping.",
        user=make_editor(),
    )
    kaizen.proposal_approve(proposal=proposal, user=approver or make_approver(), note="Reads well.")
    proposal.refresh_from_db()
    return proposal


def replay_chunk(replay_id: int) -> str:
    """One chunk of a replay's items, worked through here (what a worker's step does)."""
    return genchi.replay_step(replay_id, seconds=0, hand_on=False)
