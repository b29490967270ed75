"""The agent page's "Tiers and settings, from evidence": per capability, the
cost / pass-rate chart of the cascade stopped after each tier (its frontier, the
dominated tiers, simulated models labelled), the tables of tiers and settings,
an empty state, and a number of queries that does not grow with the history."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.experiments.tuning_support import CHECKS, TWO_TIERS, C, add
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db

ESCALATED = [C(tier=1, confidence=0.6, would_pass=False), C(tier=2, confidence=0.95, cost="0.01")]
NEEDLESS = [C(tier=1, confidence=0.72, would_pass=True), C(tier=2, confidence=0.95, cost="0.01")]


@pytest.fixture
def agent():
    board = make_board(ready_limit=None, doing_limit=None)
    return make_agent(boards=[board], name="triage", cascade=TWO_TIERS, quality_checks=CHECKS)


def _page(client, user, agent) -> str:
    client.force_login(user)
    response = client.get(reverse("boards-agent-detail", kwargs={"pk": agent.pk}))
    assert response.status_code == 200
    return response.content.decode()


def _section(html: str) -> str:
    match = re.search(r'<section class="panel tuning-evidence" id="tuning".*?</section>', html, re.S)
    assert match, "the page has no tuning section"
    return match.group(0)


def _figure(html: str, chart_id: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{chart_id}">(.*?)</script>', html, re.S)
    assert match, f"no figure {chart_id}"
    return json.loads(match.group(1))


def test_the_page_shows_each_capabilitys_frontier_chart_and_tables(client, user, agent):
    add(agent, 40, capability="classify")
    add(agent, 10, verdict="corrected", capability="classify")
    add(agent, 20, verdict="passed", tier=2, calls=ESCALATED, capability="classify")
    add(agent, 30, capability="summarise", params={"temperature": 0.2})
    # Results reused from identical earlier tasks: no tier answered.
    add(agent, 3, tier=None, calls=[], capability="summarise")

    html = _page(client, user, agent)
    section = _section(html)

    assert "Tiers and settings, from evidence" in section
    assert 'data-chart="tuning-chart-1"' in section and 'data-chart="tuning-chart-2"' in section
    # plotly.js from the package, drawn by the chart page script.
    assert reverse("experiments-plotly-js") in html
    assert "js/chart-page.js" in html
    figure = _figure(section, "tuning-chart-1")
    points = [trace for trace in figure["data"] if trace["mode"] == "markers+text"]
    labels = [label for trace in points for label in trace["text"]]
    assert labels == ["tier 1: sim-small (simulated)", "tier 2: sim-large (simulated)"]
    # Stopped after tier 1: 40 of 70 pass (the corrected ten do not, nor tier 1's escalated answers).
    assert points[0]["y"][0] == pytest.approx(100 * 40 / 70)
    assert points[0]["y"][1] == pytest.approx(100 * 60 / 70)
    assert points[0]["error_y"]["arrayminus"][0] > 0
    assert [t["name"] for t in figure["data"]] == ["frontier", "on the frontier"]
    # The tables: the tiers' own figures, with the corrected counted apart, and the settings.
    classify = re.search(r'id="tuning-tiers-1".*?</table>', section, re.S).group(0)
    assert re.search(
        r"sim-small</code>.*?<td class=\"num\">50</td>\s*<td class=\"num\">40</td>\s*"
        r"<td class=\"num\">10</td>",
        classify,
        re.S,
    )
    assert "badge--sim" in classify
    summarise = re.search(r'id="tuning-settings-2".*?</table>', section, re.S).group(0)
    assert '<td class="num">0.2</td>' in summarise
    assert "no tier (reused)" in summarise
    assert "v1" in summarise


def test_a_tier_that_buys_nothing_is_shown_dominated(client, user, agent):
    add(agent, 40)
    add(agent, 20, tier=2, calls=NEEDLESS)

    section = _section(_page(client, user, agent))

    figure = _figure(section, "tuning-chart-1")
    dominated = [t for t in figure["data"] if t["name"] == "dominated"]
    assert dominated and dominated[0]["text"] == ["tier 2: sim-large (simulated)"]
    assert "tuning-depth--dominated" in section
    assert ">dominated</td>" in section


def test_without_ledger_outcomes_the_tables_show_and_the_chart_says_why_not(client, user, agent):
    add(agent, 30)
    add(agent, 20, tier=2, calls=[C(tier=1, confidence=0.6, would_pass=None), C(tier=2, cost="0.01")])

    section = _section(_page(client, user, agent))

    # Only the whole cascade is scored: one point, no frontier to draw.
    assert "data-chart=" not in section
    assert "Stopped after tier 1: left out" in section
    assert 'id="tuning-depths-1"' in section
    assert 'id="tuning-tiers-1"' in section


def test_an_agent_with_no_history_shows_the_empty_state(client, user, agent):
    html = _page(client, user, agent)
    section = _section(html)

    assert 'id="tuning-empty"' in section
    assert "data-chart=" not in section
    # No chart to draw: no plotly.js either.
    assert reverse("experiments-plotly-js") not in html


def _queries(client, user, agent) -> int:
    client.force_login(user)
    url = reverse("boards-agent-detail", kwargs={"pk": agent.pk})
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_the_sections_queries_do_not_grow_with_the_history(client, user, django_assert_max_num_queries):
    board = make_board(ready_limit=None, doing_limit=None)
    small = make_agent(boards=[board], cascade=TWO_TIERS, quality_checks=CHECKS)
    large = make_agent(boards=[board], cascade=TWO_TIERS, quality_checks=CHECKS)
    add(small, 10)
    for capability in ("classify", "summarise", "extract", "draft"):
        add(large, 60, capability=capability)
        add(large, 40, tier=2, calls=ESCALATED, capability=capability, params={"temperature": 0.3})

    assert _queries(client, user, small) == _queries(client, user, large)
    client.force_login(user)
    # The whole page, whatever the history: the section's part is two queries.
    with django_assert_max_num_queries(19):
        client.get(reverse("boards-agent-detail", kwargs={"pk": large.pk}))
