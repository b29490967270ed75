"""A card's actions in a real browser, as static/js/board.js sends them (to the
task page's URL, which the card carries once, and the action's word): a step
to the next column by keyboard, then blocking it through the dialog and
unblocking it, each landing on the server and shown on the card."""

from __future__ import annotations

import pytest

from boards.models import Task
from tests.e2e.pages import PASSWORD, log_in
from tests.factories import column, make_board, make_user

pytestmark = [pytest.mark.e2e]


def test_a_card_steps_is_blocked_and_unblocked_from_the_keyboard(browser, live_server_url, transactional_db):
    # No agent: nothing pulls the task from under the test.
    board = make_board(name="Keyboard line", ready_limit=None)
    task = Task.objects.create(
        board=board, column=column(board, "backlog"), status="backlog", title="Label the crates"
    )
    user = make_user(username="keys", password=PASSWORD)
    page = log_in(browser, live_server_url, user.get_username(), board.get_absolute_url())
    card = f"#task-{task.pk}"

    page.focus(card)
    page.keyboard.press("Alt+ArrowRight")
    page.wait_for_selector(f".column--ready {card}")
    assert Task.objects.get(pk=task.pk).status == Task.Status.READY

    page.focus(card)
    page.keyboard.press("b")
    page.fill("#block-note", "Waiting for the crate labels")
    page.click("#block-dialog button[value=block]")
    page.wait_for_selector(f"{card}[data-blocked]")
    assert Task.objects.get(pk=task.pk).blocked_note == "Waiting for the crate labels"
    assert "Waiting for the crate labels" in page.inner_text(card)

    page.focus(card)
    page.keyboard.press("u")
    page.wait_for_selector(f"{card}:not([data-blocked])")
    assert Task.objects.get(pk=task.pk).blocked_at is None
