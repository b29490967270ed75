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
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db.models import prefetch_related_objects
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from andon import services as andon_services
from andon.models import Escalation
from andon.services import REVIEW_PERMISSION
from boards import services
from boards.agents.cascade import implementation_for
from boards.agents.spec import cascade_json, parse_cascade
from boards.forms import (
    AgentOperationsForm,
    AgentPromptForm,
    BoardCordForm,
    PromptRollbackForm,
    TaskBlockForm,
    TaskCreateForm,
    TaskMoveForm,
    TaskStepForm,
    TierForm,
    TierFormSet,
)
from boards.fragments import board_live_context
from boards.models import Agent, Board, Column, Task
from boards.selectors import (
    agent_list_get,
    agent_model_calls_recent,
    board_capabilities_get,
    board_list_get,
    task_events_get,
    task_inspections_get,
    task_model_calls_get,
)
from experiments import services as kaizen
from experiments.models import AuditEntry, ChangeProposal, Experiment, PromptVersion

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


def _board_context(request: HttpRequest, board: Board, *, form: TaskCreateForm | None = None) -> dict:
    return {
        **board_live_context(board=board),
        "form": form if form is not None else _task_form(board),
        "ws_path": _ws_path(board),
        # The cord is in the page only for those who may pull it (the server checks again).
        "can_stop_line": request.user.has_perm(REVIEW_PERMISSION),
        "nav": "boards",
    }


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
def board_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "boards/list.html", {"boards": board_list_get(), "nav": "boards"})


@require_GET
def board_detail(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    board = _board(slug)
    return render(request, BOARD, _board_context(request, board))


@require_GET
def board_body(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """The board's live part (agents and columns, for #board-body, and the
    paused banner above them, out of band): what a reconnecting browser
    re-fetches to catch up on what it missed."""
    board = _board(slug)
    return render(request, f"{BOARD}#board-catch-up", board_live_context(board=board))


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


@require_POST
@permission_required(REVIEW_PERMISSION, raise_exception=True)
def board_cord(request: HtmxHttpRequest, slug: str) -> HttpResponse:
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
        error = _form_errors(form)
        if request.htmx:
            return render(request, f"{BOARD}#flash", {"message": error, "level": "error"}, status=422)
        messages.error(request, error)
        return redirect(board)
    message = f"The line of {stop.scope_label} is stopped: {stop.reason}"
    if request.htmx:
        return render(request, f"{BOARD}#flash", {"message": message, "level": "success"})
    messages.success(request, message)
    return redirect(board)


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
# Proposals, experiments and audit entries shown on the agent page; the kaizen pages have all.
HISTORY_ROWS = 20


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


@dataclass
class _AgentEdit:
    """The forms of the agent page for people who may change agents: the proposed
    prompt change with its cascade, its preview, and the operational switches."""

    form: AgentPromptForm
    formset: TierFormSet
    operations: AgentOperationsForm
    preview: dict[str, Any] | None = None


def _agent_edit(agent: Agent, data=None, *, proposing: bool = False) -> _AgentEdit:
    return _AgentEdit(
        form=AgentPromptForm(data, agent=agent, proposing=proposing),
        formset=TierFormSet(data, prefix="tier", initial=_tier_initial(agent)),
        operations=AgentOperationsForm(agent=agent),
    )


def _attach_errors(form: forms.Form, exc: ValidationError) -> None:
    """What a service refused after the form passed (a rule the form does not
    check, a limit, an agent changed meanwhile): on its field, or above the form."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
    for name, messages_ in errors.items():
        form.add_error(name if name in form.fields else None, messages_)


def _kaizen_url(obj: ChangeProposal | Experiment) -> str:
    """The page of a proposal or an experiment. Those pages belong to the kaizen
    app's own URLs; until they are installed, the path they are planned at."""
    try:
        return obj.get_absolute_url()
    except NoReverseMatch:
        kind = "proposals" if isinstance(obj, ChangeProposal) else "experiments"
        return f"/kaizen/{kind}/{obj.pk}/"


def _audit_url(agent: Agent) -> str:
    try:
        path = reverse("experiments-audit")
    except NoReverseMatch:
        path = "/kaizen/audit/"
    return f"{path}?agent={agent.pk}"


def _proposal_state(proposal: ChangeProposal) -> str:
    """Where a proposal stands, in the words its author needs."""
    experiment = getattr(proposal, "experiment", None)
    if proposal.status == ChangeProposal.Status.EXPERIMENTING and experiment is not None:
        if experiment.stage == Experiment.Stage.CANARY:
            return f"experiment started (canary at {experiment.canary_share:.0%})"
        return f"in its experiment's {experiment.get_stage_display().lower()} stage"
    if proposal.status == ChangeProposal.Status.PENDING:
        return "waiting for approval"
    if proposal.status == ChangeProposal.Status.APPROVED:
        # Approved (a minor change needs no approval) and waiting for the agent's slot.
        return "approved: it starts when the agent's running experiment ends"
    if proposal.status == ChangeProposal.Status.STOPPED and proposal.decision_note:
        return f"stopped: {proposal.decision_note}"
    return proposal.get_status_display().lower()


def _diff_rows(lines: list[str]) -> list[tuple[str, str]]:
    """``diff_lines`` as (kind, line) for the page: meta (file and hunk headers, a
    changed field's name), del, add or context."""
    rows = []
    for line in lines:
        if line.startswith(("--- ", "+++ ", "@@")) or (line.endswith(":") and line[:1] not in "+- "):
            kind = "meta"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "context"
        rows.append((kind, line))
    return rows


def _proposed_fields(agent: Agent, form: AgentPromptForm, formset: TierFormSet) -> dict[str, Any]:
    """The forms' values as a prompt version holds them (normal form), so that the
    preview compares them as ``proposal_create`` will."""
    data = form.cleaned_data
    return {
        "prompt_template": data["prompt_template"],
        "prompt_variables": data["variables"],
        "parameters": data["parameters"],
        "cascade": cascade_json(parse_cascade(formset.cascade)),
        # Not edited on the page: a class is chosen in the admin or a config file.
        "implementation": agent.implementation,
    }


def _proposal_preview(agent: Agent, fields: dict[str, Any]) -> dict[str, Any]:
    """experiments.services.proposal_preview, with the diff's lines marked for the page."""
    preview = kaizen.proposal_preview(agent=agent, fields=fields)
    preview["diff"] = _diff_rows(preview["diff"])
    return preview


def _agent_history(agent: Agent, user) -> dict[str, Any]:
    """The agent's prompt versions, proposals, experiments and latest audit
    entries, each list one query."""
    versions = list(
        PromptVersion.objects.filter(agent=agent).select_related("author", "proposal").order_by("-number")
    )
    if not any(v.number == agent.prompt_version for v in versions):
        # Agents older than the kaizen loop have no row for their version until a
        # change records it: show it as the agent holds it.
        Source = PromptVersion.Source
        versions.append(
            PromptVersion(
                agent=agent,
                number=agent.prompt_version,
                source=Source.INITIAL if agent.prompt_version == 1 else Source.CONFIG,
                **{name: getattr(agent, name) for name in PromptVersion.FIELDS},
            )
        )
        versions.sort(key=lambda v: -v.number)
    approver = kaizen.can_approve(user)
    for version in versions:
        proposal = getattr(version, "proposal", None) if version.pk else None
        version.is_active = version.number == agent.prompt_version
        version.candidate_of = proposal
        # Only a version that was the agent's own once may be made active again, not
        # a candidate that never passed its gates.
        was_active = proposal is None or proposal.status == ChangeProposal.Status.PROMOTED
        version.can_roll_back = bool(approver and version.pk and was_active and not version.is_active)
    proposals = list(
        ChangeProposal.objects.filter(agent=agent)
        .select_related("base_version", "candidate", "author", "experiment")
        .order_by("-created_at", "-pk")[:HISTORY_ROWS]
    )
    for proposal in proposals:
        proposal.url = _kaizen_url(proposal)
        proposal.state = _proposal_state(proposal)
    experiments = list(
        Experiment.objects.filter(agent=agent)
        .select_related("control", "treatment")
        .order_by("-started_at", "-pk")[:HISTORY_ROWS]
    )
    for experiment in experiments:
        experiment.url = _kaizen_url(experiment)
    audit = list(
        AuditEntry.objects.filter(agent=agent)
        .select_related("user", "version", "proposal", "experiment")
        .order_by("-created_at", "-pk")[:HISTORY_ROWS]
    )
    for entry in audit:
        if entry.user_id:
            entry.who = entry.user.get_username()
        elif entry.action == AuditEntry.Action.VERSION:
            entry.who = "a config file or the admin"
        else:
            entry.who = "kaizen loop"
        entry.proposal_url = _kaizen_url(entry.proposal) if entry.proposal_id else ""
        entry.experiment_url = _kaizen_url(entry.experiment) if entry.experiment_id else ""
    return {
        "versions": versions,
        "proposals": proposals,
        "experiments": experiments,
        "audit_entries": audit,
        "audit_url": _audit_url(agent),
        "history_rows": HISTORY_ROWS,
        "can_approve": approver,
    }


def _proposal_result(agent: Agent, pk: str | None) -> dict[str, Any] | None:
    """The proposal just made (``?proposed=<pk>``), for its author to see where it stands."""
    if not pk or not pk.isdigit():
        return None
    proposal = (
        ChangeProposal.objects.filter(agent=agent, pk=int(pk))
        .select_related("base_version", "candidate", "experiment")
        .first()
    )
    if proposal is None:
        return None
    return {
        "proposal": proposal,
        "url": _kaizen_url(proposal),
        "state": _proposal_state(proposal),
        "diff": _diff_rows(kaizen.diff_lines(proposal.base_version, proposal.candidate)),
    }


def _agent_detail_page(
    request: HttpRequest,
    agent: Agent,
    *,
    edit: _AgentEdit | None,
    rollback_form: PromptRollbackForm | None = None,
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
        "form": edit.form if edit else None,
        "formset": edit.formset if edit else None,
        "operations_form": edit.operations if edit else None,
        "preview": edit.preview if edit else None,
        "proposed": _proposal_result(agent, request.GET.get("proposed")),
        **_agent_history(agent, request.user),
        "rollback_form": rollback_form,
        "rollback_version": _posted_pk(rollback_form.data.get("version")) if rollback_form else None,
        "nav": "agents",
    }
    return render(request, "boards/agent_detail.html", context, status=status)


def _posted_pk(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


@require_GET
def agent_list(request: HttpRequest) -> HttpResponse:
    return render(request, "boards/agent_list.html", {"agents": agent_list_get(), "nav": "agents"})


@require_http_methods(["GET", "POST"])
def agent_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The agent's page: its settings, metrics, latest ledger rows and the history
    of its prompt. With the boards.change_agent permission, also the form that
    proposes a change to its prompt and cascade (previewed as a diff first, if
    wished) and its operational switches; with experiments.approve_change, the
    rollback of its prompt to an earlier version. One URL, the POST's ``action``
    says which: ``preview``, ``propose`` (the default), ``settings`` or ``rollback``."""
    agent = get_object_or_404(Agent, pk=pk)
    can_edit = request.user.has_perm(kaizen.PROPOSE_PERMISSION)
    if request.method == "GET":
        return _agent_detail_page(request, agent, edit=_agent_edit(agent) if can_edit else None)

    action = request.POST.get("action", "propose")
    if action == "rollback":
        return _agent_rollback(request, agent, can_edit=can_edit)
    if not can_edit:
        raise PermissionDenied("Changing an agent needs the boards.change_agent permission.")
    if action == "settings":
        return _agent_operations_save(request, agent)
    if action not in ("preview", "propose"):
        return HttpResponseBadRequest("Unknown action: use preview, propose, settings or rollback.")
    return _agent_propose(request, agent, preview=action == "preview")


def _agent_propose(request: HtmxHttpRequest, agent: Agent, *, preview: bool) -> HttpResponse:
    """A person's change to the prompt and cascade: previewed (the diff against
    the active version and its classification) or proposed. Proposing changes
    nothing the agent runs: the proposal waits for approval, or starts its canary."""
    edit = _agent_edit(agent, request.POST, proposing=not preview)
    form = edit.form
    if form.is_valid() and edit.formset.is_valid():
        fields = _proposed_fields(agent, form, edit.formset)
        started_from = form.cleaned_data["based_on_version"]
        if started_from is not None and started_from != agent.prompt_version:
            form.add_error(
                None,
                f"{agent.name}'s active prompt moved on to version {agent.prompt_version} while you were "
                f"editing (you started from {started_from}). Nothing was proposed: reload the page to see "
                "it, then make your change against it.",
            )
        elif preview:
            try:
                edit.preview = _proposal_preview(agent, fields)
            except ValidationError as exc:
                _attach_errors(form, exc)
        else:
            try:
                proposal = kaizen.proposal_create(
                    agent=agent, fields=fields, rationale=form.cleaned_data["rationale"], user=request.user
                )
            except ValidationError as exc:
                _attach_errors(form, exc)
            else:
                messages.success(
                    request,
                    f"Proposed version {proposal.candidate.number} of {agent.name}'s prompt: "
                    f"{_proposal_state(proposal)}. The agent runs version {proposal.base_version.number} "
                    "until the change passes its gates.",
                )
                return redirect(f"{agent.get_absolute_url()}?proposed={proposal.pk}#proposal-{proposal.pk}")
    status = 422 if form.errors or edit.formset.total_error_count() else 200
    if request.htmx:
        context = {
            "agent": agent,
            "form": form,
            "formset": edit.formset,
            "preview": edit.preview,
        }
        return render(request, "boards/agent_detail.html#edit-panel", context, status=status)
    return _agent_detail_page(request, agent, edit=edit, status=status)


def _agent_operations_save(request: HttpRequest, agent: Agent) -> HttpResponse:
    """The reuse and cache switches: how the agent runs, not what it asks, so they
    are saved at once, with no proposal and no new prompt version."""
    edit = _agent_edit(agent)
    edit.operations = AgentOperationsForm(request.POST, agent=agent)
    if edit.operations.is_valid():
        agent.reuse_results = edit.operations.cleaned_data["reuse_results"]
        agent.cache_responses = edit.operations.cleaned_data["cache_responses"]
        try:
            # The version just read: a prompt saved meanwhile is refused, not undone.
            agent = services.agent_save(agent=agent, based_on_version=agent.prompt_version, user=request.user)
        except ValidationError as exc:
            _attach_errors(edit.operations, exc)
            agent.refresh_from_db()
        else:
            messages.success(
                request,
                f"Saved {agent.name}: reuse results {'on' if agent.reuse_results else 'off'}, cache responses "
                f"{'on' if agent.cache_responses else 'off'}; the prompt is unchanged (version {agent.prompt_version}).",
            )
            return redirect(agent)
    return _agent_detail_page(request, agent, edit=edit, status=422)


def _agent_rollback(request: HttpRequest, agent: Agent, *, can_edit: bool) -> HttpResponse:
    """Make an earlier prompt version active again (approvers only), with a note."""
    if not kaizen.can_approve(request.user):
        raise PermissionDenied("Rolling back a prompt needs the experiments.approve_change permission.")
    form = PromptRollbackForm(request.POST, agent=agent)
    if form.is_valid():
        version = form.cleaned_data["version"]
        try:
            agent = kaizen.prompt_version_rollback(
                agent=agent, version=version, user=request.user, note=form.cleaned_data["note"]
            )
        except ValidationError as exc:
            _attach_errors(form, exc)
        else:
            messages.success(
                request,
                f"Version {version.number} of {agent.name}'s prompt is active again: the next task runs it.",
            )
            return redirect(agent)
    edit = _agent_edit(agent) if can_edit else None
    return _agent_detail_page(request, agent, edit=edit, rollback_form=form, status=422)
