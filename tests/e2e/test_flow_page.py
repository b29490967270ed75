"""The Flow page in Chromium: every chart is drawn by Plotly from its data, and
when a task moves on the board the page re-reads its charts over the live
transport (the cumulative flow shows the move)."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from boards import services
from tests.e2e.pages import PASSWORD, WAIT_MS, log_in
from tests.factories import column, make_agent, make_board, make_user

pytestmark = [pytest.mark.e2e]

CHARTS = ("aging", "cycle", "throughput", "wip", "cfd", "xmr-cycle", "xmr-throughput")


def _cfd_last(page, status: str) -> int:
    figure = json.loads(page.text_content("#flow-data-cfd"))
    band = next(trace for trace in figure["data"] if trace["name"] == status)
    return band["y"][-1]


def test_the_flow_page_draws_its_charts_and_follows_the_board(browser, live_server_url):
    board = make_board(name="Flow line")
    make_agent(boards=[board], name="welder")
    services.board_set_paused(board=board, paused=True)  # nothing pulls: the test moves the card
    task = services.task_create(board=board, title="Card to move")
    make_user(username="flo", password=PASSWORD)
    page = log_in(browser, live_server_url, "flo", reverse("boards-flow", kwargs={"slug": board.slug}))

    for name in CHARTS:
        # Plotly draws into a child of the chart element: an SVG with the figure's traces.
        page.wait_for_selector(f"#flow-chart-{name} .chart-plot .main-svg", timeout=WAIT_MS)
        traces = page.evaluate(f"document.querySelector('#flow-chart-{name} .chart-plot').data.length")
        assert traces > 0, name
    assert _cfd_last(page, "Backlog") == 1
    assert _cfd_last(page, "Ready") == 0
    refreshed = int(page.get_attribute("#flow", "data-refreshed") or 0)

    services.task_move(task=task, to_column=column(board, "ready"), user=None)

    page.wait_for_function(
        f"Number(document.getElementById('flow').dataset.refreshed || 0) > {refreshed}"
        " && JSON.parse(document.getElementById('flow-data-cfd').textContent)"
        ".data.find(t => t.name === 'Ready').y.slice(-1)[0] === 1",
        timeout=WAIT_MS,
    )
    assert _cfd_last(page, "Backlog") == 0
    # Redrawn, not only swapped in.
    assert (
        page.evaluate(
            "document.querySelector('#flow-chart-cfd .chart-plot').data.find(t => t.name === 'Ready').y.slice(-1)[0]"
        )
        == 1
    )
