"""Browser fixtures: Playwright driving Debian's Chromium (``playwright install``
cannot download browsers here, so the system binary is used)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("KAIZEN_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"browser tests need Chromium at {CHROMIUM}: `apt-get install chromium` "
            "(.ci/run does this), or point KAIZEN_CHROMIUM at one"
        )
    # Playwright's sync API keeps an event loop in this thread; Django refuses ORM
    # calls from a thread with a running loop, so the test's own queries say so.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
