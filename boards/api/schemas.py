"""Request and response shapes of the JSON API (``boards.api.endpoints``).

They are the contract published in ``/api/v1/openapi.json``: field descriptions
here end up in the schema clients read, so they say what a value means.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import BeforeValidator, ConfigDict, StrictBool, StrictInt, StrictStr, field_validator

from boards.models import CAPABILITY_MAX_LENGTH, Agent, Column, ModelCall, Task
from boards.services import MAX_INPUT, MAX_PRIORITY, MAX_TITLE, MIN_PRIORITY
from boards.task_search import SORTS
from boards.text import LINE_PATTERN, MULTILINE_PATTERN, TITLE_PATTERN, text_problem

# The largest page of the task list, and how far into it a client may page.
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_OFFSET = 1_000_000_000
MAX_QUERY_TEXT = 200


class ErrorOut(Schema):
    """The one shape of every error the API returns (400, 401, 403, 404, 405, 409, 413, 415, 500)."""

    detail: str = Field(description="What went wrong and what to do about it, in one sentence.")
    errors: dict[str, list[str]] = Field(
        description="Messages per request field (`title`, `priority`, ...; `body` for the body as a "
        "whole, `task_id` or another name for a path parameter). Empty when no single field is at fault."
    )


def _whole_number(value: object) -> object:
    # JSON Schema's integer includes 5.0 (a number with no fraction), so a client
    # may send it; a string of digits or a boolean is still a client bug.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_number)]


class TaskIn(Schema):
    # Unknown fields are refused rather than ignored, so a misspelt field
    # ("titel") is reported instead of silently creating a task without it.
    # Strict types: a priority of "5" or true is a client bug worth hearing about.
    model_config = ConfigDict(extra="forbid")

    # The limits below are published in the schema (json_schema_extra) and
    # enforced by boards.services.task_fields_errors, whose messages say what to do.
    title: StrictStr = Field(
        description=f"What the task is: 1 to {MAX_TITLE} characters on one line, not only whitespace "
        "(surrounding whitespace is removed), no control characters.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_TITLE, "pattern": TITLE_PATTERN},
    )
    input: StrictStr = Field(
        "",
        description=f"The material the agent works on; may be empty (the default). At most {MAX_INPUT:,} "
        "characters; no control characters other than tab, newline and carriage return.",
        json_schema_extra={"maxLength": MAX_INPUT, "pattern": MULTILINE_PATTERN},
    )
    capability: StrictStr = Field(
        "",
        description="A capability some agent on the board offers (`GET /api/v1/boards/{slug}` lists them); "
        "only such an agent pulls the task. Empty for any agent. One that no agent offers is refused with 409.",
        json_schema_extra={"maxLength": CAPABILITY_MAX_LENGTH, "pattern": LINE_PATTERN},
    )
    priority: WholeNumber = Field(
        0,
        description=f"From {MIN_PRIORITY} to {MAX_PRIORITY}; higher is pulled first.",
        json_schema_extra={"minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
    )
    allow_reuse: StrictBool = Field(
        True,
        description="Let the agent take the result of an identical task it already completed (same "
        "normalised input, capability and prompt version) instead of calling a model, when the agent "
        "reuses results. False to have the task run afresh.",
    )


# Tasks one bulk request may add. A thousand tasks of ordinary size fit the body
# limit, and a batch is written in one transaction under the board lock: a bigger
# one would hold the lock, and a worker waiting to pull, for longer.
MAX_BULK_TASKS = 1000


class TaskBulkIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(
        description=f"The tasks to add, 1 to {MAX_BULK_TASKS:,}, each as `POST /api/v1/boards/{{slug}}/tasks` "
        "takes it. They enter the intake column in this order among tasks of equal priority.",
        min_length=1,
        max_length=MAX_BULK_TASKS,
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


class TaskBulkOut(Schema):
    """The tasks a bulk request added, in the order they were sent."""

    count: int = Field(description="How many tasks were added: all that were sent.")
    tasks: list[TaskOut] = Field(
        description="The tasks, in the order sent, as `GET /api/v1/tasks/{id}` shows them."
    )


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
    capabilities: list[str] = Field(
        description="The capabilities the board's agents offer: what a task's `capability` may ask for."
    )


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


def _text_filter(value: str | None) -> str | None:
    if value is not None and (problem := text_problem(value)):
        raise ValueError(problem.rstrip("."))
    return value


def _utc(value: datetime | None) -> datetime | None:
    """A time filter in UTC (UTC when no offset is given)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:59-01:00 is past the last moment UTC can name: the
        # nearest one means the same for a filter.
        return datetime.max.replace(tzinfo=UTC) if value.year > 1 else datetime.min.replace(tzinfo=UTC)


class TaskFilters(Schema):
    """The task list's query parameters: every filter given must match."""

    model_config = ConfigDict(extra="forbid")

    status: list[Task.Status] | None = Field(
        None, description="Only tasks in this status; repeat the parameter for any of several."
    )
    column: int | None = Field(
        None,
        description="Only tasks in this column (its `id` in `GET /api/v1/boards/{slug}`).",
        ge=1,
        le=2**63 - 1,
    )
    agent: str | None = Field(
        None,
        description="Only tasks run by the agent of this name.",
        json_schema_extra={"maxLength": Agent._meta.get_field("name").max_length, "pattern": LINE_PATTERN},
    )
    capability: str | None = Field(
        None,
        description="Only tasks asking for this capability.",
        json_schema_extra={"maxLength": CAPABILITY_MAX_LENGTH, "pattern": LINE_PATTERN},
    )
    q: str | None = Field(
        None,
        description="Only tasks whose title or input contains this text, ignoring case.",
        json_schema_extra={"maxLength": MAX_QUERY_TEXT, "pattern": LINE_PATTERN},
    )
    created_after: datetime | None = Field(
        None, description="Only tasks created at or after this time (ISO 8601; UTC when no offset is given)."
    )
    created_before: datetime | None = Field(None, description="Only tasks created before this time.")
    finished_after: datetime | None = Field(None, description="Only tasks finished at or after this time.")
    finished_before: datetime | None = Field(None, description="Only tasks finished before this time.")
    sort: Literal[tuple(SORTS)] = Field(  # type: ignore[valid-type]
        "newest",
        description="newest (the default) or oldest created first; finished: the most recently finished "
        "first; priority: the most urgent first; cost: the most expensive first; title: A to Z.",
    )
    limit: int = Field(
        DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description=f"Tasks per page, at most {MAX_PAGE_SIZE}."
    )
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="How many matching tasks to skip.")

    @field_validator("agent", "capability", "q", mode="after")
    @classmethod
    def _one_line_text(cls, value: str | None) -> str | None:
        if value is not None and len(value) > MAX_QUERY_TEXT:
            raise ValueError(f"Keep it to {MAX_QUERY_TEXT} characters")
        return _text_filter(value)

    @field_validator("created_after", "created_before", "finished_after", "finished_before", mode="after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class TaskPageOut(Schema):
    """One page of a board's task list."""

    count: int = Field(description="How many tasks match the filters, over all pages.")
    next: str | None = Field(description="The URL of the next page, or null on the last.")
    previous: str | None = Field(description="The URL of the previous page, or null on the first.")
    results: list[TaskOut] = Field(description="This page's tasks, in the order `sort` asks for.")


class MudaFilters(Schema):
    """The Muda report's query parameters."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(
        None,
        description="The window's start (ISO 8601; UTC when no offset is given). Default: 7 days before `until`, or the board's creation when later.",
    )
    until: datetime | None = Field(None, description="The window's end, not included. Default: now.")
    agent: str | None = Field(
        None,
        description="Only this agent's work (its name); default: the whole board.",
        json_schema_extra={"maxLength": Agent._meta.get_field("name").max_length, "pattern": LINE_PATTERN},
    )

    @field_validator("agent", mode="after")
    @classmethod
    def _one_line_text(cls, value: str | None) -> str | None:
        return _text_filter(value)

    @field_validator("since", "until", mode="after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class WasteOut(Schema):
    """One waste (or measure) over the window."""

    name: str = Field(
        description="overproduction, waiting, transport, over_processing, inventory, motion, defects, "
        "token_efficiency or escalation_rate."
    )
    label: str = Field(description="Its name as the Muda page shows it.")
    value: float | None = Field(
        description="Its value over the window, in `unit`; null when there is no data."
    )
    unit: str = Field(description="`%`, or `calls/item` for transport.")
    cost: float | None = Field(
        description="Dollars it cost over the window; null for a waste that spends no model money (waiting, "
        "inventory) and for the escalation rate."
    )
    target: float = Field(
        description="The target, in `unit`: met strictly below it (or above, see `better`)."
    )
    better: Literal["lower", "higher"] = Field(description="Which way is better.")
    met: bool | None = Field(description="Whether the value meets the target; null without data.")
    definition: str = Field(description="What is counted, and how.")
    parts: dict[str, float | int | None] = Field(
        description="What the value is made of (counts, tokens, seconds)."
    )


class MudaOut(Schema):
    """The seven wastes of a board (or one agent's work on it) over a window."""

    board: str = Field(description="The board's slug.")
    agent: str | None = Field(description="The agent whose work this is, or null for the whole board.")
    since: datetime = Field(description="The window's start.")
    until: datetime = Field(description="The window's end (not included).")
    wastes: list[WasteOut] = Field(
        description="The seven wastes, in this order: overproduction, waiting, transport, over_processing, "
        "inventory, motion, defects."
    )
    token_efficiency: WasteOut = Field(
        description="Output tokens that reached a finished output; target > 80%."
    )
    escalation_rate: WasteOut = Field(description="Outputs escalated to a person; target < 5%.")
    unreviewed_defects: int = Field(
        description="Outputs that failed inspection and reached Done without a person's decision (target: 0)."
    )
    html_url: str = Field(description="The board's Muda page.")


# --- flow (GET /api/v1/boards/{slug}/flow) ------------------------------------------


class FlowFilters(Schema):
    """The flow measures' window, slice and forecast."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(
        None,
        description="Start of the window (ISO 8601; UTC when no offset is given). Default: 7 days before `until`, or the board's creation when later.",
    )
    until: datetime | None = Field(None, description="End of the window. Default: now.")
    agent: str | None = Field(
        None,
        description="Only items whose agent (the last to claim them) has this name; ledger, inspections "
        "and escalations of this agent.",
        json_schema_extra={"maxLength": Agent._meta.get_field("name").max_length, "pattern": LINE_PATTERN},
    )
    capability: str | None = Field(
        None,
        description="Only items asking for this capability.",
        json_schema_extra={"maxLength": CAPABILITY_MAX_LENGTH, "pattern": LINE_PATTERN},
    )
    resolution: Literal["1m", "5m", "15m", "1h", "6h", "1d", "1w"] | None = Field(
        None, description="Period of the WIP and CFD series; default: the finest giving at most 400 points."
    )
    forecast_items: int | None = Field(
        None, ge=1, le=100_000, description="Forecast when the next N items will be done."
    )
    forecast_date: datetime | None = Field(
        None, description="Forecast how many items will be done by this date."
    )
    forecast_period: Literal["hour", "day"] | None = Field(
        None, description="The throughput period the forecast resamples (default hour)."
    )
    sample_days: int | None = Field(
        None,
        ge=1,
        le=365,
        description="The sampling window: this many days before the end of the window (default 7).",
    )

    @field_validator("agent", "capability", mode="after")
    @classmethod
    def _one_line_text(cls, value: str | None) -> str | None:
        if value is not None and len(value) > MAX_QUERY_TEXT:
            raise ValueError(f"Keep it to {MAX_QUERY_TEXT} characters")
        return _text_filter(value)

    @field_validator("since", "until", "forecast_date", mode="after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class FlowTimesOut(Schema):
    """Nearest-rank percentiles of a flow time, in seconds."""

    p50: float | None
    p70: float | None
    p85: float | None
    p95: float | None
    unit: Literal["s"]
    count: int = Field(description="How many items the percentiles are taken over.")


class FlowSeriesOut(Schema):
    periods: list[str] = Field(description="The start of each period (ISO 8601, UTC).")
    values: list[int]


class FlowThroughputOut(Schema):
    per_hour: FlowSeriesOut
    per_day: FlowSeriesOut
    total: int = Field(description="Items finished in the window.")


class FlowCfdOut(Schema):
    periods: list[str] = Field(description="The start of each period; counts are at its end.")
    bands: dict[str, list[int]] = Field(description="Items in each status at the end of each period.")


class FlowAgeOut(Schema):
    task: int
    title: str
    status: str
    column: str
    started_at: str = Field(description="The first claim.")
    age_s: float = Field(description="Seconds since the first claim, at the end of the window.")
    level: Literal["ok", "amber", "red"] = Field(
        description="amber past the 70th percentile of the window's cycle times, red past the 85th (the SLE)."
    )
    agent: str | None
    capability: str


class FlowOut(Schema):
    """A board's flow measures over a window, from the event log and the ledger."""

    window: dict[str, Any]
    percentile_method: Literal["nearest-rank"]
    definitions: dict[str, str]
    wip: FlowSeriesOut = Field(description="Items in In progress or Review at the end of each period.")
    wip_limits: dict[str, int | None]
    throughput: FlowThroughputOut
    cycle_time: FlowTimesOut
    lead_time: FlowTimesOut
    age: list[FlowAgeOut]
    cfd: FlowCfdOut
    xmr: dict[str, Any] = Field(
        description="XmR charts of cycle time and throughput, with limits and signals."
    )
    agent_line: dict[str, Any] = Field(
        description="First-pass yield, rework, escalation rate and cost per item."
    )
    forecast: dict[str, Any] | None = Field(
        None,
        description="Monte Carlo answer (percentile tables) when forecast_items or forecast_date is given.",
    )
