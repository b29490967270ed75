"""The Muda page's presentation: each waste's trend as a Plotly figure with its
target line, the numbers as a person reads them, and each chart's data as CSV.

Figures are built with ``plotly.graph_objects`` server-side and sent as JSON in
``<script type="application/json">``; ``static/js/chart-page.js`` draws them with
``Plotly.react`` (as the evolution review does, ``experiments/charts.py``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import plotly.graph_objects as go
from django.utils import timezone

from andon.muda import MudaReport, Waste
from experiments.charts import money

LINE = "#1f4fc4"
TARGET = "#1a7f37"
GRID = "#e6e9ef"

# What a <script type="application/json"> must not contain raw (as Django's json_script).
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


def value_text(waste: Waste) -> str:
    if waste.value is None:
        return "no data"
    if waste.unit == "%":
        return f"{waste.value:.1f}%"
    return f"{waste.value:.2f} {waste.unit}"


def target_text(waste: Waste) -> str:
    sign = "<" if waste.better == "lower" else ">"
    if waste.unit == "%":
        return f"{sign} {waste.target:g}%"
    return f"{sign} {waste.target:g} {waste.unit}"


def cost_text(waste: Waste) -> str:
    return "no model spend" if waste.cost is None else money(waste.cost)


def _when(at: datetime) -> str:
    # The server's wall-clock time without an offset: plotly.js shows a date string
    # as written, so the axis agrees with the times on the page.
    return timezone.localtime(at).strftime("%Y-%m-%d %H:%M")


def _x_range(report: MudaReport) -> list[str] | None:
    """The x axis's range when the trend has a single period (a window of less
    than two hours, say): a period either side of it. Left to plotly, one point
    gets an axis a millisecond wide, ticked 20:38:59.9995."""
    if len(report.trend) != 1:
        return None
    only = report.trend[0].start
    step = timedelta(hours=1) if report.period == "hour" else timedelta(days=1)
    return [_when(only - step), _when(only + step)]


def trend_figure(report: MudaReport, waste: Waste) -> go.Figure:
    x = [_when(point.start) for point in report.trend]
    y = [point.values.get(waste.name) for point in report.trend]
    x_range = _x_range(report)
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="lines+markers",
            name=waste.label,
            line={"color": LINE, "width": 2},
            marker={"size": 5},
            connectgaps=False,
            hovertemplate=f"%{{x}}<br>%{{y:.2f}} {waste.unit}<extra></extra>",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=x_range or ([x[0], x[-1]] if x else []),
            y=[waste.target, waste.target] if x else [],
            mode="lines",
            name=f"target {target_text(waste)}",
            line={"color": TARGET, "width": 1.5, "dash": "dash"},
            hoverinfo="skip",
        )
    )
    present = [v for v in y if v is not None]
    top = max([waste.target, *present]) * 1.15 if present or waste.target else 1
    figure.update_layout(
        # No template: plotly's default one is 10 kB of JSON in every chart.
        template=None,
        height=220,
        margin={"l": 48, "r": 12, "t": 8, "b": 36},
        showlegend=True,
        legend={"orientation": "h", "y": -0.25, "x": 0},
        plot_bgcolor="white",
        paper_bgcolor="white",
        font={"size": 11},
        xaxis={"gridcolor": GRID, "title": None, "type": "date", **({"range": x_range} if x_range else {})},
        yaxis={
            "gridcolor": GRID,
            "title": {"text": waste.unit},
            "range": [0, top],
            "zeroline": False,
        },
        uirevision=waste.name,
    )
    return figure


def chart_json(report: MudaReport, waste: Waste) -> str:
    # Through json to drop plotly's numpy-friendly but bulky encoding choices.
    data = json.loads(trend_figure(report, waste).to_json())
    return json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


def trend_csv(report: MudaReport, waste: Waste) -> str:
    """A chart's data: one row per period."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["period_start", "period", waste.name, "unit", "target", "better"])
    for point in report.trend:
        value = point.values.get(waste.name)
        writer.writerow(
            [
                point.start.isoformat(),
                report.period,
                "" if value is None else f"{value:.4f}",
                waste.unit,
                f"{waste.target:g}",
                waste.better,
            ]
        )
    return out.getvalue()


@dataclass(frozen=True)
class WastePanel:
    """One waste as the page shows it."""

    waste: Waste
    value: str
    cost: str
    target: str
    chart: str  # the figure's JSON


def panels(report: MudaReport) -> list[WastePanel]:
    return [
        WastePanel(
            waste=waste,
            value=value_text(waste),
            cost=cost_text(waste),
            target=target_text(waste),
            chart=chart_json(report, waste),
        )
        for waste in (*report.wastes, report.token_efficiency, report.escalation_rate)
    ]
