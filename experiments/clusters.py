"""Clusters of reviewers' reasons (issue 14): which objections recur.

The kaizen cycle (experiments.pdca) hands this module the rejected and corrected
answers of an agent's active prompt version with the reviewers' reasons; their
reasons are embedded (the knowledge base's embedder: paraphrases with no word in
common land close) and grouped by agglomerative clustering, average linkage on
cosine distance, cut at ``DISTANCE``: a group's reasons are on average at least
``1 - DISTANCE`` similar to each other. Deterministic: the same reasons give the
same clusters, whatever their order.

Why these numbers: on a labelled set of 28 reviewer-style reasons in 6 themes
(tone, length, invented facts, severity, part numbers, refunds) and 10 one-off
reasons, all-MiniLM-L6-v2 with average linkage gave an adjusted Rand index of
0.57 at 0.65, 0.67 at 0.7 and 0.81 at 0.75, and merged unrelated one-offs into
themes from 0.8; 0.7 keeps a margin on the side of not merging (a wrong cluster
would become a misleading proposal). Complete linkage split the themes more.

A cluster **recurs** when its reasons come from at least ``MIN_TASKS`` distinct
tasks: one task rejected three times for one reason is one case, not three.

Pure apart from the embedder it is given: no database, no models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

DISTANCE = 0.7
MIN_TASKS = 3
# What of a reason is embedded: reviewers' reasons are short; a long one's start says what it is about.
REASON_CHARS = 300


class _Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Failure:
    """An answer a reviewer sent back, with why."""

    pattern: int
    task: int
    verdict: str  # "rejected" or "corrected"
    reason: str
    input: str = ""
    output: str = ""
    correction: str = ""


@dataclass(frozen=True)
class Cluster:
    members: tuple[Failure, ...]
    # The reason nearest to all the others (the medoid): what the cluster is about.
    representative: str
    # The mean cosine similarity of its members' reasons to each other (1.0 for one reason).
    cohesion: float

    @property
    def tasks(self) -> list[int]:
        return list(dict.fromkeys(member.task for member in self.members))

    @property
    def reasons(self) -> list[tuple[str, int]]:
        """Its distinct reasons, most often given first, with how often."""
        counts = Counter(_normal(member.reason) for member in self.members)
        first: dict[str, str] = {}
        for member in self.members:
            first.setdefault(_normal(member.reason), member.reason.strip())
        return [(first[key], n) for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    @property
    def recurs(self) -> bool:
        return len(self.tasks) >= MIN_TASKS


def _normal(reason: str) -> str:
    return " ".join(reason.split()).lower()


def reason_clusters(
    failures: Sequence[Failure], embedder: _Embedder, *, distance: float = DISTANCE
) -> list[Cluster]:
    """The failures grouped by what their reasons say, largest first (by distinct
    tasks, then members). Failures with no reason are left out. Raises what the
    embedder raises."""
    failures = [f for f in failures if f.reason.strip()]
    if not failures:
        return []
    # Each distinct reason is embedded and clustered once; sorted, so the input's
    # order changes nothing.
    texts = sorted({_normal(f.reason) for f in failures})
    vectors = np.asarray(embedder.embed([text[:REASON_CHARS] for text in texts]), dtype=np.float64)
    if len(texts) == 1:
        labels = np.ones(1, dtype=int)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage  # at first use: see experiments.stats

        tree = linkage(vectors, method="average", metric="cosine")
        labels = fcluster(tree, t=distance, criterion="distance")
    label_of = dict(zip(texts, labels, strict=True))
    weight = Counter(_normal(f.reason) for f in failures)
    clusters = []
    for label in sorted(set(labels)):
        indices = [i for i, text in enumerate(texts) if label_of[text] == label]
        members = tuple(
            sorted((f for f in failures if label_of[_normal(f.reason)] == label), key=lambda f: f.pattern)
        )
        block = vectors[indices]
        similarity = block @ block.T
        counts = np.array([weight[texts[i]] for i in indices], dtype=np.float64)
        # The medoid, each reason weighed by how many members gave it.
        best = int(np.argmax(similarity @ counts))
        pairs = len(indices) * (len(indices) - 1)
        cohesion = float((similarity.sum() - np.trace(similarity)) / pairs) if pairs else 1.0
        representative = next(m.reason.strip() for m in members if _normal(m.reason) == texts[indices[best]])
        clusters.append(Cluster(members=members, representative=representative, cohesion=round(cohesion, 4)))
    return sorted(clusters, key=lambda c: (-len(c.tasks), -len(c.members), c.members[0].pattern))
