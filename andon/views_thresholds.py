"""Pages of waste thresholds: the list (all, a board's or an agent's) with the
form that adds one, one threshold's page with its form and record, and delete.

Thin: a form parses, one service acts (andon.waste_services). Every page needs
a login (LoginRequiredMiddleware); reading thresholds needs nothing more,
changing them the andon.add/change/delete_wastethreshold permission (403
otherwise; the services check again).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from andon import muda, selectors, waste_services, waste_thresholds
from andon.forms import InboxFilterForm, WasteThresholdForm
from andon.models import WasteThreshold
from boards.models import Agent, Board
from kaizen_web.http import AuthenticatedHttpRequest, form_add_service_errors

THRESHOLDS = "andon/thresholds.html"
THRESHOLD = "andon/threshold.html"

# The service's fields, as the form names them.
FORM_FIELDS = {"window_outputs": "window_size", "window_hours": "window_size"}


def _rows(thresholds: list[WasteThreshold]) -> list[dict]:
    return [
        {
            "threshold": t,
            "rule": waste_thresholds.rule_sentence(t),
            "last": None if t.last_value is None else waste_thresholds.amount_label(t.waste, t.last_value),
        }
        for t in thresholds
    ]


def _definitions() -> list[tuple[str, str]]:
    return [(muda.LABELS[name], muda.DEFINITIONS[name]) for name in muda.NAMES]


def _thresholds_page(
    request: AuthenticatedHttpRequest,
    *,
    board: Board | None,
    agent: Agent | None,
    form: WasteThresholdForm | None = None,
    status: int = 200,
) -> HttpResponse:
    if form is None:
        form = WasteThresholdForm(
            initial={"scope": "agent" if agent else "board", "board": board, "agent": agent}
        )
    return render(
        request,
        THRESHOLDS,
        {
            "rows": _rows(selectors.waste_thresholds_get(board=board, agent=agent)),
            "board": board,
            "agent": agent,
            "form": form,
            "can_add": request.user.has_perm(waste_services.ADD_PERMISSION),
            "records": selectors.threshold_records_get(board=board, agent=agent, limit=20),
            "definitions": _definitions(),
            "nav": "andon",
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def thresholds(request: AuthenticatedHttpRequest) -> HttpResponse:
    board, agent = InboxFilterForm(request.GET).scope()
    if request.method == "GET":
        return _thresholds_page(request, board=board, agent=agent)
    if not request.user.has_perm(waste_services.ADD_PERMISSION):
        return HttpResponse("You may not create waste thresholds (andon.add_wastethreshold).", status=403)
    form = WasteThresholdForm(request.POST)
    if form.is_valid():
        try:
            threshold = waste_services.threshold_create(user=request.user, **form.values())
        except ValidationError as exc:
            form_add_service_errors(form, exc, fields=FORM_FIELDS)
        else:
            messages.success(request, f"Threshold created: {waste_thresholds.rule_sentence(threshold)}.")
            return redirect("andon-threshold", pk=threshold.pk)
    return _thresholds_page(request, board=board, agent=agent, form=form, status=422)


def _threshold_page(
    request: AuthenticatedHttpRequest,
    threshold: WasteThreshold,
    *,
    form: WasteThresholdForm | None = None,
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        THRESHOLD,
        {
            "threshold": threshold,
            "row": _rows([threshold])[0],
            "form": form or WasteThresholdForm.of(threshold),
            "can_change": request.user.has_perm(waste_services.CHANGE_PERMISSION),
            "can_delete": request.user.has_perm(waste_services.DELETE_PERMISSION),
            "records": selectors.threshold_records_get(threshold=threshold),
            "nav": "andon",
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def threshold_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    threshold = get_object_or_404(WasteThreshold.objects.select_related("board", "agent"), pk=pk)
    if request.method == "GET":
        return _threshold_page(request, threshold)
    if not request.user.has_perm(waste_services.CHANGE_PERMISSION):
        return HttpResponse("You may not change waste thresholds (andon.change_wastethreshold).", status=403)
    form = WasteThresholdForm(request.POST)
    if form.is_valid():
        try:
            threshold = waste_services.threshold_update(
                threshold=threshold, user=request.user, **form.values()
            )
        except ValidationError as exc:
            form_add_service_errors(form, exc, fields=FORM_FIELDS)
        else:
            messages.success(request, "Threshold saved.")
            return redirect("andon-threshold", pk=threshold.pk)
    return _threshold_page(request, threshold, form=form, status=422)


@require_POST
@permission_required(waste_services.DELETE_PERMISSION, raise_exception=True)
def threshold_delete(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    threshold = get_object_or_404(WasteThreshold.objects.select_related("board", "agent"), pk=pk)
    waste_services.threshold_delete(threshold=threshold, user=request.user)
    messages.success(request, f"Threshold deleted: {waste_thresholds.rule_sentence(threshold)}.")
    return redirect("andon-thresholds")
