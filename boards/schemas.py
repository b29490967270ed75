"""Request and response shapes of the JSON API (``boards.api``).

They are the contract published in ``/api/v1/openapi.json``: field descriptions
here end up in the schema clients read, so they say what a value means.
"""

from __future__ import annotations

from datetime import datetime

from ninja import Field, Schema
from pydantic import ConfigDict, StrictInt, StrictStr

from boards.models import Column, Task


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


class ColumnRefOut(Schema):
    name: str
    role: Column.Role


class AgentRefOut(Schema):
    name: str
    provider: str
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
