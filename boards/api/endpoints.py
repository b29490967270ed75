"""The JSON API under /api/v1/ (django-ninja).

Clients authenticate with ``Authorization: Bearer <token>`` (tokens come from
``python manage.py create_api_token``). Every error an operation returns,
whatever its cause, has the one shape ``boards.api.schemas.ErrorOut``:
``{"detail": "...", "errors": {field: [...]}}``. Operations stay thin: writes
call ``boards.services``, reads are the small queries below.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from string import Template
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import URLPattern, URLResolver, re_path, reverse
from django.utils import timezone
from django.utils.http import parse_header_parameters
from django.views.decorators.common import no_append_slash
from ninja import NinjaAPI, Path, Query, Status
from ninja.errors import AuthenticationError, AuthorizationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser

from andon import muda
from boards import flow_report, flow_selectors, selectors, services
from boards.agents.cascade import PromptCascadeAgent
from boards.agents.outputs import AgentFailed
from boards.agents.registry import agent_class
from boards.agents.spec import COST_PLACES
from boards.api.schemas import (
    MAX_BULK_TASKS,
    MAX_PAGE_SIZE,
    AgentRefOut,
    BoardDetailOut,
    BoardOut,
    ColumnOut,
    ColumnRefOut,
    ErrorOut,
    FlowFilters,
    FlowOut,
    ModelCallOut,
    MudaFilters,
    MudaOut,
    TaskBulkIn,
    TaskBulkOut,
    TaskFilters,
    TaskIn,
    TaskOut,
    TaskPageOut,
)
from boards.api.tokens import BearerToken, TokenHttpRequest
from boards.models import Agent, Board, Column, ModelCall, Task
from boards.task_files import TaskRow
from boards.task_search import TaskFilter, task_list
from boards.text import lone_surrogate
from experiments.api import router as replays_router

logger = logging.getLogger(__name__)

# Largest value a BigAutoField holds: a bigger id is reported as bad input
# rather than overflowing the database driver.
MAX_ID = 2**63 - 1

# What a board's slug can be (a SlugField): anything else names no board, and is
# refused before it reaches the database (PostgreSQL cannot even compare a NUL).
SLUG_PATTERN = r"^[-a-zA-Z0-9_]+$"
SLUG_MAX_LENGTH = Board._meta.get_field("slug").max_length


def _body_limit() -> str:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return "no limit"
    return f"{limit / 2**20:.1f} MB ({limit:,} bytes; Django's DATA_UPLOAD_MAX_MEMORY_SIZE)"


DESCRIPTION = Template("""
Put tasks on Kaizen boards and follow them through the line.

**Authentication**: send `Authorization: Bearer <token>` with every request. An
administrator creates a token with `python manage.py create_api_token <username>`;
it is shown once and stored only as a hash.

**Cost**: agents work through a cascade of models, cheapest first, taking the first
answer confident enough. A task reports what it cost over all its attempts (`cost`
in dollars as an exact decimal string, tokens, model calls, cache hits), which tier's
answer it took, and whether it reused an identical earlier task's result instead;
`GET /api/v1/tasks/{task_id}/calls` lists every call in the ledger.

**Scopes**: a token may use every board or only some (`--board SLUG`, repeatable), and may only
read (`--read-only`) or also add tasks. Adding tasks also needs the token's user to hold the
`boards.add_task` permission. A board outside the token's scope answers 403, and `GET /api/v1/boards`
lists only the boards in scope.

**Finding tasks**: `GET /api/v1/boards/{slug}/tasks` lists a board's tasks, newest first, filtered by
status, column, agent, capability, text (`q`, in the title or input, ignoring case) and time
(`created_after`, `created_before`, `finished_after`, `finished_before`), `limit` (at most $page_size)
tasks a page from `offset`, with the total `count` and the URL of the `next` page.

**Limits**: a request body must be JSON (`Content-Type: application/json`, UTF-8) of at most
$body_limit; text holds no control characters (tabs and line breaks are allowed in `input`) and
no lone surrogates. The schema states each field's limits.

**Errors** from every operation have one shape,
`{"detail": "<what went wrong>", "errors": {"<field>": ["<message>", ...]}}`: 400 when the request is
wrong (bad JSON, a missing field, a wrong type, text with a control character; `errors` says which
field), 401 without a valid token, 403 when the token's scope or its user's permissions do not allow
the operation (`detail` says what is missing), 404 for an unknown board, task or path, 405 for a
method the path does not take, 409 when the board cannot take the task as it is now (its intake
column is at a hard WIP limit, or no agent offers the capability), 413 for a body past the limit,
415 for a body that is not JSON.
""").substitute(page_size=MAX_PAGE_SIZE, body_limit=_body_limit())


class JsonParser(Parser):
    """Reads a request body as the API promises: JSON, sent as
    ``application/json`` in UTF-8, holding no lone surrogate (which ``\\ud800``
    escapes can spell and nothing downstream can encode)."""

    def parse_body(self, request: HttpRequest) -> Any:
        media_type, parameters = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
        if media_type.lower() != "application/json":
            sent = f"it was sent as {media_type!r}" if media_type else "it was sent without a Content-Type"
            raise BodyRefused(
                415, f"Send the body as JSON with the header 'Content-Type: application/json'; {sent}."
            )
        charset = parameters.get("charset", "utf-8").lower().replace("_", "-")
        if charset not in ("utf-8", "utf8"):
            raise BodyRefused(
                415, f"Send JSON in UTF-8 ('Content-Type: application/json; charset=utf-8'), not {charset!r}."
            )
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"The body is not UTF-8 text (byte {exc.start + 1}): send JSON in UTF-8."
            raise BodyRefused(400, message, {"body": [message]}) from None
        data = json.loads(text)
        if errors := _surrogate_errors(data):
            raise BodyRefused(400, "The request has errors; see errors for each field.", errors)
        return data


class BodyRefused(Exception):
    """A body the API will not read, with the status and message to answer."""

    def __init__(self, status: int, detail: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or {}


def _surrogate_errors(data: Any) -> dict[str, list[str]]:
    """Each top-level field of ``data`` holding a lone surrogate anywhere (``body``
    for the keys themselves, or a body that is not an object)."""
    message = (
        "This text holds a lone surrogate (such as \\ud800), which is not valid Unicode: send UTF-8 text."
    )

    def bad(value: Any) -> bool:
        if isinstance(value, str):
            return lone_surrogate(value)
        if isinstance(value, list):
            return any(bad(item) for item in value)
        if isinstance(value, dict):
            return any(bad(key) or bad(item) for key, item in value.items())
        return False

    if not isinstance(data, dict):
        return {"body": [message]} if bad(data) else {}
    errors: dict[str, list[str]] = {}
    for key, value in data.items():
        if lone_surrogate(key):
            errors.setdefault("body", [message])
        elif bad(value):
            errors[key] = [message]
    return errors


def _json_405(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """ninja answers a method a path does not take with a bare text 405: answer
    it in the API's error shape, keeping the Allow header."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        if response.status_code != 405 or response.get("Content-Type", "").startswith("application/json"):
            return response
        allowed = response.get("Allow", "")
        refused = _error(
            request, 405, f"{request.method} is not allowed here; this path takes {allowed or 'nothing'}."
        )
        refused["Allow"] = allowed
        return refused

    return wrapper


@login_not_required
@no_append_slash
def _no_such_path(request: HttpRequest, path: str = "") -> HttpResponse:
    # Anything under /api/v1/ that is no operation: JSON like every API answer,
    # not the site's HTML 404 page (and no redirect to a slash-ended path).
    return _error(request, 404, f"There is no API path /api/v1/{path}; /api/v1/openapi.json lists them.")


class KaizenAPI(NinjaAPI):
    @property
    def urls(self) -> tuple[list[URLPattern | URLResolver], str, str]:
        patterns, app_name, namespace = super().urls
        for pattern in patterns:
            # The site requires a login session for every view
            # (LoginRequiredMiddleware); API operations authenticate by token
            # instead, and must answer 401 JSON rather than redirect to a login
            # form. The schema is public so clients and code generators can read
            # it; only the browsable docs page stays behind the login like any page.
            if isinstance(pattern, URLPattern) and pattern.name != "openapi-view":
                login_not_required(pattern.callback)
                pattern.callback = _json_405(pattern.callback)
        patterns.append(re_path(r"^(?P<path>.*)$", _no_such_path))
        return patterns, app_name, namespace


api = KaizenAPI(
    title="Kaizen",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api-v1",
    auth=BearerToken(),
    parser=JsonParser(),
)

# Operations that add tasks: the token must be allowed to write.
WRITE = BearerToken(write=True)


# --- errors ---------------------------------------------------------------------


def _error(
    request: HttpRequest, status: int, detail: str, errors: dict[str, list[str]] | None = None
) -> HttpResponse:
    return api.create_response(request, {"detail": detail, "errors": errors or {}}, status=status)


def _field_name(loc: tuple[Any, ...]) -> str:
    """The client-facing name of what a ninja/pydantic error location points at."""
    source, *rest = loc
    if source == "body":
        # ("body", "<the operation's body parameter>", "title", ...): clients send
        # the body's fields at the top level and never see the parameter name.
        rest = rest[1:]
        if not rest:
            return "body"
    return ".".join(str(part) for part in rest) or str(source)


def _field_message(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "This field is required." if len(error["loc"]) > 2 else "Send a JSON object as the body."
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        # ("body", "payload") is the body itself; anything deeper is an item of a
        # list in it, such as one of a bulk request's tasks.
        return "Send a JSON object as the body." if len(error["loc"]) <= 2 else "Send a JSON object here."
    if error["type"] == "too_long" and error["loc"][-1] == "tasks":
        sent = error.get("ctx", {}).get("actual_length")
        return (
            f"Send at most {MAX_BULK_TASKS:,} tasks a request"
            + (f" (this one had {sent:,})" if isinstance(sent, int) else "")
            + ": split the batch into several requests."
        )
    if error["type"] == "too_short" and error["loc"][-1] == "tasks":
        return "Send at least one task."
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1] == "slug":
        return "A board's slug holds only letters, digits, hyphens and underscores; GET /api/v1/boards lists them."
    if error["type"] == "extra_forbidden":
        return "Unknown field: remove it (/api/v1/openapi.json lists the fields)."
    return f"{error['msg']}."


@api.exception_handler(NinjaValidationError)
def schema_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    # ninja answers 422 by default; anything a client got wrong is a 400 here,
    # in the same shape as the messages task_create gives for valid JSON.
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        errors.setdefault(_field_name(tuple(error["loc"])), []).append(_field_message(error))
    return _error(request, 400, "The request has errors; see errors for each field.", errors)


@api.exception_handler(DjangoValidationError)
def service_error(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    if hasattr(exc, "error_dict"):
        return _error(request, 400, "The request has errors; see errors for each field.", exc.message_dict)
    # Not about any field: the board's state refuses the task (a hard WIP limit
    # reached, no intake column), so sending it again later may work.
    return _error(request, 409, " ".join(exc.messages))


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, 404, str(exc) or "Not found.")


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # ninja reports whatever JsonParser raised as a bare 400 "Cannot parse
    # request body", the cause attached: say what it was.
    cause = exc.__cause__
    if isinstance(cause, BodyRefused):
        return _error(request, cause.status, cause.detail, cause.errors)
    if isinstance(cause, json.JSONDecodeError):
        message = f"The body is not valid JSON: {cause.msg} (line {cause.lineno}, column {cause.colno})."
        return _error(request, 400, message, {"body": [message]})
    if cause is not None:
        # Nested too deep, a number too long to convert: not JSON we can read.
        message = f"The body could not be read as JSON: {cause}."
        return _error(request, 400, message, {"body": [message]})
    response = _error(request, exc.status_code, str(exc))
    if isinstance(exc, AuthenticationError):
        response["WWW-Authenticate"] = 'Bearer realm="kaizen"'
    return response


@api.exception_handler(RequestDataTooBig)
def body_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error(request, 413, f"The body is too large: send at most {_body_limit()}.")


@api.exception_handler(Exception)
def server_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    # Whatever went wrong on our side still answers in the API's shape (ninja
    # would hand it to Django's HTML 500 page); the traceback goes to the log.
    logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
    return _error(request, 500, "Something went wrong on the server; it has been logged. Try again later.")


# --- reads ----------------------------------------------------------------------


def _board_or_404(request: TokenHttpRequest, slug: str) -> Board:
    """The board, if it exists (404) and the token may use it (403)."""
    board = selectors.board_by_slug_get(slug=slug)
    if board is None:
        raise Http404(f"There is no board {slug!r}; GET /api/v1/boards lists them.")
    _check_scope(request, board)
    return board


def _check_scope(request: TokenHttpRequest, board: Board) -> None:
    if problem := request.auth.board_problem(board):
        raise AuthorizationError(message=problem)


# A path's board slug: documented in the schema, checked before any query.
SLUG = Path(
    ...,
    description="The board's slug, as `GET /api/v1/boards` lists it.",
    pattern=SLUG_PATTERN,
    max_length=SLUG_MAX_LENGTH,
)


def _board_fields(request: TokenHttpRequest, board: Board) -> dict[str, Any]:
    return {
        "slug": board.slug,
        "name": board.name,
        "description": board.description,
        "paused": board.paused,
        "url": request.build_absolute_uri(reverse("api-v1:board-detail", kwargs={"slug": board.slug})),
        "html_url": request.build_absolute_uri(board.get_absolute_url()),
    }


def _dollars(value: Decimal | int) -> str:
    # Fixed-point with the ledger's ten places: str() of a Decimal read from
    # PostgreSQL may come out as "0E-10", and a float would not be exact.
    return format(Decimal(value).quantize(COST_PLACES), "f")


def _agent_ref(agent: Agent) -> AgentRefOut:
    uses_cascade = True
    if agent.implementation:
        # A custom class runs the cascade only if it builds on the built-in agent.
        try:
            uses_cascade = issubclass(agent_class(agent.implementation), PromptCascadeAgent)
        except AgentFailed:
            uses_cascade = False
    return AgentRefOut(
        name=agent.name,
        models=[tier.model for tier in agent.tiers] if uses_cascade else [],
        implementation=agent.implementation or None,
        simulated=agent.is_simulated,
    )


def _task_out(task: Task) -> TaskOut:
    return TaskOut(
        id=task.pk,
        title=task.title,
        input=task.input,
        status=Task.Status(task.status),
        board=task.board.slug,
        column=ColumnRefOut(name=task.column.name, role=Column.Role(task.column.role)),
        agent=None if task.agent is None else _agent_ref(task.agent),
        output=task.output,
        confidence=task.confidence,
        confidence_source=task.confidence_source,
        accepted_tier=task.accepted_tier,
        prompt_version=task.prompt_version,
        reused_from=task.reused_from_id,
        cost=_dollars(task.cost),
        tokens_in=task.tokens_in,
        tokens_out=task.tokens_out,
        model_calls=task.model_calls,
        cache_hits=task.cache_hits,
        attempts=task.attempts,
        priority=task.priority,
        capability=task.capability,
        blocked=task.blocked_note if task.is_blocked else None,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        updated_at=task.updated_at,
    )


def _call_out(call: ModelCall) -> ModelCallOut:
    return ModelCallOut(
        id=call.pk,
        created_at=call.created_at,
        attempt=call.attempt,
        tier=call.tier,
        source=ModelCall.Source(call.source),
        provider=call.provider,
        model=call.model,
        simulated=call.simulated,
        prompt_version=call.prompt_version,
        tokens_in=call.tokens_in,
        tokens_out=call.tokens_out,
        cost=_dollars(call.cost),
        latency_ms=call.latency_ms,
        confidence=call.confidence,
        confidence_source=call.confidence_source,
        accepted=call.accepted,
        stale=call.stale,
        error=call.error,
        reused_from=call.reused_from_id,
    )


def _task_or_404(request: TokenHttpRequest, task_id: int) -> Task:
    task = Task.objects.select_related("board", "column", "agent").filter(pk=task_id).first()
    if task is None:
        raise Http404(f"There is no task {task_id}.")
    _check_scope(request, task.board)
    return task


# --- operations -------------------------------------------------------------------

# Every operation can answer these; each adds its own.
COMMON_ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut}


@api.get(
    "/boards",
    response={200: list[BoardOut], **COMMON_ERRORS},
    operation_id="board_list",
    url_name="board-list",
    tags=["boards"],
)
def board_list(request: TokenHttpRequest) -> list[dict[str, Any]]:
    """All boards the token may use, by name."""
    boards = Board.objects.all()
    slugs = request.auth.board_slugs()
    if slugs is not None:
        boards = boards.filter(slug__in=slugs)
    return [_board_fields(request, board) for board in boards]


@api.get(
    "/boards/{slug}",
    response={200: BoardDetailOut, **COMMON_ERRORS, 404: ErrorOut},
    operation_id="board_detail",
    url_name="board-detail",
    tags=["boards"],
)
def board_detail(request: TokenHttpRequest, slug: str = SLUG) -> dict[str, Any]:
    """A board and its columns, left to right, with task counts and WIP limits, and the
    capabilities its agents offer."""
    board = _board_or_404(request, slug)
    columns = [
        ColumnOut(
            id=column.pk,
            name=column.name,
            role=Column.Role(column.role),
            task_count=column.task_count,
            wip_limit=column.wip_limit,
            hard_limit=column.hard_limit,
            wip_state=column.wip_state(column.task_count),
        )
        for column in selectors.board_column_counts_get(board=board, exact=True)
    ]
    capabilities = selectors.board_capabilities_get(board=board)
    return {**_board_fields(request, board), "columns": columns, "capabilities": capabilities}


@api.get(
    "/boards/{slug}/tasks",
    response={200: TaskPageOut, **COMMON_ERRORS, 404: ErrorOut},
    operation_id="task_list",
    summary="List a board's tasks",
    url_name="board-task-list",
    tags=["tasks"],
)
def task_list_view(
    request: TokenHttpRequest,
    slug: str = SLUG,
    # django-ninja always passes the filters (built from the query string); the
    # default is there because a parameter after one with a default needs one.
    filters: Query[TaskFilters] = None,  # type: ignore[assignment]
) -> TaskPageOut:
    """The board's tasks that match every filter given, a page at a time (newest first unless
    `sort` says otherwise). `count` is the number of matches over all pages; follow `next`
    for the following page. The same filters as the board's task list page."""
    board = _board_or_404(request, slug)
    tasks = task_list(
        board=board,
        filters=TaskFilter(
            statuses=tuple(filters.status or ()),
            column_id=filters.column,
            agent=filters.agent or "",
            capability=filters.capability or "",
            text=filters.q or "",
            created_after=filters.created_after,
            created_before=filters.created_before,
            finished_after=filters.finished_after,
            finished_before=filters.finished_before,
            sort=filters.sort,
        ),
    )
    count = tasks.count()
    page = list(tasks[filters.offset : filters.offset + filters.limit])
    for task in page:
        task.board = board
    return TaskPageOut(
        count=count,
        next=_page_url(request, filters.offset + filters.limit)
        if filters.offset + filters.limit < count
        else None,
        previous=_page_url(request, max(filters.offset - filters.limit, 0)) if filters.offset else None,
        results=[_task_out(task) for task in page],
    )


def _page_url(request: HttpRequest, offset: int) -> str:
    # The same query, another offset: the client's filters carry over as sent.
    query = [(key, value) for key, values in request.GET.lists() if key != "offset" for value in values]
    query.append(("offset", str(offset)))
    return request.build_absolute_uri(f"{request.path}?{urlencode(query)}")


@api.post(
    "/boards/{slug}/tasks",
    response={201: TaskOut, **COMMON_ERRORS, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 415: ErrorOut},
    operation_id="task_create",
    url_name="board-task-create",
    tags=["tasks"],
    auth=WRITE,
)
def task_create(
    request: TokenHttpRequest, payload: TaskIn, slug: str = SLUG
) -> Status[TaskOut] | HttpResponse:
    """Put a task in the board's intake column (Backlog, else Ready); agents pull it from there.

    Needs a write token whose user may add tasks (`boards.add_task`). An agent whose prompt
    declares variables reads them from the fields of a JSON object `input`, such as
    `{"customer": "Laura M.", "facts": "..."}`. With `allow_reuse` (the default) a task identical
    to one the agent already completed takes that result at no cost."""
    board = _board_or_404(request, slug)
    try:
        task = services.task_create(
            board=board,
            title=payload.title,
            input=payload.input,
            capability=payload.capability,
            priority=payload.priority,
            allow_reuse=payload.allow_reuse,
            user=request.auth.user,
        )
    except DjangoValidationError as exc:
        capability = payload.capability.strip()
        if (
            hasattr(exc, "error_dict")
            and set(exc.error_dict) == {"capability"}
            and capability not in selectors.board_capabilities_get(board=board)
        ):
            # A well-formed request the board cannot serve as it is now (no agent
            # offers that capability; one may later): a conflict, not a bad request.
            return _error(request, 409, " ".join(exc.message_dict["capability"]), exc.message_dict)
        raise
    return Status(201, _task_out(task))


BULK_DESCRIPTION = f"""Put up to {MAX_BULK_TASKS:,} tasks in the board's intake column in one request, all or none.

Each task is what `POST /api/v1/boards/{{slug}}/tasks` takes, and goes where that would put it.
Every task is checked before any is written: a bad one refuses the whole batch with a 400 whose
`errors` name each bad task by its index and field (`tasks.3.title`), so the corrected batch can
simply be sent again. A hard WIP limit on the intake column without room for the whole batch
refuses it with 409, as does a capability no agent offers. Needs a write token whose user may add
tasks (`boards.add_task`). The answer lists the tasks added, in the order sent."""


@api.post(
    "/boards/{slug}/tasks/bulk",
    response={201: TaskBulkOut, **COMMON_ERRORS, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 415: ErrorOut},
    operation_id="task_bulk_create",
    summary="Add many tasks at once",
    description=BULK_DESCRIPTION,
    url_name="board-task-bulk-create",
    tags=["tasks"],
    auth=WRITE,
)
def task_bulk_create(
    request: TokenHttpRequest, payload: TaskBulkIn, slug: str = SLUG
) -> Status[TaskBulkOut] | HttpResponse:
    """Many tasks at once, all or none (the description is BULK_DESCRIPTION: it
    names the maximum, which a docstring cannot)."""
    board = _board_or_404(request, slug)
    rows = [
        TaskRow(
            line=index,
            title=task.title,
            input=task.input,
            capability=task.capability,
            priority=task.priority,
            allow_reuse=task.allow_reuse,
        )
        for index, task in enumerate(payload.tasks)
    ]
    try:
        tasks = services.tasks_import(board=board, rows=rows, user=request.auth.user)
    except services.TasksImportRefused as exc:
        if not exc.row_errors:
            raise  # the board refused the batch as a whole (its WIP limit): a 409
        errors = {
            f"tasks.{index}.{name}": messages
            for index, fields in sorted(exc.row_errors.items())
            for name, messages in fields.items()
        }
        bad = len(exc.row_errors)
        detail = (
            f"{bad} of {len(rows):,} task{'s' if len(rows) != 1 else ''} "
            f"{'have' if bad != 1 else 'has'} errors, so none was added: correct "
            f"{'them' if bad != 1 else 'it'} and send the batch again."
        )
        offered = selectors.board_capabilities_get(board=board)
        if all(
            set(fields) == {"capability"} and rows[index].capability.strip() not in offered
            for index, fields in exc.row_errors.items()
        ):
            # As for one task: well-formed tasks the board cannot serve as it is
            # now (no agent offers their capability; one may later) are a conflict.
            return _error(request, 409, detail, errors)
        return _error(request, 400, detail, errors)
    # Built from the tasks as written (their ids came back from the INSERT): no
    # query, however many there are.
    return Status(201, TaskBulkOut(count=len(tasks), tasks=[_task_out(task) for task in tasks]))


@api.get(
    "/tasks/{task_id}",
    response={200: TaskOut, **COMMON_ERRORS, 404: ErrorOut},
    operation_id="task_detail",
    url_name="task-detail",
    tags=["tasks"],
)
def task_detail(request: TokenHttpRequest, task_id: int = Path(..., ge=1, le=MAX_ID)) -> TaskOut:
    """A task: where it is on its board, who works on it, what it produced and what it cost."""
    return _task_out(_task_or_404(request, task_id))


@api.get(
    "/tasks/{task_id}/calls",
    response={200: list[ModelCallOut], **COMMON_ERRORS, 404: ErrorOut},
    operation_id="task_calls",
    url_name="task-calls",
    tags=["tasks"],
)
def task_calls(request: TokenHttpRequest, task_id: int = Path(..., ge=1, le=MAX_ID)) -> list[ModelCallOut]:
    """The task's ledger, oldest first: every model call made for it (each tier of each
    attempt, failed calls included), every call served from the response cache, and a
    reused result, with tokens, cost, latency and confidence. The task's totals add these up."""
    task = Task.objects.select_related("board").filter(pk=task_id).only("pk", "board__slug").first()
    if task is None:
        raise Http404(f"There is no task {task_id}.")
    _check_scope(request, task.board)
    return [_call_out(call) for call in selectors.task_model_calls_get(task=task)]


# --- muda -----------------------------------------------------------------------


@api.get(
    "/boards/{slug}/muda",
    response={200: MudaOut, **COMMON_ERRORS, 404: ErrorOut},
    operation_id="board_muda",
    summary="The seven wastes of a board",
    url_name="board-muda",
    tags=["boards"],
)
def board_muda(
    request: TokenHttpRequest,
    slug: str = SLUG,
    # As board_tasks': django-ninja always passes the filters.
    filters: Query[MudaFilters] = None,  # type: ignore[assignment]
) -> dict[str, Any] | HttpResponse:
    """The seven wastes (overproduction, waiting, transport, over-processing, inventory, motion,
    defects) of the board, or of one agent's work on it, over a window (default: the last 7
    days), each with its value, unit, cost in dollars, target and definition, as the board's
    Muda page shows them; with the token efficiency and the human escalation rate."""
    board = _board_or_404(request, slug)
    if problems := muda.window_problems(filters.since, filters.until):
        raise _FieldErrors(problems)
    agent = None
    if filters.agent:
        agent = Agent.objects.filter(name=filters.agent).first()
        if agent is None:
            # Names an agent that does not exist: a 404, as for a board, with the field named.
            message = (
                f"There is no agent {filters.agent!r}; GET /api/v1/boards/{slug} lists the board's agents."
            )
            return _error(request, 404, message, {"agent": [message]})
    report = muda.muda_report_get(
        board=board, agent=agent, since=filters.since, until=filters.until, with_trend=False
    )
    return {
        "board": board.slug,
        "agent": agent.name if agent else None,
        "since": report.since,
        "until": report.until,
        "wastes": [_waste_out(waste) for waste in report.wastes],
        "token_efficiency": _waste_out(report.token_efficiency),
        "escalation_rate": _waste_out(report.escalation_rate),
        "unreviewed_defects": report.unreviewed_defects,
        "html_url": request.build_absolute_uri(reverse("boards-muda", kwargs={"slug": board.slug})),
    }


class _FieldErrors(DjangoValidationError):
    """Bad query parameters, per field: answered 400 by ``service_error``."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        super().__init__(problems)


def _waste_out(waste: muda.Waste) -> dict[str, Any]:
    return {
        "name": waste.name,
        "label": waste.label,
        "value": waste.value,
        "unit": waste.unit,
        "cost": waste.cost,
        "target": waste.target,
        "better": waste.better,
        "met": waste.met,
        "definition": waste.definition,
        "parts": waste.parts,
    }


# --- flow -----------------------------------------------------------------------


@api.get(
    "/boards/{slug}/flow",
    response={200: FlowOut, **COMMON_ERRORS, 404: ErrorOut},
    operation_id="board_flow",
    summary="A board's flow measures",
    url_name="board-flow",
    tags=["boards"],
)
def board_flow(
    request: TokenHttpRequest,
    slug: str = SLUG,
    # As board_tasks': django-ninja always passes the filters.
    filters: Query[FlowFilters] = None,  # type: ignore[assignment]
) -> dict[str, Any]:
    """WIP, throughput, cycle and lead time (nearest-rank percentiles, in seconds), the age of
    the items in flight, the cumulative flow, XmR charts and the agent-line measures over a
    window (default: the last 7 days), computed from the event log and the ledger. With
    `forecast_items` or `forecast_date`, a Monte Carlo forecast (10,000 seeded trials
    resampling the throughput per period of the sampling window). `definitions` says what
    each measure is. A 400 names the field when the window ends before it starts or holds
    more than 2,000 periods at the resolution, the agent does not serve the board, or the
    forecast date is past or beyond 10,000 periods."""
    board = _board_or_404(request, slug)
    now = timezone.now()
    query = flow_report.flow_query_resolve(
        board=board,
        now=now,
        since=filters.since,
        until=filters.until,
        agent=filters.agent,
        capability=filters.capability,
        resolution=filters.resolution,
        forecast_items=filters.forecast_items,
        forecast_date=filters.forecast_date,
        forecast_period=filters.forecast_period,
        sample_days=filters.sample_days,
    )
    data = flow_selectors.flow_data_get(board=board, where=query.where, step=query.step)
    report = flow_report.flow_report(data, where=query.where, now=now)
    report["forecast"] = (
        flow_report.flow_forecast(board=board, where=query.where, ask=query.forecast, now=now)
        if query.forecast is not None
        else None
    )
    return report


# The kaizen loop's replays (experiments.api): same authentication, errors and schema.
api.add_router("", replays_router)
