"""A budget's 80% warning in a real browser: a person watches a board; the line
records a run that takes the agent's daily budget past 80%, and the warning
banner appears on the open page, live, naming the budget, spent/limit and the
period's end, and in a reviewer's andon inbox, who acknowledges its alert;
then the run that reaches 100% turns it into the stop."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from andon import budget_services
from andon.models import Alert, BudgetPeriod
from boards import services
from tests.andon.test_budgets import call, finish
from tests.boards.conftest import CeleryQueue
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.factories import make_agent, make_board, make_reviewer, make_user, make_user_with

pytestmark = [pytest.mark.e2e]

BANNER = "#board-banner .budget-warning"


@pytest.fixture
def queue() -> Iterator[CeleryQueue]:
    """No worker runs here: the runs the pull enqueues are cleared away after."""
    queue = CeleryQueue()
    queue.clear()
    yield queue
    queue.clear()


def test_the_board_shows_the_budget_warning_at_80_percent_live(browser, live_server_url, queue):
    board = make_board(name="Budget line")
    welder = make_agent(boards=[board], concurrency=1, name="welder")
    keeper = make_user_with("andon.add_budget")
    budget_services.budget_create(
        user=keeper, name="Welder daily", agent=welder, unit="usd", period="day", limit=Decimal("10")
    )
    make_user(username="ana", password=PASSWORD)
    make_reviewer(username="rita", password=PASSWORD)
    page = log_in(browser, live_server_url, "ana", board.get_absolute_url())
    inbox = log_in(browser, live_server_url, "rita", "/andon/")
    assert page.query_selector(BANNER) is None

    for n in range(3):
        services.task_create(board=board, title=f"Seam {n}", input=f"seam {n}")
    [claim] = services.board_pull(board_id=board.pk)
    finish(claim, call(cost="8.50"))

    page.wait_for_selector(BANNER, timeout=WAIT_MS)
    text = page.inner_text(BANNER)
    period = BudgetPeriod.objects.get()
    assert "Budget warning: Welder daily" in text and "agent welder" in text
    assert "$8.50 of $10.00 spent (85%) this day" in text
    assert f"the period ends {period.end:%Y-%m-%d %H:%M}" in text
    # The reviewer's inbox gets the warning and its alert, live, and acknowledges it.
    inbox.wait_for_selector("#inbox-banner .budget-warning:has-text('Welder daily')", timeout=WAIT_MS)
    alert = "#alert-list .alert:has-text('Welder daily: 80% of the budget spent')"
    inbox.wait_for_selector(alert, timeout=WAIT_MS)
    inbox.click(f"{alert} button:has-text('Acknowledge')")
    inbox.wait_for_selector(alert, state="detached", timeout=WAIT_MS)
    assert Alert.objects.get().acknowledged_by.username == "rita"

    [claim] = services.board_pull(board_id=board.pk)
    finish(claim, call(cost="1.50"))

    page.wait_for_selector(f"{BANNER}:has-text('Budget reached: Welder daily')", timeout=WAIT_MS)
    page.wait_for_selector("#flow-status:has-text('Budget reached')", timeout=WAIT_MS)
    for each in (page, inbox):
        assert each.evaluate("window.__kaizenNoReload") is True
