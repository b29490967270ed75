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

import numpy as np

from experiments.models import Pattern

# A full reload this often, so rows deleted with their tasks leave the index
# (between reloads a deleted row's hit is dropped when the hits are read).
RELOAD_SECONDS = 600.0

VERDICTS = [value for value, _ in Pattern.Verdict.choices]
_VERDICT_CODE = {value: code for code, value in enumerate(VERDICTS)}


@dataclass(frozen=True)
class Hit:
    pattern: int
    task: int
    similarity: float


def as_vector(blob: bytes | memoryview | None) -> np.ndarray | None:
    if blob is None:
        return None
    return np.frombuffer(bytes(blob), dtype=np.float32)


class NumpyIndex:
    """The current model's vectors in memory, with the columns a search filters on."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.size = 0
        self.dim = 0
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._tasks = np.zeros(0, dtype=np.int64)
        self._agents = np.zeros(0, dtype=np.int64)
        self._verdicts = np.zeros(0, dtype=np.int8)
        self._rows: dict[int, int] = {}
        self._seen: datetime | None = None
        self._loaded_at = 0.0

    def _grow(self, need: int, dim: int) -> None:
        if self.dim == 0:
            self.dim = dim
        capacity = len(self._ids)
        if need <= capacity:
            return
        capacity = max(need, capacity * 2, 1024)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        if self.size:
            vectors[: self.size] = self._vectors[: self.size]
        self._vectors = vectors
        for name, dtype in (
            ("_ids", np.int64),
            ("_tasks", np.int64),
            ("_agents", np.int64),
            ("_verdicts", np.int8),
        ):
            column = np.zeros(capacity, dtype=dtype)
            column[: self.size] = getattr(self, name)[: self.size]
            setattr(self, name, column)

    def refresh(self) -> None:
        """Take in the rows embedded (or re-embedded) since the last look."""
        with self._lock:
            if time.monotonic() - self._loaded_at > RELOAD_SECONDS:
                self._clear()
                self._loaded_at = time.monotonic()
            rows = Pattern.objects.filter(embed_model=self.model, vector__isnull=False)
            if self._seen is not None:
                # >=: rows stamped in the same instant as the last seen one are
                # read again (and put back in their place), never missed.
                rows = rows.filter(embedded_at__gte=self._seen)
            fresh = list(
                rows.order_by("embedded_at", "pk").values_list(
                    "pk", "task_id", "agent_id", "verdict", "vector", "embedded_at"
                )
            )
            for pk, task_id, agent_id, verdict, blob, embedded_at in fresh:
                vector = as_vector(blob)
                if vector is None or (self.dim and len(vector) != self.dim):
                    continue
                row = self._rows.get(pk)
                if row is None:
                    self._grow(self.size + 1, len(vector))
                    row = self.size
                    self._rows[pk] = row
                    self.size += 1
                self._vectors[row] = vector
                self._ids[row] = pk
                self._tasks[row] = task_id
                self._agents[row] = agent_id or 0
                self._verdicts[row] = _VERDICT_CODE.get(verdict, -1)
                self._seen = embedded_at

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        agent_ids: Collection[int] | None = None,
        verdicts: Collection[str] | None = None,
        exclude_tasks: Collection[int] = (),
    ) -> list[Hit]:
        self.refresh()
        with self._lock:
            if self.size == 0 or len(vector) != self.dim:
                return []
            scores = self._vectors[: self.size] @ vector.astype(np.float32)
            mask = None
            if agent_ids is not None:
                mask = np.isin(self._agents[: self.size], list(agent_ids))
            if verdicts is not None:
                codes = [_VERDICT_CODE[v] for v in verdicts if v in _VERDICT_CODE]
                chosen = np.isin(self._verdicts[: self.size], codes)
                mask = chosen if mask is None else mask & chosen
            if exclude_tasks:
                kept = ~np.isin(self._tasks[: self.size], list(exclude_tasks))
                mask = kept if mask is None else mask & kept
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            k = min(k, self.size)
            if k <= 0:
                return []
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [
                Hit(int(self._ids[i]), int(self._tasks[i]), float(scores[i]))
                for i in top
                if np.isfinite(scores[i])
            ]


_indexes: dict[str, NumpyIndex] = {}
_indexes_lock = threading.Lock()


def numpy_index(model: str) -> NumpyIndex:
    with _indexes_lock:
        index = _indexes.get(model)
        if index is None:
            index = _indexes[model] = NumpyIndex(model)
        return index


def indexes_clear() -> None:
    """Forget every process-wide index (tests, and a model change)."""
    with _indexes_lock:
        _indexes.clear()


def vector_index(model: str) -> NumpyIndex:
    """The index to search the vectors of ``model`` with."""
    return numpy_index(model)


def mirror(patterns: Sequence[Pattern]) -> None:
    """Hand freshly embedded patterns to the index that keeps its own copy
    (pgvector's table); the numpy index reads them from their rows."""


def vector_backend() -> str:
    """Which index answers searches here: "numpy" (exact, in memory) or "pgvector"."""
    return "numpy"
