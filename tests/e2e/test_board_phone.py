"""The board on a 390 px phone: nothing overflows the page sideways (the columns
scroll inside the board), the navigation folds into a menu, and the first card
starts near the top because the task form, keyboard help and agent strip fold.
On a desktop the same page opens with the form, the links in the bar, and the
first card higher than it used to be."""

from __future__ import annotations

import pytest

from boards import services
from boards.models import Column
from tests.e2e.pages import PASSWORD, log_in, wait_live
from tests.factories import column, make_agent, make_board, make_reviewer

pytestmark = [pytest.mark.e2e]

FIRST_CARD_TOP = "document.querySelector('.card').getBoundingClientRect().top"


@pytest.fixture
def busy_board(transactional_db):
    board = make_board(name="Demo line", ready_limit=6, doing_limit=4)
    board.description = (
        "A small line of everyday office work: summaries, classifications, extractions and first drafts. "
        "Three simulated agents pull from Ready under WIP limits."
    )
    board.save()
    for name in ("Careful analyst", "Drafting assistant", "Quick summariser"):
        make_agent(boards=[board], name=name, capabilities=["summarise", "classify"])
    # No worker runs here: the cards stay where they are put.
    for i in range(12):
        task = services.task_create(
            board=board, title=f"Summarise the weekly ops update {i}", input=f"notes {i}"
        )
        if i % 3 == 0:
            services.task_move(task=task, to_column=column(board, Column.Role.DONE), user=None)
    return board


def _page(browser, base_url: str, board, width: int, height: int):
    user = make_reviewer(username=f"phone{width}", password=PASSWORD)
    return log_in(
        browser,
        base_url,
        user.get_username(),
        board.get_absolute_url(),
        viewport={"width": width, "height": height},
        has_touch=width < 700,
    )


def test_the_board_fits_a_390_px_phone(browser, live_server_url, busy_board):
    page = _page(browser, live_server_url, busy_board, 390, 844)

    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # The columns scroll sideways inside the board instead.
    assert page.evaluate(
        "(() => { const c = document.getElementById('columns'); return c.scrollWidth > c.clientWidth; })()"
    )
    assert page.evaluate(FIRST_CARD_TOP) <= 250
    # Folded: the form, the agent list; the keyboard help is not offered at all.
    assert page.is_hidden("#task-form")
    assert page.is_hidden("#agent-list")
    assert page.is_hidden("#keyboard-toggle")
    assert page.is_visible(".agents-summary")
    # The navigation is one menu button; its links are a tap away.
    assert page.is_hidden(".nav-links a:has-text('Agents')")
    page.click(".nav-menu > summary")
    assert page.is_visible(".nav-links a:has-text('Agents')")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.click(".nav-menu > summary")

    # Unfolding works, and is remembered.
    page.click("#task-form-toggle")
    assert page.is_visible("#id_title")
    page.click(".agents-toggle")
    assert page.is_visible("#agent-list")
    page.reload()
    wait_live(page)
    assert page.is_visible("#id_title")
    assert page.is_visible("#agent-list")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    # The cord's form fits the screen when opened.
    page.click("#cord > summary")
    box = page.locator("#cord-form").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390


def test_a_desktop_opens_with_the_form_and_the_columns_high_on_the_first_screen(
    browser, live_server_url, busy_board
):
    page = _page(browser, live_server_url, busy_board, 1400, 900)

    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    assert page.is_visible("#id_title")
    assert page.is_visible(".nav-links a:has-text('Agents')")
    assert page.is_hidden(".nav-menu > summary")
    assert page.is_hidden("#keyboard-help")
    # It was about 470 px of chrome before the first card.
    assert page.evaluate(FIRST_CARD_TOP) < 450
    page.keyboard.press("?")
    assert page.is_visible("#keyboard-help")
