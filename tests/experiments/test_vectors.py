"""experiments.vectors: the numpy index on its own (on the pass's database), and
the pgvector index against a real PostgreSQL with pgvector
(tests/experiments/pgvector_server.py), held to the numpy index's answers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import count
from urllib.parse import quote

import numpy as np
import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from boards.models import Agent, Board, Column, Task
from experiments import vectors
from experiments.models import Pattern
from tests.experiments.pgvector_server import BASE_DIR

MODEL = "test:random-unit"
DIM = 384
VERDICTS = [value for value, _ in Pattern.Verdict.choices]
_names = count(1)


@pytest.fixture(autouse=True)
def _fresh_indexes():
    vectors.indexes_clear()
    yield
    vectors.indexes_clear()


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@dataclass
class Seeded:
    patterns: list[Pattern]
    vectors: np.ndarray
    agents: list[int]
    boards: list[int]

    @property
    def ids(self) -> list[int]:
        return [p.pk for p in self.patterns]


def seed(
    n: int,
    *,
    rng: np.random.Generator,
    using: str = DEFAULT_DB_ALIAS,
    agents: int = 3,
    boards: int = 1,
    dim: int = DIM,
    model: str = MODEL,
    stamp: datetime | None = None,
) -> Seeded:
    """``n`` patterns with random unit vectors: agents, boards and verdicts in turn."""
    board_rows = []
    for _ in range(boards):
        number = next(_names)
        board = Board.objects.using(using).create(name=f"Vectors {number}", slug=f"vectors-{number}")
        column = Column.objects.using(using).create(board=board, name="Done", role=Column.Role.DONE)
        board_rows.append((board, column))
    agent_ids = [
        Agent.objects.using(using).create(name=f"vector-agent-{next(_names)}").pk for _ in range(agents)
    ]
    tasks = Task.objects.using(using).bulk_create(
        Task(
            board=board_rows[i % boards][0],
            column=board_rows[i % boards][1],
            title=f"task {i}",
            agent_id=agent_ids[i % len(agent_ids)],
            status=Task.Status.DONE,
        )
        for i in range(n)
    )
    matrix = unit_vectors(rng, n, dim)
    stamp = stamp or timezone.now()
    patterns = Pattern.objects.using(using).bulk_create(
        Pattern(
            task=task,
            board_id=task.board_id,
            agent_id=task.agent_id,
            verdict=VERDICTS[i % len(VERDICTS)],
            text=task.title,
            text_hash=f"{task.pk:064d}",
            embed_model=model,
            dim=dim,
            vector=matrix[i].tobytes(),
            embedded_at=stamp,
        )
        for i, task in enumerate(tasks)
    )
    return Seeded(patterns, matrix, agent_ids, [b.pk for b, _ in board_rows])


def exact(
    seeded: list[Seeded],
    query: np.ndarray,
    *,
    k: int,
    agent_ids=None,
    verdicts=None,
    exclude_tasks=(),
    board_ids=None,
) -> list[int]:
    """The true nearest, by brute force over what was seeded."""
    rows = [(p, v) for s in seeded for p, v in zip(s.patterns, s.vectors, strict=True)]
    rows = [
        (p, v)
        for p, v in rows
        if (agent_ids is None or p.agent_id in agent_ids)
        and (verdicts is None or p.verdict in verdicts)
        and (board_ids is None or p.board_id in board_ids)
        and p.task_id not in exclude_tasks
    ]
    scored = sorted(rows, key=lambda row: -float(row[1] @ query))
    return [p.pk for p, _ in scored[:k]]


# --- the numpy index, on the pass's database ---------------------------------------


@pytest.mark.django_db
def test_numpy_index_finds_the_exact_nearest_with_every_filter():
    rng = np.random.default_rng(1)
    seeded = seed(90, rng=rng, agents=3, boards=2)
    index = vectors.NumpyIndex(MODEL)
    query = unit_vectors(rng, 1)[0]
    agent = seeded.agents[1]
    excluded = {seeded.patterns[0].task_id, seeded.patterns[4].task_id}
    for filters in (
        {},
        {"agent_ids": [agent]},
        {"verdicts": ["approved", "corrected"]},
        {"agent_ids": [agent], "verdicts": ["rejected"]},
        {"board_ids": [seeded.boards[0]]},
        {"exclude_tasks": excluded},
    ):
        hits = index.search(query, k=8, **filters)
        assert [h.pattern for h in hits] == exact([seeded], query, k=8, **filters), filters
    hits = index.search(seeded.vectors[7], k=3)
    assert hits[0].pattern == seeded.ids[7]
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert hits[0].task == seeded.patterns[7].task_id
    assert index.search(query, k=5, agent_ids=[]) == []


@pytest.mark.django_db
def test_numpy_index_returns_every_row_when_k_is_bigger_than_the_base():
    rng = np.random.default_rng(2)
    seeded = seed(7, rng=rng)
    index = vectors.NumpyIndex(MODEL)
    query = unit_vectors(rng, 1)[0]
    hits = index.search(query, k=50)
    assert [h.pattern for h in hits] == exact([seeded], query, k=50)
    assert len(hits) == 7
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    # Verdicts in turn: one of the seven is rejected, two passed; a filter
    # gives the rows that pass it, not k.
    assert len(index.search(query, k=50, verdicts=["rejected"])) == 1
    assert len(index.search(query, k=50, verdicts=["rejected", "passed"])) == 3


@pytest.mark.django_db
def test_numpy_index_takes_in_rows_embedded_after_its_last_look_without_reloading():
    rng = np.random.default_rng(3)
    first = seed(20, rng=rng)
    index = vectors.NumpyIndex(MODEL)
    assert len(index.search(first.vectors[0], k=3)) == 3
    assert index.size == 20

    # Nothing new: one query, of primary keys and stamps, no vector read.
    with CaptureQueriesContext(connection) as queries:
        index.search(first.vectors[0], k=3)
    assert len(queries) == 1
    assert '"vector"' not in queries[0]["sql"].split(" FROM ")[0]

    # A later batch, and one stamped in the very instant of the last one seen
    # (committed after it): both are taken in, each once.
    later = seed(5, rng=rng, stamp=first.patterns[0].embedded_at + timedelta(seconds=1))
    same = seed(2, rng=rng, stamp=later.patterns[0].embedded_at)
    for batch in (later, same):
        hits = index.search(batch.vectors[1], k=1)
        assert hits[0].pattern == batch.ids[1]
    assert index.size == 27
    with CaptureQueriesContext(connection) as queries:
        index.search(first.vectors[0], k=3)
    assert len(queries) == 1


@pytest.mark.django_db
def test_numpy_index_puts_a_re_embedded_row_in_place_of_its_old_vector():
    rng = np.random.default_rng(4)
    seeded = seed(12, rng=rng)
    index = vectors.NumpyIndex(MODEL)
    moved = unit_vectors(rng, 1)[0]
    assert index.search(moved, k=1)[0].pattern != seeded.ids[3]

    Pattern.objects.filter(pk=seeded.ids[3]).update(
        vector=moved.tobytes(), embedded_at=timezone.now() + timedelta(seconds=1)
    )
    hits = index.search(moved, k=1)
    assert hits[0].pattern == seeded.ids[3]
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert index.size == 12
    # Its old vector is gone: nothing is that near the old one now.
    assert index.search(seeded.vectors[3], k=1)[0].similarity < 0.5


@pytest.mark.django_db
def test_numpy_index_ignores_vectors_of_another_dimension():
    rng = np.random.default_rng(5)
    seeded = seed(10, rng=rng)
    odd = seed(3, rng=rng, dim=16, stamp=seeded.patterns[0].embedded_at + timedelta(seconds=1))
    index = vectors.NumpyIndex(MODEL)
    assert len(index.search(seeded.vectors[0], k=20)) == 10
    assert index.size == 10
    assert index.search(odd.vectors[0], k=5) == []


@pytest.mark.django_db
def test_numpy_index_drops_deleted_rows_and_finds_missed_ones_when_it_reconciles(monkeypatch):
    rng = np.random.default_rng(6)
    seeded = seed(10, rng=rng)
    index = vectors.NumpyIndex(MODEL)
    index.search(seeded.vectors[0], k=1)
    # A batch stamped before the last one seen but committed after it: the
    # refresh (stamps at or after the last one) cannot see it.
    missed = seed(2, rng=rng, stamp=seeded.patterns[0].embedded_at - timedelta(seconds=5))
    assert index.search(missed.vectors[0], k=1)[0].pattern != missed.ids[0]
    Task.objects.filter(pk=seeded.patterns[2].task_id).delete()

    monkeypatch.setattr(vectors, "RECONCILE_SECONDS", 0.0)
    assert index.search(missed.vectors[0], k=1)[0].pattern == missed.ids[0]
    assert index.size == 11
    assert seeded.ids[2] not in [h.pattern for h in index.search(seeded.vectors[2], k=11)]


@pytest.mark.django_db
def test_the_backend_is_numpy_on_a_database_without_pgvector():
    """SQLite, or the machines' PostgreSQL 15 (make test's second pass), which
    has no pgvector; mirroring is then nothing at all."""
    assert vectors.pgvector_version() is None
    assert vectors.vector_backend() == "numpy"
    assert isinstance(vectors.vector_index(MODEL), vectors.NumpyIndex)
    seeded = seed(3, rng=np.random.default_rng(7))
    with CaptureQueriesContext(connection) as queries:
        vectors.mirror(seeded.patterns)
    assert len(queries) == 0
    with pytest.raises(CommandError, match="PostgreSQL|vector extension"):
        call_command("knowledge_index")


# --- the pgvector index, on a PostgreSQL with pgvector ------------------------------


def mirrored(using: str) -> dict[int, tuple]:
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT pattern_id, model, dim, task_id, board_id, agent_id, verdict, embedding::text FROM {vectors.TABLE}"
        )
        return {row[0]: row[1:] for row in cursor.fetchall()}


@contextmanager
def graph_only(using: str) -> Iterator[None]:
    """The planner kept from scanning the table: at a few hundred rows it would
    rather read them all and sort them (exact, and not what is under test)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
    try:
        yield
    finally:
        with connections[using].cursor() as cursor:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_bitmapscan")


def plan(index: vectors.PgvectorIndex, query: np.ndarray, **filters) -> str:
    sql = index.query(query, k=10, **filters)
    with transaction.atomic(using=index.using), connections[index.using].cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def model_indexes(using: str) -> list[str]:
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [vectors.TABLE])
        return sorted(
            name for (name,) in cursor.fetchall() if name.startswith(vectors.index_name(MODEL, DIM))
        )


def test_the_backend_is_pgvector_where_the_extension_is(pgvector_db):
    version = vectors.pgvector_version(pgvector_db)
    assert version is not None and tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)
    assert vectors.vector_backend(pgvector_db) == "pgvector"
    assert isinstance(vectors.vector_index(MODEL, using=pgvector_db), vectors.PgvectorIndex)


def test_pgvector_and_numpy_return_the_same_neighbours(pgvector_db):
    rng = np.random.default_rng(10)
    seeded = seed(400, rng=rng, using=pgvector_db, agents=4, boards=2)
    vectors.mirror(seeded.patterns, using=pgvector_db)
    assert model_indexes(pgvector_db) == [vectors.index_name(MODEL, DIM)]
    # ef_search as large as pgvector allows: at 400 rows the graph search is then exact.
    pg = vectors.PgvectorIndex(MODEL, using=pgvector_db, ef_search=1000)
    numpy_index = vectors.NumpyIndex(MODEL, using=pgvector_db)
    near = seeded.vectors[:3] + 0.05 * unit_vectors(rng, 3)
    queries = np.vstack([unit_vectors(rng, 3), near / np.linalg.norm(near, axis=1, keepdims=True)])
    agents = seeded.agents
    graph = f"Index Scan using {vectors.index_name(MODEL, DIM)}"
    for filters in (
        {},
        {"agent_ids": [agents[0]]},
        {"agent_ids": agents[1:3]},
        {"verdicts": ["approved", "corrected"]},
        {"agent_ids": [agents[3]], "verdicts": ["passed", "rejected"]},
        {"board_ids": [seeded.boards[1]]},
        {"exclude_tasks": {p.task_id for p in seeded.patterns[:3]}},
    ):
        for query in queries:
            with graph_only(pgvector_db), CaptureQueriesContext(connections[pgvector_db]) as queries_run:
                assert graph in plan(pg, query, **filters)
                got = pg.search(query, k=10, **filters)
            # The graph's answer, not the exact search that follows a short one.
            assert not any(") + 0 LIMIT" in q["sql"] for q in queries_run), filters
            want = numpy_index.search(query, k=10, **filters)
            assert [h.pattern for h in got] == [h.pattern for h in want], filters
            assert [h.task for h in got] == [h.task for h in want]
            assert np.allclose([h.similarity for h in got], [h.similarity for h in want], atol=1e-5, rtol=0)
            assert [h.pattern for h in want] == exact([seeded], query, k=10, **filters)


def test_a_filtered_graph_search_still_finds_k_rows_through_iterative_scans(pgvector_db):
    rng = np.random.default_rng(11)
    seeded = seed(600, rng=rng, using=pgvector_db, agents=6)
    vectors.mirror(seeded.patterns, using=pgvector_db)
    pg = vectors.PgvectorIndex(MODEL, using=pgvector_db)
    query = unit_vectors(rng, 1)[0]
    sql = pg.query(query, k=10, agent_ids=[seeded.agents[0]])

    def found(iterative: str) -> int:
        with transaction.atomic(using=pgvector_db), connections[pgvector_db].cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute("SET LOCAL hnsw.ef_search = 10")
            cursor.execute(f"SET LOCAL hnsw.iterative_scan = {iterative}")
            cursor.execute(sql)
            return len(cursor.fetchall())

    # One row in six passes: ten candidates give about two without iterative scans.
    with graph_only(pgvector_db):
        assert f"Index Scan using {vectors.index_name(MODEL, DIM)}" in plan(
            pg, query, agent_ids=[seeded.agents[0]]
        )
    assert found("off") < 10
    assert found("relaxed_order") == 10


def test_a_filter_few_rows_pass_gets_every_one_of_them(pgvector_db):
    rng = np.random.default_rng(12)
    seeded = seed(1000, rng=rng, using=pgvector_db)
    # Three rows on a board of their own: only the graph's index serves the filter.
    few = seed(3, rng=rng, using=pgvector_db, agents=1)
    vectors.mirror(seeded.patterns + few.patterns, using=pgvector_db)
    pg = vectors.PgvectorIndex(MODEL, using=pgvector_db, ef_search=10)
    query = unit_vectors(rng, 1)[0]
    graph_sql = pg.query(query, k=10, board_ids=few.boards)
    with connections[pgvector_db].cursor() as cursor:
        # The graph's scan gives up after this many rows (20,000 by default, so
        # at that scale the same happens), before it has met the three.
        cursor.execute("SET hnsw.max_scan_tuples = 20")
    try:
        with graph_only(pgvector_db):
            assert f"Index Scan using {vectors.index_name(MODEL, DIM)}" in plan(
                pg, query, board_ids=few.boards
            )
            with transaction.atomic(using=pgvector_db), connections[pgvector_db].cursor() as cursor:
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                cursor.execute("SET LOCAL hnsw.ef_search = 10")
                cursor.execute(graph_sql)
                assert len(cursor.fetchall()) < 3
            hits = pg.search(query, k=10, board_ids=few.boards)
    finally:
        with connections[pgvector_db].cursor() as cursor:
            cursor.execute("RESET hnsw.max_scan_tuples")
    assert [h.pattern for h in hits] == exact([few], query, k=10)
    by_id = dict(zip(few.ids, few.vectors, strict=True))
    assert [h.similarity for h in hits] == pytest.approx(
        [float(by_id[h.pattern] @ query) for h in hits], abs=1e-5
    )
    assert pg.search(query, k=10, agent_ids=[]) == []


def test_mirror_upserts_a_re_embedded_pattern(pgvector_db):
    rng = np.random.default_rng(13)
    seeded = seed(20, rng=rng, using=pgvector_db)
    vectors.mirror(seeded.patterns, using=pgvector_db)
    rows = mirrored(pgvector_db)
    assert sorted(rows) == sorted(seeded.ids)
    first = seeded.patterns[0]
    assert rows[first.pk][:6] == (MODEL, DIM, first.task_id, first.board_id, first.agent_id, first.verdict)

    moved = unit_vectors(rng, 1)[0]
    pattern = Pattern.objects.using(pgvector_db).get(pk=seeded.ids[5])
    pattern.vector = moved.tobytes()
    pattern.embedded_at = timezone.now()
    pattern.save(using=pgvector_db)
    vectors.mirror([pattern], using=pgvector_db)

    assert len(mirrored(pgvector_db)) == 20
    hit = vectors.PgvectorIndex(MODEL, using=pgvector_db).search(moved, k=1)[0]
    assert hit.pattern == pattern.pk
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)
    assert (
        vectors.PgvectorIndex(MODEL, using=pgvector_db).search(seeded.vectors[5], k=1)[0].pattern
        != pattern.pk
    )


def test_a_pattern_deleted_or_truncated_takes_its_vector_with_it(pgvector_db):
    rng = np.random.default_rng(14)
    seeded = seed(10, rng=rng, using=pgvector_db)
    vectors.mirror(seeded.patterns, using=pgvector_db)
    Task.objects.using(pgvector_db).filter(pk=seeded.patterns[0].task_id).delete()
    assert sorted(mirrored(pgvector_db)) == sorted(seeded.ids[1:])
    # Django's flush (TRUNCATE, as transactional tests end) works with the
    # mirror beside the patterns, and empties it.
    call_command("flush", database=pgvector_db, interactive=False, verbosity=0, inhibit_post_migrate=True)
    assert mirrored(pgvector_db) == {}


def test_knowledge_index_mirrors_every_vector_and_builds_the_index(pgvector_db):
    rng = np.random.default_rng(15)
    old = seed(30, rng=rng, using=pgvector_db, model="test:older")
    seeded = seed(250, rng=rng, using=pgvector_db, stamp=old.patterns[0].embedded_at + timedelta(seconds=1))
    # One already mirrored with a stale vector: rebuilt from its row.
    vectors.mirror(seeded.patterns[:1], using=pgvector_db)
    with connections[pgvector_db].cursor() as cursor:
        cursor.execute(
            f"UPDATE {vectors.TABLE} SET embedding = %s::vector", [vectors.vector_text(seeded.vectors[9])]
        )

    out = io.StringIO()
    call_command("knowledge_index", database=pgvector_db, chunk=100, stdout=out)
    assert "250 vectors mirrored" in out.getvalue()
    rows = mirrored(pgvector_db)
    assert sorted(rows) == sorted(seeded.ids)
    assert model_indexes(pgvector_db) == [vectors.index_name(MODEL, DIM)]
    pg = vectors.PgvectorIndex(MODEL, using=pgvector_db, ef_search=1000)
    numpy_index = vectors.NumpyIndex(MODEL, using=pgvector_db)
    with graph_only(pgvector_db):
        for query in unit_vectors(rng, 3):
            assert f"Index Scan using {vectors.index_name(MODEL, DIM)}" in plan(pg, query)
            got = pg.search(query, k=10)
            assert [h.pattern for h in got] == [h.pattern for h in numpy_index.search(query, k=10)]
    assert pg.search(seeded.vectors[0], k=1)[0].pattern == seeded.ids[0]

    # Again, and for the older model by name: both there, each with its index.
    call_command("knowledge_index", database=pgvector_db, stdout=io.StringIO())
    call_command("knowledge_index", database=pgvector_db, model="test:older", stdout=io.StringIO())
    assert len(mirrored(pgvector_db)) == 280
    with connections[pgvector_db].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
            [vectors.TABLE, "%hnsw%"],
        )
        assert cursor.fetchone()[0] == 2


# The knowledge base's own services on a database with pgvector as its default,
# as in production: in a process of its own (the suite's default is the pass's).
LINE_ON_PGVECTOR = """
import json
import zlib

import django
import numpy as np

django.setup()
from boards.models import Column, Task
from experiments import knowledge, vectors
from experiments.models import Pattern
from experiments.patterns import make_pattern
from tests.factories import make_agent, make_board


class Words:
    # Each word a fixed random direction: texts sharing words are near.
    name = "test:words"
    dim = 64

    def embed(self, texts):
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


board = make_board()
agent = make_agent(boards=[board])
done = Column.objects.get(board=board, role=Column.Role.DONE)
titles = ["refund the duplicate order", "translate the invoice", "summarise the bug report", "refund a late order"]
for title in titles:
    task = Task.objects.create(board=board, column=done, title=title, agent=agent, status=Task.Status.DONE)
    make_pattern(task, verdict="approved", attempt=1, tier=1, model="", version=None).save()
embedded = knowledge.patterns_embed(embedder=Words(), budget_seconds=60)
hits = knowledge.similar_patterns(text="refund the order", embedder=Words(), limit=2)
index = vectors.vector_index(Words.name)
print(json.dumps({
    "backend": vectors.vector_backend(),
    "index": type(index).__name__,
    "embedded": embedded,
    "patterns": sorted(Pattern.objects.values_list("pk", flat=True)),
    "hits": [hit.pattern.task.title for hit in hits],
}))
"""


def test_the_embedder_mirrors_and_similar_work_searches_pgvector(pgvector_db, pgvector_dsn):
    info = psycopg.conninfo.conninfo_to_dict(pgvector_dsn)
    url = f"postgres://{info['user']}@{quote(info['host'], safe='')}/{info['dbname']}"
    run = subprocess.run(
        [sys.executable, "-c", LINE_ON_PGVECTOR],
        cwd=BASE_DIR,
        env={**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["backend"] == "pgvector"
    assert result["index"] == "PgvectorIndex"
    assert result["embedded"] == 4
    # Mirrored in the embedder's transaction, with the model's own index.
    assert sorted(mirrored(pgvector_db)) == result["patterns"]
    with connections[pgvector_db].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = %s", [vectors.index_name("test:words", 64)]
        )
        assert cursor.fetchone()[0] == 1
    assert result["hits"] == ["refund the duplicate order", "refund a late order"]
