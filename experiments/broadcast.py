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
  and audit entries.

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

from experiments.selectors import (
    REVIEW,
    audit_recent_get,
    experiment_context_get,
    experiment_get,
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


def proposal_changed(proposal_id: int) -> None:
    """A proposal's gates moved (one started, passed, failed, was skipped or
    overridden): the review page's lists, which show each proposal's gates."""
    proposals_changed()


def replay_changed(replay_id: int) -> None:
    """A replay, probe run or shadow made progress or finished: the review page's
    lists, which show the progress of each proposal's running gate."""
    proposals_changed()
