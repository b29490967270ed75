"""Recompute the Muda rollups (andon.muda_rollups) from the rows they summarise:
the ledger, inspections, escalations and task events. Run it once after
upgrading to a version with the rollups (migration andon 0005 leaves them
empty), or after writing history straight into the tables. Idempotent: it
empties the rollups and writes them again, in one transaction, so the Muda page
shows either the old figures or the new ones.

    manage.py muda_rollups_rebuild
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from andon import muda_rollups
from boards.management.commands.import_tasks import Progress


class Command(BaseCommand):
    help = "Recompute the Muda rollups from the ledger, inspections, escalations and task events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-progress", dest="progress", action="store_false", help="Draw no progress bar."
        )

    def handle(self, *args: Any, progress: bool = True, **options: Any) -> None:
        bar: Progress | None = None

        def report(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = Progress(self.stderr, total, "Tasks")
            bar(done)

        with transaction.atomic():
            tasks = muda_rollups.rebuild(progress=report if progress else None)
        self.stdout.write(f"Rebuilt the Muda rollups of {tasks:,} tasks.")
