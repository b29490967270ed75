"""The andon inbox in a real browser, as a reviewer works it from the keyboard:
decisions are held a few seconds and can be undone; J moves one row, and the
selection moves on to the next unread row when the selected one leaves; live
arrivals and departures never close a form the reviewer is typing in.

Escalations are made by this test process (a claimed run completed with a
defect) and reach the browser through the real broadcaster, Redis and the ASGI
server. Every wait is on a condition (a selector, the database), never a sleep.
"""

from __future__ import annotations

import time

import pytest
from django.db import close_old_connections

from andon import failure_warnings
from andon import services as andon_services
from andon.models import Escalation
from boards.fragments import render_board_update
from boards.models import Column
from experiments import knowledge, vectors
from tests.andon.helpers import DEFECTIVE, claim_one, complete
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in, stop_the_clock
from tests.factories import column, make_agent, make_board, make_reviewer

pytestmark = [pytest.mark.e2e]


def _line():
    board = make_board(name="Weld line")
    review = column(board, Column.Role.REVIEW)
    review.wip_limit = None
    review.save()
    ready = column(board, Column.Role.READY)
    ready.wip_limit = None
    ready.save()
    doing = column(board, Column.Role.IN_PROGRESS)
    doing.wip_limit = None
    doing.save()
    make_agent(boards=[board], concurrency=100, spike_defects=1000, spike_window=1000)
    # The first render of a board in a process compiles its templates (seconds
    # here): done now, not by this process's broadcaster, which keeps to its CPU
    # share by holding the next updates ten times as long as a render took.
    render_board_update(board_id=board.pk, column_ids={c.pk for c in board.columns.all()})
    return board


def _escalate(board, title: str, input: str) -> Escalation:
    task, claim = claim_one(board, title=title, input=input)
    assert complete(claim, confidence=DEFECTIVE)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def _row(title: str) -> str:
    return f"#escalation-list > .escalation:has(.escalation-title a:text-is('{title}'))"


def _selected(page, title: str) -> None:
    page.wait_for_selector(f"{_row(title)}[aria-current='true']", timeout=WAIT_MS)


def _wait_for_status(escalation: Escalation, status: str, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()
        escalation.refresh_from_db()
        if escalation.status == status:
            return
        assert time.monotonic() < deadline, f"escalation {escalation.pk} is still {escalation.status}"
        time.sleep(0.1)


def test_a_held_decision_can_be_undone_and_is_sent_once_its_delay_has_passed(browser, live_server_url):
    board = _line()
    ana = make_reviewer(username="ana", password=PASSWORD)
    weld_a = _escalate(board, "Weld A", "seam a")
    weld_b = _escalate(board, "Weld B", "seam b")
    weld_c = _escalate(board, "Weld C", "seam c")
    page = log_in(
        browser, live_server_url, "ana", "/andon/", clock=True, viewport={"width": 1400, "height": 1000}
    )
    page.wait_for_function("document.title === '(3) Andon inbox · Kaizen'")
    # The undo delay (6 s) does not run out while a slow machine carries out the
    # keys and checks below: the page's clock stands still until B is to be sent.
    stop_the_clock(page)

    # Newest first: C, B, A. J selects C; A holds the approval in the row.
    page.keyboard.press("j")
    _selected(page, "Weld C")
    page.keyboard.press("a")
    page.wait_for_selector(f"{_row('Weld C')}.is-pending .escalation-pending:has-text('Approved · sent in')")
    page.wait_for_selector("#inbox-status:has-text('Press U to undo')")
    page.keyboard.press("u")
    page.wait_for_selector(f"{_row('Weld C')}:not(.is-pending)")
    page.wait_for_selector("#inbox-status:has-text('Undone')")
    assert page.is_visible(f"{_row('Weld C')} .action-approve button")

    # Approve B and move on at once: J lands on the next row, A, one step.
    page.keyboard.press("j")
    _selected(page, "Weld B")
    page.keyboard.press("a")
    page.wait_for_selector(f"{_row('Weld B')}.is-pending")
    page.keyboard.press("j")
    _selected(page, "Weld A")
    assert page.is_visible(f"{_row('Weld B')}.is-pending")

    # B is sent once its delay has passed; C, undone before it, never was.
    page.clock.resume()
    _wait_for_status(weld_b, Escalation.Status.APPROVED)
    assert weld_b.decided_by == ana
    page.wait_for_selector(_row("Weld B"), state="detached", timeout=WAIT_MS)
    page.wait_for_function("document.title === '(2) Andon inbox · Kaizen'")
    weld_c.refresh_from_db()
    weld_a.refresh_from_db()
    assert weld_c.status == weld_a.status == Escalation.Status.OPEN
    _selected(page, "Weld A")
    assert page.evaluate("window.__kaizenNoReload") is True


def test_the_selection_moves_to_the_next_unread_row_when_the_selected_one_leaves(browser, live_server_url):
    board = _line()
    make_reviewer(username="ana", password=PASSWORD)
    for name in "ABCD":
        _escalate(board, f"Weld {name}", f"seam {name}")
    page = log_in(browser, live_server_url, "ana", "/andon/", viewport={"width": 1400, "height": 1000})
    page.wait_for_function("document.title === '(4) Andon inbox · Kaizen'")

    # Newest first: D, C, B, A. Read D and C, back to D, approve it, wait.
    for key, title in (("j", "Weld D"), ("j", "Weld C"), ("k", "Weld D")):
        page.keyboard.press(key)
        _selected(page, title)
    page.keyboard.press("a")
    page.wait_for_selector(_row("Weld D"), state="detached", timeout=WAIT_MS)

    # C was read: the selection skips it, to B, the first row not yet read.
    _selected(page, "Weld B")
    assert page.evaluate("document.activeElement.classList.contains('escalation')")
    page.keyboard.press("j")
    _selected(page, "Weld A")


def test_live_arrivals_and_departures_keep_an_open_reject_form_and_its_text(browser, live_server_url):
    board = _line()
    ana = make_reviewer(username="ana", password=PASSWORD)
    bob = make_reviewer(username="bob", password=PASSWORD)
    target = _escalate(board, "Weld A", "seam a")
    leaving = _escalate(board, "Weld B", "seam b")
    page = log_in(
        browser, live_server_url, "ana", "/andon/", clock=True, viewport={"width": 1400, "height": 1000}
    )
    page.wait_for_function("document.title === '(2) Andon inbox · Kaizen'")

    page.keyboard.press("k")  # the last row: A
    _selected(page, "Weld A")
    page.keyboard.press("r")
    field = f"{_row('Weld A')} .action-reject input[name=reason]"
    page.wait_for_selector(f"{field}:focus")
    page.keyboard.type("The part number is ")
    # Marks that a replaced element would lose: only what changed is swapped.
    page.eval_on_selector(field, "f => { f.__kept = true; f.closest('.escalation').__kept = true; }")

    # Meanwhile: a new row arrives on top, an identical escalation joins A's row,
    # bob claims A, and bob decides B, which leaves.
    _escalate(board, "Weld C", "seam c")
    twin = _escalate(board, "Weld A, again", "seam a")
    andon_services.escalation_claim(escalation=target, user=bob)
    andon_services.escalation_approve(escalation=leaving, user=bob)

    page.wait_for_selector(_row("Weld C"))
    page.wait_for_selector(f"{_row('Weld A')} .group-count:has-text('2 identical escalations')")
    page.wait_for_selector(f"{_row('Weld A')} .escalation-claim:has-text('bob')")
    page.wait_for_selector(_row("Weld B"), state="detached")

    # The form is open, the text is there, the caret still in the field.
    assert page.is_visible(field)
    assert page.eval_on_selector(f"{_row('Weld A')} .action-reject", "d => d.open") is True
    assert page.eval_on_selector(field, "f => f === document.activeElement") is True
    assert page.input_value(field) == "The part number is "
    assert page.eval_on_selector(field, "f => f.__kept === true && f.closest('.escalation').__kept === true")
    assert page.is_visible(f"{_row('Weld A')} .action-reject summary:has-text('Reject all 2…')")
    page.keyboard.type("missing.")
    assert page.input_value(field) == "The part number is missing."

    # Enter sends it (after the undo delay): both members of A's row are rejected.
    stop_the_clock(page)  # held until the row is seen pending, however slow the machine
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{_row('Weld A')}.is-pending")
    page.clock.resume()
    for escalation in (target, twin):
        _wait_for_status(escalation, Escalation.Status.REJECTED)
        assert (escalation.decided_by, escalation.note) == (ana, "The part number is missing.")
    page.wait_for_selector(_row("Weld A"), state="detached", timeout=WAIT_MS)
    page.wait_for_selector("#inbox-status:has-text('Rejected 2 identical escalations')")
    assert page.evaluate("window.__kaizenNoReload") is True


def test_a_row_decided_elsewhere_while_typed_in_stays_until_it_is_left(browser, live_server_url):
    board = _line()
    make_reviewer(username="ana", password=PASSWORD)
    bob = make_reviewer(username="bob", password=PASSWORD)
    escalation = _escalate(board, "Weld A", "seam a")
    _escalate(board, "Weld B", "seam b")
    page = log_in(browser, live_server_url, "ana", "/andon/", viewport={"width": 1400, "height": 1000})
    page.wait_for_function("document.title === '(2) Andon inbox · Kaizen'")
    page.keyboard.press("k")
    _selected(page, "Weld A")
    page.keyboard.press("e")
    field = f"{_row('Weld A')} .action-edit textarea[name=output]"
    page.wait_for_selector(f"{field}:focus")
    page.keyboard.press("End")
    page.keyboard.type(" Replace the cover.")
    typed = page.input_value(field)

    andon_services.escalation_reject(escalation=escalation, user=bob, reason="Wrong part.")

    # Kept, with what was typed, and marked; the count no longer includes it.
    page.wait_for_selector(f"{_row('Weld A')}.is-gone .escalation-gone-note:has-text('Decided elsewhere')")
    page.wait_for_function("document.title === '(1) Andon inbox · Kaizen'")
    assert page.input_value(field) == typed
    assert page.eval_on_selector(field, "f => f === document.activeElement") is True

    # Leaving it (Escape closes the form) lets it go.
    page.keyboard.press("Escape")
    page.wait_for_selector(_row("Weld A"), state="detached", timeout=WAIT_MS)
    page.wait_for_selector(_row("Weld B"))


def test_a_held_decision_is_sent_when_the_reviewer_leaves_the_page(browser, live_server_url):
    board = _line()
    ana = make_reviewer(username="ana", password=PASSWORD)
    escalation = _escalate(board, "Weld A", "seam a")
    page = log_in(browser, live_server_url, "ana", "/andon/", viewport={"width": 1400, "height": 1000})
    page.keyboard.press("j")
    _selected(page, "Weld A")
    page.keyboard.press("a")
    page.wait_for_selector(f"{_row('Weld A')}.is-pending")

    # Gone before the delay is out: pagehide sends it in a request that outlives the page.
    page.goto(f"{live_server_url}/boards/")

    _wait_for_status(escalation, Escalation.Status.APPROVED)
    assert escalation.decided_by == ana


def test_a_failure_warning_appears_live_on_the_row_being_typed_in(browser, live_server_url):
    """The embedder worker's warning for an open escalation (andon.failure_warnings)
    reaches the row a reviewer is writing a rejection in: the warning shows up,
    the form stays open, and what was typed, and the caret, stay where they were."""
    vectors.indexes_clear()
    board = _line()
    ana = make_reviewer(username="ana", password=PASSWORD)
    bob = make_reviewer(username="bob", password=PASSWORD)
    past = _escalate(
        board, "Reply to #48213 (Laura M.)", "Charged 19.90 twice on 4 March; refund issued today."
    )
    andon_services.escalation_reject(escalation=past, user=bob, reason="Tone too informal.")
    knowledge.patterns_embed(budget_seconds=60)
    target = _escalate(
        board, "Reply to #48500 (Jana)", "Charged 29.00 twice on 9 March; refund issued today."
    )
    page = log_in(
        browser, live_server_url, "ana", "/andon/", clock=True, viewport={"width": 1400, "height": 1000}
    )
    page.wait_for_function("document.title === '(1) Andon inbox · Kaizen'")
    title = "Reply to #48500 (Jana)"
    assert page.locator(f"{_row(title)} .similar-warning").count() == 0

    page.keyboard.press("j")
    _selected(page, title)
    page.keyboard.press("r")
    field = f"{_row(title)} .action-reject input[name=reason]"
    page.wait_for_selector(f"{field}:focus")
    page.keyboard.type("The tone is ")
    page.eval_on_selector(field, "f => { f.__kept = true; f.closest('.escalation').__kept = true; }")

    # Meanwhile the knowledge worker looks at the open escalations.
    try:
        assert failure_warnings.escalation_warnings_compute() == [target.pk]
    finally:
        vectors.indexes_clear()

    warning = f"{_row(title)} .similar-warning--warn"
    page.wait_for_selector(f"{warning}:has-text('1 similar task was rejected: Tone too informal')")
    assert page.is_visible(f"{warning} .similar-cases summary:has-text('1 rejected')")
    # The form is open, the text is there, the caret still in the field, nothing replaced.
    assert page.eval_on_selector(f"{_row(title)} .action-reject", "d => d.open") is True
    assert page.eval_on_selector(field, "f => f === document.activeElement") is True
    assert page.input_value(field) == "The tone is "
    assert page.eval_on_selector(field, "f => f.__kept === true && f.closest('.escalation').__kept === true")
    page.keyboard.type("too informal again.")

    stop_the_clock(page)  # held until the row is seen pending, however slow the machine
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{_row(title)}.is-pending")
    page.clock.resume()
    _wait_for_status(target, Escalation.Status.REJECTED)
    assert (target.decided_by, target.note) == (ana, "The tone is too informal again.")
    assert target.warned is True
    assert page.evaluate("window.__kaizenNoReload") is True
