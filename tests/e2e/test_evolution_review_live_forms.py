"""Live updates never destroy what a person is typing on the evolution review
(issue 10, item 2): with pushes arriving every 100 ms, and real changes among
them (new looks, the experiment turning promotable, a new proposal), a note form
stays open, keeps its text, the focus and the caret, the same element all along;
and submitting it then works."""

from __future__ import annotations

import threading

import pytest

from boards import broadcast
from experiments import broadcast as kaizen_broadcast
from experiments import services as kaizen
from experiments.models import ChangeProposal, Experiment
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.experiments.helpers import experiment_in, line_agent, look, major_proposal, samples, tasks_of
from tests.factories import make_approver

pytestmark = pytest.mark.e2e


class Pushes:
    """Re-sends the review page's live parts from a thread, 100 ms after the last
    went out, as a busy line does (each push is a real render of the current state)."""

    def __init__(self, experiment_ids: list[int]) -> None:
        self.experiment_ids = experiment_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(0.1):
                for pk in self.experiment_ids:
                    kaizen_broadcast.experiment_changed(pk)
                kaizen_broadcast.proposals_changed()
                # Each round waits for the last to be sent: as fast as the pages
                # render, within the broadcaster's CPU budget.
                broadcast.flush()
        finally:
            connection.close()

    def __enter__(self) -> Pushes:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_MS / 1000)
        # Nothing left to render once the test's database is gone.
        broadcast.flush()


def _state(page, selector: str) -> dict:
    return page.evaluate(
        """(selector) => {
            const field = document.querySelector(selector);
            const details = field && field.closest('details');
            return {
                same: Boolean(field) && field === window.__noteField,
                open: Boolean(details && details.open),
                focused: document.activeElement === field,
                value: field ? field.value : null,
                caret: field ? field.selectionStart : null,
            };
        }""",
        selector,
    )


def _count_pushes(page) -> None:
    page.evaluate(
        "window.__pushes = 0;"
        "document.addEventListener('htmx:wsAfterMessage', () => { window.__pushes += 1; });"
    )


def _pushes_arrive(page, more: int) -> None:
    """Wait until ``more`` pushes have reached the page since the last wait."""
    seen = page.evaluate("window.__pushes")
    page.wait_for_function(f"window.__pushes >= {seen + more}", timeout=WAIT_MS)


def _type(page, text: str) -> None:
    for character in text:
        page.keyboard.type(character)
        page.wait_for_timeout(30)


def test_a_rollback_note_survives_pushes_and_a_status_change_and_then_rolls_back(browser, live_server_url):
    agent = line_agent(name="welder")
    experiment = experiment_in("efficacy", agent=agent)
    make_approver(username="ana", password=PASSWORD)
    page = log_in(browser, live_server_url, "ana", "/kaizen/", viewport={"width": 1400, "height": 1000})
    row = f"#experiment-{experiment.pk}"
    form = f"#experiment-{experiment.pk}-rollback"
    note = f"{form}-note"

    page.click(f"{form} > summary")
    page.click(note)
    page.evaluate(f"window.__noteField = document.querySelector('{note}')")
    _count_pushes(page)
    tasks = tasks_of(agent, 1200)
    with Pushes([experiment.pk]):
        _type(page, "The new prompt ")
        _pushes_arrive(page, 3)
        _type(page, "reads worse ")
        # A real change while typing: a new look changes the row's figures.
        samples(experiment, tasks[:300], control=(100, 70), treatment=(100, 72))
        look(experiment)
        page.wait_for_function(
            f"document.querySelector('{row} .evo-summary').textContent.includes('After 600 tasks')",
            timeout=WAIT_MS,
        )
        _type(page, "to the welders; ")
        # Another: the experiment becomes promotable, and a Promote form appears
        # beside the one being written in.
        samples(experiment, tasks[300:1000], control=(300, 200), treatment=(300, 290))
        look(experiment)
        assert Experiment.objects.get(pk=experiment.pk).status == "promote_ready"
        page.wait_for_selector(f"#experiment-{experiment.pk}-promote", timeout=WAIT_MS)
        _type(page, "hold it ")
        _pushes_arrive(page, 2)
        _type(page, "back.")

    state = _state(page, note)
    text = "The new prompt reads worse to the welders; hold it back."
    assert state == {"same": True, "open": True, "focused": True, "value": text, "caret": len(text)}
    assert page.evaluate("window.__kaizenNoReload") is True

    # Submitting works, and the answer closes the form.
    page.click(f"{form} button[data-action=rollback]")
    page.wait_for_selector(f"{row} .evo-status--rolled_back", timeout=WAIT_MS)
    page.wait_for_selector(f"{form}", state="detached", timeout=WAIT_MS)
    assert "hold it back." in page.inner_text(f"{row} .evo-summary")
    experiment.refresh_from_db()
    assert (experiment.status, experiment.status_reason) == ("rolled_back", text)


def test_an_approval_note_survives_a_new_proposal_joining_the_list(browser, live_server_url):
    welder = line_agent(name="welder")
    proposal = major_proposal(welder)
    make_approver(username="ana", password=PASSWORD)
    page = log_in(browser, live_server_url, "ana", "/kaizen/", viewport={"width": 1400, "height": 1000})
    form = f"#proposal-{proposal.pk}-approve"
    note = f"{form}-note"

    page.click(f"{form} > summary")
    page.click(note)
    page.evaluate(f"window.__noteField = document.querySelector('{note}')")
    _count_pushes(page)
    with Pushes([]):
        _type(page, "Reviewers asked ")
        _pushes_arrive(page, 3)
        _type(page, "for this ")
        # Another proposal joins the list (after this one: oldest first), and the
        # count in the heading changes.
        other = major_proposal(line_agent(name="painter"))
        kaizen_broadcast.proposals_changed()
        page.wait_for_selector(f"#proposal-{other.pk}", timeout=WAIT_MS)
        _type(page, "twice.")

    text = "Reviewers asked for this twice."
    assert _state(page, note) == {
        "same": True,
        "open": True,
        "focused": True,
        "value": text,
        "caret": len(text),
    }
    assert page.inner_text("#pending-count") == "2"

    page.click(f"{form} button[data-action=approve]")
    page.wait_for_selector(f"#proposal-{proposal.pk}", state="detached", timeout=WAIT_MS)
    proposal.refresh_from_db()
    assert (proposal.status, proposal.decision_note) == (ChangeProposal.Status.EXPERIMENTING, text)
    # The other proposal's forms were left as they were: closed.
    assert page.evaluate(f"document.querySelector('#proposal-{other.pk}-approve').open") is False
    assert kaizen.can_approve(proposal.decided_by)


def test_an_experiments_page_posts_its_plain_forms_after_a_push(browser, live_server_url):
    """The experiment's own page posts its forms without htmx; a pushed row is
    rendered without a request, so without a CSRF token: the page keeps its own."""
    agent = line_agent(name="welder")
    experiment = experiment_in("efficacy", agent=agent)
    make_approver(username="ana", password=PASSWORD)
    page = log_in(
        browser,
        live_server_url,
        "ana",
        experiment.get_absolute_url(),
        viewport={"width": 1400, "height": 1000},
    )
    form = f"#experiment-{experiment.pk}-rollback"

    page.click(f"{form} > summary")
    page.fill(f"{form}-note", "Not worth the risk.")
    samples(experiment, tasks_of(agent, 200), control=(100, 70), treatment=(100, 72))
    look(experiment)
    page.wait_for_function(
        f"document.querySelector('#experiment-{experiment.pk} .evo-summary').textContent.includes('After 600')",
        timeout=WAIT_MS,
    )
    assert page.input_value(f"{form}-note") == "Not worth the risk."
    assert page.locator(f"{form} input[name=csrfmiddlewaretoken]").count() == 1

    page.click(f"{form} button[data-action=rollback]")
    page.wait_for_url(f"{live_server_url}{experiment.get_absolute_url()}", timeout=WAIT_MS)
    page.wait_for_selector(".evo-status--rolled_back", timeout=WAIT_MS)
    experiment.refresh_from_db()
    assert (experiment.status, experiment.status_reason) == ("rolled_back", "Not worth the risk.")
    broadcast.flush()
