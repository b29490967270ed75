"""Nearest-neighbour search over the knowledge base's patterns (issue 14),
behind one selector, ``vector_index()``:

- ``PgvectorIndex``, where the database is PostgreSQL with the ``vector``
  extension (pgvector 0.8 or later) installed: the vectors are mirrored into a
  table of their own, ``kaizen_pattern_vector``, with an HNSW index per
  embedding model, and the database searches them.
- ``NumpyIndex`` everywhere else (SQLite, and PostgreSQL without the extension):
  exact cosine search with numpy over the model's vectors, held in memory per
  process and refreshed incrementally from ``Pattern.embedded_at``. At 100,000
  patterns of 384 floats it holds 154 MB (bench/knowledge_search.py).

Both answer ``search()`` with the same hits (tests/experiments/test_vectors.py
holds them to it against a real pgvector): pattern, task and cosine similarity,
most similar first. ``vector_backend()`` says which one answers here.

In production, on PostgreSQL: pgvector is found at run time, once per process,
so installing it needs no setting, only a restart of the processes:

1. install pgvector 0.8 or later for the server (the PGDG package
   ``postgresql-15-pgvector``, or from source) and, as a superuser, run
   ``CREATE EXTENSION vector;`` in Kaizen's database;
2. ``python manage.py knowledge_index``: mirrors the vectors already written
   and builds the HNSW index (the mirror table, its triggers and indexes are
   created on first use; the embedder then mirrors each new vector as it
   writes it, in the same transaction);
3. restart ``make run``'s processes (web, workers): the pages and the API then
   show ``pgvector``.

The mirror table is not a Django model: it exists only where the extension
does, so it is created at run time (``ensure_schema``) rather than by a
migration. It is kept in step with ``experiments_pattern`` by triggers (a
deleted or truncated pattern takes its vector with it) rather than by a
foreign key, which would make ``TRUNCATE experiments_pattern`` (Django's
``flush``, as the test runner uses it) fail."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, Protocol

import numpy as np
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, Max, Q

from experiments.models import Pattern

logger = logging.getLogger(__name__)

PGVECTOR = "pgvector"
NUMPY = "numpy"
# Iterative index scans (hnsw.iterative_scan), which keep a filtered search
# returning k rows, came with pgvector 0.8.0; an older pgvector is left unused.
PGVECTOR_MINIMUM = (0, 8, 0)

# How often a process's numpy index checks that it holds exactly the rows the
# table has: rows deleted with their tasks leave it, rows it missed come in.
RECONCILE_SECONDS = 300.0
# Rows read per query when the numpy index loads from scratch.
LOAD_PAGE = 5000
# A filtered numpy search compares only the rows that pass when fewer than one
# in this many do, and all of them (then picks) otherwise.
GATHER_BELOW = 10

TABLE = "kaizen_pattern_vector"
# Candidates HNSW keeps while it searches (hnsw.ef_search; at most 1000): more
# finds more of the true neighbours, for more time. At 100,000 patterns of 384
# floats gathered around 2,000 centres (bench/knowledge_search.py --clusters
# 2000), 40 (pgvector's default) found all 10 nearest in 1.3 ms (p95 5.3 ms),
# 100 the same in 2.9 ms (p95 7.7), 20 98% of them in 0.9 ms.
EF_SEARCH = 40

VERDICTS = [value for value, _ in Pattern.Verdict.choices]
_VERDICT_CODE = {value: code for code, value in enumerate(VERDICTS)}


@dataclass(frozen=True)
class Hit:
    pattern: int
    task: int
    similarity: float


class VectorIndex(Protocol):
    model: str

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        agent_ids: Collection[int] | None = None,
        verdicts: Collection[str] | None = None,
        exclude_tasks: Collection[int] = (),
        board_ids: Collection[int] | None = None,
    ) -> list[Hit]: ...


def as_vector(blob: bytes | memoryview | None) -> np.ndarray | None:
    if blob is None:
        return None
    return np.frombuffer(bytes(blob), dtype=np.float32)


def stored_vectors(digests: Collection[str], model: str, *, looks: int | None = None) -> dict[str, bytes]:
    """The vectors ``model`` stored for these texts, by digest (Pattern.text_hash):
    a text seen again is copied, not embedded again. ``looks`` caps the rows read
    (of every model) when one digest is asked for.

    By the digest alone (its own index), the model checked here: with the model in
    the query too, SQLite (without ANALYZE) reads every pattern of the model
    through the (embed_model, embedded_at) index."""
    rows = (
        Pattern.objects.filter(text_hash__in=set(digests), vector__isnull=False)
        .order_by()
        .values_list("text_hash", "embed_model", "vector")
    )
    found: dict[str, bytes] = {}
    for digest, stored_model, blob in rows[:looks] if looks is not None else rows:
        if stored_model == model and blob is not None and digest not in found:
            found[digest] = bytes(blob)
    return found


def _scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The dot product of each row with ``query``, on this thread: numpy's own
    loop, not BLAS, whose threads (one per core) cost more than they bring to a
    product this simple, and far more on a busy machine or beside the other
    threads of a worker (a 3,000-row search took 16 ms through OpenBLAS on the
    2-core machines under load, 0.1 ms this way; at 100,000 rows about the same)."""
    return np.einsum("ij,j->i", vectors, query)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


# --- numpy: exact search in memory ---------------------------------------------------


class NumpyIndex:
    """The model's vectors in memory, with the columns a search filters on."""

    COLUMNS = ("pk", "task_id", "board_id", "agent_id", "verdict", "vector")
    _COLUMNS = ("_ids", "_tasks", "_boards", "_agents", "_verdicts")

    def __init__(self, model: str, *, using: str = DEFAULT_DB_ALIAS) -> None:
        self.model = model
        self.using = using
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.size = 0
        self.dim = 0
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._tasks = np.zeros(0, dtype=np.int64)
        self._boards = np.zeros(0, dtype=np.int64)
        self._agents = np.zeros(0, dtype=np.int64)
        self._verdicts = np.zeros(0, dtype=np.int8)
        self._rows: dict[int, int] = {}
        # The newest embedded_at taken in, and the rows taken in with exactly
        # that stamp (a batch shares one): the next refresh reads the rows
        # stamped at or after it, and skips these without reading their vectors.
        self._seen: datetime | None = None
        self._seen_pks: set[int] = set()
        self._checked_at = time.monotonic()

    def _grow(self, need: int) -> None:
        capacity = len(self._ids)
        if need <= capacity:
            return
        capacity = max(need, capacity * 2, 1024)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        if self.size:
            vectors[: self.size] = self._vectors[: self.size]
        self._vectors = vectors
        for name in self._COLUMNS:
            old = getattr(self, name)
            column = np.zeros(capacity, dtype=old.dtype)
            column[: self.size] = old[: self.size]
            setattr(self, name, column)

    def _patterns(self):
        return (
            Pattern.objects.using(self.using).filter(embed_model=self.model, vector__isnull=False).order_by()
        )

    def _stamp(self, pk: int, embedded_at: datetime) -> None:
        if self._seen is None or embedded_at > self._seen:
            self._seen, self._seen_pks = embedded_at, {pk}
        elif embedded_at == self._seen:
            self._seen_pks.add(pk)

    def _take(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Put ``rows`` (``COLUMNS``) in: new patterns at the end, patterns held
        already in their place (re-embedded). A vector of another length than
        the model's is left out."""
        blobs = [bytes(row[5]) for row in rows]
        if not self.dim:
            self.dim = next((len(blob) // 4 for blob in blobs if blob), 0)
            if not self.dim:
                return
        kept = [i for i, blob in enumerate(blobs) if len(blob) == 4 * self.dim]
        if not kept:
            return
        places = np.empty(len(kept), dtype=np.int64)
        new = 0
        for j, i in enumerate(kept):
            pk = rows[i][0]
            place = self._rows.get(pk)
            if place is None:
                place = self._rows[pk] = self.size + new
                new += 1
            places[j] = place
        self._grow(self.size + new)
        self.size += new
        self._vectors[places] = np.frombuffer(b"".join(blobs[i] for i in kept), dtype=np.float32).reshape(
            len(kept), self.dim
        )
        self._ids[places] = [rows[i][0] for i in kept]
        self._tasks[places] = [rows[i][1] for i in kept]
        self._boards[places] = [rows[i][2] for i in kept]
        self._agents[places] = [rows[i][3] or 0 for i in kept]
        self._verdicts[places] = [_VERDICT_CODE.get(rows[i][4], -1) for i in kept]

    def _load(self) -> None:
        """Every row of the model in one pass (a first look, or after a clear).
        The newest stamp is read first: a row embedded during the pass is then
        read again by the next refresh, never missed."""
        patterns = self._patterns()
        latest = patterns.aggregate(latest=Max("embedded_at"))["latest"]
        if latest is None:
            return
        self._seen = latest
        self._seen_pks = set(patterns.filter(embedded_at=latest).values_list("pk", flat=True))
        # The model's dimension is its vectors' usual one; a stray row of
        # another length is left out (an index holds one length).
        counts = list(patterns.values_list("dim").annotate(rows=Count("pk")).order_by("-rows"))
        self.dim = next((dim for dim, _ in counts if dim), 0)
        if self.dim:
            self._grow(sum(rows for dim, rows in counts if dim in (self.dim, None)))
        rows = patterns.values_list(*self.COLUMNS).iterator(chunk_size=LOAD_PAGE)
        while page := list(islice(rows, LOAD_PAGE)):
            self._take(page)

    def _fetch(self, pks: Sequence[int]) -> None:
        for start in range(0, len(pks), LOAD_PAGE):
            page = list(
                self._patterns()
                .filter(pk__in=pks[start : start + LOAD_PAGE])
                .values_list(*self.COLUMNS, "embedded_at")
            )
            for row in page:
                self._stamp(row[0], row[-1])
            self._take(page)

    def _reconcile(self) -> None:
        """Drop the rows gone from the table (deleted with their task, or
        re-embedded by another model) and take in any it lacks (a batch whose
        commit landed after a later-stamped one's)."""
        present = np.fromiter(
            self._patterns().filter(Q(dim=self.dim) | Q(dim__isnull=True)).values_list("pk", flat=True),
            dtype=np.int64,
        )
        kept = np.isin(self._ids[: self.size], present)
        if not kept.all():
            keep = np.flatnonzero(kept)
            self._vectors[: len(keep)] = self._vectors[keep]
            for name in self._COLUMNS:
                column = getattr(self, name)
                column[: len(keep)] = column[keep]
            self.size = len(keep)
            self._rows = {int(pk): row for row, pk in enumerate(self._ids[: self.size])}
        missing = [int(pk) for pk in present if int(pk) not in self._rows]
        if missing:
            self._fetch(missing)

    def refresh(self) -> None:
        """Take in the rows embedded (or re-embedded) since the last look: one
        query on the pattern_embedded index, and vectors read only for them."""
        with self._lock:
            if self._seen is None:
                self._load()
                self._checked_at = time.monotonic()
                return
            if time.monotonic() - self._checked_at > RECONCILE_SECONDS:
                self._checked_at = time.monotonic()
                self._reconcile()
            # >=: a row stamped in the same instant as the last one seen but
            # committed after it is read, never missed.
            stamps = self._patterns().filter(embedded_at__gte=self._seen).values_list("pk", "embedded_at")
            fresh = [pk for pk, stamp in stamps if stamp != self._seen or pk not in self._seen_pks]
            if fresh:
                self._fetch(fresh)

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        agent_ids: Collection[int] | None = None,
        verdicts: Collection[str] | None = None,
        exclude_tasks: Collection[int] = (),
        board_ids: Collection[int] | None = None,
    ) -> list[Hit]:
        self.refresh()
        with self._lock:
            if self.size == 0 or len(vector) != self.dim or k <= 0:
                return []
            size = self.size
            mask = None
            for column, values in ((self._agents, agent_ids), (self._boards, board_ids)):
                if values is not None:
                    chosen = np.isin(column[:size], list(values))
                    mask = chosen if mask is None else mask & chosen
            if verdicts is not None:
                codes = [_VERDICT_CODE[v] for v in verdicts if v in _VERDICT_CODE]
                chosen = np.isin(self._verdicts[:size], codes)
                mask = chosen if mask is None else mask & chosen
            if exclude_tasks:
                kept = ~np.isin(self._tasks[:size], list(exclude_tasks))
                mask = kept if mask is None else mask & kept
            query = _unit(vector)
            rows = None if mask is None else np.flatnonzero(mask)
            if rows is not None and len(rows) * GATHER_BELOW < size:
                # Few rows pass: only theirs are compared (reading the vectors
                # is the search's cost: 154 MB at 100,000 patterns of 384 floats).
                scores = _scores(self._vectors[rows], query)
            else:
                # Many pass: copying theirs out would cost more than comparing all.
                scores = _scores(self._vectors[:size], query)
                if rows is not None:
                    scores = scores[rows]
            k = min(k, len(scores))
            if k <= 0:
                return []
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            found = top if rows is None else rows[top]
            return [
                Hit(int(self._ids[i]), int(self._tasks[i]), float(score))
                for i, score in zip(found, scores[top], strict=True)
            ]


# --- pgvector: the database searches an HNSW index -----------------------------------


def _db_key(connection: BaseDatabaseWrapper) -> tuple[str, ...]:
    """What a cached answer about a database is kept under: its alias and where
    it points (the test runner renames the database under the same alias)."""
    settings = connection.settings_dict
    return (
        connection.alias,
        connection.vendor,
        str(settings.get("HOST") or ""),
        str(settings.get("PORT") or ""),
        str(settings.get("NAME") or ""),
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def pgvector_version(using: str = DEFAULT_DB_ALIAS) -> str | None:
    """The version of the ``vector`` extension installed in the database, or
    None (not PostgreSQL, or not installed)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return row[0] if row else None


_backends: dict[tuple[str, ...], str] = {}
_backends_lock = threading.Lock()


def vector_backend(using: str = DEFAULT_DB_ALIAS) -> str:
    """Which index answers searches here: "pgvector" (the database, where it is
    PostgreSQL with pgvector 0.8 or later) or "numpy" (exact, in memory).
    Looked up once per process and database."""
    connection = connections[using]
    key = _db_key(connection)
    with _backends_lock:
        backend = _backends.get(key)
    if backend is not None:
        return backend
    version = pgvector_version(using)
    backend = NUMPY
    if version is not None:
        if _version(version) >= PGVECTOR_MINIMUM:
            backend = PGVECTOR
        else:
            logger.warning(
                "pgvector %s is installed, but Kaizen needs 0.8.0 or later (iterative index scans): "
                "searching with numpy instead. ALTER EXTENSION vector UPDATE after upgrading it.",
                version,
            )
    with _backends_lock:
        _backends[key] = backend
    return backend


def _literal(text: str) -> str:
    """A SQL string literal: the model's name goes into the partial index's
    WHERE and into the query's as the same literal, so the planner matches the
    two (a bound parameter would not match a partial index's predicate)."""
    return "'" + text.replace("'", "''") + "'"


def index_name(model: str, dim: int) -> str:
    return f"{TABLE}_{hashlib.sha1(model.encode()).hexdigest()[:10]}_{dim}"


def _table_sql() -> list[str]:
    patterns = Pattern._meta.db_table
    pk = Pattern._meta.pk.column if Pattern._meta.pk is not None else "id"
    return [
        # ``vector`` with no dimension: every model's vectors fit, each model's
        # indexed through a cast to its own dimension (pgvector's documented way).
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            pattern_id bigint PRIMARY KEY,
            model text NOT NULL,
            dim smallint NOT NULL,
            task_id bigint NOT NULL,
            board_id bigint NOT NULL,
            agent_id bigint NULL,
            verdict text NOT NULL,
            embedding vector NOT NULL
        )""",
        # When the graph's scan finds fewer than k rows that pass a filter (few
        # do: one small agent's, one board's), these find them all for an
        # exact search.
        f"CREATE INDEX IF NOT EXISTS {TABLE}_agent ON {TABLE} (model, dim, agent_id)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_board ON {TABLE} (model, dim, board_id)",
        f"""CREATE OR REPLACE FUNCTION {TABLE}_forget() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                TRUNCATE {TABLE};
            ELSE
                DELETE FROM {TABLE} WHERE pattern_id IN (SELECT {pk} FROM gone);
            END IF;
            RETURN NULL;
        END $$""",
        f"""CREATE OR REPLACE TRIGGER {TABLE}_delete AFTER DELETE ON {patterns}
            REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_forget()""",
        f"""CREATE OR REPLACE TRIGGER {TABLE}_truncate AFTER TRUNCATE ON {patterns}
            FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_forget()""",
    ]


def _index_sql(model: str, dim: int, *, concurrently: bool = False) -> str:
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {index_name(model, dim)} "
        f"ON {TABLE} USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) "
        f"WHERE model = {_literal(model)} AND dim = {int(dim)}"
    )


_schema: set[tuple[Any, ...]] = set()


def ensure_schema(
    connection: BaseDatabaseWrapper, *, model: str | None = None, dim: int | None = None
) -> None:
    """Create the mirror table (with its triggers) and, given a model and its
    dimension, the model's HNSW index, if they are not there. Idempotent and,
    after the first call in a process, free: what exists is remembered once it
    is committed."""
    key = (_db_key(connection), model, dim if model is not None else None)
    if key in _schema:
        return
    index = index_name(model, dim) if model is not None and dim else None
    outer = connection.in_atomic_block
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL", [TABLE, index or TABLE]
        )
        have_table, have_index = cursor.fetchone()
        if not (have_table and have_index):
            # One process creates them; the others wait, then find them there.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
            if not have_table:
                for statement in _table_sql():
                    cursor.execute(statement)
            if index is not None and model is not None and dim:
                cursor.execute(_index_sql(model, dim))

    def remember() -> None:
        _schema.add(key)
        _schema.add((key[0], None, None))

    if outer:
        transaction.on_commit(remember, using=connection.alias)
    else:
        remember()


def vector_text(vector: np.ndarray) -> str:
    """pgvector's text form of ``vector``: nine significant digits give back
    every float32 exactly."""
    values = np.asarray(vector, dtype=np.float32).tolist()
    return "[" + ",".join(["%.9g"] * len(values)) % tuple(values) + "]"


def _upsert(connection: BaseDatabaseWrapper, rows: Sequence[tuple[int, str, np.ndarray]]) -> int:
    """Write (pattern, model, vector) rows into the mirror, with the pattern's
    task, board, agent and verdict read from its row in the same statement."""
    if not rows:
        return 0
    patterns = Pattern._meta.db_table
    values = ", ".join(["(%s::bigint, %s::text, %s::smallint, %s::vector)"] * len(rows))
    params: list[Any] = []
    for pk, model, vector in rows:
        params += [pk, model, len(vector), vector_text(vector)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {TABLE} (pattern_id, model, dim, task_id, board_id, agent_id, verdict, embedding)
            SELECT p.id, v.model, v.dim, p.task_id, p.board_id, p.agent_id, p.verdict, v.embedding
            FROM (VALUES {values}) AS v (pattern_id, model, dim, embedding)
            JOIN {patterns} p ON p.id = v.pattern_id
            ON CONFLICT (pattern_id) DO UPDATE SET
                model = EXCLUDED.model, dim = EXCLUDED.dim, task_id = EXCLUDED.task_id,
                board_id = EXCLUDED.board_id, agent_id = EXCLUDED.agent_id,
                verdict = EXCLUDED.verdict, embedding = EXCLUDED.embedding""",
            params,
        )
        return cursor.rowcount


def mirror(patterns: Sequence[Pattern], *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Hand freshly embedded patterns to the index that keeps its own copy:
    where the backend is pgvector, upsert their vectors into its table (in the
    caller's transaction, so the two never disagree); elsewhere nothing (the
    numpy index reads the patterns' own rows)."""
    if not patterns or vector_backend(using) != PGVECTOR:
        return
    connection = connections[using]
    rows = []
    for pattern in patterns:
        vector = as_vector(pattern.vector)
        if vector is not None and len(vector) and pattern.embed_model:
            rows.append((pattern.pk, pattern.embed_model, vector))
    for model, dim in sorted({(model, len(vector)) for _, model, vector in rows}):
        ensure_schema(connection, model=model, dim=dim)
    _upsert(connection, rows)


class PgvectorUnavailable(Exception):
    """The database cannot hold the pgvector index (said why, and what to do)."""


def pgvector_problem(using: str = DEFAULT_DB_ALIAS) -> str | None:
    """Why the database cannot serve the pgvector index, or None if it can."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return f"the database is {connection.display_name}, not PostgreSQL: searches use numpy, exactly, in memory"
    version = pgvector_version(using)
    if version is None:
        return (
            "PostgreSQL has no vector extension in this database: install pgvector 0.8 or later "
            "for the server, run CREATE EXTENSION vector; as a superuser, then run this again"
        )
    if _version(version) < PGVECTOR_MINIMUM:
        return f"pgvector {version} is installed; Kaizen needs 0.8.0 or later: upgrade it, then ALTER EXTENSION vector UPDATE;"
    return None


@dataclass
class Rebuild:
    rows: int = 0
    dims: set[int] = field(default_factory=set)
    load_seconds: float = 0.0
    index_seconds: float = 0.0


def mirror_rebuild(
    model: str,
    *,
    using: str = DEFAULT_DB_ALIAS,
    chunk: int = 1000,
    maintenance_work_mem: str = "512MB",
    progress: Callable[[int], None] | None = None,
) -> Rebuild:
    """Mirror every vector of ``model`` from the patterns' rows into the pgvector
    table, then build the model's HNSW index from the whole table: what a
    PostgreSQL whose extension came after the patterns needs. The index is
    dropped first and built once at the end (far quicker than growing it a row
    at a time) and CONCURRENTLY, so the line's writes never wait on it; searches
    meanwhile read the table without it, exactly and more slowly. Safe to run
    again: rows are upserted, a chunk at a time with its patterns locked, so a
    vector the embedder writes meanwhile is never overwritten by an older one."""
    problem = pgvector_problem(using)
    if problem is not None:
        raise PgvectorUnavailable(problem)
    connection = connections[using]
    if connection.in_atomic_block:
        raise PgvectorUnavailable(
            "mirror_rebuild builds its index CONCURRENTLY: call it outside a transaction"
        )
    ensure_schema(connection)
    result = Rebuild()
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname LIKE %s",
            [TABLE, index_name(model, 0)[:-1].replace("_", r"\_") + "%"],
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        # Rows of patterns deleted while the triggers were not there yet.
        cursor.execute(
            f"DELETE FROM {TABLE} v WHERE NOT EXISTS "
            f"(SELECT 1 FROM {Pattern._meta.db_table} p WHERE p.id = v.pattern_id)"
        )
    _schema.difference_update({key for key in _schema if key[1] == model})
    last = 0
    while True:
        with transaction.atomic(using=using):
            page = list(
                Pattern.objects.using(using)
                .select_for_update()
                .filter(embed_model=model, vector__isnull=False, pk__gt=last)
                .order_by("pk")
                .values_list("pk", "vector")[:chunk]
            )
            if not page:
                break
            last = page[-1][0]
            rows = [
                (pk, model, vector)
                for pk, blob in page
                if (vector := as_vector(blob)) is not None and len(vector)
            ]
            result.dims.update(len(vector) for _, _, vector in rows)
            result.rows += _upsert(connection, rows)
        if progress is not None:
            progress(result.rows)
    result.load_seconds = time.monotonic() - started
    started = time.monotonic()
    with connection.cursor() as cursor:
        # The whole graph in memory makes the build several times quicker; the
        # setting is this connection's and put back after.
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
        try:
            for dim in sorted(result.dims):
                cursor.execute(_index_sql(model, dim, concurrently=True))
        finally:
            cursor.execute("RESET maintenance_work_mem")
    result.index_seconds = time.monotonic() - started
    return result


def _array(values: Collection[Any], kind: str) -> str:
    items = [str(int(v)) for v in values] if kind == "bigint" else [_literal(str(v)) for v in values]
    return f"ARRAY[{', '.join(items)}]::{kind}[]"


class PgvectorIndex:
    """The model's vectors in the mirror table, searched by PostgreSQL through
    the model's HNSW index; filters are applied during the index scan
    (iterative scans, pgvector 0.8), so a filtered search still finds k rows."""

    def __init__(self, model: str, *, using: str = DEFAULT_DB_ALIAS, ef_search: int = EF_SEARCH) -> None:
        self.model = model
        self.using = using
        self.ef_search = ef_search

    def query(
        self,
        vector: np.ndarray,
        *,
        k: int,
        agent_ids: Collection[int] | None = None,
        verdicts: Collection[str] | None = None,
        exclude_tasks: Collection[int] = (),
        board_ids: Collection[int] | None = None,
        exact: bool = False,
    ) -> str:
        """The search's SQL, with its values written in (numbers formatted here,
        strings quoted): no parameters, so it can follow the SET LOCALs in one
        round trip. By the graph, or with ``exact``, by comparing every row that
        passes the filters (an order the graph's index cannot serve; then the
        agent and board columns' indexes may find those rows)."""
        dim = int(len(vector))
        distance = f"embedding::vector({dim}) <=> '{vector_text(vector)}'::vector({dim})"
        where = [f"model = {_literal(self.model)}", f"dim = {dim}"]
        for column, values in (("agent_id", agent_ids), ("board_id", board_ids)):
            if values is not None:
                # "+ 0" keeps the column's own index out of the graph's search:
                # the planner, counting a 384-float distance as cheap as an
                # addition, would rather compare a quarter of the rows than
                # walk the graph, four times slower at 100,000 patterns.
                where.append(f"{column if exact else f'({column} + 0)'} = ANY({_array(values, 'bigint')})")
        if verdicts is not None:
            where.append(f"verdict = ANY({_array(verdicts, 'text')})")
        if exclude_tasks:
            where.append(f"task_id <> ALL({_array(exclude_tasks, 'bigint')})")
        order = f"({distance}) + 0" if exact else "distance"
        # Iterative scans return rows only roughly in order (relaxed_order):
        # the outer query puts the k found in order.
        return (
            f"WITH nearest AS MATERIALIZED (SELECT pattern_id, task_id, {distance} AS distance "
            f"FROM {TABLE} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {int(k)}) "
            "SELECT pattern_id, task_id, distance FROM nearest ORDER BY distance + 0, pattern_id"
        )

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        agent_ids: Collection[int] | None = None,
        verdicts: Collection[str] | None = None,
        exclude_tasks: Collection[int] = (),
        board_ids: Collection[int] | None = None,
    ) -> list[Hit]:
        if (
            k <= 0
            or len(vector) == 0
            or any(f is not None and not f for f in (agent_ids, verdicts, board_ids))
        ):
            return []
        connection = connections[self.using]
        ensure_schema(connection)
        filters: dict[str, Any] = {
            "agent_ids": agent_ids,
            "verdicts": verdicts,
            "exclude_tasks": exclude_tasks,
            "board_ids": board_ids,
        }
        # One round trip: statements sent together run in one transaction
        # (the caller's, if it has one), which the SET LOCALs last for.
        settings = (
            f"SET LOCAL hnsw.ef_search = {min(1000, max(int(self.ef_search), k))}; "
            "SET LOCAL hnsw.iterative_scan = relaxed_order; "
        )
        with connection.cursor() as cursor:
            cursor.execute(settings + self.query(vector, k=k, **filters))
            while cursor.description is None and cursor.nextset():
                pass
            rows = cursor.fetchall()
            if len(rows) < k:
                # Fewer than k: the filters pass few rows and the graph's scan
                # gave up (hnsw.max_scan_tuples), or there are fewer than k. An
                # exact search over the rows that pass says which.
                cursor.execute(self.query(vector, k=k, exact=True, **filters))
                rows = cursor.fetchall()
        return [Hit(int(pk), int(task), 1.0 - float(distance)) for pk, task, distance in rows]


# --- the selector -------------------------------------------------------------------

_indexes: dict[tuple[str, str], NumpyIndex] = {}
_indexes_lock = threading.Lock()


def numpy_index(model: str, *, using: str = DEFAULT_DB_ALIAS) -> NumpyIndex:
    with _indexes_lock:
        index = _indexes.get((using, model))
        if index is None:
            index = _indexes[using, model] = NumpyIndex(model, using=using)
        return index


def indexes_clear() -> None:
    """Forget every process-wide index and what was found out about the
    databases (tests, and a model change)."""
    with _indexes_lock:
        _indexes.clear()
    with _backends_lock:
        _backends.clear()
    _schema.clear()


def vector_index(model: str, *, using: str = DEFAULT_DB_ALIAS) -> VectorIndex:
    """The index to search the vectors of ``model`` with: pgvector's where the
    database has it, else the numpy index."""
    if vector_backend(using) == PGVECTOR:
        return PgvectorIndex(model, using=using)
    return numpy_index(model, using=using)
