"""Clusters of reviewers' reasons (experiments.clusters), with the real embedder:
paraphrases of one objection, in different words, land in one cluster; unrelated
reasons stay apart; a cluster recurs only across distinct tasks."""

from __future__ import annotations

import random

import pytest

from experiments.clusters import MIN_TASKS, Failure, reason_clusters
from experiments.embeddings import get_embedder

INFORMAL = [
    "Too informal for a customer.",
    "The tone is far too casual.",
    "way too informal, this goes to a bank",
]
UNRELATED = ["Wrong order number", "Leaked the customer's email address", "Not in English"]


def _failures(reasons: list[str], *, first_task: int = 1) -> list[Failure]:
    return [
        Failure(pattern=100 + i, task=first_task + i, verdict="rejected", reason=reason)
        for i, reason in enumerate(reasons)
    ]


@pytest.fixture(scope="module")
def embedder():
    return get_embedder()


def test_paraphrases_of_one_objection_make_one_recurring_cluster(embedder):
    found = reason_clusters(_failures(INFORMAL + UNRELATED), embedder)

    [recurring] = [cluster for cluster in found if cluster.recurs]
    assert sorted(member.reason for member in recurring.members) == sorted(INFORMAL)
    assert recurring.representative in INFORMAL
    assert 0 < recurring.cohesion < 1
    # The unrelated reasons each stand alone.
    assert sorted(len(cluster.members) for cluster in found) == [1, 1, 1, 3]
    assert found[0] is recurring


def test_one_task_sent_back_again_and_again_is_one_case(embedder):
    failures = [
        Failure(pattern=i, task=7, verdict="rejected", reason=reason) for i, reason in enumerate(INFORMAL * 2)
    ]

    [cluster] = reason_clusters(failures, embedder)

    assert len(cluster.members) == 6 and cluster.tasks == [7]
    assert not cluster.recurs and MIN_TASKS == 3


def test_the_same_reasons_in_another_order_give_the_same_clusters(embedder):
    failures = _failures(INFORMAL + UNRELATED)
    shuffled = failures[:]
    random.Random(4).shuffle(shuffled)

    def shape(found):
        return [(c.representative, sorted(m.pattern for m in c.members)) for c in found]

    assert shape(reason_clusters(shuffled, embedder)) == shape(reason_clusters(failures, embedder))


def test_reasons_counted_most_often_first_and_empty_ones_left_out(embedder):
    failures = _failures(["Too informal.", "too   informal.", "The tone is far too casual.", ""])

    [cluster] = reason_clusters(failures, embedder)

    assert cluster.reasons == [("Too informal.", 2), ("The tone is far too casual.", 1)]
    assert cluster.representative == "Too informal."
    assert reason_clusters(_failures(["", "  "]), embedder) == []
