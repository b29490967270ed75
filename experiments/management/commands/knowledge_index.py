"""``python manage.py knowledge_index``: (re)build the pgvector mirror of the
knowledge base's vectors and its HNSW index, for a PostgreSQL whose ``vector``
extension was installed after patterns were written (experiments.vectors says
how to install it). Safe to run again, and while the line runs: rows are
upserted and the index is built CONCURRENTLY."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from boards.management.progress import Progress
from experiments import vectors
from experiments.models import Pattern


class Command(BaseCommand):
    help = (
        "Mirror every pattern's vector of the current embedding model into pgvector's table and "
        "build its HNSW index (PostgreSQL with the vector extension only)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--model",
            help="The embedding model whose vectors to mirror (default: the model of the pattern embedded last).",
        )
        parser.add_argument("--chunk", type=int, default=1000, help="Patterns written per transaction.")
        parser.add_argument(
            "--memory",
            default="512MB",
            help="maintenance_work_mem for the index build (the graph built in memory is several times quicker).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="The database alias.")

    def handle(
        self,
        *args,
        model: str | None = None,
        chunk: int = 1000,
        memory: str = "512MB",
        database: str = DEFAULT_DB_ALIAS,
        **options,
    ) -> None:
        problem = vectors.pgvector_problem(database)
        if problem is not None:
            raise CommandError(f"Nothing to build: {problem}.")
        patterns = Pattern.objects.using(database)
        if not model:
            # The model the embedder writes with now; the patterns of an earlier
            # one are not searched (they wait to be re-embedded).
            model = (
                patterns.exclude(embed_model="")
                .filter(vector__isnull=False, embedded_at__isnull=False)
                .order_by("-embedded_at")
                .values_list("embed_model", flat=True)
                .first()
            )
            if not model:
                raise CommandError("No pattern has a vector yet: nothing to mirror.")
        total = patterns.filter(embed_model=model, vector__isnull=False).count()
        self.stdout.write(f"Mirroring {total:,} vectors of {model} into {vectors.TABLE}.")
        progress = Progress(self.stdout, max(total, 1), "mirrored")
        try:
            result = vectors.mirror_rebuild(
                model,
                using=database,
                chunk=max(chunk, 1),
                maintenance_work_mem=memory,
                progress=lambda done: progress(min(done, max(total, 1))),
            )
        except vectors.PgvectorUnavailable as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("Stopped; run again to finish (rows already written are kept).") from None
        progress(max(total, 1))
        dims = ", ".join(str(d) for d in sorted(result.dims)) or "none"
        self.stdout.write(
            f"{result.rows:,} vectors mirrored in {result.load_seconds:.1f} s; "
            f"HNSW index built in {result.index_seconds:.1f} s (dimensions: {dims}). "
            f"Searches here use {vectors.vector_backend(database)}."
        )
