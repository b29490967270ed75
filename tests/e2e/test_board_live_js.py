"""static/js/live.js in a real browser, on the board page that loads it: an
out-of-band swap is held back while a person types in (or has open, or has
unsaved input in) the element it would replace, and the latest version lands
once they are done; an unchanged fragment is not swapped at all; focus and the
open state of a <details> survive a swap."""

from __future__ import annotations

import pytest

from tests.e2e.pages import PASSWORD, log_in
from tests.factories import make_board, make_reviewer

pytestmark = [pytest.mark.e2e]


def _fragment(version: str, *, details_open: bool = False) -> str:
    return (
        '<section id="probe" hx-swap-oob="outerHTML">'
        f'<p id="probe-version">{version}</p>'
        '<form id="probe-form"><input id="probe-input" name="reason"></form>'
        f'<details id="probe-menu"{" open" if details_open else ""}><summary>More</summary><a href="#">x</a></details>'
        '<button id="probe-button" type="button">Go</button>'
        "</section>"
    )


@pytest.fixture
def page(browser, live_server_url, transactional_db):
    board = make_board(name="Probe line")
    user = make_reviewer(username="prober", password=PASSWORD)
    page = log_in(
        browser,
        live_server_url,
        user.get_username(),
        board.get_absolute_url(),
        viewport={"width": 1200, "height": 800},
    )
    # A fragment of our own, swapped the way pushes are (htmx's out-of-band path).
    page.evaluate(
        "(html) => { document.getElementById('board').insertAdjacentHTML('beforeend', html.replace(' hx-swap-oob=\"outerHTML\"', '')); }",
        _fragment("v1"),
    )
    return page


def _push(page, html: str) -> None:
    page.evaluate("(html) => htmx.swap(document.body, html, {swapStyle: 'none'})", html)


def _version(page) -> str:
    return page.inner_text("#probe-version")


def test_a_swap_waits_while_someone_types_and_the_latest_lands_when_they_leave(page):
    page.click("#probe-input")
    page.keyboard.type("half a sent")

    _push(page, _fragment("v2"))
    _push(page, _fragment("v3"))

    assert _version(page) == "v1"
    assert page.input_value("#probe-input") == "half a sent"
    assert page.evaluate("KaizenLive.pending()") == ["probe"]
    page.keyboard.type("ence")
    assert page.input_value("#probe-input") == "half a sentence"

    page.fill("#probe-input", "")
    page.click("#probe-button")

    page.wait_for_function("document.getElementById('probe-version').textContent === 'v3'")
    assert page.evaluate("KaizenLive.pending()") == []


def test_unsaved_input_holds_a_swap_even_without_focus(page):
    page.fill("#probe-input", "not sent yet")
    page.click("#probe-button")

    _push(page, _fragment("v2"))

    assert _version(page) == "v1"
    assert page.input_value("#probe-input") == "not sent yet"
    page.evaluate("document.getElementById('probe-form').reset()")
    page.wait_for_function("document.getElementById('probe-version').textContent === 'v2'")


def test_an_unchanged_fragment_is_not_swapped(page):
    _push(page, _fragment("v2"))
    page.evaluate("window.__probe = document.getElementById('probe')")

    _push(page, _fragment("v2"))

    assert page.evaluate("window.__probe === document.getElementById('probe')")


def test_focus_and_an_open_menu_survive_a_swap(page):
    page.click("#probe-menu > summary")
    page.focus("#probe-button")

    _push(page, _fragment("v2"))

    assert _version(page) == "v2"
    assert page.evaluate("document.getElementById('probe-menu').open") is True
    assert page.evaluate("document.activeElement.id") == "probe-button"


def test_hold_and_release_defer_a_swap_by_hand(page):
    page.evaluate("KaizenLive.hold(document.getElementById('probe-button'))")

    _push(page, _fragment("v2"))
    assert _version(page) == "v1"

    page.evaluate("KaizenLive.release(document.getElementById('probe-button'))")
    page.wait_for_function("document.getElementById('probe-version').textContent === 'v2'")


def test_the_board_says_aloud_when_the_line_stalls_and_when_it_flows_again(page):
    def flow(state: str, headline: str) -> str:
        return (
            f'<section id="flow-status" class="flow flow--{state}" data-state="{state}" '
            f'data-headline="{headline}" hx-swap-oob="outerHTML"><p>{state}</p></section>'
        )

    _push(page, flow("stalled", "Agents are not pulling. Waiting for review: Review is full (5/5)."))
    page.wait_for_function("document.getElementById('flow-announce').textContent !== ''")
    assert (
        page.inner_text("#flow-announce")
        == "Agents are not pulling. Waiting for review: Review is full (5/5)."
    )

    _push(page, flow("busy", "Agents are busy"))
    page.wait_for_function(
        "document.getElementById('flow-announce').textContent === 'Agents are pulling again.'"
    )
