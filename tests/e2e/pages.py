"""Logging in and opening live pages, for the browser tests.

A live page is ready for a test once its websocket is open *and* it has caught up
with what changed while it connected. The andon inbox and the evolution review
say "Live" only after their catch-up; the board says it as the socket opens and
re-fetches its body just after, so a push made (or a focus set) before that
fetch lands would be undone by it. ``wait_live`` waits for both, on conditions:
the "Live" badge, the board body's response, and htmx having swapped it in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from weakref import WeakKeyDictionary

import pytest

PASSWORD = "a-long-browser-password"
# How long a browser test waits for a condition (a selector, a push, a response).
# A wait returns as soon as its condition holds: this only decides how long a
# broken page takes to fail, so it is long enough for a heavily loaded machine.
WAIT_MS = 60_000

# The URLs each page has fetched (completely) since it was last (re)loaded.
_fetched: WeakKeyDictionary = WeakKeyDictionary()
# The messages each page's websockets have received, in order.
_pushes: WeakKeyDictionary = WeakKeyDictionary()


def new_page(browser, **context_options):
    """A page in a new browser context (its own cookies), 1400 x 900 unless
    ``viewport`` says otherwise."""
    options = {"viewport": {"width": 1400, "height": 900}} | context_options
    context = browser.new_context(**options)
    context.set_default_timeout(WAIT_MS)
    return watch(context.new_page())


def watch(page):
    """Keep note of what ``page`` fetches and is pushed (``wait_live`` and
    ``wait_for_push`` need it): a page made some other way than ``new_page`` is
    watched before it opens anything."""
    fetched: list[str] = []
    _fetched[page] = fetched
    page.on("requestfinished", lambda request: fetched.append(request.url))
    page.on("framenavigated", lambda frame: fetched.clear() if frame.parent_frame is None else None)
    pushes: list[str] = []
    _pushes[page] = pushes

    def listen(websocket) -> None:
        websocket.on(
            "framereceived",
            lambda payload: pushes.append(
                payload if isinstance(payload, str) else payload.decode(errors="replace")
            ),
        )

    page.on("websocket", listen)
    return page


def pushes_seen(page) -> int:
    """How many messages the page's websockets have received so far."""
    return len(_pushes[page])


def wait_for_push(
    page, accept: Callable[[str], bool], *, since: int = 0, timeout: float = WAIT_MS / 1000
) -> str:
    """The first message pushed to ``page`` (after the first ``since``) that
    ``accept`` takes, once it has come."""
    pushes = _pushes[page]
    deadline = time.monotonic() + timeout
    while True:
        for message in pushes[since:]:
            if accept(message):
                return message
        if time.monotonic() > deadline:
            pytest.fail(f"no such push within {timeout:.0f} s ({len(pushes) - since} others came)")
        page.wait_for_timeout(50)  # Playwright hands over the page's events while it waits


def log_in(
    browser,
    base_url: str,
    username: str,
    then: str,
    *,
    password: str = PASSWORD,
    live: bool = True,
    clock: bool = False,
    **context_options,
):
    """A new browser where ``username`` has logged in, on the page ``then``. A
    live page is waited for (``wait_live``) and marked so that a reload would
    show: ``window.__kaizenNoReload`` is true until the page is loaded again.
    With ``clock``, the page's timers run on Playwright's clock (``page.clock``),
    which a test can stop and resume: time then flows as usual until it does."""
    page = new_page(browser, **context_options)
    if clock:
        page.clock.install()
    page.goto(f"{base_url}/accounts/login/?next={then}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}{then}")
    if live:
        wait_live(page)
        page.evaluate("window.__kaizenNoReload = true")
    return page


def goto_live(page, url: str) -> None:
    """Open the live page at ``url`` and wait until it is live (and mark it, as log_in does)."""
    page.goto(url)
    wait_live(page)
    page.evaluate("window.__kaizenNoReload = true")


def wait_live(page) -> None:
    """Wait until the page is live and caught up (see the module's doc)."""
    page.wait_for_selector(".live--up", timeout=WAIT_MS)
    body_url = page.evaluate(
        "(() => { const b = document.getElementById('board'); return b ? b.dataset.bodyUrl || null : null; })()"
    )
    if body_url is None:
        return
    if not any(url.endswith(body_url) for url in _fetched.get(page, ())):
        page.wait_for_event(
            "requestfinished", lambda request: request.url.endswith(body_url), timeout=WAIT_MS
        )
    # htmx swaps the response in before it takes its request class off the element.
    page.wait_for_function("document.querySelector('.htmx-request') === null", timeout=WAIT_MS)


def stop_the_clock(page) -> None:
    """Stop the page's clock (installed by ``log_in(clock=True)``): no timer of
    the page fires until ``page.clock.resume()``, however slowly the machine
    carries out the test's steps meanwhile."""
    page.clock.pause_at(page.evaluate("Date.now()") + 1)
