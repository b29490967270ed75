"""The knowledge base's rows and vectors (issue 14): a pattern per finished
attempt, written with its outcome; embedded off the line's path, each text
once; back-filled for history, restartably; re-embedded after a model change."""

from __future__ import annotations

import time
from decimal import Decimal
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command

from andon import services as andon_services
from andon.models import Escalation
from boards.models import Column
from experiments import knowledge, patterns, vectors
from experiments.embeddings import get_embedder
from experiments.models import Pattern, PromptVersion
from tests.andon.helpers import DEFECTIVE, claim_one, complete, escalate, pull
from tests.factories import make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db


class Counting:
    """The real embedder, counting the texts it is asked to embed; under another
    name when ``name`` is given (a change of model)."""

    def __init__(self, name: str | None = None) -> None:
        self.inner = get_embedder()
        self.name = name or self.inner.name
        self.dim = self.inner.dim
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += list(texts)
        return self.inner.embed(texts)


@pytest.fixture(autouse=True)
def _fresh_indexes():
    vectors.indexes_clear()
    yield
    vectors.indexes_clear()


def test_an_attempt_that_passes_is_a_passed_pattern_with_its_ledger(board, agent):
    task, claim = claim_one(board, title="Refund order 1234", input="The parcel arrived broken.")
    assert complete(claim, cost="0.0021")
    [pattern] = Pattern.objects.filter(task=task)
    assert pattern.verdict == Pattern.Verdict.PASSED
    assert (pattern.attempt, pattern.agent_id, pattern.board_id) == (1, agent.pk, board.pk)
    assert pattern.tier == 1 and pattern.model == "sim-small"
    assert pattern.cost == Decimal("0.0021")
    assert (pattern.tokens_in, pattern.tokens_out) == (12, 16)
    assert pattern.text == "Refund order 1234\n\nThe parcel arrived broken."
    assert pattern.output == task.__class__.objects.get(pk=task.pk).output
    # Written without its vector: the line does not wait on an embedding.
    assert pattern.vector is None and pattern.embedded_at is None


def test_a_pattern_records_the_parameters_its_tier_ran_with(board):
    # Made as a config file makes agents: no prompt version row until a change records one.
    agent = make_agent(
        boards=[board],
        cascade=[{"provider": "simulated", "model": "sim-small", "parameters": {"temperature": 0.1}}],
        parameters={"temperature": 0.3, "max_tokens": 200},
    )
    assert not PromptVersion.objects.filter(agent=agent).exists()
    # Versions are cached by (agent, number) in the process; ids repeat between tests.
    patterns._version_parameters.cache_clear()
    task, claim = claim_one(board)
    assert complete(claim, cost="0.001")

    [pattern] = Pattern.objects.filter(task=task)
    # The agent's, under the tier's own.
    assert pattern.params == {"temperature": 0.1, "max_tokens": 200}


def test_a_defect_on_a_board_without_review_is_a_defect_pattern_with_its_failures(db):
    board = make_board()
    Column.objects.filter(board=board, role=Column.Role.REVIEW).delete()
    make_agent(boards=[board])
    task, claim = claim_one(board)
    assert complete(claim, confidence=DEFECTIVE)
    [pattern] = Pattern.objects.filter(task=task)
    assert pattern.verdict == Pattern.Verdict.DEFECT
    assert "confidence" in pattern.reason


def test_an_escalated_attempt_waits_for_its_reviewer_then_carries_the_verdict(board, agent):
    reviewer = make_reviewer()
    approved = escalate(board, title="Summarise call 1", input="caller asked for a refund")
    corrected = escalate(board, title="Summarise call 2", input="caller wants a new address")
    rejected = escalate(board, title="Summarise call 3", input="caller is angry about delays")
    assert not Pattern.objects.exists()

    andon_services.escalation_approve(escalation=approved, user=reviewer, note="fine after all")
    andon_services.escalation_correct(escalation=corrected, user=reviewer, output="New address noted.")
    andon_services.escalation_reject(escalation=rejected, user=reviewer, reason="tone too informal")

    by_task = {p.task_id: p for p in Pattern.objects.all()}
    assert by_task[approved.task_id].verdict == Pattern.Verdict.APPROVED
    assert by_task[approved.task_id].reason == "fine after all"
    assert by_task[corrected.task_id].verdict == Pattern.Verdict.CORRECTED
    assert by_task[corrected.task_id].correction == "New address noted."
    assert by_task[corrected.task_id].good_output == "New address noted."
    assert by_task[rejected.task_id].verdict == Pattern.Verdict.REJECTED
    assert by_task[rejected.task_id].reason == "tone too informal"
    for escalation in (approved, corrected, rejected):
        pattern = by_task[escalation.task_id]
        assert pattern.escalation_id == escalation.pk
        assert pattern.attempt == escalation.attempt
        assert pattern.output == escalation.output


def test_a_rejected_task_that_passes_next_time_has_a_pattern_per_attempt(board, agent):
    reviewer = make_reviewer()
    escalation = escalate(board, title="Draft reply", input="customer asks about the warranty")
    andon_services.escalation_reject(escalation=escalation, user=reviewer, reason="cite the warranty term")
    [claim] = [c for c in pull(board) if c.task_id == escalation.task_id]
    assert complete(claim)
    attempts = dict(Pattern.objects.filter(task_id=escalation.task_id).values_list("attempt", "verdict"))
    assert attempts == {1: Pattern.Verdict.REJECTED, 2: Pattern.Verdict.PASSED}


def test_embedding_fills_vectors_and_embeds_each_text_once(board, agent):
    for _ in range(3):
        _, claim = claim_one(board, title="Reset my password", input="I cannot log in since Monday.")
        assert complete(claim)
    _, claim = claim_one(board, title="Invoice total wrong", input="I was charged twice for March.")
    assert complete(claim)
    embedder = Counting()
    assert knowledge.patterns_embed(embedder=embedder, budget_seconds=60) == 4
    assert len(embedder.texts) == 2  # three identical texts, one embedding
    rows = list(Pattern.objects.all())
    assert {row.embed_model for row in rows} == {embedder.name}
    for row in rows:
        vector = np.frombuffer(bytes(row.vector), dtype=np.float32)
        assert vector.shape == (embedder.dim,)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        assert row.dim == embedder.dim and row.embedded_at is not None
    # Nothing left: a second call embeds nothing.
    assert knowledge.patterns_embed(embedder=embedder, budget_seconds=60) == 0


def test_on_sqlite_a_batch_is_embedded_outside_a_write_transaction(board, agent):
    # SQLite's write lock is the whole database's: held while a batch was
    # embedded, batch after batch, it kept the line's writers out ("database is
    # locked"). On PostgreSQL the batch's rows stay locked while embedded.
    from django.db import connection

    for title in ("Reset my password", "Invoice total wrong"):
        _, claim = claim_one(board, title=title)
        assert complete(claim)
    around = len(connection.atomic_blocks)  # the test's own
    depths: list[int] = []

    class Watching(Counting):
        def embed(self, texts):
            depths.append(len(connection.atomic_blocks))
            return super().embed(texts)

    assert knowledge.patterns_embed(embedder=Watching(), budget_seconds=60) == 2

    inside = 0 if connection.vendor == "sqlite" else 1
    assert depths == [around + inside]
    assert Pattern.objects.filter(embedded_at__isnull=True).count() == 0


def test_a_change_of_model_re_embeds_every_pattern(board, agent):
    for title in ("Reset my password", "Invoice total wrong"):
        _, claim = claim_one(board, title=title)
        assert complete(claim)
    assert knowledge.patterns_embed(budget_seconds=60) == 2
    other = Counting(name="local:another-model")
    assert knowledge.pending_patterns(other.name).count() == 2
    assert knowledge.patterns_embed(embedder=other, budget_seconds=60) == 2
    assert set(Pattern.objects.values_list("embed_model", flat=True)) == {"local:another-model"}
    assert knowledge.pending_patterns(other.name).count() == 0


def _history(board, n: int) -> list[int]:
    """n done tasks and one of each decision, their patterns then deleted: a
    history from before the knowledge base."""
    reviewer = make_reviewer()
    for i in range(n):
        _, claim = claim_one(board, title=f"Classify ticket {i}", input=f"ticket body {i}")
        assert complete(claim)
    decided = [escalate(board, title=f"Hard ticket {i}", input=f"unclear {i}") for i in range(3)]
    andon_services.escalation_approve(escalation=decided[0], user=reviewer)
    andon_services.escalation_correct(escalation=decided[1], user=reviewer, output="Billing.")
    andon_services.escalation_reject(escalation=decided[2], user=reviewer, reason="wrong queue")
    expected = sorted(Pattern.objects.values_list("task_id", "attempt", "verdict"))
    Pattern.objects.all().delete()
    return expected


def test_backfill_writes_and_embeds_the_history_with_progress_and_restarts(board, agent):
    expected = _history(board, 7)
    assert len(expected) == 10

    # Stopped part-way (as Ctrl-C would), after its first chunk.
    class Stop(Exception):
        pass

    def stop(count: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        knowledge.patterns_backfill(chunk=2, on_written=stop, embed=False)
    assert 0 < Pattern.objects.count() < len(expected)

    out = StringIO()
    call_command("backfill_patterns", stdout=out)
    text = out.getvalue()
    assert sorted(Pattern.objects.values_list("task_id", "attempt", "verdict")) == expected
    assert "patterns: " in text and "(100%)" in text  # the progress, as a pipe gets it
    assert "embedded" in text
    assert not knowledge.pending_patterns(get_embedder().name).exists()

    again = StringIO()
    call_command("backfill_patterns", stdout=again)
    assert "0 new patterns written" in again.getvalue()
    assert Pattern.objects.count() == len(expected)


def test_similar_patterns_rank_by_meaning_and_filter(board, agent):
    reviewer = make_reviewer()
    texts = {
        "refund": (
            "Money back please",
            "The blender I bought arrived broken and I want my payment returned.",
        ),
        "login": ("Cannot sign in", "The website keeps saying my password is wrong after I changed it."),
        "shipping": ("Where is my parcel", "My package was supposed to come last week and has not arrived."),
    }
    tasks = {}
    for key, (title, body) in texts.items():
        task, claim = claim_one(board, title=title, input=body)
        assert complete(claim)
        tasks[key] = task.pk
    rejected = escalate(board, title="Reimbursement request", input="Item came damaged, requesting a refund.")
    andon_services.escalation_reject(escalation=rejected, user=reviewer, reason="tone too informal")
    knowledge.patterns_embed(budget_seconds=60)

    found = knowledge.similar_patterns(text="I'd like a reimbursement for a smashed kitchen appliance")
    assert {s.pattern.task_id for s in found[:2]} == {rejected.task_id, tasks["refund"]}
    assert found[0].similarity >= found[-1].similarity
    assert all(0.0 <= s.similarity <= 1.0 for s in found)

    only_rejected = knowledge.similar_patterns(text="refund for a broken item", verdicts=["rejected"])
    assert [s.pattern.task_id for s in only_rejected] == [rejected.task_id]

    other = make_agent(boards=[make_board()])
    assert knowledge.similar_patterns(text="refund for a broken item", agent_ids=[other.pk]) == []

    like_task = knowledge.similar_patterns(task=Escalation.objects.get(pk=rejected.pk).task, limit=1)
    assert [s.pattern.task_id for s in like_task] == [tasks["refund"]]  # itself left out


def test_the_beat_embeds_a_small_batch_while_the_line_is_busy_and_the_rest_when_it_idles(
    board, agent, monkeypatch
):
    for i in range(knowledge.BUSY_BATCH + 3):
        _, claim = claim_one(board, title=f"Ticket {i}", input=f"Customer {i} asks about their order.")
        assert complete(claim)
    monkeypatch.setattr(knowledge, "line_busy", lambda: True)
    assert knowledge.patterns_embed(yielding=True) == knowledge.BUSY_BATCH
    # Not yielding (the back-fill, a person waiting on a command): all of it.
    monkeypatch.setattr(knowledge, "line_busy", lambda: False)
    assert knowledge.patterns_embed(yielding=True) == 3
    assert not knowledge.pending_patterns(get_embedder().name).exists()


def test_the_cpu_gauge_leaves_out_this_process_s_own_time():
    def raw():
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]
        return sum(values), values[3] + values[4]

    before = raw()
    gauge = knowledge.CpuGauge()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # this process spinning
        pass
    share = gauge.others_busy()
    after = raw()
    total, idle = after[0] - before[0], after[1] - before[1]
    everyone = (total - idle) / total
    assert share is not None and 0.0 <= share <= 1.0
    # The spinning (about 0.3 s of CPU) is counted in everyone's share, not in the others'.
    assert share < everyone


def test_reviewers_decisions_are_embedded_before_the_line_s_passed_attempts(board, agent):
    for i in range(5):
        _, claim = claim_one(board, title=f"Ticket {i}", input=f"Customer {i} asks about their order.")
        assert complete(claim)
    rejected = escalate(board, title="Reply to an angry customer", input="The order is late again.")
    andon_services.escalation_reject(escalation=rejected, user=make_reviewer(), reason="tone too informal")
    assert knowledge.patterns_embed(batch=2, budget_seconds=0) == 2
    first = set(Pattern.objects.filter(embedded_at__isnull=False).values_list("verdict", flat=True))
    assert Pattern.Verdict.REJECTED in first
