"""The knowledge base's services (issue 14): embedding the patterns the line
writes (experiments.patterns), back-filling history, re-embedding after a
change of model, and finding similar past work.

Embedding runs off the line's hot path: ``patterns_embed`` is called by the
``embed-patterns`` beat on its own Celery queue, which ``make run`` serves with
a separate worker process at the lowest CPU priority (scripts/run.py), so a
busy line takes the CPU first and the embedder catches up when it idles."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from andon.models import Escalation, Inspection
from boards.models import Task
from experiments import vectors
from experiments.embeddings import Embedder, get_embedder
from experiments.models import Pattern
from experiments.patterns import decision_patterns, make_pattern, pattern_text

logger = logging.getLogger(__name__)

# Patterns embedded per batch, and the time one call of patterns_embed may take
# before it leaves the rest to the next beat.
EMBED_BATCH = 64
EMBED_BUDGET_SECONDS = 5.0
# While the rest of the machine keeps more than this share of its CPU busy (the
# line at work), the beat's call embeds one small batch and leaves the rest for
# a quieter moment. On these 2-core machines the cores are shared even with a
# process at the lowest priority (their caches, and vCPUs that are one core's
# two threads): an embedder filling the line's idle moments cost it 17% of its
# throughput (bench/knowledge.py).
BUSY_SHARE = 0.5
BUSY_BATCH = 4


class CpuGauge:
    """How busy the rest of the machine was since the last look: the share of all
    its CPUs' time spent by other processes (Linux's /proc/stat, less this
    process's own time). None where /proc/stat cannot be read."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, float] | None:
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal, in clock ticks.
        return sum(values), values[3] + values[4], time.process_time()

    def others_busy(self) -> float | None:
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None:
            return None
        total, idle = now[0] - last[0], now[1] - last[1]
        if total <= 0:
            return None
        own = (now[2] - last[2]) * os.sysconf("SC_CLK_TCK")
        return max(0.0, total - idle - own) / total


_gauge: CpuGauge | None = None


def line_busy() -> bool:
    """Is the rest of the machine busy (the line at work)? Measured since the
    previous call in this process (the beat's calls, every few seconds)."""
    global _gauge
    if _gauge is None:
        _gauge = CpuGauge()
        return False
    share = _gauge.others_busy()
    return share is not None and share > getattr(settings, "KAIZEN_EMBED_YIELD_SHARE", BUSY_SHARE)


def pending_patterns(model: str):
    """Patterns with no vector of ``model``: new ones, and those made by another
    model (re-embedded after a change of model). For counting; the embedder
    reads the two apart (``_next_batch``), each through an index."""
    return Pattern.objects.filter(Q(vector__isnull=True) | ~Q(embed_model=model))


# Whether rows of another model are left, looked at most this often per process:
# on an idle line the embedder's beat must not scan the whole table every 2 s.
STALE_LOOK_SECONDS = 60.0
_stale_looked: dict[str, float] = {}


def stale_left(model: str) -> bool:
    """Are rows embedded by another model left? (At most one look a minute
    while the last look found none.)"""
    looked = _stale_looked.get(model)
    if looked is not None and time.monotonic() - looked < STALE_LOOK_SECONDS:
        return False
    left = Pattern.objects.filter(embedded_at__isnull=False).exclude(embed_model=model).exists()
    if not left:
        _stale_looked[model] = time.monotonic()
    return left


def _next_batch(model: str, batch: int) -> list[Pattern]:
    """The next rows to embed, locked: new ones first (the partial index of rows
    with no vector), reviewers' decisions before the rest, then rows of another
    model."""
    fields = ("pk", "text", "text_hash", "embed_model")
    new = Pattern.objects.filter(embedded_at__isnull=True).select_for_update(skip_locked=True).only(*fields)
    # Reviewers' decisions first: the failure warnings of open escalations wait
    # for them, and a busy line's passed attempts can queue up by the thousand.
    rows = list(new.filter(verdict__in=Pattern.REVIEWED).order_by("pk")[:batch])
    if len(rows) < batch:
        rows += new.exclude(verdict__in=Pattern.REVIEWED).order_by("pk")[: batch - len(rows)]
    if rows or not stale_left(model):
        return rows
    return list(
        Pattern.objects.filter(embedded_at__isnull=False)
        .exclude(embed_model=model)
        .select_for_update(skip_locked=True)
        .order_by("embedded_at", "pk")
        .only(*fields)[:batch]
    )


def _embed_rows(rows: list[Pattern], embedder: Embedder) -> None:
    """Fill in the vectors of ``rows``: a text already embedded by this model
    (the same input seen again) is copied, the rest embedded in one batch."""
    known = vectors.stored_vectors({row.text_hash for row in rows}, embedder.name)
    todo = [row for row in rows if row.text_hash not in known]
    fresh: dict[str, bytes] = {}
    if todo:
        texts = list(dict.fromkeys(row.text for row in todo))
        matrix = embedder.embed(texts)
        by_text = {text: matrix[i].astype(np.float32).tobytes() for i, text in enumerate(texts)}
        fresh = {row.text_hash: by_text[row.text] for row in todo}
    now = timezone.now()
    for row in rows:
        row.vector = known.get(row.text_hash) or fresh[row.text_hash]
        row.embed_model = embedder.name
        row.dim = embedder.dim
        row.embedded_at = now


def patterns_embed(
    *,
    budget_seconds: float = EMBED_BUDGET_SECONDS,
    batch: int = EMBED_BATCH,
    embedder: Embedder | None = None,
    progress: Callable[[int], None] | None = None,
    yielding: bool = False,
) -> int:
    """Embed pending patterns, a batch at a time, until none is left or the time
    budget is spent; returns how many were embedded. Safe to run in several
    processes at once: a batch is claimed with its rows locked (SKIP LOCKED where
    the database has it), and a row embedded twice is only written twice.

    ``yielding`` (the beat's calls): while the rest of the machine is busy
    (``line_busy``), one batch of ``BUSY_BATCH`` and no more, so the embedder
    takes a few percent of one core while the line runs and catches up after."""
    embedder = embedder or get_embedder()
    if yielding and line_busy():
        budget_seconds, batch = 0.0, BUSY_BATCH
    started = time.monotonic()
    done = 0
    # At least one batch, however small the budget.
    while done == 0 or time.monotonic() - started < budget_seconds:
        # Where rows can be locked (PostgreSQL) the batch's stay locked while
        # they are embedded: another process skips them, and no writer of the
        # line wants them. SQLite's write lock is the whole database's: held
        # while a batch was embedded (0.6 s for 64 texts), batch after batch, it
        # kept the line's writers out until their busy timeout ran out ("database
        # is locked": a pull and a run lost in the demo, catching up on 3,200
        # patterns). There the batch is read and embedded first and written in
        # a short transaction; a row embedded twice is only written twice.
        locked = transaction.atomic if connection.features.has_select_for_update else contextlib.nullcontext
        with locked():
            rows = _next_batch(embedder.name, batch)
            if not rows:
                break
            _embed_rows(rows, embedder)
            with transaction.atomic(savepoint=False):
                Pattern.objects.bulk_update(rows, ["vector", "embed_model", "dim", "embedded_at"])
                vectors.mirror(rows)
        done += len(rows)
        if progress is not None:
            progress(len(rows))
    return done


# --- back-fill ----------------------------------------------------------------------


def _passed_attempts(after: int, limit: int) -> list[Pattern]:
    """Patterns for done tasks whose last attempt passed its inspection (or was
    marked a defect on a board with no Review column), in task order."""

    tasks = list(_undecided_done_tasks().filter(pk__gt=after).order_by("pk")[:limit])
    if not tasks:
        return []
    inspections = {
        (task_id, attempt): (passed, failures)
        for task_id, attempt, passed, failures in Inspection.objects.filter(
            task_id__in=[t.pk for t in tasks]
        ).values_list("task_id", "attempt", "passed", "failures")
    }
    rows = []
    for task in tasks:
        attempt = task.attempts or 1
        passed, failures = inspections.get((task.pk, attempt), (True, []))
        rows.append(
            make_pattern(
                task,
                verdict=Pattern.Verdict.PASSED if passed else Pattern.Verdict.DEFECT,
                attempt=attempt,
                tier=task.accepted_tier,
                model="",
                version=task.prompt_version,
                output=task.output,
                reason="" if passed else "; ".join(str(f) for f in failures or []),
                cost=task.cost,
                tokens_in=task.tokens_in,
                tokens_out=task.tokens_out,
            )
        )
    return rows


@dataclass
class Backfill:
    written: int = 0
    embedded: int = 0


# The decisions a back-fill writes patterns of.
_DECIDED_STATUSES = (Escalation.Status.APPROVED, Escalation.Status.CORRECTED, Escalation.Status.REJECTED)


def patterns_backfill(
    *,
    chunk: int = 500,
    on_written: Callable[[int], None] | None = None,
    embed: bool = True,
    on_embedded: Callable[[int], None] | None = None,
) -> Backfill:
    """Write the patterns of the history the line finished before the knowledge
    base existed: every decided escalation, and every done task that no
    reviewer decided. Restartable: rows are unique per (task, attempt), so a
    second run writes only what the first did not. Then embeds what is pending."""
    result = Backfill()
    last = 0
    while True:
        escalations = list(
            Escalation.objects.filter(pk__gt=last, status__in=_DECIDED_STATUSES).order_by("pk")[:chunk]
        )
        if not escalations:
            break
        last = escalations[-1].pk
        rows = decision_patterns(escalations)
        result.written += len(Pattern.objects.bulk_create(rows, ignore_conflicts=True))
        if on_written is not None:
            on_written(len(escalations))
    last = 0
    while True:
        rows = _passed_attempts(last, chunk)
        if not rows:
            break
        last = rows[-1].task_id
        Pattern.objects.bulk_create(rows, ignore_conflicts=True)
        result.written += len(rows)
        if on_written is not None:
            on_written(len(rows))
    if embed:
        result.embedded = patterns_embed(budget_seconds=float("inf"), progress=on_embedded)
    return result


def backfill_total() -> int:
    """How many rows a back-fill looks at (its progress bar's length)."""
    decided = Escalation.objects.filter(status__in=_DECIDED_STATUSES).count()
    return decided + _undecided_done_tasks().count()


def _undecided_done_tasks() -> QuerySet[Task]:
    """The back-fill's second part: done tasks no reviewer approved or corrected
    (their patterns come from the decisions)."""
    return Task.objects.filter(status=Task.Status.DONE, agent__isnull=False).exclude(
        escalations__status__in=(Escalation.Status.APPROVED, Escalation.Status.CORRECTED)
    )


# --- similar work -------------------------------------------------------------------


@dataclass(frozen=True)
class Similar:
    pattern: Pattern
    similarity: float  # cosine similarity of the two texts, clamped to 0..1


def query_vector(text: str, embedder: Embedder | None = None) -> np.ndarray:
    embedder = embedder or get_embedder()
    return embedder.embed([text])[0]


def similar_patterns(
    *,
    text: str = "",
    task: Task | None = None,
    agent_ids: Collection[int] | None = None,
    verdicts: Collection[str] | None = None,
    limit: int = 10,
    exclude_tasks: Iterable[int] = (),
    board_ids: Collection[int] | None = None,
    embedder: Embedder | None = None,
) -> list[Similar]:
    """The past attempts most like ``text`` (or ``task``'s title and input), most
    similar first; a task's own attempts are left out, and so are boards outside
    ``board_ids`` when it is given (an API token's scope). Patterns are read
    fresh, so a hit whose row went with its task is dropped."""
    embedder = embedder or get_embedder()
    excluded = set(exclude_tasks)
    if task is not None:
        text = pattern_text(task.title, task.input)
        excluded.add(task.pk)
    if not text.strip():
        return []
    index = vectors.vector_index(embedder.name)
    hits = index.search(
        query_vector(text, embedder),
        # Room for hits dropped below: gone with their task since the index looked.
        k=limit + 5,
        agent_ids=agent_ids,
        verdicts=verdicts,
        exclude_tasks=excluded,
        board_ids=board_ids,
    )
    rows = Pattern.objects.select_related("task", "agent").in_bulk([h.pattern for h in hits])
    found = [Similar(rows[h.pattern], max(0.0, min(1.0, h.similarity))) for h in hits if h.pattern in rows]
    return found[:limit]
