"""A board's Muda page: the seven wastes with their definitions, values, cost,
targets and trends (andon.muda), filtered by window and agent, each chart's data
as CSV. Login required (LoginRequiredMiddleware), like every page.

Live: while the window runs to now, the page follows the board's websocket (the
one transport, kaizen_web.live, which already announces every change of the
board) and, on a change, re-fetches its body at most every few seconds
(static/js/chart-page.js). The wastes are computed for the viewer who looks, never in
the broadcaster's thread: the line pays nothing for a page nobody watches.
"""

from __future__ import annotations

import plotly
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.text import slugify
from django.views.decorators.http import require_GET

from andon import muda, muda_charts
from andon.forms import MudaFilterForm
from boards.models import Board
from kaizen_web.http import HtmxHttpRequest

PAGE = "andon/muda.html"

# The fewest seconds between two live refreshes of the page (static/js/chart-page.js reads it).
LIVE_REFRESH_SECONDS = 5


def _filters(request: HtmxHttpRequest, board: Board) -> MudaFilterForm:
    return MudaFilterForm(request.GET or None, board=board)


def _report(board: Board, form: MudaFilterForm) -> muda.MudaReport:
    data = form.cleaned_data if form.is_bound and form.is_valid() else {}
    return muda.muda_report_get(
        board=board, agent=data.get("agent"), since=data.get("since"), until=data.get("until")
    )


@require_GET
def board_muda(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    board = get_object_or_404(Board, slug=slug)
    form = _filters(request, board)
    valid = not form.is_bound or form.is_valid()
    # A window with errors shows the form and its messages, not numbers for another window.
    report = _report(board, form) if valid else None
    agent = form.cleaned_data.get("agent") if valid and form.is_bound else None
    live = valid and not (form.is_bound and form.cleaned_data.get("until"))
    context = {
        "board": board,
        "form": form,
        "report": report,
        "panels": muda_charts.panels(report) if report else [],
        "agent": agent,
        "live": live,
        "ws_path": f"/ws/boards/{board.slug}/",
        "query": request.GET.urlencode(),
        "refresh_ms": LIVE_REFRESH_SECONDS * 1000,
        "plotly_version": plotly.__version__,
        "nav": "boards",
    }
    if request.htmx and report is not None:
        return render(request, f"{PAGE}#muda-body", context)
    return render(request, PAGE, context, status=200 if valid else 400)


@require_GET
def board_muda_csv(request: HtmxHttpRequest, slug: str, name: str) -> HttpResponse:
    """One chart's data (a waste's trend) as CSV, for the same window and agent."""
    if name not in muda.NAMES:
        raise Http404(f"There is no chart {name!r}.")
    board = get_object_or_404(Board, slug=slug)
    form = _filters(request, board)
    if form.is_bound and not form.is_valid():
        errors = "; ".join(
            f"{field}: {' '.join(str(m) for m in messages)}" for field, messages in form.errors.items()
        )
        return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
    report = _report(board, form)
    response = HttpResponse(
        muda_charts.trend_csv(report, report.waste(name)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{slugify(board.slug)}-muda-{name}.csv"'
    return response
