"""Pages of budgets and andon alerts: the budgets list (of a board or an agent,
or all), one budget's page with its record, the forms that create, change and
delete budgets, and acknowledging an alert.

Thin: a form parses, one service acts (andon.budget_services, andon.services).
Every page needs a login (LoginRequiredMiddleware); reading budgets needs
nothing more (the board shows its spend to everyone who sees it), changing them
needs the andon.add/change/delete_budget permission, acknowledging an alert the
reviewer permission (403 otherwise; the services check again).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from andon import budget_services, selectors, services
from andon.forms import BudgetForm, InboxFilterForm
from andon.models import Alert, Budget
from boards.models import Agent, Board
from kaizen_web.http import AuthenticatedHttpRequest, form_add_service_errors, safe_next

BUDGETS = "andon/budgets.html"
BUDGET = "andon/budget.html"


def _budgets_page(
    request: AuthenticatedHttpRequest,
    *,
    board: Board | None,
    agent: Agent | None,
    form: BudgetForm | None = None,
    status: int = 200,
) -> HttpResponse:
    if form is None:
        initial = {"scope": "agent" if agent else "board", "board": board, "agent": agent}
        form = BudgetForm(initial=initial)
    return render(
        request,
        BUDGETS,
        {
            "statuses": selectors.budget_statuses_get(board=board, agent=agent),
            "board": board,
            "agent": agent,
            "form": form,
            "can_add": request.user.has_perm(budget_services.ADD_PERMISSION),
            "records": selectors.budget_records_get(board=board, agent=agent, limit=20),
            "nav": "andon",
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def budgets(request: AuthenticatedHttpRequest) -> HttpResponse:
    board, agent = InboxFilterForm(request.GET).scope()
    if request.method == "GET":
        return _budgets_page(request, board=board, agent=agent)
    if not request.user.has_perm(budget_services.ADD_PERMISSION):
        return HttpResponse("You may not create budgets (andon.add_budget).", status=403)
    form = BudgetForm(request.POST)
    if form.is_valid():
        try:
            budget = budget_services.budget_create(user=request.user, **form.values())
        except ValidationError as exc:
            form_add_service_errors(form, exc)
        else:
            messages.success(request, f"Budget {budget.name} created.")
            return redirect("andon-budget", pk=budget.pk)
    return _budgets_page(request, board=board, agent=agent, form=form, status=422)


def _budget_page(
    request: AuthenticatedHttpRequest, budget: Budget, *, form: BudgetForm | None = None, status: int = 200
) -> HttpResponse:
    budget_status = selectors.budget_status_get(budget=budget)
    return render(
        request,
        BUDGET,
        {
            "budget": budget,
            "status": budget_status,
            "form": form or BudgetForm.of(budget),
            "can_change": request.user.has_perm(budget_services.CHANGE_PERMISSION),
            "can_delete": request.user.has_perm(budget_services.DELETE_PERMISSION),
            "records": selectors.budget_records_get(budget=budget),
            "nav": "andon",
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def budget_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(Budget.objects.select_related("board", "agent"), pk=pk)
    if request.method == "GET":
        return _budget_page(request, budget)
    if not request.user.has_perm(budget_services.CHANGE_PERMISSION):
        return HttpResponse("You may not change budgets (andon.change_budget).", status=403)
    form = BudgetForm(request.POST)
    if form.is_valid():
        try:
            budget = budget_services.budget_update(budget=budget, user=request.user, **form.values())
        except ValidationError as exc:
            form_add_service_errors(form, exc)
        else:
            messages.success(request, f"Budget {budget.name} saved.")
            return redirect("andon-budget", pk=budget.pk)
    return _budget_page(request, budget, form=form, status=422)


@require_POST
@permission_required(budget_services.DELETE_PERMISSION, raise_exception=True)
def budget_delete(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(Budget, pk=pk)
    budget_services.budget_delete(budget=budget, user=request.user)
    messages.success(request, f"Budget {budget.name} deleted.")
    return redirect("andon-budgets")


@require_POST
@permission_required(services.REVIEW_PERMISSION, raise_exception=True)
def alert_acknowledge(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Acknowledge an alert: with htmx, an empty answer (the page deletes the
    row; every inbox gets the banner through the websocket); without, a redirect."""
    alert = get_object_or_404(Alert, pk=pk)
    alert = services.alert_acknowledge(alert=alert, user=request.user)
    if request.htmx:
        return HttpResponse("")
    messages.success(request, f"Acknowledged: {alert.title}.")
    return redirect(safe_next(request) or "andon-inbox")
