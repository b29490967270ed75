"""The Muda page in a real browser: a logged-in user opens a board's Muda page,
sees every waste's trend chart drawn (plotly.js) with its target line, and, with
the window running to now, sees a finished task arrive live (the page re-fetches
its body when the board changes), without a reload."""

from __future__ import annotations

import pytest

from boards import services
from boards.agents import runtime
from tests.andon.muda_history import SINCE, UNTIL, build_line
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.factories import make_agent, make_board, make_user

pytestmark = pytest.mark.e2e

NAMES = ("overproduction", "waiting", "transport", "over_processing", "inventory", "motion", "defects")


def test_the_muda_page_draws_every_waste_s_chart(browser, live_server_url):
    line = build_line()
    make_user(username="mia", password=PASSWORD)
    window = f"?since={SINCE:%Y-%m-%dT%H:%M}&until={UNTIL:%Y-%m-%dT%H:%M}"
    # A window in the past is not live: nothing to wait for but the page.
    page = log_in(browser, live_server_url, "mia", "/boards/", live=False)
    page.goto(f"{live_server_url}/boards/{line.board.slug}/muda/{window}")

    for name in (*NAMES, "token_efficiency", "escalation_rate"):
        page.wait_for_selector(f"#chart-{name} > .chart-plot .main-svg", timeout=WAIT_MS)
    # The trend line and the dashed target line are both drawn.
    assert page.locator("#chart-transport .scatterlayer .trace").count() == 2
    assert page.get_attribute("#chart-transport", "data-drawn") == "true"
    assert "1.40 calls/item" in page.inner_text("#waste-transport .muda-value")
    assert "not met" in page.inner_text("#target-token-efficiency")
    assert page.locator("#context-by-agent .badge--sim").count() >= 1


def test_the_muda_page_updates_live_when_the_board_changes(browser, live_server_url):
    board = make_board()
    make_agent(boards=[board], name="welder", quality_checks=[{"check": "confidence", "min": 0.0}])
    make_user(username="mia", password=PASSWORD)
    page = log_in(browser, live_server_url, "mia", f"/boards/{board.slug}/muda/")
    assert "no data" in page.inner_text("#target-escalation-rate")
    page.evaluate("window.__sameMudaPage = true")

    task = services.task_create(board=board, title="Weld seam 12", input="porosity near the root pass")
    [claim] = services.board_pull(board_id=board.pk)
    runtime.run(claim.task_id, str(claim.lease_token))
    task.refresh_from_db()
    assert task.status == task.Status.DONE

    # One inspected output, no escalation: 0.0%, arrived without a reload.
    page.wait_for_selector("#target-escalation-rate:has-text('0.0%')", timeout=WAIT_MS)
    assert page.evaluate("window.__sameMudaPage === true")
    page.wait_for_selector("#chart-defects > .chart-plot .main-svg", timeout=WAIT_MS)
