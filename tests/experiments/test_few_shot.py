"""Retrieval few-shot (experiments.few_shot): a template's {examples} are the
accepted answers (a reviewer's correction where there is one) to the agent's
past tasks most like the task, never a rejected output or a defect, never the
task itself; agents whose template does not ask for them pay nothing; an
embedding failure leaves them out and the task still runs.

The knowledge base is the real one: Pattern rows embedded by the real embedder
(all-MiniLM-L6-v2, offline), searched through the numpy index."""

from __future__ import annotations

import logging

import pytest

from boards import services
from boards.agents import runtime
from boards.agents.cascade import PromptCascadeAgent
from boards.agents.providers import ModelRequest, get_provider
from boards.agents.simulated import accuracy_logit
from boards.agents.spec import ConfigError, check_template, examples_wanted, parse_variables
from boards.models import Task
from experiments import few_shot, knowledge, vectors
from experiments.embeddings import EmbeddingError
from experiments.models import Pattern
from experiments.patterns import make_pattern
from tests.factories import make_agent, make_board

pytestmark = pytest.mark.django_db

TEMPLATE = "Answer the customer's ticket in two sentences.\n\n{examples}\n\nTicket: {input}"

REFUND = "Order 4411 arrived broken and I would like my money back."
REFUND_LIKE = "My order 5120 came damaged, please refund me."
REFUND_ALSO = "The parcel for order 7788 was smashed; I want a refund."
PASSWORD = "I forgot my password and cannot log in to my account."
LATE = "Where is my parcel? It is two weeks late."


@pytest.fixture(autouse=True)
def _fresh_index():
    # The index is per process and keyed by row id; SQLite hands a rolled-back
    # test's ids out again.
    vectors.indexes_clear()
    yield
    vectors.indexes_clear()


@pytest.fixture
def board(db):
    return make_board(ready_limit=None, doing_limit=None)


def _past(
    board, agent, input: str, verdict: str, *, output: str = "", correction: str = "", attempt: int = 1
):
    """A finished task of ``agent`` with one pattern of ``verdict``."""
    task = services.task_create(board=board, title="Ticket", input=input)
    Task.objects.filter(pk=task.pk).update(agent=agent)
    task.agent = agent
    pattern = make_pattern(
        task,
        verdict=verdict,
        attempt=attempt,
        tier=1,
        model="sim-small",
        version=1,
        output=output or f"answer to {input}",
        correction=correction,
        reason="",
    )
    pattern.save()
    return task


def _embed() -> None:
    knowledge.patterns_embed(budget_seconds=60)


def _query(board, input: str = REFUND) -> Task:
    return services.task_create(board=board, title="Ticket", input=input)


# --- what is drawn ---------------------------------------------------------------------


def test_examples_are_accepted_answers_never_rejected_outputs_nor_defects(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.REJECTED, output="REJECTED: lol no refunds")
    _past(board, agent, REFUND_ALSO, Pattern.Verdict.DEFECT, output="DEFECT: maybe, possibly")
    _past(board, agent, "Order 3301 was broken on arrival, refund please.", Pattern.Verdict.PASSED)
    _past(
        board,
        agent,
        "Package for order 2210 arrived crushed; I need my money returned.",
        Pattern.Verdict.CORRECTED,
        output="ORIGINAL: we will see",
        correction="CORRECTED: We are sorry order 2210 arrived damaged; a full refund is on its way.",
    )
    _past(board, agent, PASSWORD, Pattern.Verdict.APPROVED, output="Use the reset link on the login page.")
    _embed()

    examples = few_shot.examples_for(agent_id=agent.pk, task=_query(board), count=5)

    outputs = [e.output for e in examples]
    assert not any(o.startswith(("REJECTED", "DEFECT", "ORIGINAL")) for o in outputs)
    # The correction stands in for the output it corrected.
    assert "CORRECTED: We are sorry order 2210 arrived damaged; a full refund is on its way." in outputs
    assert {e.verdict for e in examples} == {"passed", "corrected", "approved"}
    # Most similar first: both refund stories before the password one.
    assert examples[-1].input == PASSWORD
    assert [e.similarity for e in examples] == sorted((e.similarity for e in examples), reverse=True)


def test_the_task_itself_is_never_its_own_example(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    query = _query(board)
    # The task's own earlier attempt, approved: the most similar text there is.
    Task.objects.filter(pk=query.pk).update(agent=agent)
    query.agent = agent
    make_pattern(
        query,
        verdict="approved",
        attempt=1,
        tier=1,
        model="m",
        version=1,
        output="MINE",
        correction="",
        reason="",
    ).save()
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED, output="other task's answer")
    _embed()

    examples = few_shot.examples_for(agent_id=agent.pk, task=query, count=3)

    assert [e.output for e in examples] == ["other task's answer"]
    assert query.pk not in {e.task for e in examples}


def test_one_example_per_distinct_input_and_only_the_agents_own(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    other = make_agent(boards=[board])
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED, output="first")
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.APPROVED, output="the same input again")
    _past(board, other, REFUND_ALSO, Pattern.Verdict.PASSED, output="another agent's")
    _past(board, agent, LATE, Pattern.Verdict.PASSED, output="late")
    _embed()

    examples = few_shot.examples_for(agent_id=agent.pk, task=_query(board), count=3)

    assert [e.input for e in examples] == [REFUND_LIKE, LATE]
    assert examples[0].output in {"first", "the same input again"}
    assert "another agent's" not in [e.output for e in examples]


def test_the_count_asked_is_the_most_given(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    for input in (REFUND_LIKE, REFUND_ALSO, LATE, PASSWORD):
        _past(board, agent, input, Pattern.Verdict.PASSED)
    _embed()

    assert len(few_shot.examples_for(agent_id=agent.pk, task=_query(board), count=1)) == 1
    assert len(few_shot.examples_for(agent_id=agent.pk, task=_query(board), count=3)) == 3


def test_long_inputs_and_outputs_are_cut(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    _past(board, agent, REFUND_LIKE + " " + "More detail. " * 100, Pattern.Verdict.PASSED, output="x" * 5000)
    _embed()

    [example] = few_shot.examples_for(agent_id=agent.pk, task=_query(board), count=3)

    assert len(example.input) == few_shot.INPUT_CHARS and example.input.startswith(REFUND_LIKE)
    assert len(example.output) == few_shot.OUTPUT_CHARS and example.output.endswith("…")


# --- the prompt ----------------------------------------------------------------------------


def test_the_prompt_shows_the_examples_where_the_template_puts_them(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE.replace("{examples}", "{examples:1}"))
    _past(
        board, agent, REFUND_LIKE, Pattern.Verdict.CORRECTED, output="meh", correction="Sorry! Refund sent."
    )
    _past(board, agent, PASSWORD, Pattern.Verdict.PASSED)
    _embed()

    prompt = PromptCascadeAgent(agent).prompt(_query(board))

    assert prompt == (
        "Answer the customer's ticket in two sentences.\n\n"
        f"{few_shot.HEADING}\n\nExample 1\nInput: {REFUND_LIKE}\nOutput: Sorry! Refund sent."
        f"\n\nTicket: {REFUND}"
    )


def test_with_no_history_the_examples_are_left_out(board):
    agent = make_agent(boards=[board], prompt_template="{examples:5}Ticket: {input}")

    prompt = PromptCascadeAgent(agent).prompt(_query(board))

    # Not padded to five characters: the count is not a width.
    assert prompt == f"Ticket: {REFUND}"


def test_braces_in_past_answers_stay_as_they_are(board):
    agent = make_agent(boards=[board], prompt_template="{examples}\n{input}")
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED, output='{"refund": true, "note": "{input}"}')
    _embed()

    prompt = PromptCascadeAgent(agent).prompt(_query(board))

    assert 'Output: {"refund": true, "note": "{input}"}' in prompt


def _spy_prompts(monkeypatch) -> list[str]:
    """The prompts the models were sent on the line."""
    seen: list[str] = []

    def spying(name: str):
        provider = get_provider(name)

        class Spy:
            def complete(self, request: ModelRequest):
                seen.append(request.prompt)
                return provider.complete(request)

        return Spy()

    monkeypatch.setattr("boards.agents.cascade.get_provider", spying)
    return seen


def _run(board, input: str) -> Task:
    task = services.task_create(board=board, title="Ticket", input=input)
    claims = services.board_pull(board_id=board.pk)
    [claim] = [c for c in claims if c.task_id == task.pk]
    runtime.run(claim.task_id, str(claim.lease_token))
    task.refresh_from_db()
    return task


def test_an_opted_in_agent_is_shown_corrections_of_similar_work_on_the_line(board, monkeypatch):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE, quality_checks=[])
    _past(
        board,
        agent,
        REFUND_LIKE,
        Pattern.Verdict.CORRECTED,
        output="no",
        correction="Refund issued for 5120.",
    )
    _past(board, agent, REFUND_ALSO, Pattern.Verdict.REJECTED, output="Go away.")
    _embed()
    prompts = _spy_prompts(monkeypatch)

    task = _run(board, REFUND)

    assert task.status == Task.Status.DONE
    [prompt] = prompts
    assert "Output: Refund issued for 5120." in prompt
    assert "Go away." not in prompt


def test_agents_without_examples_in_their_template_pay_nothing(board, monkeypatch):
    agent = make_agent(boards=[board], prompt_template="Ticket: {input}", quality_checks=[])
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED)
    calls: list[str] = []

    def no_embedder():
        calls.append("get_embedder")
        raise AssertionError("an agent without {examples} must not embed anything")

    def no_search(model):
        calls.append("vector_index")
        raise AssertionError("an agent without {examples} must not search the knowledge base")

    monkeypatch.setattr(few_shot, "get_embedder", no_embedder)
    monkeypatch.setattr(few_shot.vectors, "vector_index", no_search)
    prompts = _spy_prompts(monkeypatch)

    task = _run(board, REFUND)

    assert task.status == Task.Status.DONE
    assert calls == []
    assert prompts == [f"Ticket: {REFUND}"]


class _BrokenEmbedder:
    name = "local:all-MiniLM-L6-v2"
    dim = 384

    def embed(self, texts):
        raise EmbeddingError("the embeddings server at http://127.0.0.1:9 could not be reached")


def test_an_embedding_error_leaves_the_examples_out_and_the_task_still_runs(board, monkeypatch, caplog):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE, quality_checks=[])
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED)
    monkeypatch.setattr(few_shot, "get_embedder", _BrokenEmbedder)
    monkeypatch.setitem(few_shot._warned, "at", -few_shot.WARN_EVERY_SECONDS)
    prompts = _spy_prompts(monkeypatch)

    with caplog.at_level(logging.WARNING, logger="experiments.few_shot"):
        task = _run(board, REFUND)

    assert task.status == Task.Status.DONE
    assert prompts == [f"Answer the customer's ticket in two sentences.\n\n\n\nTicket: {REFUND}"]
    assert "few-shot examples for task" in caplog.text
    assert "could not be reached" in caplog.text


def test_a_second_failure_within_the_minute_is_not_logged_as_a_warning_again(board, monkeypatch, caplog):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    monkeypatch.setattr(few_shot, "get_embedder", _BrokenEmbedder)
    monkeypatch.setitem(few_shot._warned, "at", -few_shot.WARN_EVERY_SECONDS)

    with caplog.at_level(logging.WARNING, logger="experiments.few_shot"):
        assert few_shot.examples_text(agent_id=agent.pk, task=_query(board), count=3) == ""
        assert few_shot.examples_text(agent_id=agent.pk, task=_query(board, LATE), count=3) == ""

    assert caplog.text.count("few-shot examples for task") == 1


def test_a_text_embedded_before_is_not_embedded_again(board, monkeypatch):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    _past(board, agent, REFUND, Pattern.Verdict.APPROVED, output="the same ticket, answered before")
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED)
    _embed()
    real = few_shot.get_embedder()

    class Counting:
        name = real.name
        dim = real.dim
        texts: list[str] = []

        def embed(self, texts):
            self.texts.extend(texts)
            return real.embed(texts)

    counting = Counting()
    monkeypatch.setattr(few_shot, "get_embedder", lambda: counting)

    examples = few_shot.examples_for(agent_id=agent.pk, task=_query(board, REFUND), count=2)

    # The query's text is that of a pattern already embedded: its vector is read, not made.
    assert counting.texts == []
    assert examples[0].output == "the same ticket, answered before"
    assert examples[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_a_replay_of_a_candidate_that_opts_in_shows_it_the_examples_but_not_the_task_itself(
    board, monkeypatch
):
    from experiments import genchi
    from tests.experiments.genchi_support import version

    agent = make_agent(boards=[board], prompt_template="Ticket: {input}")
    replayed = _past(board, agent, REFUND, Pattern.Verdict.APPROVED, output="THE REPLAYED TASK'S OWN ANSWER")
    _past(
        board,
        agent,
        REFUND_LIKE,
        Pattern.Verdict.CORRECTED,
        output="no",
        correction="Refund issued for 5120.",
    )
    _embed()
    candidate = version(agent, TEMPLATE)
    prompts = _spy_prompts(monkeypatch)

    genchi.run_arm(agent, candidate, replayed, replayed.input)

    [prompt] = prompts
    assert "Output: Refund issued for 5120." in prompt
    assert "THE REPLAYED TASK'S OWN ANSWER" not in prompt


# --- the template ------------------------------------------------------------------------


def test_templates_may_use_examples_undeclared_with_a_count_from_1_to_10():
    assert check_template("{examples}\n{input}", []) == []
    assert check_template("{examples:10}\n{input}", []) == []
    assert examples_wanted("{input}") is None
    assert examples_wanted("{{examples}} {input}") is None
    assert examples_wanted("{examples}") == 3
    assert examples_wanted("{examples:7} {input}") == 7


@pytest.mark.parametrize("field", ["{examples:0}", "{examples:11}", "{examples:few}", "{examples!r}"])
def test_a_count_out_of_range_is_refused_with_what_to_write(field):
    [problem] = check_template(field + " {input}", [])

    assert problem.startswith(field)
    assert "write {examples} for 3 examples, or {examples:n} for n from 1 to 10" in problem


def test_examples_cannot_be_declared_it_is_built_in():
    with pytest.raises(ConfigError, match="'examples' is built in"):
        parse_variables(["examples"])


# --- the simulated model reads them ------------------------------------------------------


def test_the_simulated_model_does_better_with_examples_like_the_input(board):
    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    # The simulated model sees an example as like the input when they share three or
    # more content words (a real model would see it from the meaning alone).
    _past(
        board,
        agent,
        REFUND_LIKE,
        Pattern.Verdict.PASSED,
        output="Sorry the order arrived broken: your money is on its way back.",
    )
    _embed()
    with_examples = PromptCascadeAgent(agent).prompt(_query(board))
    without = TEMPLATE.replace("{examples}", "").format(input=REFUND)

    better, reading, _, _ = accuracy_logit("sim-small", with_examples, REFUND)
    baseline, _, _, _ = accuracy_logit("sim-small", without, REFUND)

    assert reading.examples.startswith(few_shot.HEADING)
    # Examples (+0.4), and one like the input (+0.6): see boards/agents/simulated.
    assert better - baseline == pytest.approx(1.0)


@pytest.mark.postgres
@pytest.mark.redis  # its commits ask for pulls and send live updates
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_connection_goes_back_to_the_pool_before_the_model_call(board):
    from django.db import connection

    agent = make_agent(boards=[board], prompt_template=TEMPLATE)
    _past(board, agent, REFUND_LIKE, Pattern.Verdict.PASSED, output="refund sent")
    _embed()
    query = _query(board)
    assert connection.connection is not None

    block = few_shot.examples_text(agent_id=agent.pk, task=query, count=3)

    assert "Output: refund sent" in block
    # Closed: with the pool, handed back for other runs while this one waits on its model.
    assert connection.connection is None
