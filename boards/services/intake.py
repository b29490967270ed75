"""Intake: tasks come onto the board, one at a time (the board's form, the API),
many at once (an imported file, all or nothing), or from a demo board's feed.
Each goes into the intake column (the Backlog, else Ready) where its priority
puts it, with its CREATED event, and the board pulls once they have committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import F, Max

from boards import demo_feed
from boards.models import Board, Column, Task, TaskEvent
from boards.selectors import board_capabilities_get
from boards.services.primitives import (
    POSITION_GAP,
    STATUS_FOR_ROLE,
    WipLimitReached,
    board_lock,
    column_count,
    intake_column,
    intake_place,
    slot_among_lower,
    task_event,
    task_place,
    wip_check,
)
from boards.services.pull import board_changed_on_commit
from boards.task_files import TaskRow
from boards.text import input_key, task_fields_errors
from kaizen_web.batching import Batcher
from kaizen_web.http import in_served_request
from kaizen_web.rows import rows_insert_linked

logger = logging.getLogger(__name__)


def task_create(
    *,
    board: Board,
    title: str,
    input: str = "",
    capability: str = "",
    priority: int = 0,
    allow_reuse: bool = True,
    user: User | None = None,
) -> Task:
    title = (title or "").strip()
    capability = (capability or "").strip()
    offered = board_capabilities_get(board=board) if capability else []
    errors = task_fields_errors(
        title=title, input=input, capability=capability, priority=priority, offered=offered
    )
    if errors:
        raise ValidationError(errors)

    task = Task(
        board=board,
        title=title,
        input=input,
        capability=capability,
        priority=priority,
        allow_reuse=allow_reuse,
        input_key=input_key(input),
    )
    place = None  # read by _task_insert, in the transaction
    if not connection.in_atomic_block:
        if settings.KAIZEN_INTAKE_GROUP_MS > 0 and in_served_request():
            return _intake_group.submit(partial(_task_insert, task, user=user))
        if connection.vendor == "postgresql":
            place = intake_place(board, priority)
            column, position = place
            if column.wip_limit is None and position is not None:
                # No count to hold still, a slot found by one read (the task goes
                # last), and the task and its event go in one statement
                # (rows_insert_linked): no transaction needed, nor its BEGIN and COMMIT.
                return _task_insert(task, user=user, place=place)
        # On SQLite the place is read after BEGIN IMMEDIATE, under the write lock,
        # as every other write is.
    with transaction.atomic():
        return _task_insert(task, user=user, place=place)


def _task_insert(task: Task, *, user: User | None, place: tuple[Column, int | None] | None = None) -> Task:
    """Put a new task in its board's intake column, with its CREATED event, inside
    the caller's transaction (or in autocommit on PostgreSQL, when it goes last in an
    intake column without a WIP limit); the live update and the pull follow the
    commit. ``place`` is ``intake_place``'s answer, if the caller asked already."""
    board = task.board
    column, position = place or intake_place(board, task.priority)
    if column.wip_limit is not None:
        # Only a limited intake needs its count held still while we add to it,
        # and the slot found before the lock may be taken meanwhile.
        board_lock(board.pk)
        position = None
    elif position is None:
        # intake_place saw a task of lower priority waiting: the slot among them,
        # here in the transaction, without asking again whether one waits.
        position = slot_among_lower(column, task.priority)
    note = wip_check(column)
    task_place(task, column, position=position)
    event = task_event(
        task, TaskEvent.Kind.CREATED, to_column=column, to_status=task.status, user=user, note=note
    )
    # Fixed-shape INSERTs (kaizen_web.rows): Model.save compiled its INSERT
    # anew for each task the API took. No signals, as with bulk_create:
    # nothing listens to these.
    rows_insert_linked(task, event, link="task")
    board_changed_on_commit(board.pk, [column.pk], pull=True)
    return task


class _IntakeGroup(Batcher[Callable[[], Task], Task]):
    """Tasks added by the web server's requests within KAIZEN_INTAKE_GROUP_MS of
    each other are written by one thread in one transaction, one after another as
    task_create would have written them, and each request gets its own task (or
    its own error) once that transaction has committed.

    Why: SQLite lets one connection write at a time. With eight clients posting
    tasks, the requests' threads spent some 84% of their time waiting at BEGIN
    for the write lock (py-spy, bench/sqlite_line.py), and SQLite's busy handler
    sleeps 1, 2, 5, 10 ... 100 ms between tries, so the lock often sat free
    while they slept. One writer for them all takes it once per batch. A batch
    refused for one of its tasks (a hard WIP limit reached by its third, say) is
    written again one task at a time, so each request gets the outcome it would
    have had alone. Off on PostgreSQL, where intakes commit side by side and one
    writer thread became the line's limit (bench/README.md, issue 15's ninth stop)."""

    MAX_BATCH = 100
    name = "intake"
    # What one task can be refused for; anything else (the database out of reach,
    # locked past its timeout) fails the whole batch at once.
    ONE_TASKS_FAULT = (ValidationError, IntegrityError, DataError)

    def linger(self) -> None:
        time.sleep(settings.KAIZEN_INTAKE_GROUP_MS / 1000)  # the requests arriving now join

    def flush(self, batch: list[tuple[Callable[[], Task], Future]]) -> None:
        try:
            self._commit(batch)
        except self.ONE_TASKS_FAULT:
            if len(batch) == 1:
                raise
            for one in batch:
                try:
                    self._commit([one])
                except Exception as exc:
                    one[1].set_exception(exc)

    @staticmethod
    def _commit(batch: list[tuple[Callable[[], Task], Future]]) -> None:
        """Write the batch in one transaction and answer its requests once it has
        committed and the live updates and the pull are asked for. A failure in
        that after-commit work is logged; the tasks are not written again."""
        tasks: list[Task] = []
        committed = False

        def commit_seen() -> None:
            nonlocal committed
            committed = True

        try:
            with transaction.atomic():
                transaction.on_commit(commit_seen)  # the first of the after-commit work
                tasks.extend(insert() for insert, _ in batch)
        except Exception:
            if not committed:
                raise
            logger.exception("the work after adding %s tasks failed; they were added", len(batch))
        for (_, future), task in zip(batch, tasks, strict=True):
            future.set_result(task)


_intake_group = _IntakeGroup()


class TasksImportRefused(ValidationError):
    """Nothing of a batch of tasks was imported: ``row_errors`` holds each bad
    row's problems per field, by line number (empty when the batch as a whole was
    refused, e.g. by a hard WIP limit)."""

    def __init__(self, message: str, *, row_errors: dict[int, dict[str, list[str]]] | None = None) -> None:
        super().__init__(message)
        self.row_errors = row_errors or {}


# Rows inserted per statement, and between two progress reports.
IMPORT_BATCH = 1000


def tasks_import(
    *,
    board: Board,
    rows: Sequence[TaskRow],
    user: User | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Task]:
    """Put many tasks in the board's intake column at once, all or nothing.

    Every row is checked first, and any problem (one read from the file, or one
    of ``task_fields_errors``) refuses the whole batch with every row's problems
    (``TasksImportRefused``), so a corrected file can simply be imported again:
    nothing is left half-written. A hard WIP limit on the intake column with no
    room for the whole batch refuses it too, rather than taking the first rows.

    Then one transaction inserts the tasks in batches (``progress`` is called
    with the number inserted so far), each where ``task_create`` would have put
    it (after every task of its priority or higher), with its CREATED event, and
    one pull and one live update follow the commit."""
    if not rows:
        raise TasksImportRefused("There are no tasks to import.")
    offered = board_capabilities_get(board=board)
    row_errors: dict[int, dict[str, list[str]]] = {}
    for row in rows:
        problems = {name: list(messages) for name, messages in row.problems.items()}
        checked = task_fields_errors(
            title=row.title.strip(),
            input=row.input,
            capability=row.capability.strip(),
            priority=row.priority,
            offered=offered,
        )
        for name, messages in checked.items():
            # A field that could not be read at all has said so already.
            problems.setdefault(name, messages)
        if problems:
            row_errors[row.line] = problems
    if row_errors:
        bad = len(row_errors)
        raise TasksImportRefused(
            f"{bad} of {len(rows)} row{'s' if len(rows) != 1 else ''} "
            f"{'have' if bad != 1 else 'has'} errors, so nothing was imported: "
            "correct them and import the file again.",
            row_errors=row_errors,
        )

    with transaction.atomic():
        column = intake_column(board)
        if column.wip_limit is not None:
            board_lock(board.pk)
        try:
            note = wip_check(column, adding=len(rows))
        except WipLimitReached:
            assert column.wip_limit is not None  # only a limit is reached
            room = max(column.wip_limit - column_count(column), 0)
            raise TasksImportRefused(
                f"{column.name} has a hard WIP limit of {column.wip_limit} and room for {room} more "
                f"task{'s' if room != 1 else ''}, so the {len(rows)} tasks were not imported (none of them): "
                "import fewer at a time, or wait until agents have pulled some."
            ) from None
        positions = _import_positions(column, rows)
        status = STATUS_FOR_ROLE[column.role]
        tasks = [
            Task(
                board=board,
                column=column,
                status=status,
                position=position,
                title=row.title.strip(),
                input=row.input,
                capability=row.capability.strip(),
                priority=row.priority,
                allow_reuse=row.allow_reuse,
                input_key=input_key(row.input),
            )
            for row, position in zip(rows, positions, strict=True)
        ]
        for start in range(0, len(tasks), IMPORT_BATCH):
            batch = tasks[start : start + IMPORT_BATCH]
            Task.objects.bulk_create(batch)
            TaskEvent.objects.bulk_create(
                [
                    task_event(
                        task,
                        TaskEvent.Kind.CREATED,
                        to_column=column,
                        to_status=status,
                        user=user,
                        note=note or "imported",
                    )
                    for task in batch
                ]
            )
            if progress is not None:
                progress(start + len(batch))
        board_changed_on_commit(board.pk, [column.pk], pull=True)
    return tasks


def _import_positions(column: Column, rows: Sequence[TaskRow]) -> list[int]:
    """A position for each row, in ``column``, where ``task_create`` would have
    put it had the rows been created one by one: after every task of its
    priority or higher. Rows headed for the same gap between two tasks go there
    in priority order, file order among equals; a gap too narrow for its rows is
    widened by shifting the tasks after it (one UPDATE) and the plan made again."""
    while True:
        plan, narrow = _plan_positions(column, rows)
        if narrow is None:
            return plan
        at, needed = narrow
        Task.objects.filter(column=column, position__gte=at).update(
            position=F("position") + (needed + 1) * POSITION_GAP
        )


def _plan_positions(column: Column, rows: Sequence[TaskRow]) -> tuple[list[int], tuple[int, int] | None]:
    existing = Task.objects.filter(column=column)
    # The first task of lower priority, by position, for each priority in the batch.
    before: dict[int, int | None] = {
        priority: existing.filter(priority__lt=priority)
        .order_by("position")
        .values_list("position", flat=True)
        .first()
        for priority in {row.priority for row in rows}
    }
    # Stable: file order among rows of equal priority.
    order = sorted(range(len(rows)), key=lambda index: -rows[index].priority)
    gaps: dict[int | None, list[int]] = {}
    for index in order:
        gaps.setdefault(before[rows[index].priority], []).append(index)
    positions = [0] * len(rows)
    for upper, indexes in gaps.items():
        count = len(indexes)
        if upper is None:
            last = existing.aggregate(m=Max("position"))["m"] or 0
            slots = [last + POSITION_GAP * (i + 1) for i in range(count)]
        else:
            lower = existing.filter(position__lt=upper).aggregate(m=Max("position"))["m"]
            if lower is None:
                lower = upper - (count + 1) * POSITION_GAP
            if upper - lower - 1 < count:
                return positions, (upper, count)
            step = (upper - lower) // (count + 1)
            slots = [lower + step * (i + 1) for i in range(count)]
        for index, slot in zip(indexes, slots, strict=True):
            positions[index] = slot
    return positions, None


# --- demo boards ---------------------------------------------------------------


def demo_task_feed(*, board: Board) -> Task | None:
    """Add the board's next demo task (boards.demo_feed: a fixed example, a
    template rendered afresh, or now and then an exact repeat of an earlier
    task), so a demo board moves on its own. Skipped while the intake column is
    full, so an idle demo does not pile up work."""
    if not board.demo_tasks or board.paused:
        return None
    intake = intake_column(board)
    limit = intake.wip_limit if intake.wip_limit is not None else 50
    if column_count(intake) >= limit:
        return None
    spec = demo_feed.demo_task_at(
        board.demo_tasks, demo_feed.FeedSettings.from_json(board.demo_feed), _demo_feed_number(board)
    )
    return task_create(
        board=board,
        title=spec["title"] or "Example task",
        input=spec["input"],
        capability=spec["capability"],
        priority=spec["priority"],
    )


def _demo_feed_number(board: Board) -> int:
    """The number of the board's next demo task, taken for good: a task the line
    then refuses (its capability no longer offered, say) is skipped, not retried
    at every tick."""
    with transaction.atomic():
        Board.objects.filter(pk=board.pk).update(demo_feed_count=F("demo_feed_count") + 1)
        # Read under the row lock the update holds: two feeds never get one number.
        taken = Board.objects.filter(pk=board.pk).values_list("demo_feed_count", flat=True).get()
    return taken - 1


def demo_boards_feed() -> int:
    """Add demo tasks to every unpaused board that has some (its feed's batch
    each, up to the intake column's limit); returns how many were added. Not
    idempotent: that is its job, on a clock. One board's error is logged and
    does not stop the others."""
    added = 0
    for board in Board.objects.filter(paused=False):
        if not board.demo_tasks:
            continue
        try:
            for _ in range(demo_feed.FeedSettings.from_json(board.demo_feed).batch):
                if demo_task_feed(board=board) is None:
                    break
                added += 1
        except Exception:
            logger.exception("demo feed of board %s failed", board.pk)
    return added
