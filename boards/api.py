"""The JSON API under /api/v1/ (django-ninja).

Clients authenticate with ``Authorization: Bearer <token>`` (tokens come from
``python manage.py create_api_token``). Every error an operation returns,
whatever its cause, has the one shape ``boards.schemas.ErrorOut``:
``{"detail": "...", "errors": {field: [...]}}``. Operations stay thin: writes
call ``boards.services``, reads are the small queries below.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, reverse
from ninja import NinjaAPI, Path, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer

from boards import selectors, services
from boards.agent_config import COST_PLACES
from boards.agents import AgentFailed, PromptCascadeAgent, agent_class
from boards.models import Agent, ApiToken, Board, ModelCall, Task
from boards.schemas import (
    AgentRefOut,
    BoardDetailOut,
    BoardOut,
    ColumnOut,
    ColumnRefOut,
    ErrorOut,
    ModelCallOut,
    TaskIn,
    TaskOut,
)

# Largest value a BigAutoField holds: a bigger id is reported as bad input
# rather than overflowing the database driver.
MAX_ID = 2**63 - 1

DESCRIPTION = """
Put tasks on Kaizen boards and follow them through the line.

**Authentication**: send `Authorization: Bearer <token>` with every request. An
administrator creates a token with `python manage.py create_api_token <username>`;
it is shown once and stored only as a hash.

**Cost**: agents work through a cascade of models, cheapest first, taking the first
answer confident enough. A task reports what it cost over all its attempts (`cost`
in dollars as an exact decimal string, tokens, model calls, cache hits), which tier's
answer it took, and whether it reused an identical earlier task's result instead;
`GET /api/v1/tasks/{task_id}/calls` lists every call in the ledger.

**Errors** from every operation have one shape,
`{"detail": "<what went wrong>", "errors": {"<field>": ["<message>", ...]}}`: 400 when the request is wrong (bad JSON, a missing field, a wrong type, a value the
board refuses; `errors` says which field), 401 without a valid token, 404 for an
unknown board or task, 409 when the board cannot take the task right now.
"""


class BearerToken(HttpBearer):
    """``Authorization: Bearer <token>`` checked against the hashed ApiToken table."""

    def __call__(self, request: HttpRequest) -> ApiToken:
        # Replaces HttpBearer's parsing so that a missing header, another scheme and
        # an unknown token each get a message saying which it was.
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError(
                message="Send an API token in the header 'Authorization: Bearer <token>'; "
                "create one with `python manage.py create_api_token <username>`."
            )
        return self.authenticate(request, key.strip())

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken:
        api_token = services.api_token_authenticate(key=token)
        if api_token is None:
            raise AuthenticationError(
                message="That API token is not valid: it is unknown, revoked, or its user is inactive."
            )
        return api_token


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
        return patterns, app_name, namespace


api = KaizenAPI(
    title="Kaizen",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api-v1",
    auth=BearerToken(),
)


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
        return "Send a JSON object as the body."
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
    if isinstance(exc.__cause__, json.JSONDecodeError):
        # ninja reports an unparsable body as a bare "Cannot parse request body".
        cause = exc.__cause__
        message = f"The body is not valid JSON: {cause.msg} (line {cause.lineno}, column {cause.colno})."
        return _error(request, 400, message, {"body": [message]})
    response = _error(request, exc.status_code, str(exc))
    if isinstance(exc, AuthenticationError):
        response["WWW-Authenticate"] = 'Bearer realm="kaizen"'
    return response


# --- reads ----------------------------------------------------------------------


def _board_or_404(slug: str) -> Board:
    board = Board.objects.filter(slug=slug).first()
    if board is None:
        raise Http404(f"There is no board {slug!r}; GET /api/v1/boards lists them.")
    return board


def _board_fields(request: HttpRequest, board: Board) -> dict[str, Any]:
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
        status=task.status,
        board=task.board.slug,
        column=ColumnRefOut(name=task.column.name, role=task.column.role),
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
        source=call.source,
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


def _task_or_404(task_id: int) -> Task:
    task = Task.objects.select_related("board", "column", "agent").filter(pk=task_id).first()
    if task is None:
        raise Http404(f"There is no task {task_id}.")
    return task


# --- operations -------------------------------------------------------------------


@api.get(
    "/boards",
    response={200: list[BoardOut], 401: ErrorOut},
    operation_id="board_list",
    url_name="board-list",
    tags=["boards"],
)
def board_list(request: HttpRequest) -> list[dict[str, Any]]:
    """All boards, by name."""
    return [_board_fields(request, board) for board in Board.objects.all()]


@api.get(
    "/boards/{slug}",
    response={200: BoardDetailOut, 401: ErrorOut, 404: ErrorOut},
    operation_id="board_detail",
    url_name="board-detail",
    tags=["boards"],
)
def board_detail(request: HttpRequest, slug: str) -> dict[str, Any]:
    """A board and its columns, left to right, with task counts and WIP limits."""
    board = _board_or_404(slug)
    columns = [
        ColumnOut(
            id=column.pk,
            name=column.name,
            role=column.role,
            task_count=column.task_count,
            wip_limit=column.wip_limit,
            hard_limit=column.hard_limit,
            wip_state=column.wip_state(column.task_count),
        )
        for column in selectors.board_columns_with_counts(board=board)
    ]
    return {**_board_fields(request, board), "columns": columns}


@api.post(
    "/boards/{slug}/tasks",
    response={201: TaskOut, 400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    operation_id="task_create",
    url_name="board-task-create",
    tags=["tasks"],
)
def task_create(request: HttpRequest, slug: str, payload: TaskIn) -> Status[TaskOut]:
    """Put a task in the board's intake column (Backlog, else Ready); agents pull it from there.

    An agent whose prompt declares variables reads them from the fields of a JSON object
    `input`, such as `{"customer": "Laura M.", "facts": "..."}`. With `allow_reuse` (the
    default) a task identical to one the agent already completed takes that result at no cost."""
    board = _board_or_404(slug)
    task = services.task_create(
        board=board,
        title=payload.title,
        input=payload.input,
        capability=payload.capability,
        priority=payload.priority,
        allow_reuse=payload.allow_reuse,
        user=request.auth.user,
    )
    return Status(201, _task_out(task))


@api.get(
    "/tasks/{task_id}",
    response={200: TaskOut, 400: ErrorOut, 401: ErrorOut, 404: ErrorOut},
    operation_id="task_detail",
    url_name="task-detail",
    tags=["tasks"],
)
def task_detail(request: HttpRequest, task_id: int = Path(..., ge=1, le=MAX_ID)) -> TaskOut:
    """A task: where it is on its board, who works on it, what it produced and what it cost."""
    return _task_out(_task_or_404(task_id))


@api.get(
    "/tasks/{task_id}/calls",
    response={200: list[ModelCallOut], 400: ErrorOut, 401: ErrorOut, 404: ErrorOut},
    operation_id="task_calls",
    url_name="task-calls",
    tags=["tasks"],
)
def task_calls(request: HttpRequest, task_id: int = Path(..., ge=1, le=MAX_ID)) -> list[ModelCallOut]:
    """The task's ledger, oldest first: every model call made for it (each tier of each
    attempt, failed calls included), every call served from the response cache, and a
    reused result, with tokens, cost, latency and confidence. The task's totals add these up."""
    task = Task.objects.filter(pk=task_id).only("pk").first()
    if task is None:
        raise Http404(f"There is no task {task_id}.")
    return [_call_out(call) for call in selectors.task_model_calls_get(task=task)]
