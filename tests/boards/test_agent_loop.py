"""The worker's agent loop (boards.agents.runtime.AgentLoop): a batch's cascades run
as steps on one event loop, their model calls awaited, and end as the same runs end
on threads: the same outputs and ledger, the same failed attempts, deferrals and
cache hits. Nothing on the loop may touch the database (Django refuses it there),
so every run below that ends "done" also shows that none did."""

from __future__ import annotations

import dataclasses
import threading
from decimal import Decimal

import pytest

from boards import services
from boards import services as board_services
from boards.agents import PromptCascadeAgent, registry, runtime
from boards.agents.providers import OpenAIProvider
from boards.agents.simulated import SimulatedProvider
from boards.example_agents import KeywordClassifier
from boards.models import ModelCall, Task
from tests.boards.provider_server import ProviderServer, escalating_openai_cascade
from tests.factories import make_agent, make_board, open_model_breaker

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


class Wrapped(PromptCascadeAgent):
    """Works around the cascade, as a subclass may: its own ``cascade``."""

    def cascade(self, task, prompt, tiers, generation):
        output = super().cascade(task, prompt, tiers, generation)
        return dataclasses.replace(output, text=f"WRAPPED: {output.text}")


WRAPPED = f"{__name__}.Wrapped"


def tier(model: str, threshold: float | None = None, **parameters) -> dict:
    return {
        "provider": "simulated",
        "model": model,
        "parameters": {"latency_ms": 0, "error_rate": 0, **parameters},
        "price_in": "1",
        "price_out": "2",
        "threshold": threshold,
    }


# sim-small's confidence never reaches 1.0: its answer is always passed over.
ESCALATING = [tier("sim-small", 1.0), tier("sim-medium")]


@pytest.fixture
def model_calls(monkeypatch) -> list[tuple[str, str, str]]:
    """(model, how it was called, the calling thread's name) of every simulated call."""
    seen: list[tuple[str, str, str]] = []
    complete, acomplete = SimulatedProvider.complete, SimulatedProvider.acomplete

    def recorded_complete(self, request):
        seen.append((request.model, "complete", threading.current_thread().name))
        return complete(self, request)

    async def recorded_acomplete(self, request):
        seen.append((request.model, "acomplete", threading.current_thread().name))
        return await acomplete(self, request)

    monkeypatch.setattr(SimulatedProvider, "complete", recorded_complete)
    monkeypatch.setattr(SimulatedProvider, "acomplete", recorded_acomplete)
    return seen


def _claims(*boards_inputs: tuple) -> list[tuple[int, str]]:
    """One task per (board, input), all claimed: one batch's claims."""
    claims = []
    for board, text in boards_inputs:
        task = services.task_create(board=board, title="Inspect", input=text)
        claims += [(c.task_id, str(c.lease_token)) for c in services.board_pull(board_id=board.pk)]
        assert claims[-1][0] == task.pk
    return claims


def _run(claims, settings, *, loop: bool) -> list[str]:
    settings.KAIZEN_AGENT_LOOP = loop
    return runtime.run_batch(claims)


def _result(task_id: int) -> tuple:
    """What a run left: the task's outcome and its ledger, without ids, times or latencies."""
    task = Task.objects.get(pk=task_id)
    ledger = [
        (
            row.tier,
            row.source,
            row.model,
            row.tokens_in,
            row.tokens_out,
            row.cost,
            row.accepted,
            row.would_pass,
        )
        for row in task.model_call_rows.order_by("pk")
    ]
    return (task.status, task.output, task.confidence, task.accepted_tier, task.cost, task.attempts, ledger)


def test_a_batchs_cascades_run_on_the_loop_and_end_as_they_do_on_threads(board, settings, model_calls):
    make_agent(boards=[board], cascade=ESCALATING, reuse_results=False, cache_responses=False, concurrency=3)
    inputs = ["a scratch on the housing", "the lid is dented near the hinge", "crack in the left panel"]

    on_loop = _claims(*[(board, text) for text in inputs])
    assert _run(on_loop, settings, loop=True) == ["done"] * 3
    loop_calls, model_calls[:] = list(model_calls), []
    on_threads = _claims(*[(board, text) for text in inputs])
    assert _run(on_threads, settings, loop=False) == ["done"] * 3

    # Every call was awaited on the loop, none made on a thread of its own...
    assert sorted(loop_calls) == sorted(
        [("sim-small", "acomplete", "agent-loop"), ("sim-medium", "acomplete", "agent-loop")] * 3
    )
    assert {(how, thread[:3]) for _, how, thread in model_calls} == {("complete", "run")}
    # ...and each run ended exactly as its twin on a thread: output, cost, the
    # passed-over answer's inspection (a database read, done off the loop).
    for loop_task, thread_task in zip(on_loop, on_threads, strict=True):
        result = _result(loop_task[0])
        assert result == _result(thread_task[0])
        status, _, _, accepted_tier, cost, _, ledger = result
        assert (status, accepted_tier) == (Task.Status.DONE, 2) and cost > 0
        # The passed-over answer was inspected (would_pass set), the accepted one not.
        assert [(row[0], row[6], row[7] is None) for row in ledger] == [(1, False, False), (2, True, True)]


def test_on_the_loop_a_failing_tier_is_recorded_and_an_attempt_fails_with_the_models_words(
    settings, model_calls
):
    recovers, fails = make_board(), make_board()
    make_agent(
        boards=[recovers],
        cascade=[tier("sim-small", 0.5, error_rate=1), tier("sim-medium")],
        reuse_results=False,
    )
    make_agent(boards=[fails], cascade=[tier("sim-small", error_rate=1)], reuse_results=False)
    claims = _claims((recovers, "a scratch on the housing"), (fails, "a dent in the lid"))

    assert _run(claims, settings, loop=True) == ["done", "failed"]

    recovered = Task.objects.get(pk=claims[0][0])
    first, second = recovered.model_call_rows.order_by("pk")
    assert first.error and not first.accepted and first.cost == 0
    assert second.accepted and recovered.accepted_tier == 2 and recovered.status == Task.Status.DONE
    failed = Task.objects.get(pk=claims[1][0])
    [row] = failed.model_call_rows.all()
    assert failed.status == Task.Status.READY and failed.attempts == 1
    assert row.error and row.error in failed.last_error
    assert {thread for _, _, thread in model_calls} == {"agent-loop"}


def test_a_custom_agent_in_the_batch_runs_on_a_thread_beside_the_loop(settings, model_calls, monkeypatch):
    cascade, custom = make_board(), make_board()
    make_agent(boards=[cascade], cascade=[tier("sim-small")])
    make_agent(boards=[custom], implementation="boards.example_agents.KeywordClassifier", capabilities=[])
    threads: list[str] = []
    process = KeywordClassifier.process

    def recorded(self, task):
        threads.append(threading.current_thread().name)
        return process(self, task)

    monkeypatch.setattr(KeywordClassifier, "process", recorded)
    claims = _claims((cascade, "a scratch on the housing"), (custom, "We were charged twice; please refund."))

    assert _run(claims, settings, loop=True) == ["done", "done"]

    assert [thread[:3] for thread in threads] == ["run"]
    assert Task.objects.get(pk=claims[1][0]).output == "label: billing"
    assert [(model, thread) for model, _, thread in model_calls] == [("sim-small", "agent-loop")]


def test_on_the_loop_a_model_behind_an_open_breaker_is_not_called_and_the_run_deferred(
    board, settings, model_calls
):
    make_agent(boards=[board], cascade=[tier("sim-small")], quality_checks=[])
    claims = _claims((board, "a scratch on the housing"))
    open_model_breaker(board, "sim-small")

    assert _run(claims, settings, loop=True) == ["deferred"]

    task = Task.objects.get(pk=claims[0][0])
    assert (task.status, task.attempts) == (Task.Status.READY, 0)
    assert "circuit breaker is open" in task.events.get(kind="deferred").note
    assert model_calls == [] and not ModelCall.objects.filter(task=task).exists()


def test_on_the_loop_an_answer_that_passed_is_cached_and_served_to_the_next_identical_call(
    board, settings, model_calls
):
    make_agent(boards=[board], cascade=ESCALATING, reuse_results=False, quality_checks=[])

    assert _run(_claims((board, "cache me")), settings, loop=True) == ["done"]
    [claim] = _claims((board, "cache me"))
    assert _run([claim], settings, loop=True) == ["done"]

    second = Task.objects.get(pk=claim[0])
    assert (second.cost, second.model_calls, second.cache_hits) == (Decimal(0), 0, 2)
    assert len(model_calls) == 2  # the first run's two calls only


def test_on_the_loop_a_batchs_first_calls_are_read_from_the_cache_in_one_round_trip_and_stored_in_one(
    board, settings, model_calls, monkeypatch
):
    from django.core.cache.backends.redis import RedisCache

    make_agent(boards=[board], cascade=ESCALATING, reuse_results=False, quality_checks=[], concurrency=3)
    assert _run(_claims((board, "first"), (board, "second")), settings, loop=True) == ["done"] * 2
    # Each read and write of the cache: (the method, how many keys).
    reads: list[tuple[str, int]] = []
    writes: list[tuple[str, int]] = []
    for name, log in (("get", reads), ("get_many", reads), ("set", writes), ("set_many", writes)):
        method = getattr(RedisCache, name)

        def counted(self, keys, *args, _method=method, _name=name, _log=log, **kwargs):
            _log.append((_name, len(keys) if _name.endswith("_many") else 1))
            return _method(self, keys, *args, **kwargs)

        monkeypatch.setattr(RedisCache, name, counted)
    model_calls[:] = []
    claims = _claims((board, "first"), (board, "second"), (board, "third"))

    assert _run(claims, settings, loop=True) == ["done"] * 3

    # The three first calls' answers in one read; each second tier's on its own.
    assert reads == [("get_many", 3)] + [("get", 1)] * 3
    # The third run's two fresh answers, stored as its completion committed, in one write.
    assert writes == [("set_many", 2)]
    tasks = [Task.objects.get(pk=task_id) for task_id, _ in claims]
    assert [(t.cache_hits, t.model_calls) for t in tasks] == [(2, 0), (2, 0), (0, 2)]
    assert sorted(model for model, _, _ in model_calls) == ["sim-medium", "sim-small"]


def test_on_the_loop_a_prompt_that_cannot_render_fails_its_attempt_naming_the_variable(
    board, settings, model_calls
):
    make_agent(
        boards=[board],
        prompt_template="Reply to {customer}",
        prompt_variables=["customer"],
        cascade=[tier("sim-small")],
    )
    claims = _claims((board, '{"name": "Petra"}'))

    assert _run(claims, settings, loop=True) == ["failed"]

    task = Task.objects.get(pk=claims[0][0])
    assert task.status == Task.Status.READY and "'customer'" in task.last_error
    assert model_calls == []


def test_on_the_loop_a_real_providers_cascade_goes_through_its_asynchronous_client(
    board, settings, monkeypatch
):
    monkeypatch.setenv("KAIZEN_TEST_OPENAI_KEY", "sk-test")

    def not_on_a_thread(self, request):
        raise AssertionError("the synchronous client was used")

    monkeypatch.setattr(OpenAIProvider, "complete", not_on_a_thread)

    with ProviderServer() as server:
        make_agent(
            boards=[board],
            quality_checks=[],
            cascade=escalating_openai_cascade(server, "KAIZEN_TEST_OPENAI_KEY"),
        )
        claims = _claims((board, "a scratch on the housing"))
        assert _run(claims, settings, loop=True) == ["done"]

    assert [r.body["model"] for r in server.received] == ["small-llm", "big-llm"]
    task = Task.objects.get(pk=claims[0][0])
    assert (task.output, task.accepted_tier, task.confidence_source) == ("surely", 2, "logprobs")


def test_a_subclass_that_works_around_the_cascade_runs_its_own_code_on_a_thread(settings, model_calls):
    settings.KAIZEN_AGENT_CLASSES = [*settings.KAIZEN_AGENT_CLASSES, WRAPPED]
    registry.agent_class.cache_clear()
    board = make_board()
    make_agent(boards=[board], implementation=WRAPPED, cascade=[tier("sim-small")], quality_checks=[])
    claims = _claims((board, "a scratch on the housing"))

    try:
        assert _run(claims, settings, loop=True) == ["done"]
    finally:
        registry.agent_class.cache_clear()

    assert Task.objects.get(pk=claims[0][0]).output.startswith("WRAPPED: ")
    assert [(how, thread[:3]) for _, how, thread in model_calls] == [("complete", "run")]


def test_a_run_whose_failure_cannot_be_recorded_leaves_the_rest_of_its_batch_to_finish(
    settings, model_calls, monkeypatch
):
    broken, good = make_board(), make_board()
    make_agent(boards=[broken], prompt_template="Reply to {customer}", prompt_variables=["customer"])
    make_agent(boards=[good], cascade=[tier("sim-small")], quality_checks=[])
    claims = _claims((broken, '{"name": "Petra"}'), (good, "a scratch on the housing"))

    def locked(**kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(board_services, "task_attempt_fail", locked)

    with pytest.raises(RuntimeError, match="database is locked"):
        _run(claims, settings, loop=True)

    # The good run still ran and completed; no lease is left renewed for nothing.
    assert Task.objects.get(pk=claims[1][0]).status == Task.Status.DONE
    assert not runtime.lease_keeper.busy()


def test_a_malformed_cascade_fails_its_attempt_with_the_same_words_on_the_loop_as_on_a_thread(
    settings, model_calls
):
    from boards.models import Agent

    errors = []
    for loop in (True, False):
        board = make_board()
        agent = make_agent(boards=[board], cascade=[tier("sim-small")])
        # Written around clean(), as a row edited by hand would be.
        Agent.objects.filter(pk=agent.pk).update(cascade=[{"provider": ["openai"], "model": "x"}])
        claims = _claims((board, "a scratch on the housing"))
        assert _run(claims, settings, loop=loop) == ["failed"]
        errors.append(Task.objects.get(pk=claims[0][0]).last_error)

    assert errors[0] == errors[1]
    assert "the agent's cascade is invalid" in errors[0]
    assert model_calls == []


def test_a_claim_sent_on_its_own_runs_on_the_loop_too(board, settings, model_calls):
    # A line at a low WIP claims one task at a time: its Celery message is run_task.
    from boards import tasks as celery_tasks

    make_agent(boards=[board], cascade=[tier("sim-small")], quality_checks=[])
    [(task_id, token)] = _claims((board, "a scratch on the housing"))
    settings.KAIZEN_AGENT_LOOP = True

    assert celery_tasks.run_task(task_id, token) == "done"

    assert model_calls == [("sim-small", "acomplete", "agent-loop")]
    assert Task.objects.get(pk=task_id).status == Task.Status.DONE
