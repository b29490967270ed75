"""Finding tasks: the filters and orders that the task list page, its CSV export
and the API's task list share, so the three always agree on what matches.

Selectors only: they read. Each runs a fixed number of queries whatever the
number of tasks (a count and a page; the export streams in chunks).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Q, QuerySet

from boards.agents.spec import COST_PLACES
from boards.models import Board, Task

# The orders a list may be sorted in, each ending in the primary key so pages
# never overlap or skip a task when many share a value.
SORTS: dict[str, tuple] = {
    "newest": ("-created_at", "-pk"),
    "oldest": ("created_at", "pk"),
    "finished": (F("finished_at").desc(nulls_last=True), "-pk"),
    "priority": ("-priority", "-created_at", "-pk"),
    "cost": ("-cost", "-pk"),
    "title": ("title", "pk"),
}

SORT_LABELS = {
    "newest": "Newest first",
    "oldest": "Oldest first",
    "finished": "Recently finished",
    "priority": "Most urgent",
    "cost": "Most expensive",
    "title": "Title, A to Z",
}


@dataclass(frozen=True)
class TaskFilter:
    """What a list of a board's tasks is narrowed to; empty values filter nothing.
    Times are aware datetimes: ``*_after`` includes the moment, ``*_before`` does not."""

    statuses: tuple[str, ...] = ()
    column_id: int | None = None
    agent: str = ""
    capability: str = ""
    text: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    sort: str = "newest"


def task_list(*, board: Board, filters: TaskFilter) -> QuerySet[Task]:
    """The board's tasks that match ``filters``, in its order, with their column
    and agent joined (a page of them costs one query)."""
    tasks = Task.objects.filter(board=board)
    if filters.statuses:
        tasks = tasks.filter(status__in=filters.statuses)
    if filters.column_id is not None:
        tasks = tasks.filter(column_id=filters.column_id)
    if filters.agent:
        tasks = tasks.filter(agent__name=filters.agent)
    if filters.capability:
        tasks = tasks.filter(capability=filters.capability)
    if filters.text:
        tasks = tasks.filter(Q(title__icontains=filters.text) | Q(input__icontains=filters.text))
    if filters.created_after is not None:
        tasks = tasks.filter(created_at__gte=filters.created_after)
    if filters.created_before is not None:
        tasks = tasks.filter(created_at__lt=filters.created_before)
    if filters.finished_after is not None:
        tasks = tasks.filter(finished_at__gte=filters.finished_after)
    if filters.finished_before is not None:
        tasks = tasks.filter(finished_at__lt=filters.finished_before)
    return tasks.select_related("column", "agent").order_by(*SORTS.get(filters.sort, SORTS["newest"]))


# The export's columns (boards.task_files.EXPORT_COLUMNS), as fields to read.
_EXPORT_FIELDS = (
    "pk",
    "title",
    "status",
    "column__name",
    "capability",
    "priority",
    "agent__name",
    "input",
    "output",
    "confidence",
    "cost",
    "tokens_in",
    "tokens_out",
    "model_calls",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
)


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        # Exact, with the ledger's ten places: never a float, never "0E-10".
        return format(value.quantize(COST_PLACES), "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def task_export_rows(*, board: Board, filters: TaskFilter, chunk_size: int = 2000) -> Iterator[list[object]]:
    """The matching tasks as export rows, read ``chunk_size`` at a time (a
    server-side cursor on PostgreSQL): memory stays flat however many match."""
    rows = (
        task_list(board=board, filters=filters)
        .select_related(None)
        .values_list(*_EXPORT_FIELDS)
        .iterator(chunk_size=chunk_size)
    )
    for row in rows:
        yield [_cell(value) for value in row]
