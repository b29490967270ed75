"""An experiment's chart: its looks drawn with Plotly, server-side.

The figure is built here with ``plotly.graph_objects`` and sent to the browser as
JSON inside ``<script type="application/json" id="chart-data-<pk>">``;
``static/js/evolution.js`` draws it with ``Plotly.react``, so a pushed update
redraws the chart in place.

One look is one x position (look 1, 2, ...: the looks of both stages in order;
the information fraction restarts with the efficacy stage, so it could not be the
x axis of both). Six panels:

- the test statistic z against the efficacy boundary c_k and the harm boundary
  -h_k (the decision in one picture: promote above c_k, roll back below -h_k);
- the difference in success rate with its adjusted (repeated) confidence interval;
- success per arm;
- samples per arm (a sample-ratio mismatch shows as arms drifting apart);
- the guardrails, mean cost per task and mean latency, per arm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments.models import ExperimentLook

CONTROL = "#566074"
TREATMENT = "#1f4fc4"
EFFICACY = "#1a7f37"
HARM = "#d0342c"

PANELS = (
    "z against the boundaries",
    "Success difference, adjusted interval (points)",
    "Success per arm (%)",
    "Samples per arm",
    "Mean cost per task ($)",
    "Mean latency (ms)",
)

# What a <script type="application/json"> must not contain raw (as Django's json_script).
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


def _num(value: Any, scale: float = 1.0) -> float | None:
    return None if value is None else float(value) * scale


def _arm(stats: dict, arm: str, key: str) -> float | None:
    value = (stats.get("guardrails") or {}).get(arm, {}).get(key)
    return _num(value)


def _rate(successes: Any, n: Any) -> float | None:
    return 100.0 * successes / n if n else None


def experiment_figure(looks: Sequence[ExperimentLook]) -> go.Figure:
    """The figure of an experiment's looks (oldest first); empty panels, with a
    note, before the first look."""
    x = list(range(1, len(looks) + 1))
    rows = [look.stats for look in looks]
    hover = [
        f"look {i} ({s.get('stage', look.stage)}), {look.created_at:%Y-%m-%d %H:%M}<br>"
        f"t = {s.get('fraction', 0):.3f}; {s.get('n_control', 0)} control, {s.get('n_treatment', 0)} treatment"
        f"<br>{look.decision}"
        for i, (look, s) in enumerate(zip(looks, rows, strict=True), start=1)
    ]
    fig = make_subplots(rows=2, cols=3, subplot_titles=PANELS, horizontal_spacing=0.07, vertical_spacing=0.16)

    def line(
        name: str,
        y: list,
        *,
        color: str,
        row: int,
        col: int,
        dash: str | None = None,
        hovertemplate: str = "",
        **kw,
    ) -> None:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                mode="lines" if dash else "lines+markers",
                line={"color": color, "dash": dash} if dash else {"color": color},
                hovertemplate=hovertemplate or "look %{x}: %{y:.3g}<extra>" + name + "</extra>",
                **kw,
            ),
            row=row,
            col=col,
        )

    # The look's details ride on two traces only: an experiment can have a
    # thousand looks, and every trace would carry its own copy.
    line(
        "z",
        [_num(s.get("z")) for s in rows],
        color=TREATMENT,
        row=1,
        col=1,
        text=hover,
        hovertemplate="z = %{y:.2f}<br>%{text}<extra></extra>",
    )
    line(
        "efficacy boundary",
        [_num(s.get("efficacy_boundary")) for s in rows],
        color=EFFICACY,
        dash="dash",
        row=1,
        col=1,
    )
    line(
        "harm boundary",
        [_num(s.get("harm_boundary"), -1.0) for s in rows],
        color=HARM,
        dash="dash",
        row=1,
        col=1,
    )

    diff = [_num(s.get("diff"), 100.0) for s in rows]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=diff,
            name="difference",
            mode="lines+markers",
            line={"color": TREATMENT},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [
                    None if d is None or s.get("ci_high") is None else 100.0 * s["ci_high"] - d
                    for d, s in zip(diff, rows, strict=True)
                ],
                "arrayminus": [
                    None if d is None or s.get("ci_low") is None else d - 100.0 * s["ci_low"]
                    for d, s in zip(diff, rows, strict=True)
                ],
                "color": TREATMENT,
            },
            text=hover,
            hovertemplate="%{y:+.1f} points<br>%{text}<extra>difference</extra>",
        ),
        row=1,
        col=2,
    )
    fig.add_hline(y=0, line={"color": CONTROL, "width": 1}, row=1, col=2)

    for arm, color in (("control", CONTROL), ("treatment", TREATMENT)):
        line(
            f"success {arm}",
            [_rate(s.get(f"s_{arm}"), s.get(f"n_{arm}")) for s in rows],
            color=color,
            row=1,
            col=3,
        )
        line(f"samples {arm}", [s.get(f"n_{arm}") for s in rows], color=color, row=2, col=1)
        line(f"cost {arm}", [_arm(s, arm, "cost") for s in rows], color=color, row=2, col=2)
        line(f"latency {arm}", [_arm(s, arm, "latency_ms") for s in rows], color=color, row=2, col=3)

    # Where the efficacy stage starts, its information fraction starts again from 0.
    first_efficacy = next((i for i, look in enumerate(looks, start=1) if look.stage == "efficacy"), None)
    if first_efficacy is not None and first_efficacy > 1:
        fig.add_vline(
            x=first_efficacy - 0.5, line={"color": CONTROL, "width": 1, "dash": "dot"}, row="all", col="all"
        )

    fig.update_xaxes(title_text="look", row=2)
    # Whole looks only, about ten ticks at most.
    fig.update_xaxes(
        tickmode="linear",
        tick0=1,
        dtick=max(1, math.ceil(len(looks) / 10)),
        range=[0.5, max(len(looks), 1) + 0.5],
        gridcolor="#e6e9ef",
        zeroline=False,
    )
    fig.update_yaxes(gridcolor="#e6e9ef", zeroline=False)
    fig.update_layout(
        height=540,
        margin={"l": 50, "r": 20, "t": 40, "b": 50},
        legend={"orientation": "h", "y": -0.14},
        hovermode="closest",
        # No template: plotly's default one is 10 kB of JSON in every push.
        template="none",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="#ffffff",
        font={"family": "system-ui, sans-serif", "size": 12},
        uirevision="keep",  # a redraw with new looks keeps the reader's zoom
    )
    if not looks:
        fig.add_annotation(
            text="No looks yet: the first comes with the next evaluation (every 5 minutes at most).",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    return fig


def chart_json(looks: Sequence[ExperimentLook]) -> str:
    """The figure as JSON to put inside a ``<script type="application/json">``
    (characters that could end the script escaped, as Django's json_script does)."""
    # Through json to drop plotly's numpy-friendly but bulky encoding choices.
    data = json.loads(experiment_figure(looks).to_json())
    return json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES)
