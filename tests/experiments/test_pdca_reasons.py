"""The kaizen cycle from the knowledge base's patterns (experiments.pdca, issue 14):

- ``reasons``: reviewers' reasons that recur (the same objection in different
  words, from several tasks) become a proposal whose rationale and evidence cite
  the cluster: with simulated tiers an instruction naming the failure and the
  reviewers' corrections as examples; with a real provider (a local server
  speaking the chat completions protocol) the model's rewrite.
- ``retrieval``: recurring corrections and enough accepted answers in the
  knowledge base propose opting in to {examples}.

Evidence is made through the line's own services (tasks completed, escalations
decided by a reviewer, which write the patterns); reasons are embedded by the
real embedder."""

from __future__ import annotations

import logging
import re

import pytest
from django.urls import reverse

from andon import jidoka
from andon import services as andon_services
from andon.models import Escalation
from boards import services
from boards.agents import Output
from boards.agents.spec import check_template
from experiments import knowledge, pdca, vectors
from experiments import services as kaizen
from experiments.models import ChangeProposal, Pattern
from tests.andon.helpers import DEFECTIVE, GOOD, claim_one
from tests.boards.provider_server import ProviderServer
from tests.boards.test_provider_openai import _completion
from tests.factories import make_agent, make_board, make_reviewer

pytestmark = pytest.mark.django_db

KEY_ENV = "KAIZEN_TEST_PDCA_REASONS_KEY"
TEMPLATE = "Reply to the customer's message.\n\n{input}"
INFORMAL = [
    "Too informal for a customer.",
    "The tone is far too casual.",
    "way too informal, this goes to a bank",
]
UNRELATED = ["Wrong order number", "Leaked the customer's email address", "Not in English"]


@pytest.fixture(autouse=True)
def _fresh_caches():
    jidoka.optimal_lengths.clear()
    vectors.indexes_clear()
    yield
    jidoka.optimal_lengths.clear()
    vectors.indexes_clear()


@pytest.fixture
def line(db):
    return make_board(ready_limit=None, doing_limit=None)


def _agent(board, **fields):
    fields.setdefault("max_attempts", 1)
    fields.setdefault("spike_defects", 30)
    fields.setdefault("spike_window", 30)
    fields.setdefault("prompt_template", TEMPLATE)
    return make_agent(boards=[board], **fields)


def _passed(board, n: int) -> None:
    for i in range(n):
        _, claim = claim_one(
            board, title=f"Message {i}", input=f"Message {i}: where is my parcel number {i}?"
        )
        output = Output(text=GOOD, confidence=0.95, confidence_source="simulated")
        assert services.task_complete(task_id=claim.task_id, lease_token=claim.lease_token, output=output)


def _escalation(board, input: str) -> Escalation:
    task, claim = claim_one(board, title="Message", input=input)
    output = Output(
        text="hey!! np, ur refund is coming lol", confidence=DEFECTIVE, confidence_source="simulated"
    )
    assert services.task_complete(task_id=claim.task_id, lease_token=claim.lease_token, output=output)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def _sent_back(board, *, corrected: list[str] = (), rejected: list[str] = ()) -> list[int]:
    """Escalations corrected (with these notes) and rejected (with these reasons); their tasks."""
    user = make_reviewer()
    tasks = []
    for i, note in enumerate(corrected):
        escalation = _escalation(board, f"Refund for order {100 + i} please")
        andon_services.escalation_correct(
            escalation=escalation,
            user=user,
            output=f"Dear customer, the refund for order {100 + i} has been issued. Kind regards.",
            note=note,
        )
        tasks.append(escalation.task_id)
    for i, reason in enumerate(rejected):
        escalation = _escalation(board, f"Question {i} about my invoice")
        andon_services.escalation_reject(escalation=escalation, user=user, reason=reason)
        tasks.append(escalation.task_id)
    return tasks


def _plans(agent) -> dict[str, pdca.Plan]:
    return {p.kind: p for p in pdca.plan(agent)}


# --- reasons ---------------------------------------------------------------------------


def test_a_recurring_reason_becomes_a_proposal_citing_its_cluster(line):
    agent = _agent(line)
    _passed(line, 26)
    corrected = _sent_back(line, corrected=INFORMAL[:2])
    rejected = _sent_back(line, rejected=[INFORMAL[2], *UNRELATED])
    cluster_tasks = corrected + rejected[:1]

    found = _plans(agent)["reasons"]

    evidence = found.evidence
    assert evidence["cluster_size"] == 3
    assert sorted(evidence["tasks"]) == sorted(cluster_tasks)
    assert (evidence["rejected"], evidence["corrected"]) == (1, 2)
    assert evidence["representative_reason"] in INFORMAL
    assert sorted(evidence["reasons"]) == sorted(INFORMAL)
    assert [m["task"] for m in evidence["members"]] == cluster_tasks
    assert not any(reason in str(evidence) for reason in UNRELATED)
    # The rationale cites the size, the reason and example tasks.
    assert "reviewers sent back 3 answers to 3 tasks in the last 7 days" in found.rationale
    assert "(1 rejected, 2 corrected, of 32 outputs)" in found.rationale
    assert f'put most clearly as "{evidence["representative_reason"]}"' in found.rationale
    others = [reason for reason in INFORMAL if reason != evidence["representative_reason"]]
    assert "; they also said " + "; ".join(f'"{r}"' for r in sorted(others)) in found.rationale
    assert f"For example tasks {', '.join(map(str, cluster_tasks))}." in found.rationale
    # The template-based change: the failure named, and the two corrections as examples.
    template = found.fields["prompt_template"]
    assert f'Reviewers have sent answers back saying "{evidence["representative_reason"]}"' in template
    assert template.startswith(pdca.EXAMPLES_MARKER)
    assert "Input: Refund for order 100 please\nAnswer: Dear customer, the refund for order 100" in template
    assert template.count("\nAnswer: ") == 2
    assert [e["task"] for e in evidence["examples"]] == corrected
    assert check_template(template, []) == []
    assert found.strength == pytest.approx(3 / 32)


def test_the_cycle_proposes_the_cluster_as_a_major_change_and_not_twice(line, caplog):
    agent = _agent(line)
    _passed(line, 27)
    _sent_back(line, rejected=INFORMAL)

    proposal = pdca.cycle(agent)

    assert proposal.evidence["kind"] == "reasons"
    assert proposal.major and proposal.status == ChangeProposal.Status.PENDING
    assert "Reviewers have sent answers back saying" in proposal.candidate.prompt_template
    # Rejected by a person, it is not proposed again from the same evidence.
    kaizen.proposal_reject(proposal=proposal, user=_approver(), note="Not now.")
    with caplog.at_level(logging.INFO, logger="experiments.pdca"):
        assert "reasons" not in _plans(agent)
    assert "was proposed for already" in caplog.text


def _approver():
    from tests.factories import make_approver

    return make_approver()


def test_the_evolution_review_shows_the_clusters_evidence(line, client, ana):
    agent = _agent(line)
    _passed(line, 27)
    tasks = _sent_back(line, rejected=INFORMAL)
    proposal = pdca.cycle(agent)
    client.force_login(ana)

    html = client.get(reverse("experiments-review")).content.decode()

    item = html[html.index(f'id="proposal-{proposal.pk}"') :]
    item = re.sub(r">\s+", ">", re.sub(r"\s+<", "<", item)).replace("&#x27;", "'")
    assert "Recurring objection: reviewers sent back 3 answers to 3 tasks" in item
    assert "<dt>Representative reason</dt><dd>Too informal for a customer.</dd>" in item
    assert "<dt>Cluster size</dt><dd>3</dd>" in item
    # The members, as a table: each task with its reviewer's words (in the columns'
    # order of the database: PostgreSQL's jsonb keeps keys in an order of its own).
    assert '<th scope="col">Reason</th>' in item
    rows = re.findall(r"<tr>(.*?)</tr>", item)
    for task, reason in zip(tasks, INFORMAL, strict=True):
        assert any(f"<td>{task}</td>" in row and f"<td>{reason}</td>" in row for row in rows), reason


def test_reasons_that_do_not_recur_make_no_proposal(line):
    agent = _agent(line)
    _passed(line, 25)
    # Two paraphrases (two tasks) and unrelated reasons: nothing comes from three tasks.
    _sent_back(line, rejected=[*INFORMAL[:2], *UNRELATED])

    assert "reasons" not in _plans(agent)


def test_a_template_that_names_the_failure_already_gets_no_instruction(line):
    agent = _agent(line, prompt_template="Never be too informal for a customer.\n\n{input}")
    _passed(line, 27)
    _sent_back(line, rejected=["Too informal for a customer."] * 3)

    assert "reasons" not in _plans(agent)


def test_the_few_shot_plan_leaves_a_recurring_reason_to_the_reasons_plan(line):
    agent = _agent(line)
    _passed(line, 27)
    _sent_back(line, corrected=INFORMAL)

    plans = _plans(agent)

    # The same three corrections: one plan of them, not two.
    assert "reasons" in plans and "few_shot" not in plans


def test_with_an_embedder_failure_the_cycle_goes_on_without_the_plan(line, monkeypatch, caplog):
    agent = _agent(line)
    _passed(line, 27)
    _sent_back(line, rejected=INFORMAL)

    def broken():
        raise RuntimeError("no model here")

    monkeypatch.setattr(pdca, "get_embedder", broken)
    with caplog.at_level(logging.WARNING, logger="experiments.pdca"):
        assert "reasons" not in _plans(agent)
    assert "clustering" in caplog.text and "no model here" in caplog.text


# --- reasons, with a real provider ------------------------------------------------------

REWRITTEN = "You answer customers of a bank. Write formally, never casually.\n\n{input}"


@pytest.fixture
def provider(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-reasons")
    with ProviderServer() as server:
        yield server


def _openai_agent(board, server: ProviderServer):
    tier = {
        "provider": "openai",
        "model": "gpt-test",
        "parameters": {"base_url": f"{server.url}/v1", "api_key_env": KEY_ENV, "max_retries": 0},
    }
    return _agent(board, cascade=[tier])


def test_with_a_real_provider_the_model_rewrites_the_prompt_from_the_cluster(line, provider):
    agent = _openai_agent(line, provider)
    _passed(line, 24)
    _sent_back(line, corrected=INFORMAL[:1], rejected=[*INFORMAL[1:], *UNRELATED, "too vague"])
    provider.then(200, _completion(f"```\n{REWRITTEN}\n```"))

    plans = _plans(agent)

    found = plans["reasons"]
    assert found.fields["prompt_template"] == REWRITTEN
    # One call: the general rewrite leaves these failures to the cluster's.
    assert "rewrite" not in plans
    [request] = provider.received
    asked = request.body["messages"][0]["content"]
    assert "Reply to the customer's message.\n\n{input}" in asked
    assert "reviewers sent back 3 of its answers, to 3 different tasks, for the same reason" in asked
    for reason in INFORMAL:
        assert f'- "{reason}"' in asked
    assert "Wrong order number" not in asked
    assert "The reviewer's corrected output: Dear customer, the refund for order 100" in asked
    assert found.evidence["model"]["model"] == "gpt-test"
    assert found.evidence["cluster_size"] == 3
    assert "rewrote it from those answers and reasons" in found.rationale


def test_a_rewrite_the_model_gets_wrong_is_not_proposed(line, provider, caplog):
    agent = _openai_agent(line, provider)
    _passed(line, 27)
    _sent_back(line, rejected=INFORMAL)
    provider.then(200, _completion("Be formal."))

    with caplog.at_level(logging.WARNING, logger="experiments.pdca"):
        assert "reasons" not in _plans(agent)

    assert "it drops input" in caplog.text


# --- retrieval ---------------------------------------------------------------------------


def test_recurring_corrections_and_enough_accepted_answers_propose_retrieval(line):
    agent = _agent(line)
    _passed(line, 27)
    corrected = _sent_back(line, corrected=["", "", ""])
    knowledge.patterns_embed(budget_seconds=60)

    found = _plans(agent)["retrieval"]

    assert found.fields["prompt_template"] == "Reply to the customer's message.\n\n{examples}\n\n{input}"
    assert found.evidence["good_patterns"] == 30
    assert sorted(found.evidence["corrected_tasks"]) == sorted(corrected)
    # What the latest corrected task would have been shown: the other corrections first.
    preview = found.evidence["preview"]
    assert len(preview) == 3 and {p["verdict"] for p in preview} <= set(Pattern.GOOD)
    assert preview[0]["verdict"] == "corrected" and preview[0]["example_task"] in corrected
    assert corrected[-1] not in {p["example_task"] for p in preview}
    assert "reviewers wrote the answer themselves for 3 tasks" in found.rationale
    assert "opt in to retrieval few-shot, {examples}" in found.rationale
    assert f"For task {corrected[-1]}" in found.rationale
    # A prompt change like any other, and a major one, however small the edit.
    preview_change = kaizen.proposal_preview(agent=agent, fields=found.fields)
    assert preview_change["major"]
    assert "retrieved examples turned on (3 a task)" in preview_change["classification"]


def test_without_enough_accepted_answers_in_the_knowledge_base_no_retrieval(line):
    agent = _agent(line)
    _passed(line, 27)
    _sent_back(line, corrected=["", "", ""])
    # Not embedded: nothing a search could find yet.

    assert "retrieval" not in _plans(agent)


def test_an_agent_opted_in_already_gets_neither_retrieval_nor_static_examples(line):
    agent = _agent(line, prompt_template="Reply to the customer's message.\n\n{examples}\n\n{input}")
    _passed(line, 27)
    _sent_back(line, corrected=["", "", ""])
    knowledge.patterns_embed(budget_seconds=60)

    plans = _plans(agent)

    assert "retrieval" not in plans and "few_shot" not in plans


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Reply.\n\n{input}", "Reply.\n\n{examples}\n\n{input}"),
        (
            "Reply.\n\nMessage: {input}\n\nSign as Ana.",
            "Reply.\n\n{examples}\n\nMessage: {input}\n\nSign as Ana.",
        ),
        ("Reply to {input} politely.", "Reply to {input} politely.\n\n{examples}"),
        ("{title}", "{title}\n\n{examples}"),
    ],
)
def test_examples_go_before_the_input_after_the_instructions(template, expected):
    assert pdca._insert_examples(template) == expected


def test_a_long_reason_is_quoted_short_in_the_instruction(line):
    agent = _agent(line)
    _passed(line, 27)
    long = "Too informal for a customer: " + "the reply says hey and cheers and uses slang throughout. " * 10
    _sent_back(line, rejected=[long] * 3)

    template = _plans(agent)["reasons"].fields["prompt_template"]

    [instruction] = [row for row in template.splitlines() if row.startswith("Reviewers have sent")]
    assert len(instruction) < pdca.MAX_REASON_CHARS + 100
    assert "…" in instruction
