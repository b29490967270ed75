"""``python manage.py import_tasks BOARD FILE`` (or ``--board BOARD FILE``): add
the tasks of a CSV or JSON Lines file to a board's intake column.

All or nothing, as on the task list page: every row is checked first, each
problem is printed as ``FILE:LINE: FIELD: message``, and a file with any bad row
imports nothing and exits with status 1, so it can be corrected and run again.
A progress bar is drawn on stderr when it is a terminal; otherwise a line is
written every tenth of the way, so a log stays readable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from boards import services
from boards.management.progress import Progress
from boards.models import Board
from boards.task_files import FORMATS, TaskFileError, detect_format, read_task_rows


class Command(BaseCommand):
    help = (
        "Import tasks from a CSV or JSON Lines file into a board's intake column: all of them, or none "
        "if any row has a problem (each is listed with its line number and field)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "arguments",
            nargs="+",
            metavar="[BOARD] FILE",
            help="The board's slug and the file (- for standard input); or only the file, with --board.",
        )
        parser.add_argument("--board", help="The board's slug (instead of the first argument).")
        parser.add_argument(
            "--format",
            choices=FORMATS,
            help="csv or jsonl; by default from the file's extension, else from its first character.",
        )
        parser.add_argument(
            "--user", help="The user the tasks are recorded as added by (by default, the system)."
        )

    def handle(
        self,
        *args: Any,
        arguments: list[str],
        board: str | None,
        format: str | None,
        user: str | None,
        **options: Any,
    ) -> None:
        slug, path = self._board_and_file(arguments, board)
        target = Board.objects.filter(slug=slug).first()
        if target is None:
            known = ", ".join(Board.objects.values_list("slug", flat=True)) or "none"
            raise CommandError(f"There is no board {slug!r} (boards: {known}).")
        actor = None
        if user is not None:
            User = get_user_model()
            actor = User.objects.filter(**{User.USERNAME_FIELD: user}).first()
            if actor is None:
                raise CommandError(f"There is no user {user!r}.")

        data = self._read(path)
        name = "<stdin>" if path == "-" else path
        try:
            rows = read_task_rows(data, format=format or detect_format(name, data))
        except TaskFileError as exc:
            raise CommandError(f"{name}: {exc}") from None
        self.stderr.write(f"Read {len(rows):,} task{'s' if len(rows) != 1 else ''} from {name}.")
        progress = Progress(self.stderr, len(rows), f"Importing into {target.slug}")
        try:
            tasks = services.tasks_import(board=target, rows=rows, user=actor, progress=progress)
        except services.TasksImportRefused as exc:
            for line, fields in sorted(exc.row_errors.items()):
                for field, messages in fields.items():
                    for message in messages:
                        where = f"{name}:{line}" + ("" if field == "row" else f": {field}")
                        self.stderr.write(f"{where}: {message}")
            raise CommandError(" ".join(exc.messages)) from None
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        column = tasks[0].column.name
        self.stdout.write(
            f"Imported {len(tasks):,} task{'s' if len(tasks) != 1 else ''} into {target.slug} ({column})."
        )

    def _board_and_file(self, arguments: list[str], board: str | None) -> tuple[str, str]:
        if board is not None:
            if len(arguments) != 1:
                raise CommandError("With --board, give one FILE.")
            return board, arguments[0]
        if len(arguments) != 2:
            raise CommandError("Give the board's slug and the file: import_tasks BOARD FILE.")
        return arguments[0], arguments[1]

    def _read(self, path: str) -> bytes:
        if path == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
