"""The building blocks every change to the line is made of: the board lock, a
column's WIP check, where a task goes in a column, its events, and taking a task
out of In progress (or Review) after a failed, lost or rejected run.

None of them commits or broadcasts: a service calls them inside its own
transaction, then schedules the live update (``board_changed_on_commit``, in
``boards.services.pull``). They are public because the reviewers' services
(``andon.services``) make their decisions out of the same blocks.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Exists, Field, Max, OuterRef, QuerySet, Subquery
from django.utils import timezone

from boards.models import Agent, Board, Column, Task, TaskEvent
from kaizen_web.prepared import Prepared, fields, prepared_cursor
from kaizen_web.rows import db_value, value_kinds

Role = Column.Role
Status = Task.Status

# Keyed by str: a column's role is read from a CharField.
STATUS_FOR_ROLE: dict[str, Task.Status] = {
    Role.BACKLOG: Status.BACKLOG,
    Role.READY: Status.READY,
    Role.IN_PROGRESS: Status.RUNNING,
    Role.REVIEW: Status.REVIEW,
    Role.DONE: Status.DONE,
}

POSITION_GAP = 1024


class WipLimitReached(ValidationError):
    """A hard WIP limit refused a task."""


class ColumnMissing(ValidationError):
    """The board lacks a column the line needs (a Done column to finish tasks in)."""


def task_event(
    task: Task,
    kind: str,
    *,
    from_column: Column | None = None,
    to_column: Column | None = None,
    from_status: str = "",
    to_status: str = "",
    user: User | None = None,
    agent: Agent | None = None,
    note: str = "",
) -> TaskEvent:
    """The event recording a change to ``task`` (not saved: the caller saves it, or
    creates a batch of them at once). Its actor is the user, else the agent, else
    the system."""
    if user is not None:
        actor = TaskEvent.Actor.USER
    elif agent is not None:
        actor = TaskEvent.Actor.AGENT
    else:
        actor = TaskEvent.Actor.SYSTEM
    return TaskEvent(
        task=task,
        board_id=task.board_id,
        kind=kind,
        from_column=from_column,
        to_column=to_column,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        agent=agent,
        user=user,
        note=note,
    )


def column_required(board_id: int, role: str, columns: dict[str, Column] | None = None) -> Column:
    """The board's column with ``role`` (from ``columns`` when the caller has read
    them already), or a ColumnMissing that names the board and the role."""
    if columns is None:
        # At most one column per role (a unique constraint); no ordering, which
        # would join the board for Column's default order.
        column = Column.objects.filter(board_id=board_id, role=role).order_by().first()
    else:
        column = columns.get(role)
    if column is None:
        name = Board.objects.filter(pk=board_id).values_list("name", flat=True).first()
        label = Role(role).label
        raise ColumnMissing(
            f"Board {name!r} has no {label} column: add a column with the role "
            f"{label} to the board (in the admin or its config file)."
        )
    return column


def _intake_columns(board_id: int) -> QuerySet:
    """The columns a board's new tasks may go to: its Backlog and its Ready."""
    return Column.objects.filter(board_id=board_id, role__in=[Role.BACKLOG, Role.READY]).order_by()


# Read for every import and demo task: compiled once (kaizen_web.prepared).
_INTAKE_COLUMNS = Prepared(
    lambda *, board_id: _intake_columns(board_id).values_list(*fields(Column)),
    board_id=int,
)


def intake_column(board: Board) -> Column:
    """Where new tasks go: the board's Backlog, else its Ready column."""
    return _intake_of(board, _INTAKE_COLUMNS.instances(Column, board_id=board.pk))


def _intake_of(board: Board, columns: list[Column]) -> Column:
    by_role = {c.role: c for c in columns}
    column = by_role.get(Role.BACKLOG) or by_role.get(Role.READY)
    if column is None:
        raise ValidationError(f"Board {board.name!r} has neither a Backlog nor a Ready column.")
    return column


def _slots(columns: QuerySet, priority: int) -> QuerySet:
    """``columns`` with where a task of ``priority`` would go in each: ``slot_last``,
    the last task's position (by the (column, position) index), and ``slot_lower``,
    whether a task of lower priority waits there (by the task_open_priority index,
    of unfinished tasks). For any column but Done: only a task in Done has finished
    (task_place sets finished_at there and clears it in a Backlog or a Ready; In
    progress and Review are entered only from Ready and In progress). Both look up
    an index: neither reads the column's tasks."""
    tasks = Task.objects.filter(column_id=OuterRef("pk")).order_by()
    return columns.annotate(
        slot_last=Subquery(tasks.order_by("-position").values("position")[:1]),
        slot_lower=Exists(tasks.filter(finished_at__isnull=True, priority__lt=priority)),
    ).values_list(*fields(Column), "slot_last", "slot_lower")


def _slot_of(column: Column) -> tuple[int | None, bool]:
    """What ``_slots`` read for ``column`` (Prepared.instances sets each annotation
    on its column): the last task's position, and whether a task of lower priority waits."""
    return column.slot_last, column.slot_lower  # type: ignore[attr-defined]


def _intake_places_query(*, board_id: int, priority: int) -> QuerySet:
    return _slots(_intake_columns(board_id), priority)


# Read for every task added: compiled once (kaizen_web.prepared).
_INTAKE_PLACES = Prepared(_intake_places_query, board_id=int, priority=int)


def intake_place(board: Board, priority: int) -> tuple[Column, int | None]:
    """Where a new task of ``priority`` goes, in one query: the intake column (as
    ``intake_column``) and, when the task goes last there (no task of lower
    priority waits in it, as is usual), its position, as ``task_place`` would
    find it; else None, and ``task_place`` finds its slot among them. (Both intake
    columns' slots are read, for the one query; a board has one or two.)"""
    column = _intake_of(
        board,
        _INTAKE_PLACES.instances(Column, ["slot_last", "slot_lower"], board_id=board.pk, priority=priority),
    )
    last, lower = _slot_of(column)
    return column, None if lower else _slot_after(last)


# Read at every pull and every task added to a limited column: compiled once
# (kaizen_web.prepared), as are the pull's other reads.
_COLUMN_COUNT = Prepared(
    lambda *, column_id: (
        Task.objects.filter(column_id=column_id).values("column_id").annotate(n=Count("pk")).values_list("n")
    ),
    column_id=int,
)
_BOARD_COLUMNS = Prepared(
    lambda *, board_id: Column.objects.filter(board_id=board_id).order_by().values_list(*fields(Column)),
    board_id=int,
)


def column_count(column: Column) -> int:
    row = _COLUMN_COUNT.first(column_id=column.pk)
    return row[0] if row else 0


def board_columns_by_role(board: Board) -> dict[str, Column]:
    """The board's columns by role (one query, compiled once)."""
    return {c.role: c for c in _BOARD_COLUMNS.instances(Column, board_id=board.pk)}


def wip_check(column: Column, *, adding: int = 1) -> str:
    """Refuse a task a hard limit has no room for; return a note when a soft
    limit is exceeded."""
    if column.wip_limit is None:
        return ""
    count = column_count(column)
    if count + adding <= column.wip_limit:
        return ""
    if column.hard_limit:
        raise WipLimitReached(
            f"{column.name} is at its hard WIP limit ({count}/{column.wip_limit}): "
            "finish or move a task out of it first."
        )
    return f"{column.name} is over its soft WIP limit ({count + adding}/{column.wip_limit})."


def slot_before(column: Column, before: Task | None, *, exclude_pk: int | None = None) -> int:
    """A position that puts a task just before ``before`` (or last) in ``column``."""
    others = Task.objects.filter(column=column)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    if before is None:
        return _slot_after(others.aggregate(m=Max("position"))["m"])
    previous = others.filter(position__lt=before.position).aggregate(m=Max("position"))["m"]
    low = previous if previous is not None else before.position - 2 * POSITION_GAP
    if before.position - low >= 2:
        return (low + before.position) // 2
    # No room left between the two: spread the column out again, then retry.
    _renumber(column)
    before.refresh_from_db(fields=["position"])
    return slot_before(column, before, exclude_pk=exclude_pk)


def _slot_after(last: int | None) -> int:
    """The position after ``last``, the column's last (None: an empty column)."""
    return (last or 0) + POSITION_GAP


def _renumber(column: Column) -> None:
    tasks = list(Task.objects.filter(column=column).order_by("position", "created_at", "pk"))
    for index, task in enumerate(tasks, start=1):
        task.position = index * POSITION_GAP
    Task.objects.bulk_update(tasks, ["position"], batch_size=500)


# Asked for every task that enters a column: compiled once (kaizen_web.prepared).
_SLOT = Prepared(
    lambda *, column_id, priority: _slots(Column.objects.filter(pk=column_id).order_by(), priority),
    column_id=int,
    priority=int,
)


def _slot_by_priority(column: Column, priority: int) -> int:
    """Where a task entering ``column`` (not Done, whose order is by time) goes:
    after every task of its priority or higher, before the first of lower priority.
    People may reorder afterwards. One query, by index (_slots), when it goes last,
    as it mostly does."""
    found = _SLOT.instances(Column, ["slot_last", "slot_lower"], column_id=column.pk, priority=priority)
    last, lower = _slot_of(found[0]) if found else (None, False)
    if not lower:
        return _slot_after(last)
    return slot_among_lower(column, priority)


def slot_among_lower(column: Column, priority: int) -> int:
    """Where a task of ``priority`` goes in ``column`` (not Done) where a task of
    lower priority waits: just before the first of them (last, if none waits by
    now). For a caller that has read whether one waits (_slots), in the
    transaction that places the task."""
    first_lower = Task.objects.filter(column=column, priority__lt=priority).order_by("position").first()
    return slot_before(column, first_lower)


def task_place(task: Task, column: Column, *, position: int | None = None) -> None:
    """Put ``task`` in ``column`` (not saved). Keeps status and timestamps in step."""
    task.column = column
    task.status = STATUS_FOR_ROLE[column.role]
    if position is not None:
        task.position = position
    elif column.role == Role.DONE:
        # Done shows the newest first.
        task.position = -int(timezone.now().timestamp() * 1000)
    else:
        task.position = _slot_by_priority(column, task.priority)
    if column.role == Role.DONE:
        task.finished_at = timezone.now()
    elif column.role in (Role.BACKLOG, Role.READY):
        task.finished_at = None
    if column.role != Role.IN_PROGRESS:
        task.lease_token = None
        task.lease_expires_at = None
        task.worker = ""


# What task_place changes, for a caller that writes the tasks itself (with its
# updated_at: auto_now is save()'s, not task_rows_update's).
PLACED_FIELDS = ["column", "status", "position", "finished_at", "lease_token", "lease_expires_at", "worker"]


def tasks_place_write(tasks: list[Task], column: Column) -> None:
    """Put ``tasks`` in ``column`` (not Done) one after another, each where
    task_place would put it, and write them. Given highest priority first (a
    Backlog's order), they mostly all go last: one read finds the first one's
    slot, the others follow it, and one statement writes them all (task_place
    and a save each cost a read and an UPDATE compiled anew: most of a pull that
    refills Ready while tasks arrive one by one).

    A task that goes among lower-priority ones (or comes after one of lower
    priority) has its slot read with every task placed before it written."""
    now = timezone.now()
    written = [*PLACED_FIELDS, "updated_at"]
    pending: list[Task] = []
    tail: Task | None = None  # the task placed just before, when it went last
    for task in tasks:
        if tail is not None and task.priority <= tail.priority:
            # Nothing of lower priority than the previous one waits, and this
            # one's is no higher: it goes last too.
            position = _slot_after(tail.position)
            goes_last = True
        else:
            task_rows_update(pending, written)
            pending = []
            found = _SLOT.instances(
                Column, ["slot_last", "slot_lower"], column_id=column.pk, priority=task.priority
            )
            last, lower = _slot_of(found[0]) if found else (None, False)
            position = slot_among_lower(column, task.priority) if lower else _slot_after(last)
            goes_last = not lower
        task_place(task, column, position=position)
        task.updated_at = now  # auto_now is save()'s, not task_rows_update's
        pending.append(task)
        tail = task if goes_last else None
    task_rows_update(pending, written)


def board_lock(board_id: int) -> Board:
    """Lock the board's row for the rest of the transaction, and return it."""
    # Every change that adds to a WIP-limited column takes this lock first, so
    # the count it checks cannot change under it, whatever the number of workers.
    # FOR NO KEY UPDATE, not FOR UPDATE: inserting a TaskEvent or saving a Task
    # takes a KEY SHARE lock on its board through the foreign key, which FOR
    # UPDATE would block. A run finishing (holding its task row, inserting its
    # event) would then wait on the board while a board-lock holder waits on that
    # task row: a deadlock. The two lock modes still exclude each other.
    found = _BOARD_LOCK.instances(Board, pk=board_id)
    if not found:
        raise Board.DoesNotExist(f"no board {board_id}")
    return found[0]


_BOARD_LOCK = Prepared(
    lambda *, pk: (
        Board.objects.filter(pk=pk).order_by().select_for_update(no_key=True).values_list(*fields(Board))
    ),
    pk=int,
)


def task_rows_update(tasks: list[Task], field_names: list[str]) -> None:
    """Write ``field_names`` of each task: one UPDATE statement run for every row
    (executemany). Django's bulk_update builds a CASE per row and field, which
    cost milliseconds of CPU per row while the board lock was held."""
    if not tasks:
        return
    fields = [_concrete_field(name) for name in field_names]
    quote = connection.ops.quote_name
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(Task._meta.db_table),
        ", ".join(f"{quote(_column(f))} = %s" for f in fields),
        quote(_column(Task._meta.pk)),
    )
    plain = [(f, f.attname, value_kinds(f, connection.vendor)) for f in fields]
    rows = [
        [db_value(f, getattr(task, name), connection, kinds) for f, name, kinds in plain] + [task.pk]
        for task in tasks
    ]
    # Prepared on PostgreSQL: the same statement for every row, planned once per connection.
    with prepared_cursor(connection.alias) as cursor:
        cursor.executemany(sql, rows)


def tasks_worker_set(runs: dict[int, str], *, worker: str) -> None:
    """Name ``worker`` on each task of ``runs`` (task id: lease token) whose run is
    still that one (running, with that token), in one statement of a fixed shape a
    run (executemany): a queryset's UPDATE was compiled at every batch begun."""
    if not runs:
        return
    quote = connection.ops.quote_name
    token_field = _concrete_field("lease_token")
    sql = "UPDATE {} SET {} = %s WHERE {} = %s AND {} = %s AND {} = %s".format(
        quote(Task._meta.db_table),
        quote(_column(_concrete_field("worker"))),
        quote(_column(Task._meta.pk)),
        quote(_column(token_field)),
        quote(_column(_concrete_field("status"))),
    )
    kinds = value_kinds(token_field, connection.vendor)
    rows = [
        [
            worker,
            task_id,
            db_value(token_field, uuid.UUID(token), connection, kinds),
            Task.Status.RUNNING.value,
        ]
        for task_id, token in runs.items()
    ]
    with prepared_cursor(connection.alias) as cursor:
        cursor.executemany(sql, rows)


def _concrete_field(name: str) -> Field:
    field = Task._meta.get_field(name)
    if not isinstance(field, Field):  # a reverse relation: no column of Task's
        raise ValueError(f"Task.{name} is not a column; task_rows_update writes columns.")
    return field


def _column(field: Field) -> str:
    if field.column is None:  # a many-to-many field
        raise ValueError(f"Task.{field.name} is not a column; task_rows_update writes columns.")
    return field.column


def task_return_or_fail(
    task: Task,
    *,
    kind: str,
    reason: str,
    user: User | None = None,
    verb: str = "failed",
    note: str = "",
) -> set[int]:
    """Take a task out of In progress after a failed or lost run (or out of Review
    after a reviewer rejected its output, ``verb`` "rejected"): back to Ready
    for another attempt, else to the Backlog, whichever exists and has room under
    its hard limit; to Done marked failed once the agent's attempts are used up,
    or when neither has room (a hard WIP limit is never exceeded, not even to
    return a task). ColumnMissing if the task must go to Done and there is none.
    Saves the task and its event; returns the columns that changed."""
    from_column = task.column
    from_status = task.status
    columns = {c.role: c for c in Column.objects.filter(board_id=task.board_id)}
    max_attempts = task.agent.max_attempts if task.agent else 1
    task.last_error = reason[:2000]
    target: Column | None = None
    if task.attempts >= max_attempts:
        note = note or f"{verb} after {task.attempts} attempt(s): {reason}"
    else:
        note = note or f"attempt {task.attempts} of {max_attempts} {verb}: {reason}"
        for role in (Role.READY, Role.BACKLOG):
            column = columns.get(role)
            if column is None:
                continue
            try:
                soft_note = wip_check(column)
            except WipLimitReached:
                continue
            target = column
            if soft_note:
                note = f"{note}; {soft_note}"
            break
        if target is None:
            note = (
                f"{note}; no room to return it (Ready and Backlog are full or missing), so it is "
                "marked failed: a person can move it back to Ready when there is room"
            )
    if target is None:
        target = column_required(task.board_id, Role.DONE, columns)
        task_place(task, target)
        task.status = Status.FAILED
    else:
        task_place(task, target)
    task.save()
    task_event(
        task,
        kind,
        from_column=from_column,
        to_column=target,
        from_status=from_status,
        to_status=task.status,
        user=user,
        agent=task.agent if kind in (TaskEvent.Kind.ATTEMPT_FAILED, TaskEvent.Kind.DEFERRED) else None,
        note=note,
    ).save()
    return {from_column.pk, target.pk}
