"""The evolution review in a real browser: an approver approves a pending major
proposal on /kaizen/ (writing the note), sees its experiment start as a canary
with its chart, sees a look arrive live (the chart redrawn in place, no
reload), rolls the experiment back from the page with a note, and reads the
steps in the page's audit log; the agent's next claimed task runs the active
version."""

from __future__ import annotations

import re

import pytest

from boards import broadcast
from boards import services as board_services
from experiments import broadcast as kaizen_broadcast
from experiments import services as kaizen
from experiments.models import ChangeProposal, Experiment
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in, pushes_seen, wait_for_push
from tests.experiments.helpers import line_agent, look, major_proposal, samples, tasks_of
from tests.factories import make_approver

pytestmark = pytest.mark.e2e


# Sets __sameChart on the chart now, and again after each push has been drawn
# (evolution.js draws in the animation frame after the swap) while the chart's
# data shows no look yet.
MARK_THE_CHART_UNTIL_A_LOOK = """({plot, data}) => {
  const looks = () => {
    const script = document.getElementById(data);
    try { return JSON.parse(script.textContent).data[0].x.length; } catch (e) { return null; }
  };
  const mark = () => {
    const chart = document.querySelector(plot);
    if (chart && looks() === 0) chart.__sameChart = true;
  };
  mark();
  document.addEventListener("htmx:wsAfterMessage", () => requestAnimationFrame(() => requestAnimationFrame(mark)));
}"""


def _audit_actions(page) -> list[str]:
    return page.eval_on_selector_all(
        "#audit-recent .evo-audit-action", "cells => cells.map(c => c.textContent.trim())"
    )


def test_an_approver_approves_a_major_change_then_rolls_its_experiment_back(browser, live_server_url):
    agent = line_agent(name="welder")
    board = agent.boards.first()
    proposal = major_proposal(agent)
    make_approver(username="ana", password=PASSWORD)

    page = log_in(browser, live_server_url, "ana", "/kaizen/", viewport={"width": 1400, "height": 1000})
    item = f"#proposal-{proposal.pk}"
    page.wait_for_selector(f"{item} .evo-kind--major", timeout=WAIT_MS)
    assert page.title() == "(1) Evolution review · Kaizen"

    # Approve: the button opens the form, which asks for the note.
    pushed = pushes_seen(page)
    page.click(f"#proposal-{proposal.pk}-approve > summary")
    page.fill(f"#proposal-{proposal.pk}-approve-note", "The order of the answer matters to reviewers.")
    page.click(f"#proposal-{proposal.pk}-approve button[data-action=approve]")

    page.wait_for_selector(
        "#review-status:has-text('Approved the change to welder (v2): its canary experiment has started.')",
        timeout=WAIT_MS,
    )
    page.wait_for_selector(item, state="detached", timeout=WAIT_MS)
    page.wait_for_function("document.title === 'Evolution review · Kaizen'", timeout=WAIT_MS)
    experiment = Experiment.objects.get(proposal=proposal)
    row = f"#experiment-{experiment.pk}"
    page.wait_for_selector(f"{row} .evo-stage:has-text('Canary')", timeout=WAIT_MS)
    assert "Running" in page.inner_text(f"{row} .evo-status")
    # Its chart is drawn (plotly.js, from the plotly package), still without looks.
    chart = f"#chart-{experiment.pk}"
    # Plotly draws into the chart's own child (htmx's settle must not touch it).
    plot = f"{chart} > .evo-plot"
    page.wait_for_selector(f"{chart} .main-svg", timeout=WAIT_MS)
    assert page.evaluate(f"document.querySelector('{plot}').data[0].x.length") == 0

    # The approval's own pushes (the lists, and the new experiment's row) come
    # after its answer: both have arrived before the look below, so neither can
    # land after the look's push with the chart as it was before.
    wait_for_push(
        page,
        lambda m: '<section id="proposals"' in m and f'id="proposal-{proposal.pk}"' not in m,
        since=pushed,
    )
    wait_for_push(
        page, lambda m: m.lstrip().startswith(f'<div id="experiment-{experiment.pk}"'), since=pushed
    )
    # The marker below must be on the chart that the look's push is to update in
    # place: as long as the chart's data has no look, it is set again on whatever
    # chart there is once each push has been drawn.
    page.evaluate(MARK_THE_CHART_UNTIL_A_LOOK, {"plot": plot, "data": f"chart-data-{experiment.pk}"})
    # A look, pushed live: the row and the chart change in place, without a reload.
    samples(experiment, tasks_of(agent, 40), control=(30, 21), treatment=(2, 1))
    look(experiment)
    kaizen_broadcast.experiment_changed(experiment.pk)
    broadcast.flush()
    page.wait_for_function(f"document.querySelector('{plot}').data[0].x.length === 1", timeout=WAIT_MS)
    assert page.evaluate(f"document.querySelector('{plot}').__sameChart") is True
    # Plotly's layout classes survive the pushes' swaps (htmx's settle once removed them).
    assert page.evaluate(f"document.querySelector('{plot}').classList.contains('js-plotly-plot')") is True
    page.wait_for_selector(f"{row} .evo-decision--continue", timeout=WAIT_MS)
    assert "30" in page.inner_text(f"{row} .evo-counts")

    # Roll back from the page, with a note.
    page.click(f"#experiment-{experiment.pk}-rollback > summary")
    page.fill(f"#experiment-{experiment.pk}-rollback-note", "Outputs got longer; not worth the risk.")
    page.click(f"#experiment-{experiment.pk}-rollback button[data-action=rollback]")

    page.wait_for_selector(f"{row} .evo-status--rolled_back", timeout=WAIT_MS)
    page.wait_for_selector("#review-status:has-text('Rolled back welder')", timeout=WAIT_MS)
    assert page.query_selector(f"#experiment-{experiment.pk}-rollback") is None
    assert "Outputs got longer; not worth the risk." in page.inner_text(row)

    # The audit log on the page, newest first: proposed -> approved -> started -> rolled back
    # (the looks are on the experiment's own page, and in the whole log).
    actions = _audit_actions(page)
    assert actions == ["Rolled back", "Experiment started", "Approved", "Proposed"]
    audit = page.inner_text("#audit-recent")
    assert "The order of the answer matters to reviewers." in audit
    assert "Outputs got longer; not worth the risk." in audit
    assert re.search(r"ana", audit)
    assert page.evaluate("window.__kaizenNoReload") is True

    experiment.refresh_from_db()
    proposal.refresh_from_db()
    assert (experiment.status, proposal.status) == ("rolled_back", ChangeProposal.Status.ROLLED_BACK)
    # The agent's next claimed task runs the active version, not the candidate.
    task = board_services.task_create(board=board, title="After the rollback", input="porosity")
    claims = board_services.board_pull(board_id=board.pk)
    assert task.pk in {claim.task_id for claim in claims}
    task.refresh_from_db()
    agent.refresh_from_db()
    assert (task.prompt_version, task.experiment_id, task.arm) == (agent.prompt_version, None, "")
    assert agent.prompt_version == 1 == proposal.base_version.number
    assert kaizen.can_approve(proposal.decided_by)


def test_an_approves_answer_reaches_the_page_when_a_push_took_its_form_away_first(browser, live_server_url):
    """The approval's own push (the proposal leaves the waiting list) can reach the
    page before the approval's HTTP answer: the answer's message and sections must
    still land, though the form that asked is gone. Here the answer is held back
    until the push has taken the form away, which a loaded machine does by chance."""
    agent = line_agent(name="welder")
    proposal = major_proposal(agent)
    make_approver(username="ana", password=PASSWORD)
    page = log_in(browser, live_server_url, "ana", "/kaizen/", viewport={"width": 1400, "height": 1000})
    item = f"#proposal-{proposal.pk}"
    page.wait_for_selector(f"{item} .evo-kind--major", timeout=WAIT_MS)

    def hold_the_answer(route):
        answer = route.fetch()  # the server has approved and pushed by now
        page.wait_for_selector(item, state="detached", timeout=WAIT_MS)
        route.fulfill(response=answer)

    page.route(re.compile(rf".*/kaizen/proposals/{proposal.pk}/approve/$"), hold_the_answer)
    page.click(f"{item}-approve > summary")
    page.fill(f"{item}-approve-note", "The order of the answer matters to reviewers.")
    page.click(f"{item}-approve button[data-action=approve]")

    page.wait_for_selector(
        "#review-status:has-text('Approved the change to welder (v2): its canary experiment has started.')",
        timeout=WAIT_MS,
    )
    assert Experiment.objects.filter(proposal=proposal).exists()
