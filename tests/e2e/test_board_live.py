"""The live line in a real browser: log in, open the board, add a task through
the form, and watch its card reach Done without reloading, in two browsers."""

from __future__ import annotations

import pytest

from boards.agents.providers import ModelRequest
from boards.agents.simulated import simulate
from boards.models import Task, TaskEvent
from tests.e2e.pages import PASSWORD, WAIT_MS, goto_live, log_in
from tests.factories import make_agent, make_board, make_user

pytestmark = [pytest.mark.e2e, pytest.mark.worker(concurrency=8)]


def test_task_added_in_the_form_reaches_done_live_in_two_browsers(browser, live_server_url, celery_worker):
    board = make_board(name="Browser line")
    # Long enough that the card is seen in progress, short enough to keep the test quick.
    # No quality checks: this is about the card's way to Done (sim-small is not
    # sure enough of this input for the default confidence check; the andon's
    # own browser test covers a defect's way through Review).
    make_agent(boards=[board], capabilities=["inspect"], latency_ms=600, error_rate=0.0, quality_checks=[])
    operator = make_user(username="operator", password=PASSWORD)
    watcher = make_user(username="watcher", password=PASSWORD)
    board_url = f"{live_server_url}{board.get_absolute_url()}"

    pages = []
    for user in (operator, watcher):
        page = log_in(browser, live_server_url, user.username, "/boards/", live=False)
        # Marked (window.__kaizenNoReload) so that a reload or navigation would show.
        goto_live(page, board_url)
        pages.append(page)
    page, other = pages

    page.fill("#id_title", "Inspect weld seam 12")
    page.fill("#id_input", "Porosity visible near the root pass; measure and classify.")
    page.click("#task-form button[type=submit]")

    done_card = ".column--done .card:has-text('Inspect weld seam 12')"
    for p in pages:
        p.wait_for_selector(done_card, timeout=WAIT_MS)
        assert p.evaluate("window.__kaizenNoReload") is True
        card_text = p.inner_text(done_card)
        assert "simulated" in card_text.lower()
    # The form was reset after the task was added.
    assert page.input_value("#id_title") == ""

    task = Task.objects.get(title="Inspect weld seam 12")
    assert task.status == Task.Status.DONE
    # The agent's template is "{input}": the prompt is the input itself.
    assert (
        task.output
        == simulate(
            ModelRequest(model="sim-small", prompt=task.input, input=task.input, settings={"error_rate": 0})
        ).text
    )
    kinds = list(task.events.values_list("kind", flat=True))
    assert kinds[0] == TaskEvent.Kind.CREATED and kinds[-1] == TaskEvent.Kind.COMPLETED
    assert task.events.get(kind=TaskEvent.Kind.CREATED).user == operator
    assert other.url == board_url
