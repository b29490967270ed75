"""The Flow page's charts, drawn with Plotly server-side from the report
(``boards.flow_report``), as experiments/charts.py draws its chart: the figure
goes to the browser as JSON inside ``<script type="application/json">`` and
``static/js/flow.js`` draws it with ``Plotly.react`` (a live update redraws it in
place, keeping the reader's zoom).

Times are shown in the unit that suits the largest value (seconds, minutes,
hours or days), and said on the axis."""

from __future__ import annotations

import json
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

PERCENTILE_COLOURS = {50: "#1a7f37", 70: "#b08800", 85: "#d0342c", 95: "#82071e"}
STATUS_COLOURS = {
    "done": "#1a7f37",
    "failed": "#82071e",
    "review": "#8250df",
    "running": "#1f4fc4",
    "ready": "#b08800",
    "backlog": "#8c959f",
}
STATUS_LABELS = {
    "backlog": "Backlog",
    "ready": "Ready",
    "running": "In progress",
    "review": "Review",
    "done": "Done",
    "failed": "Failed",
}
GRID = "#e6e9ef"
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


def time_unit(largest: float | None) -> tuple[str, float]:
    """The unit to show times in, and its length in seconds."""
    largest = largest or 0
    if largest >= 2 * 86400:
        return "days", 86400.0
    if largest >= 2 * 3600:
        return "hours", 3600.0
    if largest >= 120:
        return "minutes", 60.0
    return "seconds", 1.0


def _layout(fig: go.Figure, *, height: int = 360, **extra: Any) -> go.Figure:
    settings: dict[str, Any] = {
        "height": height,
        "margin": {"l": 70, "r": 20, "t": 30, "b": 50},
        "template": "none",
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, sans-serif", "size": 12},
        "legend": {"orientation": "h", "y": -0.2},
        # A redraw with new data keeps the reader's zoom.
        "uirevision": "keep",
    }
    fig.update_layout(**{**settings, **extra})
    fig.update_xaxes(gridcolor=GRID, zeroline=False)
    fig.update_yaxes(gridcolor=GRID, zeroline=False)
    return fig


def _empty(fig: go.Figure, text: str) -> None:
    fig.add_annotation(text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)


def _percentile_lines(times: dict[str, Any], scale: float, *, axis: str = "y") -> tuple[list, list]:
    shapes, notes = [], []
    for p, colour in PERCENTILE_COLOURS.items():
        value = times.get(f"p{p}")
        if value is None:
            continue
        y = value / scale
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "yref": axis,
                "x0": 0,
                "x1": 1,
                "y0": y,
                "y1": y,
                "line": {"color": colour, "dash": "dash", "width": 1},
            }
        )
        notes.append(
            {
                "text": f"{p}th: {y:.3g}",
                "xref": "paper",
                "yref": axis,
                "x": 1,
                "y": y,
                "xanchor": "right",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 10, "color": colour},
            }
        )
    return shapes, notes


def aging_figure(report: dict[str, Any]) -> go.Figure:
    """One dot per item in flight, per column, age on y; bands from the window's
    cycle-time percentiles; each column's WIP limit above it."""
    cycle = report["cycle_time"]
    ages = report["age"]
    unit, scale = time_unit(max([a["age_s"] for a in ages] + [cycle.get("p95") or 0]))
    columns = [c["name"] for c in report["columns"]]
    fig = go.Figure()
    for level, colour in (("ok", "#1f4fc4"), ("amber", "#b08800"), ("red", "#d0342c")):
        items = [a for a in ages if a["level"] == level]
        fig.add_trace(
            go.Scatter(
                x=[a["column"] for a in items],
                y=[a["age_s"] / scale for a in items],
                mode="markers",
                marker={"size": 11, "color": colour, "line": {"width": 1, "color": "#ffffff"}},
                name={
                    "ok": "Within the 70th percentile",
                    "amber": "Past the 70th",
                    "red": "Past the 85th (SLE)",
                }[level],
                text=[f"#{a['task']} {a['title']}" for a in items],
                hovertemplate="%{text}<br>age %{y:.3g} " + unit + "<extra></extra>",
            )
        )
    shapes, notes = _percentile_lines(cycle, scale)
    counts = {name: sum(1 for a in ages if a["column"] == name) for name in columns}
    for c in report["columns"]:
        limit = "no WIP limit" if c["wip_limit"] is None else f"WIP limit {c['wip_limit']}"
        notes.append(
            {
                "text": f"{counts[c['name']]} in flight, {limit}",
                "x": c["name"],
                "xref": "x",
                "yref": "paper",
                "y": 1.02,
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 11},
            }
        )
    fig.update_layout(shapes=shapes, annotations=notes)
    fig.update_xaxes(
        type="category", categoryorder="array", categoryarray=columns, range=[-0.5, len(columns) - 0.5]
    )
    fig.update_yaxes(title_text=f"age ({unit})", rangemode="tozero")
    if not ages:
        _empty(fig, "No item in flight.")
    return _layout(fig)


def cycle_figure(report: dict[str, Any]) -> go.Figure:
    """Finish time vs cycle time, with the percentile lines; a switch to lead time."""
    finished = report["finished"]
    largest = max([f["lead_time_s"] for f in finished] + [0])
    unit, scale = time_unit(largest)
    with_cycle = [f for f in finished if f["cycle_time_s"] is not None]
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=[f["finished_at"] for f in with_cycle],
            y=[f["cycle_time_s"] / scale for f in with_cycle],
            mode="markers",
            name="Cycle time",
            text=[f"#{f['task']}" for f in with_cycle],
            hovertemplate="%{text} finished %{x}<br>cycle time %{y:.3g} " + unit + "<extra></extra>",
            marker={"color": "#1f4fc4", "size": 7, "opacity": 0.8},
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=[f["finished_at"] for f in finished],
            y=[f["lead_time_s"] / scale for f in finished],
            mode="markers",
            name="Lead time",
            visible=False,
            text=[f"#{f['task']}" for f in finished],
            hovertemplate="%{text} finished %{x}<br>lead time %{y:.3g} " + unit + "<extra></extra>",
            marker={"color": "#8250df", "size": 7, "opacity": 0.8},
        )
    )
    cycle_shapes, cycle_notes = _percentile_lines(report["cycle_time"], scale)
    lead_shapes, lead_notes = _percentile_lines(report["lead_time"], scale)
    fig.update_layout(
        shapes=cycle_shapes,
        annotations=cycle_notes,
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 0,
                "y": 1.15,
                "xanchor": "left",
                "buttons": [
                    {
                        "label": "Cycle time",
                        "method": "update",
                        "args": [
                            {"visible": [True, False]},
                            {"shapes": cycle_shapes, "annotations": cycle_notes},
                        ],
                    },
                    {
                        "label": "Lead time",
                        "method": "update",
                        "args": [
                            {"visible": [False, True]},
                            {"shapes": lead_shapes, "annotations": lead_notes},
                        ],
                    },
                ],
            }
        ],
    )
    fig.update_xaxes(type="date", title_text="finished (UTC)")
    fig.update_yaxes(title_text=f"time ({unit})", rangemode="tozero")
    if not finished:
        _empty(fig, "No item finished in the window.")
    return _layout(fig, margin={"l": 70, "r": 20, "t": 50, "b": 50})


def throughput_figure(report: dict[str, Any]) -> go.Figure:
    hourly, daily = report["throughput"]["per_hour"], report["throughput"]["per_day"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=hourly["periods"], y=hourly["values"], name="per hour", marker_color="#1f4fc4"))
    fig.add_trace(
        go.Bar(x=daily["periods"], y=daily["values"], name="per day", marker_color="#1a7f37", visible=False)
    )
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 0,
                "y": 1.15,
                "xanchor": "left",
                "buttons": [
                    {"label": "Per hour", "method": "update", "args": [{"visible": [True, False]}]},
                    {"label": "Per day", "method": "update", "args": [{"visible": [False, True]}]},
                ],
            }
        ],
    )
    fig.update_xaxes(type="date", title_text="period start (UTC)")
    fig.update_yaxes(title_text="items finished", rangemode="tozero")
    return _layout(fig, margin={"l": 70, "r": 20, "t": 50, "b": 50})


def wip_figure(report: dict[str, Any]) -> go.Figure:
    wip = report["wip"]
    fig = go.Figure(
        go.Scatter(
            x=wip["periods"], y=wip["values"], mode="lines", line_shape="hv", name="WIP", line_color="#1f4fc4"
        )
    )
    limits = [v for v in report["wip_limits"].values() if v is not None]
    if limits and len(limits) == len(report["wip_limits"]):
        total = sum(limits)
        fig.add_hline(
            y=total,
            line_dash="dot",
            line_color="#d0342c",
            annotation_text=f"WIP limits (In progress + Review): {total}",
        )
    fig.update_xaxes(type="date", title_text="end of period (UTC)")
    fig.update_yaxes(title_text="items in flight", rangemode="tozero")
    return _layout(fig)


def cfd_figure(report: dict[str, Any]) -> go.Figure:
    cfd = report["cfd"]
    fig = go.Figure()
    for status in ("done", "failed", "review", "running", "ready", "backlog"):
        fig.add_trace(
            go.Scatter(
                x=cfd["periods"],
                y=cfd["bands"][status],
                name=STATUS_LABELS[status],
                mode="lines",
                line={"width": 0.5, "color": STATUS_COLOURS[status]},
                stackgroup="cfd",
            )
        )
    fig.update_xaxes(type="date", title_text="end of period (UTC)")
    fig.update_yaxes(title_text="items", rangemode="tozero")
    return _layout(fig, hovermode="x unified")


def xmr_figure(chart: dict[str, Any], *, title: str, scale: float = 1.0, unit: str = "") -> go.Figure:
    """The X chart (values, mean, natural process limits, points outside in red)
    over the moving range chart (mR̄ and the upper range limit)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08)
    labels = chart["labels"]
    values = [v / scale for v in chart["values"]]
    fig.add_trace(
        go.Scatter(x=labels, y=values, mode="lines+markers", name=title, line_color="#1f4fc4"), row=1, col=1
    )
    outside = {o["index"] for o in chart["outside"]}
    fig.add_trace(
        go.Scatter(
            x=[labels[i] for i in sorted(outside)],
            y=[values[i] for i in sorted(outside)],
            mode="markers",
            name="outside the limits",
            marker={"color": "#d0342c", "size": 11, "symbol": "diamond"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=labels[1:],
            y=[r / scale for r in chart["moving_ranges"]],
            mode="lines+markers",
            name="moving range",
            line_color="#8250df",
        ),
        row=2,
        col=1,
    )
    if chart["mean"] is not None:
        for y, text, colour in (
            (chart["mean"], "mean", "#566074"),
            (chart["upper"], "upper limit", "#d0342c"),
            (chart["lower"], "lower limit", "#d0342c"),
        ):
            fig.add_hline(
                y=y / scale,
                line_dash="dash",
                line_color=colour,
                annotation_text=f"{text} {y / scale:.3g}",
                row=1,
                col=1,
            )
        fig.add_hline(y=chart["mr_mean"] / scale, line_dash="dash", line_color="#566074", row=2, col=1)
        fig.add_hline(
            y=chart["range_upper"] / scale,
            line_dash="dash",
            line_color="#d0342c",
            annotation_text=f"upper range limit {chart['range_upper'] / scale:.3g}",
            row=2,
            col=1,
        )
    else:
        _empty(fig, "Too few values for limits (at least two).")
    fig.update_yaxes(title_text=f"{title}{f' ({unit})' if unit else ''}", row=1, col=1)
    fig.update_yaxes(title_text="moving range", row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    return _layout(fig, height=420, showlegend=False)


def flow_figures(report: dict[str, Any]) -> dict[str, go.Figure]:
    cycle_xmr = report["xmr"]["cycle_time"]
    unit, scale = time_unit(max(cycle_xmr["values"] + [0]))
    throughput_xmr = report["xmr"]["throughput"]
    return {
        "aging": aging_figure(report),
        "cycle": cycle_figure(report),
        "throughput": throughput_figure(report),
        "wip": wip_figure(report),
        "cfd": cfd_figure(report),
        "xmr-cycle": xmr_figure(cycle_xmr, title="cycle time", scale=scale, unit=unit),
        "xmr-throughput": xmr_figure(throughput_xmr, title=f"items per {throughput_xmr['period']}"),
    }


def figure_json(figure: go.Figure) -> str:
    """The figure as JSON for a ``<script type="application/json">`` (escaped as
    Django's json_script does)."""
    data = json.loads(figure.to_json())
    return json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES)
