"""Live updates of the evolution review, sent after commit through the project's
live transport (kaizen_web.live.publish), rendered from the pages' own
partials (``experiments/review.html``, ``experiments/experiment.html``), each
marked hx-swap-oob. Call these from ``transaction.on_commit`` in the services:

- ``proposals_changed()``: a proposal was made, approved, rejected or stopped,
  an experiment started or ended (it changes its proposal), or an agent's
  active version moved: the review page's proposals list, experiments list (a
  new experiment joins it) and recent audit entries, whole;
- ``experiment_changed(pk)``: an experiment was looked at, advanced, paused,
  resumed, promoted, rolled back or stopped: on the review page its row (which
  carries its chart's data: the chart is redrawn in place with Plotly.react) and
  the recent audit entries; on the experiment's own page its row, look history
  and audit entries;
- ``proposal_changed(pk)``: a proposal's gates moved (one started, passed,
  failed, was skipped or overridden; the proposal was approved, rejected or
  started): the review page's lists (they show each proposal's gates), and on
  the proposal's own page its status, decision, gates, experiment and audit
  entries;
- ``replay_changed(pk)``: a replay, probe run or shadow made progress or ended:
  on its own page its body (progress, verdict, statistics), cancel form, items
  and audit entries; on its proposal's page the gates; on the review page that
  proposal's gates (its progress), while the review lists it.

Calls coalesce: until the broadcaster starts rendering an update, asking for
the same one again adds nothing (one action writes several audit entries, and
each may ask). What is rendered is read when the broadcaster gets to it, after
every commit that asked.

Rendered without a request: no CSRF token in the forms (htmx posts carry the
body's hx-headers), no user (only approvers are subscribed anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from django.template.loader import render_to_string

from experiments.models import ChangeProposal
from experiments.selectors import (
    REVIEW,
    WAITING,
    audit_recent_get,
    experiment_context_get,
    experiment_get,
    proposal_context_get,
    proposal_gates_get,
    proposal_get,
    replay_context_get,
    replay_get,
    review_context_get,
)
from kaizen_web import live

REVIEW_GROUP = "kaizen_review"

_lock = threading.Lock()
_pending: set[Hashable] = set()


def _publish_once(key: Hashable, render: Callable[[], list[tuple[str, dict]]]) -> None:
    if not live.layer_configured():
        return
    with _lock:
        if key in _pending:
            return
        _pending.add(key)

    def job() -> list[tuple[str, dict]]:
        # Taken off before reading: a change committed from now on asks again.
        with _lock:
            _pending.discard(key)
        return render()

    live.publish(job)


def proposals_changed() -> None:
    def render() -> list[tuple[str, dict]]:
        html = render_to_string(f"{REVIEW}#review-update", review_context_get())
        return [(REVIEW_GROUP, {"type": "review.update", "html": html})]

    _publish_once("proposals", render)


def experiment_changed(experiment_id: int) -> None:
    def render() -> list[tuple[str, dict]]:
        experiment = experiment_get(experiment_id)
        if experiment is None:
            return []
        review_html = render_to_string(
            f"{REVIEW}#experiment-pushed", {"experiment": experiment, "audit": audit_recent_get()}
        )
        page_html = render_to_string(
            "experiments/experiment.html#experiment-update", experiment_context_get(experiment)
        )
        return [
            (REVIEW_GROUP, {"type": "review.update", "html": review_html}),
            (
                REVIEW_GROUP,
                {"type": "experiment.update", "experiment_id": experiment_id, "html": page_html},
            ),
        ]

    _publish_once(("experiment", experiment_id), render)


PROPOSAL = "experiments/proposal.html"
REPLAY = "experiments/replay.html"


def proposal_changed(proposal_id: int) -> None:
    """A proposal's gates moved: the review page's lists, which show each
    proposal's gates, and the proposal's own page."""
    proposals_changed()

    def render() -> list[tuple[str, dict]]:
        proposal = proposal_get(proposal_id)
        if proposal is None:
            return []
        html = render_to_string(f"{PROPOSAL}#proposal-update", proposal_context_get(proposal))
        return [(REVIEW_GROUP, {"type": "proposal.update", "proposal_id": proposal_id, "html": html})]

    _publish_once(("proposal", proposal_id), render)


def _gates_messages(proposal: ChangeProposal) -> list[tuple[str, dict]]:
    """A proposal's gates where they show: its page's gates section and, while the
    review lists the proposal, its gates there (a push for an item the review no
    longer has would make the review re-read everything)."""
    gates = proposal_gates_get(proposal)
    page_html = render_to_string(
        f"{PROPOSAL}#gates-section",
        {
            "proposal": proposal,
            "gates": gates,
            "plain": True,
            "here": proposal.get_absolute_url(),
            "oob": True,
        },
    )
    messages = [
        (REVIEW_GROUP, {"type": "proposal.update", "proposal_id": proposal.pk, "html": page_html}),
    ]
    if proposal.status in WAITING:
        proposal.gate_list = gates
        review_html = render_to_string(f"{REVIEW}#proposal-gates", {"proposal": proposal, "gates_oob": True})
        messages.append((REVIEW_GROUP, {"type": "review.update", "html": review_html}))
    return messages


def replay_changed(replay_id: int) -> None:
    """A replay, probe run or shadow made progress or ended: its page, and its
    proposal's gates on the proposal's page and on the review."""

    def render() -> list[tuple[str, dict]]:
        replay = replay_get(replay_id)
        if replay is None:
            return []
        html = render_to_string(f"{REPLAY}#replay-update", replay_context_get(replay))
        messages = [(REVIEW_GROUP, {"type": "replay.update", "replay_id": replay_id, "html": html})]
        proposal = proposal_get(replay.proposal_id) if replay.proposal_id is not None else None
        if proposal is not None:
            messages += _gates_messages(proposal)
        return messages

    _publish_once(("replay", replay_id), render)
