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
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from andon import muda, selectors, waste_services, waste_thresholds
from andon.forms import InboxFilterForm, WasteThresholdForm
from andon.models import WasteThreshold
from boards.models import Agent, Board
from kaizen_web.http import HtmxHttpRequest

THRESHOLDS = "andon/thresholds.html"
THRESHOLD = "andon/threshold.html"

# The service's fields, as the form names them.
FORM_FIELDS = {"window_outputs": "window_size", "window_hours": "window_size"}


def _user(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied("Log in first.")
    return user


def _form_error(form: WasteThresholdForm, exc: ValidationError) -> None:
    """A service's ValidationError onto the form, by field where it names one."""
    if hasattr(exc, "error_dict"):
        for name, errors in exc.error_dict.items():
            field = FORM_FIELDS.get(name, name)
            for error in errors:
                form.add_error(field if field in form.fields else None, error)
    else:
        form.add_error(None, exc)


def _scope_of(request: HttpRequest) -> tuple[Board | None, Agent | None]:
    filters = InboxFilterForm(request.GET).filters()
    board = Board.objects.filter(pk=filters["board_id"]).first() if filters["board_id"] else None
    agent = Agent.objects.filter(pk=filters["agent_id"]).first() if filters["agent_id"] else None
    return board, agent


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
    request: HttpRequest,
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
def thresholds(request: HtmxHttpRequest) -> HttpResponse:
    board, agent = _scope_of(request)
    if request.method == "GET":
        return _thresholds_page(request, board=board, agent=agent)
    if not request.user.has_perm(waste_services.ADD_PERMISSION):
        return HttpResponse("You may not create waste thresholds (andon.add_wastethreshold).", status=403)
    form = WasteThresholdForm(request.POST)
    if form.is_valid():
        try:
            threshold = waste_services.threshold_create(user=_user(request), **form.values())
        except ValidationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Threshold created: {waste_thresholds.rule_sentence(threshold)}.")
            return redirect("andon-threshold", pk=threshold.pk)
    return _thresholds_page(request, board=board, agent=agent, form=form, status=422)


def _threshold_page(
    request: HttpRequest,
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
def threshold_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    threshold = get_object_or_404(WasteThreshold.objects.select_related("board", "agent"), pk=pk)
    if request.method == "GET":
        return _threshold_page(request, threshold)
    if not request.user.has_perm(waste_services.CHANGE_PERMISSION):
        return HttpResponse("You may not change waste thresholds (andon.change_wastethreshold).", status=403)
    form = WasteThresholdForm(request.POST)
    if form.is_valid():
        try:
            threshold = waste_services.threshold_update(
                threshold=threshold, user=_user(request), **form.values()
            )
        except ValidationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, "Threshold saved.")
            return redirect("andon-threshold", pk=threshold.pk)
    return _threshold_page(request, threshold, form=form, status=422)


@require_POST
@permission_required(waste_services.DELETE_PERMISSION, raise_exception=True)
def threshold_delete(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    threshold = get_object_or_404(WasteThreshold.objects.select_related("board", "agent"), pk=pk)
    waste_services.threshold_delete(threshold=threshold, user=_user(request))
    messages.success(request, f"Threshold deleted: {waste_thresholds.rule_sentence(threshold)}.")
    return redirect("andon-thresholds")
