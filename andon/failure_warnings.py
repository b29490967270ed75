"""Failure warnings in the andon inbox (issue 14, use 3): beside an open
escalation, the most similar past escalations of the same agent and how
reviewers decided them, summed up as a person would say it ("3 of 4 similar
tasks were rejected: tone too informal"), so reviewers decide faster and alike.

Computed once per open escalation, off the request path and off the line's:
the knowledge base's embedder task (experiments.tasks.embed_patterns, on its own
queue, served at the lowest CPU priority) calls ``escalation_warnings_compute``
after embedding the pending patterns. The warning is stored on the escalation
(``Escalation.similar``) and its inbox row pushed live after commit, merged into
the row on the page without touching an open form (static/js/inbox.js).

Similar means: a past attempt of another task by the same agent, decided by a
reviewer (approved, corrected or rejected), whose title and input embed at
least ``KAIZEN_WARNING_MIN_SIMILARITY`` close to this one's (see settings for
how the default was measured). An escalation with nothing that similar gets an
empty list, and the inbox shows nothing for it."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from andon import broadcast as andon_broadcast
from andon.demo_reviewer import LABEL as SIMULATED_LABEL
from andon.models import Escalation
from andon.services import is_simulated_reviewer
from boards.models import Board
from experiments import knowledge
from experiments.embeddings import Embedder, EmbeddingError, get_embedder
from experiments.models import Pattern

logger = logging.getLogger(__name__)

# Open escalations given their warning per call, at most, and the time a call
# may take before it leaves the rest to the next beat: an embedding of a short
# text takes 0.1-0.3 s of these 2 cores (all-MiniLM-L6-v2 in numpy, at nice 19
# beside a busy line), so a beat gives about a dozen warnings.
WARNING_BATCH = 20
WARNING_BUDGET_SECONDS = 3.0
# Two reasons at least this similar say the same thing ("tone too informal",
# "the tone is too casual": 0.80 with all-MiniLM-L6-v2); different complaints
# measured at most 0.64 ("fails the length check" against "fails the figures
# check", both the simulated reviewer's).
REASON_MERGE = 0.75
# What is kept of a reason or a correction in the stored warning.
EXCERPT = 300
FORMAT = 1

VERDICTS = (Pattern.Verdict.REJECTED, Pattern.Verdict.CORRECTED, Pattern.Verdict.APPROVED)
_VERB = {
    Pattern.Verdict.REJECTED: ("was rejected", "were rejected"),
    Pattern.Verdict.CORRECTED: ("was approved with a correction", "were approved with a correction"),
    Pattern.Verdict.APPROVED: ("was approved", "were approved"),
}

_PREFIX = re.compile(rf"^\s*{re.escape(SIMULATED_LABEL)}\s*:\s*", re.IGNORECASE)
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")


def _excerpt(text: str) -> str:
    text = (text or "").strip()
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1].rstrip() + "…"


def reason_text(reason: str) -> str:
    """A reason as the summary quotes it: without the simulated reviewer's label
    (the warning says who decided) and without its closing full stop."""
    return _SPACE.sub(" ", _PREFIX.sub("", reason or "")).strip().rstrip(".").strip()


def reason_key(reason: str) -> str:
    """Reasons that say the same thing in the same words have the same key: case,
    spacing, closing punctuation and the figures in them aside ("151 words" and
    "180 words" over a limit are one complaint)."""
    text = _DIGITS.sub("#", reason_text(reason).lower())
    return _SPACE.sub(" ", text).strip(" .;:!")


# Reasons' vectors, kept per process: the same past decisions come up beside
# many open escalations, and their reasons need embedding once.
REASON_CACHE = 2048
_reason_vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_reason_lock = threading.Lock()


def _reasons_embedded(texts: list[str], embedder: Embedder) -> list[np.ndarray]:
    """The vectors of ``texts``, from the cache where it has them."""
    with _reason_lock:
        found = {
            text: _reason_vectors[(embedder.name, text)]
            for text in texts
            if (embedder.name, text) in _reason_vectors
        }
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing:
        found.update(zip(missing, embedder.embed(missing), strict=True))
        with _reason_lock:
            for text in missing:
                _reason_vectors[(embedder.name, text)] = found[text]
            while len(_reason_vectors) > REASON_CACHE:
                _reason_vectors.popitem(last=False)
    return [found[text] for text in texts]


@dataclass(frozen=True)
class CommonReason:
    text: str
    count: int


def commonest_reason(reasons: Sequence[str], embedder: Embedder | None = None) -> CommonReason | None:
    """The reason given most often among ``reasons`` (most similar case first),
    counting as one those that are the same after normalising (``reason_key``)
    and, with an ``embedder``, those whose meaning is the same (``REASON_MERGE``).
    Ties go to the reason of the more similar case. None without any reason."""
    groups: dict[str, list[str]] = {}
    for reason in reasons:
        key = reason_key(reason)
        if key:
            groups.setdefault(key, []).append(reason_text(reason))
    if not groups:
        return None
    # Exact groups, largest first (a stable sort keeps the more similar case first).
    exact = sorted(groups.values(), key=len, reverse=True)
    clusters: list[list[list[str]]] = [[group] for group in exact]
    if embedder is not None and len(exact) > 1:
        vectors = _reasons_embedded([group[0] for group in exact], embedder)
        clusters = []
        heads: list[np.ndarray] = []
        for group, vector in zip(exact, vectors, strict=True):
            for index, head in enumerate(heads):
                if float(head @ vector) >= REASON_MERGE:
                    clusters[index].append(group)
                    break
            else:
                heads.append(vector)
                clusters.append([group])
    best = max(clusters, key=lambda cluster: sum(len(group) for group in cluster))
    # In the words used most often (a tie: those of the more similar case).
    texts = best[0]
    wording = max(dict.fromkeys(texts), key=texts.count)
    return CommonReason(text=wording, count=sum(len(group) for group in best))


def _tasks(n: int) -> str:
    return "task" if n == 1 else "tasks"


def warning_summary(cases: Sequence[dict[str, Any]], embedder: Embedder | None = None) -> dict[str, Any]:
    """What the inbox says of ``cases`` (most similar first): the counts by
    decision, and the sentence naming the commonest decision and its commonest
    reason, e.g. "3 of 4 similar tasks were rejected: tone too informal". A tie
    between decisions goes to the more severe (rejected, then corrected). The
    tone is ``warn`` only when most of them were rejected."""
    counts = {verdict.value: 0 for verdict in VERDICTS}
    for case in cases:
        counts[case["verdict"]] = counts.get(case["verdict"], 0) + 1
    total = len(cases)
    dominant = max(VERDICTS, key=lambda verdict: counts[verdict])  # max keeps the first of a tie
    many = counts[dominant]
    verb = _VERB[dominant][0 if many == 1 else 1]
    if many == total:
        text = f"{total} similar {_tasks(total)} {verb}"
    else:
        text = f"{many} of {total} similar tasks {verb}"
    reason = commonest_reason([c["reason"] for c in cases if c["verdict"] == dominant], embedder)
    if reason is not None and (reason.count > 1 or many == 1):
        text += f": {reason.text}"
        if reason.count < many:
            text += f" ({reason.count} of the {many})"
    elif reason is not None:
        text += ", each for a different reason"
    return {
        "summary": text,
        "tone": "warn" if counts[Pattern.Verdict.REJECTED] * 2 > total else "info",
        "counts": counts,
        "simulated": sum(1 for c in cases if c["simulated"]),
    }


def similar_decisions_get(
    escalation: Escalation,
    *,
    embedder: Embedder,
    floor: float | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The past escalations of ``escalation``'s agent, on other tasks, that a
    reviewer decided and whose task is at least ``floor`` similar to its own:
    most similar first, at most ``limit``, each as it is stored."""
    if escalation.agent_id is None:
        return []
    floor = settings.KAIZEN_WARNING_MIN_SIMILARITY if floor is None else floor
    limit = settings.KAIZEN_WARNING_CASES if limit is None else limit
    found = [
        hit
        for hit in knowledge.similar_patterns(
            task=escalation.task,
            agent_ids=[escalation.agent_id],
            verdicts=Pattern.REVIEWED,
            limit=limit,
            embedder=embedder,
        )
        if hit.similarity >= floor
    ]
    if not found:
        return []
    decided = Escalation.objects.select_related("decided_by").in_bulk(
        [hit.pattern.escalation_id for hit in found if hit.pattern.escalation_id]
    )
    slugs = dict(
        Board.objects.filter(pk__in={hit.pattern.board_id for hit in found}).values_list("pk", "slug")
    )
    cases = []
    for hit in found:
        pattern = hit.pattern
        past = decided.get(pattern.escalation_id) if pattern.escalation_id else None
        reviewer = past.decided_by if past is not None else None
        when = (past.decided_at if past is not None else None) or pattern.created_at
        cases.append(
            {
                "task": pattern.task_id,
                "title": pattern.task.title,
                "board": slugs.get(pattern.board_id, ""),
                "escalation": pattern.escalation_id,
                "similarity": round(hit.similarity, 4),
                "verdict": pattern.verdict,
                "reason": _excerpt(pattern.reason),
                "correction": _excerpt(pattern.correction),
                "reviewer": reviewer.get_username() if reviewer is not None else "",
                "simulated": is_simulated_reviewer(reviewer),
                "decided_at": when.isoformat() if when else None,
            }
        )
    return cases


def escalation_similar_get(escalation: Escalation, *, embedder: Embedder) -> dict[str, Any]:
    """The warning to store on ``escalation`` (``Escalation.similar``): the
    similar cases and their summary; ``cases`` is empty when there are none."""
    cases = similar_decisions_get(escalation, embedder=embedder)
    stored: dict[str, Any] = {
        "v": FORMAT,
        "model": embedder.name,
        "floor": settings.KAIZEN_WARNING_MIN_SIMILARITY,
        "cases": cases,
    }
    if cases:
        stored.update(warning_summary(cases, embedder))
    return stored


def escalation_warnings_compute(
    *,
    batch: int = WARNING_BATCH,
    budget_seconds: float = WARNING_BUDGET_SECONDS,
    embedder: Embedder | None = None,
) -> list[int]:
    """Give the open escalations that have none yet their warning, oldest first,
    ``batch`` at most and until ``budget_seconds`` are spent; their inbox rows
    that now show one are pushed after commit. Returns the escalations given a
    warning (shown or empty).

    Only escalations whose history is embedded are taken: those opened before
    the oldest reviewer's decision still waiting for its vector (a decision
    made just before an escalation opened is found; the line's passed attempts,
    which warnings do not use, are not waited for). Idempotent and safe beside
    reviewers: a warning is written only to an escalation still open and still
    without one, in one UPDATE of those two columns."""
    embedder = embedder or get_embedder()
    # Through the partial index of rows with no vector; rows of another model
    # (after a change of model) only while there are any.
    pending = Pattern.objects.filter(embedded_at__isnull=True)
    if knowledge.stale_left(embedder.name):
        pending = knowledge.pending_patterns(embedder.name)
    waiting = pending.filter(verdict__in=Pattern.REVIEWED).aggregate(oldest=Min("created_at"))["oldest"]
    open_ = Escalation.objects.filter(status=Escalation.Status.OPEN, similar_at__isnull=True)
    if waiting is not None:
        open_ = open_.filter(created_at__lt=waiting)
    escalations = list(open_.select_related("task").order_by("created_at", "pk")[:batch])
    done: list[int] = []
    shown: list[int] = []
    started = time.monotonic()
    for escalation in escalations:
        if done and time.monotonic() - started > budget_seconds:
            break
        try:
            similar = escalation_similar_get(escalation, embedder=embedder)
        except EmbeddingError as exc:
            # The embedder is down (a remote one): the next beat tries again.
            logger.warning("failure warnings wait: %s", exc)
            break
        written = Escalation.objects.filter(
            pk=escalation.pk, status=Escalation.Status.OPEN, similar_at__isnull=True
        ).update(similar=similar, similar_at=timezone.now())
        if written:
            done.append(escalation.pk)
            if similar["cases"]:
                shown.append(escalation.pk)
    if shown:
        transaction.on_commit(lambda: andon_broadcast.escalations_changed(shown))
    return done
