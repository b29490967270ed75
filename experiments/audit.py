"""The audit log's one writer: every step of the kaizen loop (a proposal, an
approval, a gate, a replay, an experiment's stage, a promotion, a rollback)
writes an AuditEntry here, in the transaction that makes the step, and the
evolution review's pages are told after commit."""

from __future__ import annotations

from functools import partial

from django.contrib.auth.models import User
from django.db import transaction

from boards.models import Agent
from experiments import broadcast as review_broadcast
from experiments.models import AuditEntry, ChangeProposal, Experiment, PromptVersion, Replay

Action = AuditEntry.Action

# Audit actions that change the review page's lists of proposals and experiments.
_REVIEW_LIST_ACTIONS = {
    Action.PROPOSED,
    Action.APPROVED,
    Action.REJECTED,
    Action.STARTED,
    Action.NOT_STARTED,
    Action.PROMOTED,
    Action.ROLLED_BACK,
    Action.FUTILE,
    Action.VERSION,
    Action.GATE_FAILED,
}
# Audit actions that change a proposal's gates (its page shows them live).
_GATE_ACTIONS = {
    Action.APPROVED,
    Action.REJECTED,
    Action.GATE_STARTED,
    Action.GATE_PASSED,
    Action.GATE_FAILED,
    Action.GATE_SKIPPED,
    Action.GATE_OVERRIDDEN,
    Action.REPLAY_STARTED,
    Action.REPLAY_CANCELLED,
    Action.REPLAY_FINISHED,
    Action.STARTED,
}


def audit(
    agent: Agent,
    action: str,
    *,
    user: User | None = None,
    reason: str = "",
    proposal: ChangeProposal | None = None,
    experiment: Experiment | None = None,
    version: PromptVersion | None = None,
    stats_json: dict | None = None,
    replay: Replay | None = None,
) -> AuditEntry:
    entry = AuditEntry.objects.create(
        agent=agent,
        action=action,
        user=user if user is not None and user.is_authenticated else None,
        reason=reason,
        proposal=proposal,
        experiment=experiment,
        version=version,
        replay=replay,
        stats=stats_json or {},
    )
    # The evolution review pages, live (sent after commit; repeats are merged).
    if entry.experiment_id is not None:
        transaction.on_commit(partial(review_broadcast.experiment_changed, entry.experiment_id))
    if action in _REVIEW_LIST_ACTIONS:
        transaction.on_commit(review_broadcast.proposals_changed)
    if entry.proposal_id is not None and action in _GATE_ACTIONS:
        transaction.on_commit(partial(review_broadcast.proposal_changed, entry.proposal_id))
    return entry
