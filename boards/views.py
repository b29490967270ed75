"""Pages and htmx endpoints of the live board.

Thin by design: parse the request with a form, call one service, render a
partial of ``boards/board.html``. Every page needs a login
(LoginRequiredMiddleware). htmx requests get fragments: the action's message
for the board's aria-live region plus the changed columns as out-of-band swaps;
other requests get whole pages and redirects, so the task page works without
JavaScript.
"""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db.models import prefetch_related_objects
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from boards import services
from boards.agents import implementation_for
from boards.forms import (
    AgentSettingsForm,
    TaskBlockForm,
    TaskCreateForm,
    TaskMoveForm,
    TaskStepForm,
    TierForm,
    TierFormSet,
)
from boards.models import Agent, Board, Column, Task
from boards.selectors import (
    agent_list_get,
    agent_model_calls_recent,
    board_agents_get,
    board_capabilities_get,
    board_columns_get,
    board_line_stops_get,
    board_list_get,
    task_events_get,
    task_inspections_get,
    task_model_calls_get,
)

logger = logging.getLogger(__name__)

BOARD = "boards/board.html"


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


# --- helpers -------------------------------------------------------------------


def _board(slug: str) -> Board:
    return get_object_or_404(Board, slug=slug)


def _task(board: Board, pk: int) -> Task:
    task = get_object_or_404(Task.objects.select_related("column", "agent"), board=board, pk=pk)
    task.board = board
    return task


def _ws_path(board: Board) -> str:
    # Matches boards.routing; websocket routes are not Django URLs, so they cannot be reversed.
    return f"/ws/boards/{board.slug}/"


def _task_form(board: Board, data=None, **kwargs) -> TaskCreateForm:
    return TaskCreateForm(data, capabilities=board_capabilities_get(board=board), **kwargs)


def _board_context(board: Board, *, form: TaskCreateForm | None = None) -> dict:
    return {
        "board": board,
        "columns": board_columns_get(board=board),
        "agents": board_agents_get(board=board),
        **_andon_context(board),
        "form": form if form is not None else _task_form(board),
        "ws_path": _ws_path(board),
        "nav": "boards",
    }


def _andon_context(board: Board) -> dict:
    line_stops = board_line_stops_get(board=board)
    return {"line_stops": line_stops, "board_stopped": any(stop.board_id for stop in line_stops)}


def _message(exc: ValidationError) -> str:
    return " ".join(exc.messages)


def _form_errors(form: forms.Form) -> str:
    """A form's errors as one line, for the board's message region."""
    return " ".join(error for errors in form.errors.values() for error in errors)


def _moved_message(task: Task, from_column: Column, to_column: Column) -> str:
    """What a move between columns says, with the service's note when it took
    the column past its soft limit: allowed, but worth knowing."""
    message = f"Moved “{task.title}” from {from_column.name} to {to_column.name}."
    return f"{message} {task.wip_note}" if task.wip_note else message


def _action_result(
    request: HtmxHttpRequest,
    board: Board,
    task: Task,
    *,
    message: str,
    column_ids: set[int],
    status: int = 200,
) -> HttpResponse:
    """The answer to a card action (move, step, block, unblock).

    htmx: the message, for the board's live region, and the columns it touched,
    re-rendered out of band; a refused drop thereby puts the card back where the
    server has it. Otherwise: back to the task page, with the message.
    """
    if request.htmx:
        context = {
            "board": board,
            "columns": board_columns_get(board=board, column_ids=column_ids),
            "message": message,
            "level": "error" if status >= 400 else "success",
            "oob": True,
        }
        return render(request, f"{BOARD}#action-result", context, status=status)
    if status >= 400:
        return _task_detail_page(request, board, task, error=message, status=status)
    messages.success(request, message)
    return redirect("boards-task-detail", slug=board.slug, pk=task.pk)


def _task_detail_page(
    request: HttpRequest,
    board: Board,
    task: Task,
    *,
    error: str = "",
    block_form: TaskBlockForm | None = None,
    status: int = 200,
) -> HttpResponse:
    calls = task_model_calls_get(task=task)
    # Links to reused results name their task's board, which may be another one.
    prefetch_related_objects([task], "reused_from__board")
    prefetch_related_objects([c for c in calls if c.reused_from_id], "reused_from__board")
    context = {
        "board": board,
        "task": task,
        "events": task_events_get(task=task),
        "calls": calls,
        "inspections": task_inspections_get(task=task),
        "columns": list(board.columns.order_by("position")),
        "error": error,
        "block_form": block_form if block_form is not None else TaskBlockForm(),
        "nav": "boards",
    }
    return render(request, "boards/task_detail.html", context, status=status)


# --- pages ---------------------------------------------------------------------


@require_GET
def board_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "boards/list.html", {"boards": board_list_get(), "nav": "boards"})


@require_GET
def board_detail(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    board = _board(slug)
    return render(request, BOARD, _board_context(board))


@require_GET
def board_body(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """The board's live part (agents and columns, for #board-body, and the
    paused banner above them, out of band): what a reconnecting browser
    re-fetches to catch up on what it missed."""
    board = _board(slug)
    context = {
        "board": board,
        "columns": board_columns_get(board=board),
        "agents": board_agents_get(board=board),
        **_andon_context(board),
    }
    return render(request, f"{BOARD}#board-catch-up", context)


@require_GET
def task_detail(request: HtmxHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    return _task_detail_page(request, board, _task(board, pk))


# --- writes --------------------------------------------------------------------


@require_POST
def task_create(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    board = _board(slug)
    form = _task_form(board, request.POST)
    task = None
    if form.is_valid():
        data = form.cleaned_data
        try:
            task = services.task_create(
                board=board,
                title=data["title"],
                input=data["input"],
                capability=data["capability"],
                priority=data["priority"] if data["priority"] is not None else 0,
                allow_reuse=data["allow_reuse"],
                user=request.user,
            )
        except ValidationError as exc:
            # Field messages land on their fields; the rest (a full intake column) above the form.
            form.add_error(None, exc)

    if task is None:
        if request.htmx:
            return render(request, f"{BOARD}#task-form", {"board": board, "form": form}, status=422)
        return render(request, BOARD, _board_context(board, form=form), status=422)

    message = f"Added “{task.title}” to {task.column.name}."
    if not request.htmx:
        messages.success(request, message)
        return redirect(board)
    # The card also arrives through the websocket; sending the columns here
    # too means a browser whose socket is down still sees its own task.
    fresh = _task_form(board)
    fresh.fields["title"].widget.attrs["autofocus"] = True
    context = {
        "board": board,
        "form": fresh,
        "message": message,
        "columns": board_columns_get(board=board),
        "agents": board_agents_get(board=board),
        "oob": True,
    }
    return render(request, f"{BOARD}#task-created", context)


@require_POST
def task_move(request: HtmxHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    task = _task(board, pk)
    form = TaskMoveForm(request.POST, board=board)
    if not form.is_valid():
        return _action_result(
            request, board, task, message=_form_errors(form), column_ids={task.column_id}, status=400
        )
    to_column: Column = form.cleaned_data["column"]
    before: Task | None = form.cleaned_data["before"]
    from_column = task.column
    touched = {from_column.pk, to_column.pk}
    try:
        task = services.task_move(task=task, to_column=to_column, user=request.user, before=before)
    except ValidationError as exc:
        return _action_result(request, board, task, message=_message(exc), column_ids=touched, status=409)
    if to_column.pk == from_column.pk:
        message = f"Reordered “{task.title}” in {to_column.name}."
    else:
        message = _moved_message(task, from_column, to_column)
    return _action_result(request, board, task, message=message, column_ids=touched)


@require_POST
def task_step(request: HtmxHttpRequest, slug: str, pk: int) -> HttpResponse:
    """Keyboard moves: up/down in the column, left/right to the neighbouring one."""
    board = _board(slug)
    task = _task(board, pk)
    form = TaskStepForm(request.POST)
    if not form.is_valid():
        return _action_result(
            request, board, task, message=_form_errors(form), column_ids={task.column_id}, status=400
        )
    direction = form.cleaned_data["direction"]
    from_column = task.column
    was = (task.column_id, task.position)
    try:
        task = services.task_step(task=task, user=request.user, direction=direction)
    except ValidationError as exc:
        # The neighbouring column is the one refused: re-render it too.
        touched = {from_column.pk}
        if direction in ("left", "right"):
            neighbour = services.column_neighbour(column=from_column, direction=direction)
            touched |= {neighbour.pk} if neighbour else set()
        return _action_result(request, board, task, message=_message(exc), column_ids=touched, status=409)
    task.refresh_from_db(fields=["column", "position"])
    to_column = board.columns.get(pk=task.column_id)
    if (task.column_id, task.position) == was:
        edge = "top" if direction == "up" else "bottom"
        message = f"“{task.title}” is already at the {edge} of {from_column.name}."
    elif direction in ("up", "down"):
        message = f"Moved “{task.title}” {direction} in {to_column.name}."
    else:
        message = _moved_message(task, from_column, to_column)
    return _action_result(request, board, task, message=message, column_ids={from_column.pk, to_column.pk})


@require_POST
def task_block(request: HtmxHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    task = _task(board, pk)
    form = TaskBlockForm(request.POST)
    error = ""
    status = 200
    if form.is_valid():
        try:
            task = services.task_block(task=task, user=request.user, note=form.cleaned_data["note"])
        except services.MoveNotAllowed as exc:
            error, status = _message(exc), 409
        except ValidationError as exc:
            form.add_error(None, exc)
            error, status = _message(exc), 422
    else:
        error, status = _form_errors(form), 422
    if status >= 400:
        if request.htmx:
            return _action_result(
                request, board, task, message=error, column_ids={task.column_id}, status=status
            )
        # A bad note shows on the form's field; a refusal above the page.
        page_error = error if status == 409 else ""
        return _task_detail_page(request, board, task, error=page_error, block_form=form, status=status)
    return _action_result(
        request,
        board,
        task,
        message=f"Blocked “{task.title}”: {task.blocked_note}",
        column_ids={task.column_id},
    )


@require_POST
def task_unblock(request: HtmxHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    task = _task(board, pk)
    was_blocked = task.is_blocked
    task = services.task_unblock(task=task, user=request.user)
    message = f"Unblocked “{task.title}”." if was_blocked else f"“{task.title}” was not blocked."
    return _action_result(request, board, task, message=message, column_ids={task.column_id})


# --- agents --------------------------------------------------------------------------

# The figures every agent's metrics() gives (boards.selectors.agent_metrics), in the
# order the page shows them; anything else a custom class adds follows under its own key.
AGENT_METRICS: tuple[tuple[str, str], ...] = (
    ("tasks_done", "Tasks done"),
    ("tasks_failed", "Tasks failed"),
    ("tasks_running", "Running now"),
    ("model_calls", "Model calls"),
    ("cache_hits", "Cache hits"),
    ("reused", "Reused results"),
    ("errors", "Call errors"),
    ("cost", "Total cost"),
    ("tokens_in", "Tokens in"),
    ("tokens_out", "Tokens out"),
    ("mean_latency_ms", "Mean latency"),
)
RECENT_CALLS = 20


def _agent_metrics(agent: Agent) -> dict[str, Any]:
    """The agent's ``metrics()`` for its page: the known figures as (key, label,
    value) rows, the share taken from each tier, whatever else a custom class adds,
    and an error if its class could not give them (the page shows the rest)."""
    try:
        metrics = dict(implementation_for(agent).metrics())
    except Exception as exc:
        # A custom class's bug costs its figures, not the page.
        logger.exception("agent %s: metrics() failed", agent.pk)
        metrics, error = {}, f"{agent.implementation or agent.name} could not give its metrics: {exc}"
    else:
        error = ""
    rows = [(key, label, metrics.pop(key)) for key, label in AGENT_METRICS if key in metrics]
    return {
        "metric_rows": rows,
        "accepted_by_tier": metrics.pop("accepted_by_tier", None),
        "extra_metrics": metrics,
        "metrics_error": error,
    }


def _tier_initial(agent: Agent) -> list[dict[str, Any]]:
    cascade = agent.cascade if isinstance(agent.cascade, list) else []
    return [TierForm.initial_for(tier) for tier in cascade if isinstance(tier, dict)]


def _agent_forms(agent: Agent, data=None) -> tuple[AgentSettingsForm, TierFormSet]:
    return (
        AgentSettingsForm(data, agent=agent),
        TierFormSet(data, prefix="tier", initial=_tier_initial(agent)),
    )


def _attach_save_errors(form: AgentSettingsForm, exc: ValidationError) -> None:
    """What ``services.agent_save`` refused after the forms passed (a rule the forms
    do not check, or an agent changed meanwhile): on its field, or above the form."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
    for name, messages_ in errors.items():
        form.add_error(name if name in form.fields else None, messages_)


def _agent_detail_page(
    request: HttpRequest,
    agent: Agent,
    *,
    form: AgentSettingsForm | None,
    formset: TierFormSet | None,
    status: int = 200,
) -> HttpResponse:
    tiers = agent.tiers
    context = {
        "agent": agent,
        "agent_boards": list(agent.boards.order_by("name")),
        "tiers": tiers,
        # A stored cascade that no longer parses (written around Agent.clean).
        "cascade_broken": not tiers,
        **_agent_metrics(agent),
        "calls": agent_model_calls_recent(agent=agent, limit=RECENT_CALLS),
        "recent_calls": RECENT_CALLS,
        "form": form,
        "formset": formset,
        "nav": "agents",
    }
    return render(request, "boards/agent_detail.html", context, status=status)


@require_GET
def agent_list(request: HttpRequest) -> HttpResponse:
    return render(request, "boards/agent_list.html", {"agents": agent_list_get(), "nav": "agents"})


@require_http_methods(["GET", "POST"])
def agent_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The agent's page: its settings, metrics and latest ledger rows; with the
    boards.change_agent permission, also the form that edits its prompt and cascade."""
    agent = get_object_or_404(Agent, pk=pk)
    can_edit = request.user.has_perm("boards.change_agent")
    if request.method == "GET":
        form, formset = _agent_forms(agent) if can_edit else (None, None)
        return _agent_detail_page(request, agent, form=form, formset=formset)

    if not can_edit:
        raise PermissionDenied("Changing an agent needs the boards.change_agent permission.")
    form, formset = _agent_forms(agent, request.POST)
    if form.is_valid() and formset.is_valid():
        data = form.cleaned_data
        version = agent.prompt_version
        agent.prompt_template = data["prompt_template"]
        agent.prompt_variables = data["variables"]
        agent.parameters = data["parameters"]
        agent.cascade = formset.cascade
        agent.reuse_results = data["reuse_results"]
        agent.cache_responses = data["cache_responses"]
        try:
            agent = services.agent_save(agent=agent, based_on_version=data["based_on_version"])
        except ValidationError as exc:
            _attach_save_errors(form, exc)
            # Show what is stored, not the refused values, beside the form that holds them.
            agent.refresh_from_db()
        else:
            if agent.prompt_version != version:
                messages.success(
                    request,
                    f"Saved {agent.name}: the prompt is now version {agent.prompt_version}. "
                    "Tasks run it from now on, and only its results are reused.",
                )
            else:
                messages.success(
                    request, f"Saved {agent.name}; the prompt is unchanged (version {agent.prompt_version})."
                )
            return redirect(agent)
    return _agent_detail_page(request, agent, form=form, formset=formset, status=422)
