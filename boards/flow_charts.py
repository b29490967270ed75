"""The Flow page's charts: Plotly figures built server-side from the report
(``boards.flow_report``) and sent, as experiments/charts.py sends its chart, as
JSON inside ``<script type="application/json">``; ``static/js/chart-page.js`` draws
them with ``Plotly.react`` (a live update redraws in place, keeping the
reader's zoom).

The figures are written as the plain dicts Plotly.js reads, not through
``plotly.graph_objects``: its validation cost about two seconds for the page's
seven figures, and the page has a 300 ms budget.

Times are shown in the unit that suits the largest value (seconds, minutes,
hours or days), and said on the axis."""

from __future__ import annotations

import json
import math
from typing import Any

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
# The most points the cycle-time scatterplot draws (cycle_figure).
MAX_SCATTER = 5000
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


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


Figure = dict[str, Any]


def _figure(data: list[dict], *, height: int = 360, **layout: Any) -> Figure:
    base: dict[str, Any] = {
        "height": height,
        "margin": {"l": 70, "r": 20, "t": 30, "b": 50},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, sans-serif", "size": 12},
        "legend": {"orientation": "h", "y": -0.2},
        "xaxis": {"gridcolor": GRID, "zeroline": False},
        "yaxis": {"gridcolor": GRID, "zeroline": False},
        # A redraw with new data keeps the reader's zoom.
        "uirevision": "keep",
    }
    for key, value in layout.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return {"data": data, "layout": base}


def _note(text: str) -> dict[str, Any]:
    return {"text": text, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False}


def _hline(y: float, colour: str, *, yref: str = "y", dash: str = "dash") -> dict[str, Any]:
    return {
        "type": "line",
        "xref": "paper",
        "yref": yref,
        "x0": 0,
        "x1": 1,
        "y0": y,
        "y1": y,
        "line": {"color": colour, "dash": dash, "width": 1},
    }


def _label(y: float, text: str, colour: str, *, yref: str = "y", x: float = 1) -> dict[str, Any]:
    return {
        "text": text,
        "xref": "paper",
        "yref": yref,
        "x": x,
        "y": y,
        "xanchor": "right",
        "yanchor": "bottom",
        "showarrow": False,
        "font": {"size": 10, "color": colour},
    }


def _percentile_lines(times: dict[str, Any], scale: float) -> tuple[list, list]:
    shapes, notes = [], []
    for i, (p, colour) in enumerate(PERCENTILE_COLOURS.items()):
        value = times.get(f"p{p}")
        if value is None:
            continue
        y = value / scale
        shapes.append(_hline(y, colour))
        # Staggered along the line: close percentiles would print on one another.
        notes.append(_label(y, f"{p}th: {y:.3g}", colour, x=1 - 0.08 * (len(PERCENTILE_COLOURS) - 1 - i)))
    return shapes, notes


def _switch(buttons: list[tuple[str, list]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "buttons",
            "direction": "right",
            "x": 0,
            "y": 1.15,
            "xanchor": "left",
            "buttons": [{"label": label, "method": "update", "args": args} for label, args in buttons],
        }
    ]


def aging_figure(report: dict[str, Any]) -> Figure:
    """One dot per item in flight, per column, age on y; the window's cycle-time
    percentiles as lines; each column's WIP limit above it."""
    cycle = report["cycle_time"]
    ages = report["age"]
    unit, scale = time_unit(max([a["age_s"] for a in ages] + [cycle.get("p95") or 0]))
    columns = [c["name"] for c in report["columns"]]
    names = {"ok": "Within the 70th percentile", "amber": "Past the 70th", "red": "Past the 85th (SLE)"}
    data = []
    for level, colour in (("ok", "#1f4fc4"), ("amber", "#b08800"), ("red", "#d0342c")):
        items = [a for a in ages if a["level"] == level]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": names[level],
                "x": [a["column"] for a in items],
                "y": [a["age_s"] / scale for a in items],
                "text": [f"#{a['task']} {a['title']}" for a in items],
                "hovertemplate": "%{text}<br>age %{y:.3g} " + unit + "<extra></extra>",
                "marker": {"size": 11, "color": colour, "line": {"width": 1, "color": "#ffffff"}},
            }
        )
    shapes, notes = _percentile_lines(cycle, scale)
    for c in report["columns"]:
        limit = "no WIP limit" if c["wip_limit"] is None else f"WIP limit {c['wip_limit']}"
        count = sum(1 for a in ages if a["column"] == c["name"])
        notes.append(
            {
                "text": f"{count} in flight, {limit}",
                "x": c["name"],
                "xref": "x",
                "yref": "paper",
                "y": 1.0,
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 11},
            }
        )
    if not ages:
        notes.append(_note("No item in flight."))
    return _figure(
        data,
        shapes=shapes,
        annotations=notes,
        xaxis={
            "type": "category",
            "categoryorder": "array",
            "categoryarray": columns,
            "range": [-0.5, len(columns) - 0.5],
        },
        yaxis={"title": {"text": f"age ({unit})"}, "rangemode": "tozero"},
    )


def cycle_figure(report: dict[str, Any]) -> Figure:
    """Finish time vs cycle time, with the percentile lines; a switch to lead time."""
    f = report["finished"]
    unit, scale = time_unit(max(f["lead_time_s"] + [0]))
    # At most MAX_SCATTER points, evenly through the window (every k-th item in
    # the order they finished): tens of thousands of dots are one blob and
    # megabytes to send; the percentile lines are drawn from every item, and
    # the CSV holds them all.
    total = len(f["task"])
    every = max(1, math.ceil(total / MAX_SCATTER))
    drawn = range(0, total, every)
    # Dates as milliseconds since the epoch (what a Plotly date axis takes).
    at = [f["finished_at"][i] * 1000 for i in drawn]
    tasks = [f["task"][i] for i in drawn]
    cycle = [
        (x, c / scale, t)
        for x, c, t in zip(at, [f["cycle_time_s"][i] for i in drawn], tasks, strict=True)
        if c is not None
    ]
    data: list[dict[str, Any]] = [
        {
            "type": "scattergl",
            "mode": "markers",
            "name": "Cycle time",
            "x": [c[0] for c in cycle],
            "y": [c[1] for c in cycle],
            "customdata": [c[2] for c in cycle],
            "hovertemplate": "#%{customdata} finished %{x}<br>cycle time %{y:.3g} "
            + unit
            + "<extra></extra>",
            "marker": {"color": "#1f4fc4", "size": 7, "opacity": 0.8},
        },
        {
            "type": "scattergl",
            "mode": "markers",
            "name": "Lead time",
            "visible": False,
            "x": at,
            "y": [f["lead_time_s"][i] / scale for i in drawn],
            "customdata": tasks,
            "hovertemplate": "#%{customdata} finished %{x}<br>lead time %{y:.3g} " + unit + "<extra></extra>",
            "marker": {"color": "#8250df", "size": 7, "opacity": 0.8},
        },
    ]
    finished = f["task"]
    cycle_shapes, cycle_notes = _percentile_lines(report["cycle_time"], scale)
    lead_shapes, lead_notes = _percentile_lines(report["lead_time"], scale)
    if not finished:
        cycle_notes = lead_notes = [_note("No item finished in the window.")]
    elif every > 1:
        sampled = {
            "text": f"1 item in {every:,} drawn ({len(drawn):,} of {total:,}); the lines are of all",
            "xref": "paper",
            "yref": "paper",
            "x": 0,
            "y": 1.02,
            "xanchor": "left",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 10, "color": "#57606a"},
        }
        cycle_notes, lead_notes = [*cycle_notes, sampled], [*lead_notes, sampled]
    return _figure(
        data,
        shapes=cycle_shapes,
        annotations=cycle_notes,
        updatemenus=_switch(
            [
                (
                    "Cycle time",
                    [{"visible": [True, False]}, {"shapes": cycle_shapes, "annotations": cycle_notes}],
                ),
                (
                    "Lead time",
                    [{"visible": [False, True]}, {"shapes": lead_shapes, "annotations": lead_notes}],
                ),
            ]
        ),
        margin={"t": 50},
        xaxis={"type": "date", "title": {"text": "finished (UTC)"}},
        yaxis={"title": {"text": f"time ({unit})"}, "rangemode": "tozero"},
    )


def throughput_figure(report: dict[str, Any]) -> Figure:
    hourly, daily = report["throughput"]["per_hour"], report["throughput"]["per_day"]
    data = [
        {
            "type": "bar",
            "name": "per hour",
            "x": hourly["periods"],
            "y": hourly["values"],
            # Each bar spans its hour (x is the period's start): without this
            # Plotly centres it on the start, half in the hour before.
            "xperiod": HOUR_MS,
            "xperiodalignment": "middle",
            "width": HOUR_MS * 0.9,
            "marker": {"color": "#1f4fc4"},
        },
        {
            "type": "bar",
            "name": "per day",
            "x": daily["periods"],
            "y": daily["values"],
            "xperiod": DAY_MS,
            "xperiodalignment": "middle",
            "width": DAY_MS * 0.9,
            "marker": {"color": "#1a7f37"},
            "visible": False,
        },
    ]
    return _figure(
        data,
        updatemenus=_switch(
            [("Per hour", [{"visible": [True, False]}]), ("Per day", [{"visible": [False, True]}])]
        ),
        margin={"t": 50},
        xaxis={"type": "date", "title": {"text": "period start (UTC)"}},
        yaxis={"title": {"text": "items finished"}, "rangemode": "tozero"},
    )


def wip_figure(report: dict[str, Any]) -> Figure:
    wip = report["wip"]
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "WIP",
            "x": wip["periods"],
            "y": wip["values"],
            "line": {"shape": "hv", "color": "#1f4fc4"},
        }
    ]
    shapes, notes = [], []
    limits = list(report["wip_limits"].values())
    if limits and all(v is not None for v in limits):
        total = sum(v for v in limits if v is not None)
        shapes.append(_hline(total, "#d0342c", dash="dot"))
        notes.append(_label(total, f"WIP limits (In progress + Review): {total}", "#d0342c"))
    return _figure(
        data,
        shapes=shapes,
        annotations=notes,
        xaxis={"type": "date", "title": {"text": "end of period (UTC)"}},
        yaxis={"title": {"text": "items in flight"}, "rangemode": "tozero"},
    )


def cfd_figure(report: dict[str, Any]) -> Figure:
    cfd = report["cfd"]
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": STATUS_LABELS[status],
            "x": cfd["periods"],
            "y": cfd["bands"][status],
            "line": {"width": 0.5, "color": STATUS_COLOURS[status]},
            "stackgroup": "cfd",
        }
        for status in ("done", "failed", "review", "running", "ready", "backlog")
    ]
    return _figure(
        data,
        hovermode="x unified",
        xaxis={"type": "date", "title": {"text": "end of period (UTC)"}},
        yaxis={"title": {"text": "items"}, "rangemode": "tozero"},
    )


def xmr_figure(
    chart: dict[str, Any], *, title: str, scale: float = 1.0, unit: str = "", by_period: bool = False
) -> Figure:
    """The X chart (values, mean, natural process limits, points outside in red)
    over the moving range chart (mR̄ and the upper range limit). Items are
    placed in the order they finished (1, 2, ...; the task in the hover: a task
    finished twice appears twice), periods at their start."""
    names = chart["labels"]
    labels = names if by_period else list(range(1, len(names) + 1))
    values = [v / scale for v in chart["values"]]
    outside = sorted(o["index"] for o in chart["outside"])
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": title,
            "x": labels,
            "y": values,
            "line": {"color": "#1f4fc4"},
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "outside the limits",
            "x": [labels[i] for i in outside],
            "y": [values[i] for i in outside],
            "text": [names[i] for i in outside],
            "hovertemplate": "%{text}: %{y:.3g} (outside)<extra></extra>",
            "marker": {"color": "#d0342c", "size": 11, "symbol": "diamond"},
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "moving range",
            "x": labels[1:],
            "y": [r / scale for r in chart["moving_ranges"]],
            "line": {"color": "#8250df"},
            "xaxis": "x2",
            "yaxis": "y2",
        },
    ]
    shapes, notes = [], []
    if chart["mean"] is not None:
        for y, text, colour in (
            (chart["mean"], "mean", "#566074"),
            (chart["upper"], "upper limit", "#d0342c"),
            (chart["lower"], "lower limit", "#d0342c"),
        ):
            shapes.append(_hline(y / scale, colour))
            notes.append(_label(y / scale, f"{text} {y / scale:.3g}", colour))
        shapes.append(_hline(chart["mr_mean"] / scale, "#566074", yref="y2"))
        shapes.append(_hline(chart["range_upper"] / scale, "#d0342c", yref="y2"))
        notes.append(
            _label(
                chart["range_upper"] / scale,
                f"upper range limit {chart['range_upper'] / scale:.3g}",
                "#d0342c",
                yref="y2",
            )
        )
    else:
        notes.append(_note("Too few values for limits (at least two)."))
    return _figure(
        data,
        height=420,
        showlegend=False,
        shapes=shapes,
        annotations=notes,
        xaxis={"showticklabels": False, "anchor": "y", "type": "date" if by_period else "linear"},
        yaxis={"domain": [0.4, 1], "title": {"text": f"{title}{f' ({unit})' if unit else ''}"}},
        xaxis2={
            "matches": "x",
            "anchor": "y2",
            "type": "date" if by_period else "linear",
            "gridcolor": GRID,
            "title": {"text": "period start (UTC)" if by_period else "items in the order they finished"},
        },
        yaxis2={
            "domain": [0, 0.32],
            "title": {"text": "moving range"},
            "gridcolor": GRID,
            "rangemode": "tozero",
        },
    )


def flow_figures(report: dict[str, Any]) -> dict[str, Figure]:
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
        "xmr-throughput": xmr_figure(
            throughput_xmr, title=f"items per {throughput_xmr['period']}", by_period=True
        ),
    }


def figure_json(figure: Figure) -> str:
    """The figure as JSON for a ``<script type="application/json">`` (escaped as
    Django's json_script does)."""
    return json.dumps(figure, separators=(",", ":")).translate(_SCRIPT_ESCAPES)
