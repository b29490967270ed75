"""``python manage.py backfill_patterns``: write the knowledge base's patterns for
the history the line finished before it existed, then embed them, with progress
bars. Safe to stop and run again: it carries on where it stopped (rows are
unique per task and attempt; embedding takes only rows with no vector)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from boards.management.progress import Progress
from experiments import knowledge
from experiments.embeddings import EmbeddingError, get_embedder


class Command(BaseCommand):
    help = (
        "Write a knowledge-base pattern for every finished attempt of the history (done tasks and "
        "decided escalations) and embed every pattern that has no vector of the current model."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--no-embed",
            action="store_true",
            help="Only write the rows; the embedder (make run's knowledge worker) embeds them later.",
        )

    def handle(self, *args, no_embed: bool = False, **options) -> None:
        try:
            embedder = get_embedder()
        except EmbeddingError as exc:
            raise CommandError(str(exc)) from None
        total = knowledge.backfill_total()
        written = Progress(self.stdout, max(total, 1), "patterns")
        seen = 0

        def on_written(count: int) -> None:
            nonlocal seen
            seen += count
            written(min(seen, total))

        result = knowledge.patterns_backfill(on_written=on_written, embed=False)
        written(max(total, 1))
        self.stdout.write(f"{result.written:,} new patterns written ({total:,} finished attempts looked at).")
        if no_embed:
            return
        pending = knowledge.pending_patterns(embedder.name).count()
        if not pending:
            self.stdout.write(f"Every pattern has its vector ({embedder.name}).")
            return
        embedded = Progress(self.stdout, pending, f"embedded ({embedder.name})")
        done = 0

        def on_embedded(count: int) -> None:
            nonlocal done
            done += count
            embedded(min(done, pending))

        try:
            knowledge.patterns_embed(budget_seconds=float("inf"), embedder=embedder, progress=on_embedded)
        except EmbeddingError as exc:
            raise CommandError(f"{exc} ({done:,} of {pending:,} embedded; run again to go on)") from None
        except KeyboardInterrupt:
            raise CommandError(f"Stopped after {done:,} of {pending:,}; run again to go on.") from None
        self.stdout.write(f"{done:,} patterns embedded with {embedder.name}.")
