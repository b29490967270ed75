"""Pages and htmx endpoints of the live board.

Thin by design: parse the request with a form, call one service, render a
partial of ``boards/board.html``. Every page needs a login
(LoginRequiredMiddleware). htmx requests get fragments: the action's message
for the board's aria-live region plus the changed columns as out-of-band swaps;
other requests get whole pages and redirects, so the task page works without
JavaScript.
"""

from __future__ import annotations

import functools

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db.models import prefetch_related_objects
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST

from andon import services as andon_services
from andon.models import Escalation
from andon.services import REVIEW_PERMISSION
from boards import services
from boards.forms import (
    BoardCordForm,
    TaskBlockForm,
    TaskCreateForm,
    TaskMoveForm,
    TaskStepForm,
)
from boards.fragments import board_live_context, board_live_html_get
from boards.models import Agent, Board, Column, Task
from boards.selectors import (
    board_by_slug_get,
    board_capabilities_get,
    board_list_get,
    task_events_get,
    task_inspections_get,
    task_model_calls_get,
)
from kaizen_web.http import AuthenticatedHttpRequest, error_message, form_errors

BOARD = "boards/board.html"


# --- helpers -------------------------------------------------------------------


def _board(slug: str) -> Board:
    board = board_by_slug_get(slug=slug)
    if board is None:
        raise Http404(f"There is no board {slug!r}.")
    return board


def _task(board: Board, pk: int) -> Task:
    task = get_object_or_404(Task.objects.select_related("column", "agent"), board=board, pk=pk)
    task.board = board
    return task


def _ws_path(board: Board) -> str:
    # Matches boards.routing; websocket routes are not Django URLs, so they cannot be reversed.
    return f"/ws/boards/{board.slug}/"


def _task_form(board: Board, data=None, **kwargs) -> TaskCreateForm:
    return TaskCreateForm(data, capabilities=board_capabilities_get(board=board), **kwargs)


@functools.lru_cache(maxsize=64)
def _task_form_fields_html(capabilities: tuple[str, ...]) -> SafeString:
    """The fields of an empty task form, rendered. They depend only on the
    capabilities offered, and Django's form templates made them about a quarter
    of the board page's CPU once the live part was shared (py-spy under
    bench/board_page.py): kept per set of capabilities, as long as the process."""
    form = TaskCreateForm(capabilities=list(capabilities))
    return mark_safe(render_to_string(f"{BOARD}#task-form-fields", {"form": form}))  # noqa: S308 (autoescaped template)


def _board_context(request: HttpRequest, board: Board, *, form: TaskCreateForm | None = None) -> dict:
    # A page that follows the viewer's own change (it carries its message: a
    # task added without JavaScript, say) shows that change; any other may show
    # the live part as rendered a moment ago (see board_live_html_get).
    fresh = len(messages.get_messages(request)) > 0
    can_stop_line = request.user.has_perm(REVIEW_PERMISSION)
    live = board_live_html_get(board=board, fresh=fresh)
    return {
        "board": board,
        "live": live,
        # A form sent back with its errors is drawn as it is; an empty one from the
        # kept fields, offering the capabilities of the agents the live part shows.
        "form": form,
        "form_fields": _task_form_fields_html(live.capabilities) if form is None else "",
        "ws_path": _ws_path(board),
        # The cord is in the page only for those who may pull it (the server checks again).
        "can_stop_line": can_stop_line,
        "agents": live.cord_agents if can_stop_line else [],
        "nav": "boards",
    }


def _moved_message(task: Task, from_column: Column, to_column: Column) -> str:
    """What a move between columns says, with the service's note when it took
    the column past its soft limit: allowed, but worth knowing."""
    message = f"Moved “{task.title}” from {from_column.name} to {to_column.name}."
    return f"{message} {task.wip_note}" if task.wip_note else message


def _action_result(
    request: AuthenticatedHttpRequest,
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
            # The touched columns; Ready's cards, if it is one, with why each waits.
            **board_live_context(board=board, column_ids=column_ids, with_ready=False),
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
    inspections = task_inspections_get(task=task)
    columns = list(board.columns.order_by("position"))
    # Offer only what the services would do: the moves the board's rules allow
    # from this column (none while an escalation waits: the andon decides it),
    # and a block where a block may go.
    open_escalation = next(
        (
            i.escalation_or_none
            for i in inspections
            if i.escalation_or_none is not None and i.escalation_or_none.status == Escalation.Status.OPEN
        ),
        None,
    )
    allowed = services.MANUAL_MOVES.get(task.column.role, set())
    context = {
        "board": board,
        "task": task,
        "events": task_events_get(task=task),
        "calls": calls,
        "inspections": inspections,
        "columns": columns,
        "move_targets": [] if open_escalation else [c for c in columns if c.role in allowed],
        "open_escalation": open_escalation,
        "can_block": task.status in (Task.Status.BACKLOG, Task.Status.READY, Task.Status.REVIEW),
        "error": error,
        "block_form": block_form if block_form is not None else TaskBlockForm(),
        "nav": "boards",
    }
    return render(request, "boards/task_detail.html", context, status=status)


# --- pages ---------------------------------------------------------------------


@require_GET
def board_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(request, "boards/list.html", {"boards": board_list_get(), "nav": "boards"})


@require_GET
def board_detail(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    board = _board(slug)
    return render(request, BOARD, _board_context(request, board))


@require_GET
def board_body(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The board's live part (agents and columns, for #board-body, and the
    paused banner above them, out of band): what a reconnecting browser
    re-fetches to catch up on what it missed."""
    board = _board(slug)
    return render(request, f"{BOARD}#board-catch-up", board_live_context(board=board))


@require_GET
def task_detail(request: AuthenticatedHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    return _task_detail_page(request, board, _task(board, pk))


# --- writes --------------------------------------------------------------------


@require_POST
def task_create(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
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
        return render(request, BOARD, _board_context(request, board, form=form), status=422)

    message = f"Added “{task.title}” to {task.column.name}."
    if not request.htmx:
        messages.success(request, message)
        return redirect(board)
    # The card also arrives through the websocket; sending the columns here
    # too means a browser whose socket is down still sees its own task.
    fresh = _task_form(board)
    fresh.fields["title"].widget.attrs["autofocus"] = True
    context = {
        **board_live_context(board=board),
        "form": fresh,
        "message": message,
        "oob": True,
    }
    return render(request, f"{BOARD}#task-created", context)


@require_POST
def task_move(request: AuthenticatedHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    task = _task(board, pk)
    form = TaskMoveForm(request.POST, board=board)
    if not form.is_valid():
        return _action_result(
            request, board, task, message=form_errors(form), column_ids={task.column_id}, status=400
        )
    to_column: Column = form.cleaned_data["column"]
    before: Task | None = form.cleaned_data["before"]
    from_column = task.column
    touched = {from_column.pk, to_column.pk}
    try:
        task = services.task_move(task=task, to_column=to_column, user=request.user, before=before)
    except ValidationError as exc:
        return _action_result(
            request, board, task, message=error_message(exc), column_ids=touched, status=409
        )
    if to_column.pk == from_column.pk:
        message = f"Reordered “{task.title}” in {to_column.name}."
    else:
        message = _moved_message(task, from_column, to_column)
    return _action_result(request, board, task, message=message, column_ids=touched)


@require_POST
def task_step(request: AuthenticatedHttpRequest, slug: str, pk: int) -> HttpResponse:
    """Keyboard moves: up/down in the column, left/right to the neighbouring one."""
    board = _board(slug)
    task = _task(board, pk)
    form = TaskStepForm(request.POST)
    if not form.is_valid():
        return _action_result(
            request, board, task, message=form_errors(form), column_ids={task.column_id}, status=400
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
        return _action_result(
            request, board, task, message=error_message(exc), column_ids=touched, status=409
        )
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
def task_block(request: AuthenticatedHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    task = _task(board, pk)
    form = TaskBlockForm(request.POST)
    error = ""
    status = 200
    if form.is_valid():
        try:
            task = services.task_block(task=task, user=request.user, note=form.cleaned_data["note"])
        except services.MoveNotAllowed as exc:
            error, status = error_message(exc), 409
        except ValidationError as exc:
            form.add_error(None, exc)
            error, status = error_message(exc), 422
    else:
        error, status = form_errors(form), 422
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
def task_unblock(request: AuthenticatedHttpRequest, slug: str, pk: int) -> HttpResponse:
    board = _board(slug)
    task = _task(board, pk)
    was_blocked = task.is_blocked
    task = services.task_unblock(task=task, user=request.user)
    message = f"Unblocked “{task.title}”." if was_blocked else f"“{task.title}” was not blocked."
    return _action_result(request, board, task, message=message, column_ids={task.column_id})


@require_POST
@permission_required(REVIEW_PERMISSION, raise_exception=True)
def board_cord(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Pull the andon cord from the board page, on the whole board or one of its
    agents: with htmx, a message for the board's status region (the banner
    arrives through the websocket); plainly, back to the board with it."""
    board = _board(slug)
    form = BoardCordForm(request.POST, board=board)
    stop = None
    if form.is_valid():
        target = form.cleaned_data["scope"]
        try:
            stop = andon_services.line_stop(
                user=request.user,
                reason=form.cleaned_data["reason"],
                board=target if isinstance(target, Board) else None,
                agent=target if isinstance(target, Agent) else None,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
    if stop is None:
        error = form_errors(form)
        if request.htmx:
            return render(request, f"{BOARD}#flash", {"message": error, "level": "error"}, status=422)
        messages.error(request, error)
        return redirect(board)
    message = f"The line of {stop.scope_label} is stopped: {stop.reason}"
    if request.htmx:
        return render(request, f"{BOARD}#flash", {"message": message, "level": "success"})
    messages.success(request, message)
    return redirect(board)
