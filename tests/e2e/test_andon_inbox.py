"""The andon inbox in real browsers: a defect made by the real worker appears live
in two reviewers' inboxes; one approves it from the keyboard (J, then A); it
leaves the other's inbox without a reload, and its card reaches Done on the
open board page."""

from __future__ import annotations

import pytest

from andon.models import Escalation
from boards import services
from boards.models import Task, TaskEvent
from tests.e2e.pages import PASSWORD, WAIT_MS, goto_live, log_in, watch
from tests.factories import make_agent, make_board, make_reviewer

pytestmark = [pytest.mark.e2e, pytest.mark.worker(concurrency=4)]

TITLE = "Inspect weld seam 12"
ROW = f"#escalation-list .escalation:has-text('{TITLE}')"


# Waits are for conditions and end as soon as they hold: their limits are for a
# loaded machine (a decision is held 6 s before it is sent, then goes through the
# web server, the database and the broadcaster to every page).


def _defect_line():
    """A board whose agent's every output fails its check: each run ends in Review
    with an escalation."""
    board = make_board(name="Andon line")
    make_agent(
        boards=[board],
        latency_ms=100,
        error_rate=0.0,
        quality_checks=[{"check": "regex", "name": "has-part-number", "must_match": "NEVER-MATCHES"}],
    )
    return board


def _title_count(page, n: int) -> None:
    page.wait_for_function(f"document.title === '({n}) Andon inbox · Kaizen'", timeout=WAIT_MS)


def test_an_escalation_approved_from_the_keyboard_leaves_both_inboxes_live(
    browser, live_server_url, celery_worker
):
    board = _defect_line()
    ana = make_reviewer(username="ana", password=PASSWORD)
    make_reviewer(username="bob", password=PASSWORD)

    first = log_in(browser, live_server_url, "ana", "/andon/")
    second = log_in(browser, live_server_url, "bob", "/andon/")
    board_page = watch(first.context.new_page())
    goto_live(board_page, f"{live_server_url}{board.get_absolute_url()}")
    inboxes = (first, second)
    for page in inboxes:
        _title_count(page, 0)

    # The intake commits and asks the worker to pull; the worker runs it to a defect.
    task = services.task_create(board=board, title=TITLE, input="Porosity near the root pass.")

    for page in inboxes:
        page.wait_for_selector(ROW, timeout=WAIT_MS)
        _title_count(page, 1)
        row_text = page.inner_text(ROW)
        assert "has-part-number" in row_text and "does not match /NEVER-MATCHES/" in row_text
        assert "simulated" in row_text.lower()
    board_page.wait_for_selector(f".column--review .card:has-text('{TITLE}')", timeout=WAIT_MS)

    first.keyboard.press("j")
    first.wait_for_selector(f"{ROW}[aria-current='true']", timeout=WAIT_MS)
    assert first.evaluate("document.activeElement.classList.contains('escalation')")
    first.keyboard.press("a")

    first.wait_for_selector(ROW, state="detached", timeout=WAIT_MS)
    first.wait_for_selector(f"#inbox-status:has-text('Approved: “{TITLE}”.')", timeout=WAIT_MS)
    second.wait_for_selector(ROW, state="detached", timeout=WAIT_MS)
    for page in inboxes:
        _title_count(page, 0)
    board_page.wait_for_selector(f".column--done .card:has-text('{TITLE}')", timeout=WAIT_MS)
    for page in (first, second, board_page):
        assert page.evaluate("window.__kaizenNoReload") is True

    task.refresh_from_db()
    assert task.status == Task.Status.DONE
    escalation = Escalation.objects.get(task=task)
    assert (escalation.status, escalation.decided_by) == (Escalation.Status.APPROVED, ana)
    assert task.events.filter(kind=TaskEvent.Kind.APPROVED).count() == 1


def test_an_approval_whose_row_the_live_update_took_first_still_says_so(
    browser, live_server_url, celery_worker
):
    # On a loaded machine the push of a decision can reach the page before the
    # decision's own response: the row (and the form the request came from) is
    # gone when the response arrives. Its status line must still show.
    board = _defect_line()
    make_reviewer(username="ana", password=PASSWORD)
    page = log_in(browser, live_server_url, "ana", "/andon/")
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    services.task_create(board=board, title=TITLE, input="Porosity near the root pass.")
    page.wait_for_selector(ROW, timeout=WAIT_MS)

    # The approval reaches the server (which decides and pushes the decision),
    # and its response is held back until the push has arrived.
    held = []
    page.route("**/andon/*/approve/", lambda route: held.append((route, route.fetch())))
    page.keyboard.press("j")
    page.wait_for_selector(f"{ROW}[aria-current='true']", timeout=WAIT_MS)
    page.keyboard.press("a")
    # The decision's push arrives: every other page takes the row away; this one
    # keeps it, sending, until its answer comes.
    page.wait_for_function(
        "[...document.querySelectorAll('.escalation.is-gone')].length === 1", timeout=WAIT_MS
    )
    # The route's handler runs while this thread waits on the page.
    for _ in range(WAIT_MS // 100):
        if held:
            break
        page.wait_for_timeout(100)
    [(route, response)] = held
    assert f"Approved: “{TITLE}”." not in page.inner_text("#inbox-status")
    # Not "decided elsewhere": the push is this reviewer's own decision.
    assert page.is_hidden(f"{ROW} .escalation-gone-note")
    route.fulfill(response=response)

    page.wait_for_selector(f"#inbox-status:has-text('Approved: “{TITLE}”.')", timeout=WAIT_MS)
    page.wait_for_selector(ROW, state="detached", timeout=WAIT_MS)
    _title_count(page, 0)
    assert not [error for error in errors if "oobErrorNoTarget" in error]
    assert Escalation.objects.get(task__title=TITLE).status == Escalation.Status.APPROVED
