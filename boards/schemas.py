"""Request and response shapes of the JSON API (``boards.api``).

They are the contract published in ``/api/v1/openapi.json``: field descriptions
here end up in the schema clients read, so they say what a value means.
"""

from __future__ import annotations

from datetime import datetime

from ninja import Field, Schema
from pydantic import ConfigDict, StrictBool, StrictInt, StrictStr

from boards.models import Column, ModelCall, Task


class ErrorOut(Schema):
    """The one shape of every error the API returns (400, 401, 404, 409)."""

    detail: str = Field(description="What went wrong and what to do about it, in one sentence.")
    errors: dict[str, list[str]] = Field(
        description="Messages per request field (`title`, `priority`, ...; `body` for the body as a "
        "whole, `task_id` or another name for a path parameter). Empty when no single field is at fault."
    )


class TaskIn(Schema):
    # Unknown fields are refused rather than ignored, so a misspelt field
    # ("titel") is reported instead of silently creating a task without it.
    # Strict types: a priority of "5" or true is a client bug worth hearing about.
    model_config = ConfigDict(extra="forbid")

    title: StrictStr = Field(description="What the task is, at most 200 characters.")
    input: StrictStr = Field(description="The material the agent works on (may be empty).")
    capability: StrictStr = Field(
        "",
        description="A capability some agent on the board offers; only such an agent pulls the task. "
        "Empty for any agent.",
    )
    priority: StrictInt = Field(0, description="From -1000 to 1000; higher is pulled first.")
    allow_reuse: StrictBool = Field(
        True,
        description="Let the agent take the result of an identical task it already completed (same "
        "normalised input, capability and prompt version) instead of calling a model, when the agent "
        "reuses results. False to have the task run afresh.",
    )


class ColumnRefOut(Schema):
    name: str
    role: Column.Role


class AgentRefOut(Schema):
    name: str
    models: list[str] = Field(
        description="The models of the agent's cascade, cheapest first (tried in this order, a later one "
        "only when the earlier one's answer is not confident enough). Empty for an agent whose custom "
        "class does not use the cascade."
    )
    implementation: str | None = Field(
        description="The dotted path of the agent's custom class, or null for a prompt and cascade agent."
    )
    simulated: bool = Field(description="True when the agent's model is Kaizen's offline simulated provider.")


class TaskOut(Schema):
    id: int
    title: str
    input: str
    status: Task.Status
    board: str = Field(description="The slug of the task's board.")
    column: ColumnRefOut
    agent: AgentRefOut | None = Field(description="The agent that ran or runs the task; null before.")
    output: str
    confidence: float | None
    confidence_source: str = Field(
        description="How the confidence was obtained: logprobs, structured (stated by the model), "
        "simulated, none, or a custom agent's own name; empty before the task has an output."
    )
    accepted_tier: int | None = Field(
        description="The cascade tier (1 = cheapest) whose output was taken; null before, or when no tier "
        "made the output (a reused result, a custom agent)."
    )
    prompt_version: int | None = Field(
        description="The agent's prompt version the task ran with; null before."
    )
    reused_from: int | None = Field(
        description="The id of the identical earlier task whose result this task took, or null."
    )
    cost: str = Field(
        description="Dollars spent on model calls for this task over all its attempts, exact, as a decimal "
        'string with ten places (such as "0.0001845000"); cache hits and reused results cost nothing.'
    )
    tokens_in: int = Field(description="Input tokens of every model call for the task.")
    tokens_out: int = Field(description="Output tokens of every model call for the task.")
    model_calls: int = Field(description="Model calls made for the task (cache hits not counted).")
    cache_hits: int = Field(description="Calls served from the response cache instead of a model.")
    attempts: int
    priority: int
    capability: str
    blocked: str | None = Field(description="Why the task is blocked, or null when it is not.")
    created_at: datetime
    started_at: datetime | None = Field(description="When an agent last claimed the task.")
    finished_at: datetime | None
    updated_at: datetime


class BoardOut(Schema):
    slug: str
    name: str
    description: str
    paused: bool = Field(description="A paused board's agents pull nothing.")
    url: str = Field(description="This board in the API.")
    html_url: str = Field(description="The live board in the browser.")


class ColumnOut(Schema):
    id: int
    name: str
    role: Column.Role
    task_count: int
    wip_limit: int | None = Field(description="Most tasks the column may hold; null for no limit.")
    hard_limit: bool = Field(
        description="A hard limit refuses tasks once reached; a soft one lets people exceed it."
    )
    wip_state: Column.WipState = Field(description="The Kanban state of the column for its task count.")


class BoardDetailOut(BoardOut):
    columns: list[ColumnOut] = Field(description="In board order, left to right.")


class ModelCallOut(Schema):
    """One row of the ledger: a model call, or a call avoided (a cache hit, a reused result)."""

    id: int
    created_at: datetime
    attempt: int = Field(description="The task's attempt the call belongs to (1 for the first).")
    tier: int | None = Field(description="The cascade tier called (1 = cheapest); null for a reused result.")
    source: ModelCall.Source = Field(
        description="model: a call to the model; cache: served from the response cache; reuse: the result "
        "of an identical earlier task was taken."
    )
    provider: str
    model: str
    simulated: bool = Field(description="True when the call went to the offline simulated provider.")
    prompt_version: int | None
    tokens_in: int
    tokens_out: int
    cost: str = Field(description="Dollars, exact, as a decimal string with ten places.")
    latency_ms: float
    confidence: float | None
    confidence_source: str
    accepted: bool = Field(
        description="This call's output was the one taken: it reached its tier's threshold, or was the last tier's."
    )
    stale: bool = Field(
        description="The call's run returned after its lease had expired: its result was ignored (never "
        "accepted), and its cost still counts in the task's totals."
    )
    error: str = Field(description="Why the call failed (the next tier was tried); empty when it did not.")
    reused_from: int | None = Field(
        description="For a reused result: the id of the task whose result was taken."
    )
