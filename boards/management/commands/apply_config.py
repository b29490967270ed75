"""`python manage.py apply_config FILE [FILE ...]`: make boards, columns and agents
match YAML files, and make the files' proposals (format: examples/README.md). Every file is checked in full
before anything is written; all files are then applied in one transaction."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from boards.config import ConfigDocument, ConfigError, config_apply, config_load
from experiments.config import config_proposals_apply


class Command(BaseCommand):
    help = (
        "Create or update boards, columns and agents from YAML files. Idempotent: "
        "applying a file twice changes nothing. Errors name the file, line and field."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", help="YAML configuration file(s)")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check the files and show what would change, without writing anything.",
        )

    def handle(self, *args, files: list[str], dry_run: bool, verbosity: int, **options) -> None:
        documents: list[ConfigDocument] = []
        errors: list[str] = []
        for path in files:
            try:
                documents.append(config_load(path))
            except ConfigError as exc:
                errors.extend(exc.errors)
        if errors:
            raise CommandError(self._error_text(errors))

        try:
            with transaction.atomic():
                reports = []
                for document in documents:
                    report = config_apply(document=document)
                    # The file's proposals, through the kaizen loop's gate, after its agents.
                    config_proposals_apply(document=document, report=report)
                    reports.append(report)
                if dry_run:
                    transaction.set_rollback(True)
        except ConfigError as exc:
            # The database changed between the check and the write (a task
            # entered a column the file drops); nothing was written.
            raise CommandError(self._error_text(exc.errors)) from None

        for report in reports:
            prefix = "would be " if dry_run else ""
            for change in report.changes:
                if change.action != "unchanged" or verbosity >= 2:
                    self.stdout.write(f"  {prefix}{change}")
            self.stdout.write(report.summary() + (" (dry run: nothing written)" if dry_run else ""))

    @staticmethod
    def _error_text(errors: list[str]) -> str:
        noun = "error" if len(errors) == 1 else "errors"
        return f"{len(errors)} {noun}, nothing applied:\n" + "\n".join(errors)
