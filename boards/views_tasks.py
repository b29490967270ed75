"""A board's task list: find any task (search, filters, order, pages), export
what was found as CSV, import tasks from a CSV or JSON Lines file.

Every page needs a login (LoginRequiredMiddleware). The list is a GET form, so a
filtered list is a link; with htmx the form swaps only the results, leaving
what a person is typing alone, and pushes the URL. Thin views: the filters are
``boards.task_search``'s, the import is ``services.tasks_import``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from boards import services
from boards.forms import MAX_IMPORT_ROWS, TaskFilterForm, TaskImportForm
from boards.models import ApiToken, Board
from boards.task_files import TaskFileError, csv_chunks, detect_format, read_task_rows
from boards.task_search import task_export_rows, task_list
from kaizen_web.http import AuthenticatedHttpRequest, error_message

TEMPLATE = "boards/task_list.html"
PAGE_SIZE = 50
# Errors listed on the page after a refused import; the rest are counted.
SHOWN_IMPORT_ERRORS = 200
# Who may import tasks: the permission a write API token's user needs too.
IMPORT_PERMISSION = ApiToken.WRITE_PERMISSION


def _filter_form(request: HttpRequest, board: Board) -> TaskFilterForm:
    # One query for the columns, one for the agents (their names and capabilities).
    columns = list(board.columns.order_by("position", "pk"))
    agents = list(board.agents.order_by("name"))
    capabilities = sorted({c for agent in agents for c in agent.offered_capabilities})
    return TaskFilterForm(
        request.GET, columns=columns, agents=[a.name for a in agents], capabilities=capabilities
    )


def _list_context(request: HttpRequest, board: Board, form: TaskFilterForm) -> tuple[dict[str, Any], int]:
    context: dict[str, Any] = {
        "board": board,
        "form": form,
        "nav": "boards",
        "can_import": request.user.has_perm(IMPORT_PERMISSION),
    }
    if not form.is_valid():
        return {**context, "page": None}, 400
    page = Paginator(task_list(board=board, filters=form.task_filter()), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    for task in page.object_list:
        # The board is known: a row's link does not query for it.
        task.board = board
    query = request.GET.copy()
    query.pop("page", None)
    return {
        **context,
        "page": page,
        "query": query.urlencode(),
        "filtered": form.is_filtered,
    }, 200


@require_GET
def task_list_view(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    board = get_object_or_404(Board, slug=slug)
    form = _filter_form(request, board)
    context, status = _list_context(request, board, form)
    if request.htmx and not request.htmx.boosted:
        return render(request, f"{TEMPLATE}#task-results", context, status=status)
    context["import_form"] = TaskImportForm()
    return render(request, TEMPLATE, context, status=status)


class _SyncStreamingResponse(StreamingHttpResponse):
    """Streams a synchronous iterator under ASGI too. Django's own ASGI path
    reads a synchronous iterator whole into a list before sending a byte; this
    one pulls a chunk at a time in the thread database work runs in, so a
    100,000-row export never sits in memory."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.streaming_content
        if not isinstance(chunks, Iterator):
            raise TypeError("_SyncStreamingResponse streams a synchronous iterator")
        next_chunk = sync_to_async(_next_chunk, thread_sensitive=True)
        while (chunk := await next_chunk(chunks)) is not None:
            yield chunk


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    """The next chunk, None at the end (a chunk is bytes, never None)."""
    return next(chunks, None)


@require_GET
def task_export(request: HttpRequest, slug: str) -> HttpResponseBase:
    """The filtered list (the same query string as the page) as CSV, streamed."""
    board = get_object_or_404(Board, slug=slug)
    form = _filter_form(request, board)
    if not form.is_valid():
        context, status = _list_context(request, board, form)
        context["import_form"] = TaskImportForm()
        return render(request, TEMPLATE, context, status=status)
    rows = task_export_rows(board=board, filters=form.task_filter())
    response = _SyncStreamingResponse(
        (chunk.encode() for chunk in csv_chunks(rows)), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="{board.slug}-tasks-{stamp}.csv"'
    return response


@require_POST
def task_import(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Add every task of an uploaded file to the board's intake, or none: a file
    with any bad row is refused whole, with each row's problems listed."""
    board = get_object_or_404(Board, slug=slug)
    if not request.user.has_perm(IMPORT_PERMISSION):
        raise PermissionDenied("Importing tasks needs the “Can add task” permission.")
    import_form = TaskImportForm(request.POST, request.FILES)
    problem = ""
    row_errors: dict[int, dict[str, list[str]]] = {}
    if import_form.is_valid():
        upload = import_form.cleaned_data["file"]
        data = upload.read()
        try:
            rows = read_task_rows(data, format=detect_format(upload.name, data), max_rows=MAX_IMPORT_ROWS)
            tasks = services.tasks_import(board=board, rows=rows, user=request.user)
        except TaskFileError as exc:
            problem = str(exc)
        except services.TasksImportRefused as exc:
            problem = error_message(exc)
            row_errors = exc.row_errors
        except ValidationError as exc:
            # The board itself cannot take tasks (no intake column).
            problem = error_message(exc)
        else:
            column = tasks[0].column.name
            messages.success(
                request,
                f"Imported {len(tasks)} task{'s' if len(tasks) != 1 else ''} from {upload.name} into {column}.",
            )
            return redirect(reverse("boards-task-list", kwargs={"slug": board.slug}))

    # Refused: the list as it was, with the import's errors where the form is.
    form = _filter_form(request, board)
    context, _ = _list_context(request, board, form)
    errors = [
        (line, field, message)
        for line, fields in sorted(row_errors.items())
        for field, field_messages in fields.items()
        for message in field_messages
    ]
    context.update(
        import_form=import_form,
        import_problem=problem,
        import_errors=errors[:SHOWN_IMPORT_ERRORS],
        import_errors_hidden=max(len(errors) - SHOWN_IMPORT_ERRORS, 0),
        import_open=True,
    )
    return render(request, TEMPLATE, context, status=422)
