"""The agent page's cost / pass-rate chart of its cascade (issue 14, use 5): one
point per tier, the cascade stopped after it (experiments.evidence's depths), at
its cost per task and its pass rate, with the Wilson 95% interval as error bars;
the frontier, the tiers no other beats on both, joined by a line; a dominated
tier drawn hollow and grey. A simulated model is labelled so.

Written as the plain dicts Plotly.js reads, as boards/flow_charts.py writes its
figures (plotly's own validation costs more than the page can spend), and sent
as JSON inside ``<script type="application/json">`` for static/js/chart-page.js
to draw with the plotly.js the plotly package ships."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from experiments.charts import money, money_decimals, percent_range
from experiments.evidence import CapabilityEvidence, Depth

FRONTIER = "#1f4fc4"
DOMINATED = "#8c959f"
GRID = "#e6e9ef"
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


def depth_label(depth: Depth) -> str:
    # Plotly reads a few HTML tags in text (<br>, <a>...): a model's name is escaped.
    return f"tier {depth.tier}: {escape(depth.model)}" + (" (simulated)" if depth.simulated else "")


def _hover(depth: Depth) -> str:
    rate = depth.rate
    interval = (
        f"{100 * (rate.low or 0):.0f}–{100 * (rate.high or 0):.0f}%" if rate.interval is not None else "–"
    )
    verdict = "dominated: an earlier tier passes as often for less" if depth.dominated else "on the frontier"
    return (
        f"{depth_label(depth)}<br>stopped here: {rate.passes} of {rate.n} passed "
        f"({100 * (rate.rate or 0):.0f}%, 95% interval {interval})<br>{money(depth.cost)} per task<br>{verdict}"
    )


def frontier_figure(evidence: CapabilityEvidence) -> dict[str, Any]:
    """The figure of a capability's depths (an empty list of traces if it has none)."""
    depths = evidence.depths
    data: list[dict[str, Any]] = []
    frontier = evidence.frontier
    if len(frontier) > 1:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "frontier",
                "x": [d.cost for d in frontier],
                "y": [100 * (d.rate.rate or 0) for d in frontier],
                "line": {"color": FRONTIER, "width": 2},
                "hoverinfo": "skip",
            }
        )
    for on_frontier, name, colour in ((True, "on the frontier", FRONTIER), (False, "dominated", DOMINATED)):
        group = [d for d in depths if d.dominated != on_frontier]
        if not group:
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers+text",
                "name": name,
                "x": [d.cost for d in group],
                "y": [100 * (d.rate.rate or 0) for d in group],
                "text": [depth_label(d) for d in group],
                "textposition": "top center",
                # A label near the top or an edge is drawn past the plot area, not cut off.
                "cliponaxis": False,
                "hovertext": [_hover(d) for d in group],
                "hoverinfo": "text",
                "marker": {
                    "size": 11,
                    "color": colour if on_frontier else "#ffffff",
                    "line": {"color": colour, "width": 2},
                    "symbol": "circle",
                },
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [100 * ((d.rate.high or 0) - (d.rate.rate or 0)) for d in group],
                    "arrayminus": [100 * ((d.rate.rate or 0) - (d.rate.low or 0)) for d in group],
                    "color": colour,
                    "thickness": 1.5,
                },
            }
        )
    costs = [d.cost for d in depths]
    top = max(costs, default=0.0)
    decimals = money_decimals(top)
    bounds = [100 * v for d in depths for v in (d.rate.low, d.rate.high) if v is not None]
    return {
        "data": data,
        "layout": {
            "height": 340,
            "margin": {"l": 70, "r": 40, "t": 40, "b": 60},
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "#ffffff",
            "font": {"family": "system-ui, sans-serif", "size": 12},
            "showlegend": bool(data),
            "legend": {"orientation": "h", "y": -0.25},
            "xaxis": {
                "title": {"text": "cost per task (the calls up to that tier)"},
                # Room for the labels on both sides: the cheapest tier is near 0.
                "range": [-0.08 * top if top > 0 else -0.001, top * 1.15 if top > 0 else 0.001],
                "tickformat": f"$,.{decimals}f",
                "hoverformat": f"$,.{decimals}f",
                "gridcolor": GRID,
                "zeroline": False,
            },
            "yaxis": {
                "title": {"text": "pass rate"},
                "range": percent_range(bounds),
                "ticksuffix": "%",
                "gridcolor": GRID,
                "zeroline": False,
            },
            "hovermode": "closest",
            "uirevision": "keep",
        },
    }


def figure_json(figure: dict[str, Any]) -> str:
    """The figure as JSON for a ``<script type="application/json">`` (escaped as
    Django's json_script does)."""
    return json.dumps(figure, separators=(",", ":")).translate(_SCRIPT_ESCAPES)
