"""A board's Flow page: the flow measures of a window (boards.flow_report),
drawn with Plotly (boards.flow_charts), with CSV downloads of each chart's data.
Live: the page follows the board's websocket and re-reads its charts when the
board changes (static/js/chart-page.js, at most every few seconds)."""

from __future__ import annotations

import csv
from typing import Any

import plotly
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from boards import flow_charts, flow_report, flow_selectors
from boards.forms import FlowFilterForm
from boards.models import Board
from boards.selectors import board_capabilities_get

FLOW = "boards/flow.html"


def _ws_path(board: Board) -> str:
    # Matches boards.routing (websocket routes are not Django URLs).
    return f"/ws/boards/{board.slug}/"


@require_GET
def board_flow(request: Any, slug: str) -> HttpResponse:
    """The page; with ``format=csv&chart=<name>``, that chart's data; for htmx
    (the live update), the charts alone."""
    board = get_object_or_404(Board, slug=slug)
    agents = list(board.agents.order_by("name").values_list("name", flat=True))
    form = FlowFilterForm(
        request.GET or None, agents=agents, capabilities=board_capabilities_get(board=board)
    )
    now = timezone.now()
    query = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        try:
            query = flow_report.flow_query_resolve(
                board=board,
                now=now,
                since=data["since"],
                until=data["until"],
                agent=data["agent"] or None,
                capability=data["capability"] or None,
                resolution=data["resolution"] or None,
                forecast_items=data["forecast_items"],
                forecast_date=data["forecast_date"],
                forecast_period=data["forecast_period"] or None,
                sample_days=data["sample_days"],
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                for message in messages:
                    form.add_error(field if field in form.fields else None, message)
    chart = request.GET.get("chart", "")
    if request.GET.get("format") == "csv":
        if form.errors:
            problems = "; ".join(f"{f}: {' '.join(str(e) for e in m)}" for f, m in form.errors.items())
            return HttpResponse(f"Bad filters: {problems}\n", status=400, content_type="text/plain")
        if chart not in flow_report.CSV_CHARTS:
            return HttpResponse(
                f"Unknown chart {chart!r}: use one of {', '.join(flow_report.CSV_CHARTS)}.\n",
                status=400,
                content_type="text/plain",
            )
    if query is None:
        # Nothing asked, or something wrong (said on the form): the default window.
        query = flow_report.flow_query_resolve(board=board, now=now)
    data_ = flow_selectors.flow_data_get(board=board, where=query.where, step=query.step)
    report = flow_report.flow_report(data_, where=query.where, now=now)
    report["forecast"] = (
        flow_report.flow_forecast(board=board, where=query.where, ask=query.forecast, now=now)
        if query.forecast is not None
        else None
    )
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{board.slug}-flow-{chart}.csv"'
        writer = csv.writer(response)
        writer.writerows(flow_report.flow_csv_rows(report, chart))
        return response
    figures = {name: flow_charts.figure_json(fig) for name, fig in flow_charts.flow_figures(report).items()}
    query_string = request.GET.copy()
    query_string.pop("format", None)
    query_string.pop("chart", None)
    context = {
        "board": board,
        "form": form,
        "report": report,
        "figures": figures,
        "query": query_string.urlencode(),
        "ws_path": _ws_path(board),
        "plotly_version": plotly.__version__,
        "nav": "boards",
        "charts": CHART_TITLES,
        "window_fields": [form[n] for n in ("since", "until", "agent", "capability", "resolution")],
        "forecast_fields": [
            form[n] for n in ("forecast_items", "forecast_date", "forecast_period", "sample_days")
        ],
    }
    htmx: HtmxDetails = request.htmx
    if htmx and htmx.target == "flow-body":
        return render(request, f"{FLOW}#flow-body", context)
    return render(request, FLOW, context)


CHART_TITLES = {
    "aging": "Aging work in progress",
    "cycle": "Cycle time scatterplot",
    "throughput": "Throughput",
    "wip": "WIP run chart",
    "cfd": "Cumulative flow",
    "xmr-cycle": "Cycle time: XmR chart",
    "xmr-throughput": "Throughput: XmR chart",
}
