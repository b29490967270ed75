"""The JIT runtime: the cascade with early exit, the ledger, reuse and the response cache.

Runs are made in-process (boards.agents.runtime.run) against the simulated provider with no
latency, or against a local server speaking the OpenAI protocol. The simulated
model's confidence never reaches 1.0, so a threshold of 1.0 always escalates and
one of 0.0 always accepts.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum

from boards import services
from boards.agents import response_cache, runtime
from boards.agents.providers import ModelRequest
from boards.agents.simulated import simulate
from boards.agents.spec import parse_cascade
from boards.models import ModelCall, Task, TaskEvent
from tests.boards.provider_server import ProviderServer, escalating_openai_cascade
from tests.factories import make_agent
from tests.response_cache import settled

pytestmark = pytest.mark.django_db

# Round prices, so the expected costs are easy to check by hand.
PRICES = {
    "sim-small": ("0.1", "0.2"),
    "sim-medium": ("1", "2"),
    "sim-large": ("10", "20"),
}


def tier(model: str, threshold: float | None, **parameters) -> dict:
    price_in, price_out = PRICES[model]
    return {
        "provider": "simulated",
        "model": model,
        "parameters": {"latency_ms": 0, "error_rate": 0, **parameters},
        "price_in": price_in,
        "price_out": price_out,
        "threshold": threshold,
    }


def run_one(board, *, title: str = "Inspect", input: str = "scratch on the housing", **task_kwargs) -> Task:
    task = services.task_create(board=board, title=title, input=input, **task_kwargs)
    [claim] = services.board_pull(board_id=board.pk)
    runtime.run(claim.task_id, str(claim.lease_token))
    task.refresh_from_db()
    return task


def output_of(model: str, task: Task) -> str:
    """What that simulated model answers to the task (the agent's template is "{input}",
    so the prompt is the input itself)."""
    return simulate(
        ModelRequest(model=model, prompt=task.input, input=task.input, settings={"error_rate": 0})
    ).text


def expected_cost(row: ModelCall) -> Decimal:
    price_in, price_out = (Decimal(p) for p in PRICES[row.model])
    return (row.tokens_in * price_in + row.tokens_out * price_out) / 1000


def assert_ledger_adds_up(task: Task) -> list[ModelCall]:
    rows = list(task.model_call_rows.order_by("pk"))
    assert task.cost == sum((row.cost for row in rows), Decimal(0))
    assert task.tokens_in == sum(row.tokens_in for row in rows)
    assert task.tokens_out == sum(row.tokens_out for row in rows)
    assert task.model_calls == sum(1 for row in rows if row.source == ModelCall.Source.MODEL)
    assert task.cache_hits == sum(1 for row in rows if row.source == ModelCall.Source.CACHE)
    for row in rows:
        if row.source == ModelCall.Source.MODEL:
            assert row.cost == expected_cost(row), row
        else:
            assert (row.cost, row.tokens_in, row.tokens_out) == (0, 0, 0)
    return rows


# --- the cascade ----------------------------------------------------------------------


def test_the_cheapest_tier_is_accepted_when_it_clears_its_threshold(board):
    make_agent(
        boards=[board],
        cascade=[tier("sim-small", 0.0), tier("sim-medium", 0.0), tier("sim-large", None)],
    )

    task = run_one(board)

    assert task.status == Task.Status.DONE
    assert task.accepted_tier == 1
    assert task.output == output_of("sim-small", task)
    rows = assert_ledger_adds_up(task)
    assert [(r.tier, r.model, r.accepted) for r in rows] == [(1, "sim-small", True)]
    assert rows[0].confidence == task.confidence
    assert rows[0].confidence_source == task.confidence_source == "simulated"
    assert rows[0].tokens_in > 0 and rows[0].cost > 0
    assert "tier 1 (sim-small) accepted" in task.events.get(kind=TaskEvent.Kind.COMPLETED).note


def test_a_doubtful_answer_escalates_to_the_second_tier(board):
    make_agent(
        boards=[board],
        cascade=[tier("sim-small", 1.0), tier("sim-medium", 0.0), tier("sim-large", None)],
    )

    task = run_one(board)

    assert task.accepted_tier == 2
    assert task.output == output_of("sim-medium", task)
    rows = assert_ledger_adds_up(task)
    assert [(r.tier, r.model, r.accepted) for r in rows] == [(1, "sim-small", False), (2, "sim-medium", True)]
    assert all(r.attempt == 1 and r.agent_id == task.agent_id for r in rows)
    assert task.cost == expected_cost(rows[0]) + expected_cost(rows[1])


def test_the_last_tier_is_taken_whatever_it_scores(board):
    make_agent(
        boards=[board],
        cascade=[tier("sim-small", 1.0), tier("sim-medium", 1.0), tier("sim-large", 1.0)],
    )

    task = run_one(board)

    assert task.status == Task.Status.DONE
    assert task.accepted_tier == 3
    assert task.output == output_of("sim-large", task)
    assert task.confidence < 1.0  # below its threshold, taken all the same
    rows = assert_ledger_adds_up(task)
    assert [(r.tier, r.accepted) for r in rows] == [(1, False), (2, False), (3, True)]
    assert task.model_calls == 3


def test_a_failing_tier_is_recorded_and_the_next_one_tried(board):
    make_agent(boards=[board], cascade=[tier("sim-small", 0.0, error_rate=1.0), tier("sim-medium", None)])

    task = run_one(board)

    assert task.status == Task.Status.DONE
    assert task.accepted_tier == 2
    failed, answered = assert_ledger_adds_up(task)
    assert "simulated error" in failed.error
    assert (failed.cost, failed.tokens_in, failed.accepted) == (0, 0, False)
    assert answered.error == "" and answered.accepted


def test_when_the_last_tier_fails_the_attempt_fails_with_its_message_and_the_calls_are_kept(board):
    make_agent(
        boards=[board],
        max_attempts=2,
        cascade=[tier("sim-small", 1.0), tier("sim-medium", None, error_rate=1.0)],
    )

    task = run_one(board)

    assert task.status == Task.Status.READY  # back for another attempt
    assert "tier 2 (sim-medium)" in task.last_error and "simulated error" in task.last_error
    rows = assert_ledger_adds_up(task)
    assert [(r.tier, r.error != "") for r in rows] == [(1, False), (2, True)]
    assert task.cost == expected_cost(rows[0]) > 0  # the doubtful answer was paid for


def test_costs_add_up_over_attempts(board):
    make_agent(boards=[board], max_attempts=3, cascade=[tier("sim-small", 1.0), tier("sim-medium", None)])
    task = services.task_create(board=board, title="Twice", input="two attempts of this")
    [first] = services.board_pull(board_id=board.pk)
    # The first run's lease is lost (its worker died, say): the task goes round again.
    services.task_attempt_fail(task_id=task.pk, lease_token=first.lease_token, error="worker lost")
    [second] = services.board_pull(board_id=board.pk)
    runtime.run(task.pk, str(second.lease_token))

    task.refresh_from_db()
    rows = assert_ledger_adds_up(task)
    assert {r.attempt for r in rows} == {2}
    total = ModelCall.objects.filter(task=task).aggregate(total=Sum("cost"))["total"]
    assert Decimal(total).quantize(Decimal("0.0000000001")) == task.cost


def test_a_late_result_still_records_what_its_calls_cost(board):
    make_agent(boards=[board], cascade=[tier("sim-small", None)])
    task = services.task_create(board=board, title="Late", input="late answer")
    [claim] = services.board_pull(board_id=board.pk)
    output = runtime.implementation_for(Task.objects.select_related("agent").get(pk=task.pk).agent).process(
        Task.objects.get(pk=task.pk)
    )
    services.task_attempt_fail(task_id=task.pk, lease_token=claim.lease_token, error="lease expired")

    assert services.task_complete(task_id=task.pk, lease_token=claim.lease_token, output=output) is False

    task.refresh_from_db()
    assert task.status == Task.Status.READY and task.output == ""  # the stale output is not taken
    rows = assert_ledger_adds_up(task)
    assert len(rows) == 1 and rows[0].cost > 0
    assert (rows[0].accepted, rows[0].stale) == (False, True)


def test_generation_parameters_reach_the_provider_and_a_tier_overrides_them(board, monkeypatch):
    monkeypatch.setenv("KAIZEN_TEST_OPENAI_KEY", "sk-test")
    completion = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
    }
    with ProviderServer() as server:
        server.then(200, completion)
        make_agent(
            boards=[board],
            parameters={"temperature": 0.3, "max_tokens": 50},
            cascade=[
                {
                    "provider": "openai",
                    "model": "gpt-test",
                    "parameters": {
                        "base_url": f"{server.url}/v1",
                        "api_key_env": "KAIZEN_TEST_OPENAI_KEY",
                        "max_tokens": 80,
                        "max_retries": 0,
                    },
                    "price_in": "0.5",
                    "price_out": "1.5",
                }
            ],
        )
        task = run_one(board)

    [request] = server.received
    assert request.body["temperature"] == 0.3
    assert request.body["max_tokens"] == 80
    assert task.output == "ok"
    assert task.confidence is None and task.confidence_source == "none"
    # 1000 tokens in at 0.5 per 1k, 500 out at 1.5 per 1k.
    assert task.cost == Decimal("1.25")


def test_a_real_provider_cascade_escalates_on_low_logprob_confidence(board, monkeypatch):
    monkeypatch.setenv("KAIZEN_TEST_OPENAI_KEY", "sk-test")

    with ProviderServer() as server:
        make_agent(
            boards=[board],
            cascade=escalating_openai_cascade(server, "KAIZEN_TEST_OPENAI_KEY"),
        )
        task = run_one(board)

    assert [r.body["model"] for r in server.received] == ["small-llm", "big-llm"]
    assert task.output == "surely" and task.accepted_tier == 2
    assert task.confidence_source == "logprobs"
    first, second = task.model_call_rows.order_by("pk")
    assert first.confidence == pytest.approx(0.3679, abs=1e-4) and not first.accepted
    assert second.confidence == pytest.approx(0.990, abs=1e-3) and second.accepted


def test_a_provider_error_from_a_real_server_is_a_failed_attempt_with_its_message(board, monkeypatch):
    monkeypatch.setenv("KAIZEN_TEST_OPENAI_KEY", "sk-test")
    with ProviderServer() as server:
        server.then(401, {"error": {"message": "Incorrect API key provided"}})
        make_agent(
            boards=[board],
            cascade=[
                {
                    "provider": "openai",
                    "model": "gpt-test",
                    "parameters": {"base_url": f"{server.url}/v1", "api_key_env": "KAIZEN_TEST_OPENAI_KEY"},
                }
            ],
        )
        task = run_one(board)

    assert task.status == Task.Status.READY
    assert "openai 401: Incorrect API key provided" in task.last_error
    [row] = task.model_call_rows.all()
    assert "Incorrect API key provided" in row.error and row.cost == 0


# --- prompts and variables ------------------------------------------------------------


def test_declared_variables_come_from_a_json_input(board, monkeypatch):
    prompts = []
    original = runtime.implementation_for

    agent = make_agent(
        boards=[board],
        prompt_template="Reply to {customer} about order {order}: {input}",
        prompt_variables=["customer", "order"],
        cascade=[tier("sim-small", None)],
    )

    def spy(agent_row):
        implementation = original(agent_row)
        render = implementation.prompt

        def prompt(task):
            prompts.append(render(task))
            return prompts[-1]

        implementation.prompt = prompt
        return implementation

    monkeypatch.setattr(runtime, "implementation_for", spy)
    task = run_one(board, input='{"customer": "Petra", "order": 58213}')

    # The run finished; whether its answer passed the checks is the model's draw.
    assert task.status in (Task.Status.DONE, Task.Status.REVIEW)
    assert prompts == ['Reply to Petra about order 58213: {"customer": "Petra", "order": 58213}']
    assert agent.tiers[0].model == "sim-small"


def test_a_task_without_a_declared_variable_fails_its_attempt_naming_it(board):
    make_agent(
        boards=[board],
        prompt_template="Reply to {customer}",
        prompt_variables=["customer"],
        cascade=[tier("sim-small", None)],
    )

    task = run_one(board, input='{"name": "Petra"}')

    assert task.status == Task.Status.READY
    assert "'customer'" in task.last_error
    assert task.model_calls == 0  # no model was asked


# --- reuse and the cache --------------------------------------------------------------


def test_an_identical_input_reuses_the_completed_result_and_costs_nothing(board):
    agent = make_agent(boards=[board], cascade=[tier("sim-small", 1.0), tier("sim-medium", None)])
    first = run_one(board, input="The invoice lists 40 units;  we received 36.")

    second = run_one(board, input="  the INVOICE lists 40 units; we received 36.  ")

    assert second.status == Task.Status.DONE
    assert second.reused_from_id == first.pk
    assert (second.output, second.confidence) == (first.output, first.confidence)
    assert (second.cost, second.model_calls, second.tokens_in) == (0, 0, 0)
    [row] = second.model_call_rows.all()
    assert (row.source, row.reused_from_id, row.cost, row.accepted) == (
        ModelCall.Source.REUSE,
        first.pk,
        0,
        True,
    )
    assert row.agent_id == agent.pk
    assert "reused the result of task" in second.events.get(kind=TaskEvent.Kind.COMPLETED).note


@pytest.mark.parametrize("opt_out", ["agent", "task"])
def test_reuse_can_be_turned_off_by_the_agent_or_the_task(board, opt_out):
    agent = make_agent(boards=[board], cascade=[tier("sim-small", None)], cache_responses=False)
    if opt_out == "agent":
        agent.reuse_results = False
        agent.save()
    first = run_one(board, input="same words")

    second = run_one(board, input="same words", allow_reuse=opt_out != "task")

    assert second.reused_from_id is None
    assert second.model_calls == 1 and second.cost == first.cost > 0


def test_a_new_prompt_version_does_not_reuse_results_of_the_old_one(board):
    agent = make_agent(boards=[board], cascade=[tier("sim-small", None)])
    run_one(board, input="same words")
    agent.prompt_template = "Be brief. {input}"
    services.agent_save(agent=agent)
    assert agent.prompt_version == 2

    second = run_one(board, input="same words")

    assert second.reused_from_id is None and second.model_calls == 1
    assert second.prompt_version == 2
    assert second.model_call_rows.get().prompt_version == 2


def test_an_identical_call_is_served_from_the_cache_and_costs_nothing(
    board, django_capture_on_commit_callbacks
):
    make_agent(
        boards=[board], cascade=[tier("sim-small", 1.0), tier("sim-medium", None)], reuse_results=False
    )
    with django_capture_on_commit_callbacks() as committed:
        first = run_one(board, input="cache me")
    settled(committed)

    second = run_one(board, input="cache me")

    assert second.output == first.output and second.accepted_tier == 2
    assert (second.cost, second.model_calls, second.cache_hits) == (0, 0, 2)
    rows = assert_ledger_adds_up(second)
    assert [(r.source, r.tier, r.accepted) for r in rows] == [("cache", 1, False), ("cache", 2, True)]
    assert all(r.confidence is not None for r in rows)


def test_the_cache_key_covers_the_parameters(board, django_capture_on_commit_callbacks):
    agent = make_agent(boards=[board], cascade=[tier("sim-small", None)], reuse_results=False)
    with django_capture_on_commit_callbacks() as committed:
        run_one(board, input="cache me")
    settled(committed)
    agent.parameters = {"temperature": 0.9}
    services.agent_save(agent=agent)

    second = run_one(board, input="cache me")

    assert (second.model_calls, second.cache_hits) == (1, 0)


def test_an_agent_may_turn_the_cache_off(board, django_capture_on_commit_callbacks):
    make_agent(boards=[board], cascade=[tier("sim-small", None)], reuse_results=False, cache_responses=False)
    with django_capture_on_commit_callbacks() as committed:
        run_one(board, input="no cache")
    # Nothing for the cache to settle.
    assert not [c for c in committed if getattr(c, "func", None) is response_cache.settle_cache]

    second = run_one(board, input="no cache")

    assert (second.model_calls, second.cache_hits) == (1, 0)


# --- custom agents --------------------------------------------------------------------


def test_a_custom_agent_class_does_the_work_and_says_its_capabilities(board):
    agent = make_agent(
        boards=[board], implementation="boards.example_agents.KeywordClassifier", capabilities=[]
    )
    assert agent.offered_capabilities == ["classify"]

    task = run_one(
        board, title="Wrong invoice", input="We were charged twice; please refund.", capability="classify"
    )

    assert task.status == Task.Status.DONE
    assert task.output == "label: billing"
    assert task.confidence_source == "rules"
    assert task.cost == 0 and task.model_calls == 0
    metrics = runtime.implementation_for(agent).metrics()
    assert metrics["tasks_done"] == 1 and metrics["rules"] > 0


def test_a_custom_agent_that_cannot_do_a_task_fails_the_attempt_with_its_reason(board):
    make_agent(boards=[board], implementation="boards.example_agents.KeywordClassifier")

    task = run_one(board, title="Hello", input="Nice weather today", capability="classify")

    assert task.status == Task.Status.READY
    assert "no keyword" in task.last_error


def test_an_unregistered_custom_class_is_refused_when_saved(board, settings):
    agent = make_agent(boards=[board])
    agent.implementation = "os.system"
    with pytest.raises(services.ValidationError) as caught:
        services.agent_save(agent=agent)
    assert "not a registered agent class" in str(caught.value)


def test_the_system_check_reports_a_registered_class_that_cannot_load(settings):
    from boards.checks import agent_classes_check

    settings.KAIZEN_AGENT_CLASSES = [
        "boards.example_agents.KeywordClassifier",
        "boards.nowhere.Agent",
        "json.dumps",
    ]
    ids = [error.id for error in agent_classes_check()]
    assert ids == ["boards.E001", "boards.E002"]


# --- saving an agent ------------------------------------------------------------------


def test_saving_a_template_with_an_undeclared_variable_is_refused_naming_it(board):
    agent = make_agent(boards=[board])
    agent.prompt_template = "Write to {customer} about {input}"
    with pytest.raises(services.ValidationError) as caught:
        services.agent_save(agent=agent)
    assert "{customer}" in str(caught.value.message_dict["prompt_template"])
    agent.refresh_from_db()
    assert agent.prompt_template == "{input}" and agent.prompt_version == 1


def test_saving_normalises_the_cascade_and_versions_only_prompt_changes(board):
    agent = make_agent(boards=[board])
    agent.cascade = [
        {"provider": "simulated", "model": "sim-small", "threshold": 0.8},
        {"provider": "simulated", "model": "sim-large"},
    ]
    services.agent_save(agent=agent)
    agent.refresh_from_db()
    assert agent.prompt_version == 2
    assert agent.cascade[0]["price_in"] == "0.00015"  # the simulated model's list price
    assert [t.model for t in agent.tiers] == ["sim-small", "sim-large"]

    agent.concurrency = 7
    services.agent_save(agent=agent)
    agent.refresh_from_db()
    assert agent.prompt_version == 2  # not a prompt change

    services.agent_save(agent=agent)  # saving the same again changes nothing
    assert agent.prompt_version == 2


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        ([], "at least one tier"),
        ([{"provider": "simulated", "model": "sim-huge"}], "unknown simulated model"),
        ([{"provider": "nope", "model": "x"}], "must be one of"),
        ([{"provider": "simulated", "model": "sim-small", "threshold": 1.5}], "between 0 and 1"),
        ([{"provider": "simulated", "model": "sim-small", "price_in": -1}], "zero or more"),
        (
            [
                {"provider": "simulated", "model": "sim-small"},
                {"provider": "simulated", "model": "sim-large"},
            ],
            "would never run",
        ),
        (
            [{"provider": "openai", "model": "gpt", "parameters": {"api_key": "sk-secret"}}],
            "unknown for provider openai",
        ),
    ],
)
def test_a_bad_cascade_is_refused_with_a_message(cascade, message):
    with pytest.raises(ValueError, match=message):
        parse_cascade(cascade)


def test_each_ledger_row_is_stamped_when_its_call_was_made(board):
    make_agent(boards=[board], cascade=[tier("sim-small", 1.0, latency_ms=30), tier("sim-medium", None)])

    task = run_one(board)

    first, second = task.model_call_rows.order_by("pk")
    # The first call was made before the second, and both before the run ended.
    assert task.started_at <= first.created_at < second.created_at <= task.finished_at
