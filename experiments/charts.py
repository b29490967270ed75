"""An experiment's chart, drawn with Plotly server-side, for an admin who is not a
statistician: plain titles, the units a person reads (percent, dollars,
seconds), axes that show what changed.

The figure is built here with ``plotly.graph_objects`` and sent to the browser as
JSON inside ``<script type="application/json" id="chart-data-<pk>">``;
``static/js/evolution.js`` draws it with ``Plotly.react``, so a pushed update
redraws the chart in place.

One point per look, at the time it was taken. Four panels:

- success rate, the new prompt (the treatment) against the current one (the
  control), in percent;
- the evidence: the test statistic against the two lines that decide (above the
  green one the new prompt is better, below the red one it is worse);
- cost per task, in dollars, per prompt;
- time per task, in seconds, per prompt.

The efficacy stage counts its tasks afresh: a dotted line marks where it starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from django.utils import timezone
from plotly.subplots import make_subplots

from experiments.models import Experiment, ExperimentLook

CONTROL = "#566074"
TREATMENT = "#1f4fc4"
EFFICACY = "#1a7f37"
HARM = "#d0342c"
EVIDENCE = "#1b2230"
GRID = "#e6e9ef"

PANELS = (
    "Success rate: new prompt vs current",
    "Evidence: above green, better; below red, worse",
    "Cost per task",
    "Time per task",
)

# An arm's rate, cost and time are drawn from this many tasks on: 1 of 1 is 100%,
# and the first look of a stage would draw a cliff.
MIN_DRAWN = 10

# A percent axis is at least this many points tall, so one point or two close
# rates do not fill it (99% to 101% for a single point reads as a big change).
MIN_PERCENT_SPAN = 20.0

# What a <script type="application/json"> must not contain raw (as Django's json_script).
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


def money_decimals(largest: float) -> int:
    """Decimals that show a dollar amount's first two significant digits:
    $0.12, $0.0012, $0.000045 (at least 2, at most 8)."""
    if largest <= 0 or not math.isfinite(largest):
        return 4
    return max(2, min(8, math.ceil(-math.log10(largest)) + 1))


def money(value: float, decimals: int | None = None) -> str:
    """$0.0012, never 1.2m or 200μ: dollars written as people write them."""
    value = float(value or 0)
    places = money_decimals(abs(value)) if decimals is None else decimals
    return f"${value:,.{places}f}"


def percent_range(values: Sequence[float | None]) -> list[float]:
    """A percent axis around the values, padded, at least MIN_PERCENT_SPAN tall,
    within 0..100."""
    present = [v for v in values if v is not None]
    if not present:
        return [0.0, 100.0]
    low, high = min(present) - 5, max(present) + 5
    if high - low < MIN_PERCENT_SPAN:
        middle = (low + high) / 2
        low, high = middle - MIN_PERCENT_SPAN / 2, middle + MIN_PERCENT_SPAN / 2
    if low < 0:
        low, high = 0.0, max(high - low, MIN_PERCENT_SPAN)
    if high > 100:
        low, high = min(low - (high - 100), 100 - MIN_PERCENT_SPAN), 100.0
    return [max(0.0, low), min(100.0, high)]


def _num(value: Any, scale: float = 1.0) -> float | None:
    return None if value is None else float(value) * scale


def _arm(stats: dict, arm: str, key: str, scale: float = 1.0) -> float | None:
    figures = (stats.get("guardrails") or {}).get(arm, {})
    # A mean of a handful of tasks says little (and of none, a $0 and 0 s that
    # read as free and instant): not drawn.
    if (figures.get("n") or 0) < MIN_DRAWN:
        return None
    return _num(figures.get(key), scale)


def _rate(successes: Any, n: Any) -> float | None:
    return 100.0 * successes / n if n and n >= MIN_DRAWN else None


def _when(look: ExperimentLook) -> str:
    # The server's wall-clock time without an offset: plotly.js shows a date
    # string as written, so the axis agrees with the times on the page.
    return timezone.localtime(look.created_at).strftime("%Y-%m-%d %H:%M:%S")


def _upper(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return max(present) if present else 0.0


def experiment_figure(
    looks: Sequence[ExperimentLook], experiment: Experiment | None = None, *, empty_note: str = ""
) -> go.Figure:
    """The figure of an experiment's looks (oldest first); empty panels, with a
    note, before the first look."""
    current = f"current prompt (v{experiment.control.number})" if experiment else "current prompt"
    new = f"new prompt (v{experiment.treatment.number})" if experiment else "new prompt"
    x: list[str | None] = [_when(look) for look in looks]
    rows = [look.stats for look in looks]
    # The efficacy stage counts afresh: its lines start anew (a gap, no line
    # joining the canary's last look to the 50/50 test's first).
    first = next((i for i, look in enumerate(looks) if look.stage == "efficacy"), None)
    stage_start = x[first] if first else None
    if first:
        x = x[:first] + [stage_start] + x[first:]
        rows = rows[:first] + [{}] + rows[first:]
    fig = make_subplots(rows=2, cols=2, subplot_titles=PANELS, horizontal_spacing=0.09, vertical_spacing=0.2)

    def line(
        name: str,
        y: list,
        *,
        color: str,
        row: int,
        col: int,
        dash: str | None = None,
        legend: bool = False,
        group: str | None = None,
        hovertemplate: str = "",
        **kw,
    ) -> None:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                # Boundaries get small markers too: the first looks decide nothing
                # (no boundary), so a boundary known at one look only is a lone point,
                # which a line alone would not draw.
                mode="lines+markers",
                marker={"size": 4 if dash else 6},
                line={"color": color, "dash": dash} if dash else {"color": color},
                legendgroup=group or name,
                showlegend=legend,
                hovertemplate=hovertemplate or "%{y}<extra>" + name + "</extra>",
                **kw,
            ),
            row=row,
            col=col,
        )

    rates: list[float | None] = []
    for arm, name, color in (("control", current, CONTROL), ("treatment", new, TREATMENT)):
        n = [s.get(f"n_{arm}") or 0 for s in rows]
        success = [_rate(s.get(f"s_{arm}"), s.get(f"n_{arm}")) for s in rows]
        rates += success
        line(
            name,
            success,
            color=color,
            row=1,
            col=1,
            legend=True,
            group=arm,
            customdata=[[count, s.get(f"s_{arm}") or 0] for count, s in zip(n, rows, strict=True)],
            hovertemplate="%{y:.0f}% (%{customdata[1]} of %{customdata[0]} tasks)<extra>" + name + "</extra>",
        )
        costs = [_arm(s, arm, "cost") for s in rows]
        line(
            name, costs, color=color, row=2, col=1, group=arm, hovertemplate="%{y}<extra>" + name + "</extra>"
        )
        line(
            name,
            [_arm(s, arm, "latency_ms", 0.001) for s in rows],
            color=color,
            row=2,
            col=2,
            group=arm,
            hovertemplate="%{y:.1f} s<extra>" + name + "</extra>",
        )

    z = [
        _num(s.get("z")) if min(s.get("n_control") or 0, s.get("n_treatment") or 0) >= MIN_DRAWN else None
        for s in rows
    ]
    better = [_num(s.get("efficacy_boundary")) for s in rows]
    worse = [_num(s.get("harm_boundary"), -1.0) for s in rows]
    line(
        "evidence",
        z,
        color=EVIDENCE,
        row=1,
        col=2,
        legend=True,
        hovertemplate="evidence %{y:.2f}<extra></extra>",
    )
    line(
        "better above this line: promote",
        better,
        color=EFFICACY,
        dash="dash",
        row=1,
        col=2,
        legend=True,
        hovertemplate="better above %{y:.2f}<extra></extra>",
    )
    line(
        "worse below this line: roll back",
        worse,
        color=HARM,
        dash="dash",
        row=1,
        col=2,
        legend=True,
        hovertemplate="worse below %{y:.2f}<extra></extra>",
    )
    fig.add_hline(y=0, line={"color": GRID, "width": 2}, row=1, col=2)

    # Where the efficacy stage starts, its counts start again from 0.
    if stage_start is not None:
        fig.add_vline(x=stage_start, line={"color": CONTROL, "width": 1, "dash": "dot"}, row="all", col="all")
        fig.add_annotation(
            x=stage_start,
            y=1.0,
            xref="x",
            yref="y domain",
            text="50/50 test starts",
            showarrow=False,
            xanchor="left",
            yanchor="top",
            font={"size": 11, "color": CONTROL},
        )

    evidence_span = max([3.0, *(abs(v) for v in z + better + worse if v is not None)]) * 1.15
    costs_all = [_arm(s, arm, "cost") for s in rows for arm in ("control", "treatment")]
    cost_top = _upper(costs_all)
    decimals = money_decimals(cost_top)
    seconds_top = _upper(
        [_arm(s, arm, "latency_ms", 0.001) for s in rows for arm in ("control", "treatment")]
    )
    fig.update_yaxes(range=percent_range(rates), ticksuffix="%", row=1, col=1)
    fig.update_yaxes(range=[-evidence_span, evidence_span], row=1, col=2)
    fig.update_yaxes(
        range=[0, cost_top * 1.25 if cost_top > 0 else 0.001],
        tickformat=f"$,.{decimals}f",
        hoverformat=f"$,.{decimals}f",
        row=2,
        col=1,
    )
    fig.update_yaxes(
        range=[0, seconds_top * 1.25 if seconds_top > 0 else 1],
        ticksuffix=" s",
        tickformat=".1f",
        row=2,
        col=2,
    )
    # Plotly picks the ticks' format for the span shown (seconds for a demo's
    # minutes, days for a real line's weeks); the hover always has the second.
    fig.update_xaxes(type="date", hoverformat="%b %-d, %H:%M:%S", gridcolor=GRID, zeroline=False, nticks=6)
    fig.update_yaxes(gridcolor=GRID, zeroline=False)
    fig.update_layout(
        height=560,
        margin={"l": 80, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.12},
        hovermode="x unified",
        # No template: plotly's default one is 10 kB of JSON in every push.
        template="none",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="#ffffff",
        font={"family": "system-ui, sans-serif", "size": 12},
        uirevision="keep",  # a redraw with new looks keeps the reader's zoom
    )
    drawn = any(y is not None for trace in fig.data for y in (trace.y or ()))
    if not drawn:
        # An empty date axis would read "Jan 2000 ... Jan 2001" with no look, and
        # ".999 ... .001" of one second with a single look: no time to show yet.
        fig.update_xaxes(showticklabels=False)
        fig.add_annotation(
            text=(
                f"Too few tasks to draw yet: each prompt's line starts at {MIN_DRAWN} tasks."
                if looks
                else empty_note or "No looks yet: the first comes with the next evaluation."
            ),
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    return fig


def chart_json(
    looks: Sequence[ExperimentLook], experiment: Experiment | None = None, *, empty_note: str = ""
) -> str:
    """The figure as JSON to put inside a ``<script type="application/json">``
    (characters that could end the script escaped, as Django's json_script does)."""
    # Through json to drop plotly's numpy-friendly but bulky encoding choices.
    data = json.loads(experiment_figure(looks, experiment, empty_note=empty_note).to_json())
    return json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES)
