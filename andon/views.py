"""Pages and htmx endpoints of the andon: the inbox, one escalation's page, the
line stops, and the cord.

Thin by design: parse the request with a form, call one service, render a
partial of ``andon/inbox.html``. Every page needs a login
(LoginRequiredMiddleware) and the reviewer permission (403 otherwise; the
services check it again). htmx requests get fragments: the inbox row (or
nothing, when a decision took it out of the inbox) plus the action's message
for the inbox's aria-live region, out of band. Other requests get whole pages
and redirects, so every action works without JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db.models import prefetch_related_objects
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from andon import broadcast as andon_broadcast
from andon import selectors, services
from andon.forms import (
    ApproveForm,
    ClaimForm,
    CordForm,
    CorrectForm,
    InboxFilterForm,
    RejectForm,
    RestartForm,
)
from andon.models import Escalation, LineStop
from boards.selectors import task_model_calls_get
from kaizen_web.http import AuthenticatedHttpRequest, error_message, form_errors, safe_next

INBOX = "andon/inbox.html"

# Anonymous users never get here (the login middleware redirects them first).
reviewer_required = permission_required(services.REVIEW_PERMISSION, raise_exception=True)


# --- helpers -------------------------------------------------------------------


def _escalation(pk: int) -> Escalation:
    escalation = selectors.escalation_get(pk=pk)
    if escalation is None:
        raise Http404("No such escalation.")
    # The task page's URL needs the task's board: it is the escalation's.
    escalation.task.board = escalation.board
    return escalation


def _query(filters: dict) -> str:
    """The filters as a query string (with its "?"), empty when there are none."""
    query = {"board": filters["board_id"], "agent": filters["agent_id"], "check": filters["check"]}
    query = {k: v for k, v in query.items() if v}
    return f"?{urlencode(query)}" if query else ""


def _ws_path(filters: dict) -> str:
    # Matches andon.routing (websocket routes are not Django URLs, so they cannot
    # be reversed); the consumer forwards new rows matching these filters only.
    return "/ws/andon/" + _query(filters)


def _inbox_context(filters: dict, *, here: str, row: Escalation | None = None) -> dict:
    escalations = selectors.inbox_groups_get(**filters)
    if row is not None:
        # A row with an error to show (or decided meanwhile) stands where it is, or on top.
        index = next((i for i, e in enumerate(escalations) if e.pk == row.pk), None)
        if index is None:
            escalations.insert(0, row)
        else:
            escalations[index] = row
    return {
        "escalations": selectors.escalation_details_get(escalations),
        "open_count": sum(len(getattr(e, "members", [e])) for e in escalations if e.is_open),
        "decisions": selectors.recent_decisions_get(),
        "filters": filters,
        "choices": selectors.inbox_filter_choices_get(),
        "stats": selectors.inbox_stats_get(),
        **andon_broadcast.banner_context(),
        "ws_path": _ws_path(filters),
        "live_url": reverse("andon-inbox-live") + _query(filters),
        # Where the row forms send a browser without JavaScript back to.
        "here": here,
        "nav": "andon",
    }


def _filters_of(url: str | None) -> dict:
    """The inbox filters in a URL's query string (the page an action came from)."""
    query = urlsplit(url).query if url else ""
    return InboxFilterForm(QueryDict(query)).filters()


# --- the inbox -----------------------------------------------------------------


@require_GET
@reviewer_required
def inbox(request: AuthenticatedHttpRequest) -> HttpResponse:
    filters = InboxFilterForm(request.GET).filters()
    return render(request, INBOX, _inbox_context(filters, here=request.get_full_path()))


@require_GET
@reviewer_required
def inbox_live(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The inbox's live part (the list, and the banner and figures out of band):
    what a reconnecting browser re-fetches to catch up on what it missed."""
    filters = InboxFilterForm(request.GET).filters()
    return render(request, f"{INBOX}#inbox-catch-up", _inbox_context(filters, here=""))


@require_GET
@reviewer_required
def escalation_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    return _escalation_page(request, _escalation(pk))


def _escalation_page(request: HttpRequest, escalation: Escalation, *, status: int = 200) -> HttpResponse:
    task = escalation.task
    calls = task_model_calls_get(task=task)
    prefetch_related_objects([c for c in calls if c.reused_from_id], "reused_from__board")
    if escalation.agent_id:
        escalation.agent_record = selectors.agent_record_get(agent_id=escalation.agent_id)
    group = selectors.escalation_group_get(escalation=escalation) if escalation.is_open else []
    context = {
        "escalation": escalation,
        "task": task,
        "calls": calls,
        "identical": max(len(group) - 1, 0),
        "group_leader": group[0].pk if group else None,
        # The action forms post plainly and come back here.
        "plain": True,
        "here": escalation.get_absolute_url(),
        "nav": "andon",
    }
    return render(request, "andon/escalation.html", context, status=status)


# --- claiming and deciding -------------------------------------------------------
#
# A row of the inbox is a group of identical escalations: its forms post the
# members' ids, and one decision covers them (andon.services.escalations_*).


def _members(escalation: Escalation, ids: list[int]) -> list[Escalation]:
    """The escalations a form names, ``escalation`` first."""
    others = Escalation.objects.in_bulk([pk for pk in ids if pk != escalation.pk])
    return [escalation] + [others[pk] for pk in ids if pk in others]


def _decided_message(
    verb: str, escalation: Escalation, result: services.GroupDecision, tail: str = ""
) -> str:
    title = escalation.task.title
    n = len(result.decided)
    message = f"{verb}: “{title}”{tail}." if n == 1 else f"{verb} {n} identical escalations: “{title}”{tail}."
    for skipped in result.skipped:
        message += f" Escalation {skipped.escalation.pk} was left as it was: {error_message(skipped)}"
    return message


@require_POST
@reviewer_required
def escalation_claim(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    escalation = _escalation(pk)
    form = ClaimForm(request.POST)
    release = form.is_valid() and form.cleaned_data["release"]
    members = _members(escalation, form.member_ids(pk))

    def run() -> str:
        services.escalations_claim(escalations=members, user=request.user, release=release)
        return f"{'Released' if release else 'Claimed'}: “{escalation.task.title}”."

    return _act(request, escalation, action="claim", run=run)


@require_POST
@reviewer_required
def escalation_approve(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    escalation = _escalation(pk)
    form = ApproveForm(request.POST)
    form.is_valid()
    members = _members(escalation, form.member_ids(pk))

    def run() -> str:
        note = form.cleaned_data.get("note", "")
        result = services.escalations_approve(escalations=members, user=request.user, note=note)
        return _decided_message("Approved", escalation, result)

    return _act(request, escalation, action="approve", run=run)


@require_POST
@reviewer_required
def escalation_correct(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    escalation = _escalation(pk)
    form = CorrectForm(request.POST)
    form.is_valid()
    output = form.cleaned_data.get("output", "")
    members = _members(escalation, form.member_ids(pk))

    def run() -> str:
        note = form.cleaned_data.get("note", "")
        result = services.escalations_correct(
            escalations=members, user=request.user, output=output, note=note
        )
        return _decided_message("Approved with your correction", escalation, result)

    return _act(request, escalation, action="edit", run=run, values={"output": output})


@require_POST
@reviewer_required
def escalation_reject(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    escalation = _escalation(pk)
    form = RejectForm(request.POST)
    form.is_valid()
    reason = form.cleaned_data.get("reason", "")
    members = _members(escalation, form.member_ids(pk))

    def run() -> str:
        result = services.escalations_reject(escalations=members, user=request.user, reason=reason)
        tail = "; it goes back for another attempt with your reason"
        if len(result.decided) > 1:
            tail = "; each goes back for another attempt with your reason"
        return _decided_message("Rejected", escalation, result, tail)

    return _act(request, escalation, action="reject", run=run, values={"reason": reason})


def _group_row(escalation: Escalation) -> Escalation | None:
    """The row of ``escalation``'s group as it now stands, if any member is
    still open (one that joined after the reviewer's page showed the group)."""
    key = escalation.group_key
    leaders = selectors.inbox_groups_get(keys={key}, details=True)
    return leaders[0] if leaders else None


def _act(
    request: AuthenticatedHttpRequest,
    escalation: Escalation,
    *,
    action: str,
    run: Callable[[], str],
    values: dict[str, str] | None = None,
) -> HttpResponse:
    """Run one reviewer action (on a row: its group) and answer it: the row as
    it now stands (nothing once no member is open) and the message, for htmx;
    a redirect with the message, or the page with the error in the row,
    without it."""
    try:
        message = run()
    except services.AlreadyDecided as exc:
        # Show the row as it now is: decided, by whom and when.
        current = _escalation(exc.escalation.pk)
        return _refused(request, current, error=error_message(exc), status=409)
    except ValidationError as exc:
        fields = exc.message_dict if hasattr(exc, "error_dict") else {}
        row = _group_row(escalation) or escalation
        row.form_open = action if fields else ""
        row.form_values = values or {}
        row.form_errors = fields
        # A bad reason or correction is the reviewer's to fix (422); anything
        # else (releasing someone else's claim) is a refusal (409).
        return _refused(request, row, error=error_message(exc), status=422 if fields else 409)

    decided = action != "claim"
    if not request.htmx:
        messages.success(request, message)
        return redirect(safe_next(request) or "andon-inbox")
    context = {
        # A decision takes the row out of the inbox, unless identical
        # escalations arrived meanwhile: the row then shows those.
        "escalation": _group_row(escalation),
        "message": message,
        "level": "success",
        "stats": selectors.inbox_stats_get() if decided else None,
        "here": safe_next(request),
    }
    return render(request, f"{INBOX}#action-result", context)


def _refused(
    request: AuthenticatedHttpRequest, escalation: Escalation, *, error: str, status: int
) -> HttpResponse:
    """The row with its error (and, for htmx, the error for the live region);
    without htmx, the page the action came from, with the row in it."""
    escalation.form_error = error
    if request.htmx:
        context = {
            "escalation": escalation
            if hasattr(escalation, "agent_record")
            else selectors.escalation_details_get([escalation])[0],
            "message": error,
            "level": "error",
            "here": safe_next(request),
        }
        return render(request, f"{INBOX}#action-result", context, status=status)
    if request.POST.get("from") == "escalation":
        return _escalation_page(request, escalation, status=status)
    here = safe_next(request) or reverse("andon-inbox")
    context = _inbox_context(_filters_of(here), here=here, row=escalation)
    return render(request, INBOX, context, status=status)


# --- line stops and the cord -----------------------------------------------------


@require_GET
@reviewer_required
def line_stops(request: AuthenticatedHttpRequest) -> HttpResponse:
    return _line_stops_page(request)


def _line_stops_page(
    request: HttpRequest,
    *,
    failed: LineStop | None = None,
    error: str = "",
    note: str = "",
    status: int = 200,
) -> HttpResponse:
    context = {
        "line_stops": selectors.active_line_stops_get(),
        "history": selectors.line_stops_history_get(),
        "failed_pk": failed.pk if failed else None,
        "error": error,
        "note": note,
        "nav": "andon",
    }
    return render(request, "andon/line_stops.html", context, status=status)


@require_POST
@reviewer_required
def line_restart(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    stop = get_object_or_404(LineStop.objects.select_related("board", "agent"), pk=pk)
    form = RestartForm(request.POST)
    form.is_valid()
    note = form.cleaned_data.get("note", "")
    try:
        stop = services.line_restart(line_stop=stop, user=request.user, note=note)
    except ValidationError as exc:
        # A missing note is the reviewer's to fix; a line restarted meanwhile is a conflict.
        if hasattr(exc, "error_dict"):
            return _line_stops_page(request, failed=stop, error=error_message(exc), note=note, status=422)
        return _line_stops_page(request, error=error_message(exc), status=409)
    messages.success(request, f"Restarted the line of {stop.scope_label}.")
    return redirect(safe_next(request) or "andon-line-stops")


@require_POST
@reviewer_required
def cord(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Pull the andon cord on a board or an agent: a form on the board page posts
    here, plainly (redirect back) or with htmx (a message for its status region;
    the board's banner arrives through its websocket)."""
    form = CordForm(request.POST)
    stop = None
    if form.is_valid():
        data = form.cleaned_data
        try:
            stop = services.line_stop(
                user=request.user, reason=data["reason"], board=data["board"], agent=data["agent"]
            )
        except ValidationError as exc:
            form.add_error(None, exc)
    if stop is None:
        error = form_errors(form)
        if request.htmx:
            return render(
                request, "andon/cord.html#cord-result", {"message": error, "level": "error"}, status=422
            )
        return render(request, "andon/cord.html", {"form": form, "next": safe_next(request)}, status=422)

    message = f"The line of {stop.scope_label} is stopped: {stop.reason}"
    if request.htmx:
        return render(request, "andon/cord.html#cord-result", {"message": message, "level": "success"})
    messages.success(request, message)
    target = stop.board or stop.agent
    assert target is not None  # line_stop_board_xor_agent
    return redirect(safe_next(request) or target)
