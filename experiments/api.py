"""The replay operations of the JSON API (/api/v1/, ``boards.api.endpoints``
adds this router): start a replay of a prompt version on an agent's past work,
and follow it to its verdict.

Starting one spends money on model calls (capped by the agent's replay budget),
so it needs a write token whose user may change agents (``boards.change_agent``,
who may propose prompt changes) and whose scope covers a board the agent serves.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.urls import reverse
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.errors import AuthorizationError, HttpError
from pydantic import ConfigDict

from boards.api.schemas import ErrorOut, WholeNumber
from boards.api.tokens import TokenHttpRequest
from boards.models import Agent, Board, Task
from boards.text import LINE_PATTERN, MULTILINE_PATTERN
from experiments import genchi, knowledge, vectors
from experiments.embeddings import EmbeddingError, get_embedder
from experiments.models import Pattern, PromptVersion, Replay
from experiments.services import PROPOSE_PERMISSION

router = Router(tags=["replays"])

MAX_ID = 2**63 - 1
MAX_SAMPLE = 100_000
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


class ReplayIn(Schema):
    model_config = ConfigDict(extra="forbid")

    candidate: WholeNumber = Field(
        description="The number of the agent's prompt version to replay against its active version "
        "(the agent page and the evolution review list them).",
        ge=1,
    )
    sample: WholeNumber | None = Field(
        default=None,
        description="How many past tasks to replay (at most the agent's finished tasks). Without it, "
        "as many as the power calculation asks: enough to show, with 95% power, that the candidate "
        "is no worse than the active version by more than 5 points.",
        ge=1,
        le=MAX_SAMPLE,
        # Published beside the anyOf, where they bound a number and let null through.
        json_schema_extra={"minimum": 1, "maximum": MAX_SAMPLE},
    )


class ReplayCreatedOut(Schema):
    id: int = Field(description="The replay's id: GET /api/v1/replays/{id} follows it.")
    state: str
    url: str = Field(description="This replay in the API.")
    html_url: str = Field(description="The replay on the evolution review.")


class ProgressOut(Schema):
    done: int = Field(description="Items seen through both versions.")
    total: int = Field(description="Items planned.")


class ReplayOut(Schema):
    id: int
    agent: str
    kind: str = Field(description="replay (past tasks), shadow (mirrored live tasks) or probe (adversarial).")
    baseline: int = Field(description="The active version's number when the replay started.")
    candidate: int
    state: str = Field(description="queued, running, done, failed or cancelled.")
    progress: ProgressOut
    spent_usd: str = Field(description="What its model calls cost so far (both versions), in dollars.")
    budget_usd: str = Field(
        description="Its spending cap, in dollars: it stops there and is decided on what it has."
    )
    plan: dict[str, Any] = Field(
        description="How the sample was drawn and sized (strata, power, assumptions)."
    )
    created_at: str
    started_at: str | None
    finished_at: str | None
    verdict: str | None = Field(description="pass or fail once done; null before.")
    reason: str = Field(description="Why, in words.")
    pairs: int | None = None
    baseline_pass: int | None = None
    candidate_pass: int | None = None
    both_pass: int | None = None
    only_baseline: int | None = Field(default=None, description="Tasks that pass on the active version only.")
    only_candidate: int | None = Field(default=None, description="Tasks that pass on the candidate only.")
    neither: int | None = None
    mcnemar_p: float | None = Field(
        default=None, description="Exact two-sided McNemar p-value on the discordant pairs."
    )
    noninferiority_margin: float | None = None
    noninferiority_p: float | None = Field(
        default=None,
        description="One-sided p-value of the candidate's pass rate being worse than the active "
        "version's by the margin or more (a paired score test).",
    )
    cost_delta_ci: list[float] | None = Field(
        default=None, description="95% paired bootstrap interval of the cost change per task, in dollars."
    )
    latency_delta_ci: list[float] | None = Field(
        default=None, description="95% paired bootstrap interval of the latency change per task, in ms."
    )
    tokens_delta_ci: list[float] | None = None
    families: dict[str, Any] | None = Field(
        default=None, description="For probes: hit rates per probe family, active version and candidate."
    )
    html_url: str


def _agent_or_404(request: TokenHttpRequest, name: str) -> Agent:
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        raise Http404(f"There is no agent {name!r}.")
    _check_scope(request, agent)
    return agent


def _check_scope(request: TokenHttpRequest, agent: Agent) -> None:
    boards = list(agent.boards.all())
    if boards and all(request.auth.board_problem(board) for board in boards):
        raise AuthorizationError(
            message=f"This API token may not use any board agent {agent.name!r} serves; use a token for one of them."
        )


def _replay_out(request: TokenHttpRequest, replay: Replay) -> dict[str, Any]:
    stats = replay.stats or {}
    done = replay.state == Replay.State.DONE
    out: dict[str, Any] = {
        "id": replay.pk,
        "agent": replay.agent.name,
        "kind": replay.kind,
        "baseline": replay.baseline.number,
        "candidate": replay.candidate.number,
        "state": replay.state,
        "progress": {"done": replay.done, "total": replay.total},
        "spent_usd": format(replay.spent_usd.normalize(), "f"),
        "budget_usd": format(replay.budget_usd.normalize(), "f"),
        "plan": replay.plan,
        "created_at": replay.created_at.isoformat(),
        "started_at": replay.started_at.isoformat() if replay.started_at else None,
        "finished_at": replay.finished_at.isoformat() if replay.finished_at else None,
        "verdict": replay.verdict or None,
        "reason": replay.reason,
        "html_url": request.build_absolute_uri(replay.get_absolute_url()),
    }
    if done and replay.kind == Replay.Kind.PROBE:
        out["families"] = stats.get("families", {})
    elif done:
        for name in ReplayOut.model_fields:
            if name in stats and name not in out:
                out[name] = stats[name]
    return out


@router.post(
    "/agents/{name}/replays",
    response={202: ReplayCreatedOut, **ERRORS, 409: ErrorOut},
    operation_id="replay_create",
    summary="Replay a prompt version on an agent's past work",
    url_name="replay-create",
)
def replay_create(
    request: TokenHttpRequest,
    payload: ReplayIn,
    name: str = Path(..., description="The agent's name (URL-encoded).", min_length=1, max_length=100),
) -> Status[dict[str, Any]]:
    """Queue a replay of the candidate version against the agent's active version on a
    stratified sample of its past tasks (by capability, input length and past outcome), with
    the inspection the line runs and reviewers' earlier verdicts as the ground truth. Nothing
    moves on any board; the calls are marked as replay calls in the ledger and capped by the
    agent's replay budget. Answers 202 with the replay's id; 404 for an unknown agent or a
    version that is not the agent's; 409 when a replay of that version is already queued or
    running; 403 without a write token whose user may change agents."""
    if not request.auth.can_write or not request.auth.user.has_perm(PROPOSE_PERMISSION):
        raise AuthorizationError(
            message=f"Starting a replay needs a write token whose user may change agents ({PROPOSE_PERMISSION})."
        )
    agent = _agent_or_404(request, name)
    candidate = PromptVersion.objects.filter(agent=agent, number=payload.candidate).first()
    if candidate is None:
        raise Http404(f"Agent {agent.name!r} has no prompt version {payload.candidate}.")
    try:
        replay = genchi.replay_start(
            agent=agent, candidate=candidate, sample=payload.sample, user=request.auth.user
        )
    except genchi.ReplayOpen as exc:
        # Not about a field: answered 409 by the API's handler of service errors.
        raise DjangoValidationError(
            f"A replay of v{candidate.number} is already {exc.replay.state} (id {exc.replay.pk}): "
            f"follow it at GET /api/v1/replays/{exc.replay.pk}."
        ) from None
    return Status(
        202,
        {
            "id": replay.pk,
            "state": replay.state,
            "url": request.build_absolute_uri(
                reverse("api-v1:replay-detail", kwargs={"replay_id": replay.pk})
            ),
            "html_url": request.build_absolute_uri(replay.get_absolute_url()),
        },
    )


@router.get(
    "/replays/{replay_id}",
    response={200: ReplayOut, **ERRORS},
    operation_id="replay_detail",
    summary="A replay's progress and verdict",
    url_name="replay-detail",
)
def replay_detail(request: TokenHttpRequest, replay_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """A replay (or a shadow or probe run): its state, its progress, and once done the paired
    statistics (pairs, the two pass counts and the flip counts, exact McNemar, the
    non-inferiority test at its margin, bootstrap intervals of the cost and latency change per
    task) and its verdict with the reasons."""
    replay = Replay.objects.select_related("agent", "baseline", "candidate").filter(pk=replay_id).first()
    if replay is None:
        raise Http404(f"There is no replay {replay_id}.")
    _check_scope(request, replay.agent)
    return _replay_out(request, replay)


# --- similar work (the knowledge base) --------------------------------------------------

MAX_SIMILAR_TEXT = 4000


class SimilarFilters(Schema):
    """The query of ``GET /api/v1/similar``: a text or a task, and filters."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        None,
        description="Find past tasks like this text (a task's title and input, as you would write them).",
        json_schema_extra={"maxLength": MAX_SIMILAR_TEXT, "pattern": MULTILINE_PATTERN},
    )
    task: int | None = Field(
        None, description="Find past tasks like this task (its own attempts left out).", ge=1, le=MAX_ID
    )
    agent: str | None = Field(
        None,
        description="Only past tasks of the agent of this name.",
        json_schema_extra={"maxLength": Agent._meta.get_field("name").max_length, "pattern": LINE_PATTERN},
    )
    verdict: Pattern.Verdict | None = Field(
        None,
        description="Only attempts with this outcome: passed (inspection, no person), approved, corrected "
        "(approved with a reviewer's correction), rejected, or defect (failed inspection, no Review column).",
    )
    limit: int = Field(10, description="At most this many, most similar first.", ge=1, le=50)


class SimilarOut(Schema):
    task: int = Field(description="The past task's id (GET /api/v1/tasks/{id}).")
    similarity: float = Field(
        description="Cosine similarity of the two texts' embeddings, 0 (unrelated) to 1 (the same).",
        ge=0,
        le=1,
    )
    verdict: str = Field(description="passed, approved, corrected, rejected or defect.")
    agent: str | None
    title: str
    attempt: int
    prompt_version: int | None
    reason: str = Field(description="The reviewer's reason or note, or the inspection's failures.")
    correction: str = Field(description="The reviewer's corrected output, for a corrected attempt.")
    decided_at: str = Field(description="When the outcome was known.")


class SimilarPageOut(Schema):
    model: str = Field(description="The embedding model that placed the texts (recorded with each vector).")
    backend: str = Field(description="numpy (exact search) or pgvector (HNSW index).")
    results: list[SimilarOut]


@router.get(
    "/similar",
    response={200: SimilarPageOut, **ERRORS, 503: ErrorOut},
    operation_id="similar_list",
    summary="Find the past tasks most similar to a text or a task",
    url_name="similar-list",
    tags=["knowledge"],
)
def similar_list(
    request: TokenHttpRequest,
    filters: Query[SimilarFilters] = None,  # type: ignore[assignment]
) -> dict[str, Any]:
    """The knowledge base: finished attempts of past tasks whose title and input are most like
    the text (or the task) given, by sentence embeddings, most similar first, with the outcome
    each attempt had and what the reviewer said. Give exactly one of `text` and `task`. Only
    tasks on boards the token may use. 400 for bad parameters, 404 for an unknown task or agent,
    503 when the embedding model (a configured embeddings server) cannot be reached."""
    text = (filters.text or "").strip()
    if bool(text) == (filters.task is not None):
        message = "Give a text or a task, not both." if text else "Give a text or a task."
        # Per field: answered 400 by the API's handler of service errors.
        raise DjangoValidationError({"text": [message], "task": [message]})
    slugs = request.auth.board_slugs()
    board_ids = (
        None if slugs is None else set(Board.objects.filter(slug__in=slugs).values_list("pk", flat=True))
    )
    task = None
    if filters.task is not None:
        task = Task.objects.select_related("board").filter(pk=filters.task).first()
        if task is None:
            raise Http404(f"There is no task {filters.task}.")
        if problem := request.auth.board_problem(task.board):
            raise AuthorizationError(message=problem)
    agent_ids = None
    if filters.agent:
        agent = Agent.objects.filter(name=filters.agent).first()
        if agent is None:
            raise Http404(f"There is no agent {filters.agent!r}.")
        agent_ids = [agent.pk]
    try:
        found = knowledge.similar_patterns(
            text=text,
            task=task,
            agent_ids=agent_ids,
            verdicts=[filters.verdict] if filters.verdict else None,
            limit=filters.limit,
            board_ids=board_ids,
        )
    except EmbeddingError as exc:
        raise HttpError(503, f"The embedding model could not be reached: {exc}") from None
    return {
        "model": get_embedder().name,
        "backend": vectors.vector_backend(),
        "results": [
            {
                "task": hit.pattern.task_id,
                "similarity": round(hit.similarity, 4),
                "verdict": hit.pattern.verdict,
                "agent": hit.pattern.agent.name if hit.pattern.agent else None,
                "title": hit.pattern.task.title,
                "attempt": hit.pattern.attempt,
                "prompt_version": hit.pattern.prompt_version,
                "reason": hit.pattern.reason,
                "correction": hit.pattern.correction,
                "decided_at": hit.pattern.created_at.isoformat(),
            }
            for hit in found
        ],
    }
