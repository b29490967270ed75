"""Nearest-neighbour search over the knowledge base's patterns (issue 14),
behind one selector, ``vector_index()``:

- ``NumpyIndex``: exact cosine search with numpy over the current embedding
  model's vectors, held in memory per process and refreshed incrementally from
  ``Pattern.embedded_at`` (the rows embedded since the last look). The default:
  SQLite, and PostgreSQL without pgvector. At 100,000 patterns of 384 floats it
  holds 154 MB and answers in a few milliseconds (bench/knowledge.py).
- ``PgvectorIndex`` (where PostgreSQL has the ``vector`` extension): the same
  vectors mirrored into an HNSW-indexed table, searched by the database.

Both answer ``search()`` with the same hits (tests/experiments/test_vectors.py
holds them to it): pattern, task and cosine similarity, most similar first."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Protocol

import numpy as np
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Count, Max, Q

from experiments.models import Pattern

# How often a process's numpy index checks that it holds exactly the rows the
# table has: rows deleted with their tasks leave it, rows it missed come in.
RECONCILE_SECONDS = 300.0
# Rows read per query when the numpy index loads from scratch.
LOAD_PAGE = 5000
# A filtered numpy search compares only the rows that pass when fewer than one
# in this many do, and all of them (then picks) otherwise.
GATHER_BELOW = 10

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
    """Forget every process-wide index (tests, and a model change)."""
    with _indexes_lock:
        _indexes.clear()


def vector_index(model: str, *, using: str = DEFAULT_DB_ALIAS) -> VectorIndex:
    """The index to search the vectors of ``model`` with."""
    return numpy_index(model, using=using)


def mirror(patterns: Sequence[Pattern], *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Hand freshly embedded patterns to the index that keeps its own copy
    (pgvector's table); the numpy index reads them from their rows."""


def vector_backend(using: str = DEFAULT_DB_ALIAS) -> str:
    """Which index answers searches here: "numpy" (exact, in memory) or "pgvector"."""
    return "numpy"
