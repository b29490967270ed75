"""Retrieval few-shot (issue 14): the examples a prompt asks for with ``{examples}``.

A template that uses ``{examples}`` (``{examples:n}`` for n of them; see
boards.agents.spec) gets, for each task, the accepted answers to the agent's past
tasks most like it: the task's title and input are embedded, the knowledge base's
index searched for the nearest patterns of the same agent whose verdict is good
(passed inspection, approved, or corrected: then the reviewer's correction is the
answer shown), and those rows read. Never a rejected output or a defect (the
search asks only for good verdicts, and the rows read are filtered on them
again), never the task itself, and one example per distinct input.

This runs on the worker's hot path, for the agents that opted in only: a template
without ``{examples}`` never reaches this module (PromptCascadeAgent.prompt asks
boards.agents.spec.examples_wanted first). Its cost: one indexed query for a
vector of the same text (a retry, a replay of past work, an input seen again),
else one embedding of one text; one index search (the numpy index first reads the
rows embedded since its last look); one query for the rows found.
bench/few_shot.py measures it. If any of it fails (the embedder is missing, the
database errs), the task is not failed for it: the failure is logged and the
prompt is rendered without examples, as for an agent with no history yet.

The line's side: this module imports no services (the line calls it)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from experiments import vectors
from experiments.embeddings import Embedder, EmbeddingError, get_embedder
from experiments.models import Pattern
from experiments.patterns import pattern_text, text_digest

if TYPE_CHECKING:
    from boards.models import Task

logger = logging.getLogger(__name__)

# What an example shows of a past task, at most: enough to see its shape and
# substance, not so much that k examples crowd the prompt's context window.
INPUT_CHARS = 600
OUTPUT_CHARS = 800
# Hits asked of the index for each example wanted: several attempts at one input
# (or the same input done again) are one example, so a few spare hits fill the count.
OVERFETCH = 3
# Rows of the same text looked at for a vector of the current model (the others
# were made by a model since replaced, until they are re-embedded).
STORED_LOOKS = 8
HEADING = "Examples of similar tasks and the answers that were accepted:"
# A broken embedder would say so for every task: once a minute is enough.
WARN_EVERY_SECONDS = 60.0
_warned = {"at": -WARN_EVERY_SECONDS}
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class Example:
    pattern: int
    task: int
    verdict: str
    similarity: float
    input: str
    output: str


def _trim(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _query_vector(text: str, embedder: Embedder) -> np.ndarray:
    """The text's vector: the one stored for this very text by this model when there
    is one (one indexed query instead of a forward pass), else a fresh embedding."""
    digest = text_digest(text)
    stored = vectors.stored_vectors([digest], embedder.name, looks=STORED_LOOKS).get(digest)
    vector = vectors.as_vector(stored)
    return vector if vector is not None else embedder.embed([text])[0]


def examples_for(*, agent_id: int, task: Task, count: int, embedder: Embedder | None = None) -> list[Example]:
    """The ``count`` accepted answers to the past tasks of agent ``agent_id`` most
    like ``task``, most similar first; fewer (or none) when the knowledge base
    holds fewer. Raises what the embedder or the database raise."""
    text = pattern_text(task.title, task.input)
    if count < 1 or not text:
        return []
    embedder = embedder or get_embedder()
    vector = _query_vector(text, embedder)
    excluded = {task.pk} if task.pk is not None else set()
    hits = vectors.vector_index(embedder.name).search(
        vector, k=count * OVERFETCH, agent_ids=[agent_id], verdicts=Pattern.GOOD, exclude_tasks=excluded
    )
    if not hits:
        return []
    # Read by primary key only (more conditions would let SQLite read them through
    # the agent's index instead: every pattern of the agent), and checked here
    # again: an index a little behind its rows must not let a bad verdict through.
    rows = {
        row["pk"]: row
        for row in Pattern.objects.filter(pk__in=[hit.pattern for hit in hits])
        .order_by()
        .values("pk", "task_id", "agent_id", "verdict", "output", "correction", "text_hash", "task__input")
        if row["agent_id"] == agent_id and row["verdict"] in Pattern.GOOD and row["task_id"] not in excluded
    }
    examples: list[Example] = []
    seen: set[str] = set()
    for hit in hits:
        row = rows.get(hit.pattern)
        if row is None or row["text_hash"] in seen:
            continue
        corrected = row["verdict"] == Pattern.Verdict.CORRECTED and row["correction"].strip()
        answer = row["correction"] if corrected else row["output"]
        if not answer.strip() or not row["task__input"].strip():
            continue
        seen.add(row["text_hash"])
        examples.append(
            Example(
                pattern=row["pk"],
                task=row["task_id"],
                verdict=row["verdict"],
                similarity=hit.similarity,
                input=_trim(row["task__input"], INPUT_CHARS),
                output=_trim(answer, OUTPUT_CHARS),
            )
        )
        if len(examples) == count:
            break
    return examples


def examples_block(examples: Sequence[Example]) -> str:
    """The examples as the prompt shows them; empty when there are none, so a
    template reads as it would without the variable."""
    if not examples:
        return ""
    blocks = [
        f"Example {number}\nInput: {example.input}\nOutput: {example.output}"
        for number, example in enumerate(examples, start=1)
    ]
    return HEADING + "\n\n" + "\n\n".join(blocks)


def examples_text(*, agent_id: int, task: Task, count: int) -> str:
    """``{examples}`` for the task's prompt. Never raises: examples help a task, and
    cannot fail one, so an error leaves them out (logged)."""
    try:
        return examples_block(examples_for(agent_id=agent_id, task=task, count=count))
    except Exception as exc:
        _left_out(task, exc)
        return ""
    finally:
        _release_connection()


def _release_connection() -> None:
    # The worker hands its connection back before the model call (to the psycopg
    # pool on PostgreSQL; boards.agents.runtime): the queries here took one again,
    # which the model call that follows must not hold for its seconds of waiting.
    # Inside a transaction (a caller's atomic block) the connection must stay.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        connection.close()


def _left_out(task: Task, exc: Exception) -> None:
    with _warned_lock:
        now = time.monotonic()
        loud = now - _warned["at"] >= WARN_EVERY_SECONDS
        if loud:
            _warned["at"] = now
    logger.log(
        logging.WARNING if loud else logging.DEBUG,
        "few-shot examples for task %s left out (the task runs without them): %s: %s",
        task.pk,
        type(exc).__name__,
        exc,
        # A known failure says what to do in its message; anything else is a bug to trace.
        exc_info=loud and not isinstance(exc, EmbeddingError | ImproperlyConfigured),
    )
