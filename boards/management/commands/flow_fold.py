"""``python manage.py flow_fold [--board SLUG] [--rebuild]``: fold the boards'
finished hours into the flow rollups now (boards.services.flow_fold).

The periodic task does this every few minutes, a month of history a board at a
time; this catches a long history up at once, with a progress bar, and
``--rebuild`` folds a board's history again from scratch (after writing events
with past times, say by an import of old work).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from boards import services
from boards.management.progress import Progress
from boards.models import Board
from boards.services.flow_fold import fold_horizon


class Command(BaseCommand):
    help = "Fold the boards' finished hours into the flow rollups (--rebuild: from scratch)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--board", help="Only this board (its slug); by default every board.")
        parser.add_argument(
            "--rebuild",
            action="store_true",
            help="Drop the board's rollups and fold its whole history again.",
        )

    def handle(self, *args: Any, board: str | None = None, rebuild: bool = False, **options: Any) -> None:
        boards = Board.objects.order_by("pk")
        if board is not None:
            boards = boards.filter(slug=board)
            if not boards.exists():
                raise CommandError(f"No board with the slug {board!r}.")
        horizon = fold_horizon()
        for each in boards:
            bar: Progress | None = None

            def progress(done: int, total: int, each: Board = each) -> None:
                nonlocal bar
                if bar is None:
                    bar = Progress(self.stderr, max(total, 1), f"{each.slug}: hours folded")
                bar(done)

            if rebuild:
                services.flow_fold_rebuild(board_id=each.pk, progress=progress)
            else:
                services.flow_fold(board_id=each.pk, progress=progress)
            each.refresh_from_db(fields=["flow_folded_until"])
            until = each.flow_folded_until
            said = f"folded up to {until:%Y-%m-%d %H:%M} UTC" if until else "nothing recorded yet"
            self.stdout.write(f"{each.slug}: {said}")
        self.stdout.write(
            f"Hours ending by {horizon:%Y-%m-%d %H:%M} UTC are folded; the flow measures read the "
            "event log for the rest."
        )
