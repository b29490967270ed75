"""What the ledger records for the seven wastes (andon.muda): a tier's context
window, and on every model call its request key, its tier's window and, for an
output the cascade passed over, whether it would have passed inspection.

Runs are real cascade runs in-process against the simulated provider."""

from __future__ import annotations

import hashlib
import json

import pytest

from boards.agents.forms import TierFormSet
from boards.agents.spec import ConfigError, cascade_json, known_context_window, parse_cascade, parse_tier
from boards.config import ConfigError as FileConfigError
from boards.config import config_parse
from boards.models import ModelCall
from tests.boards.test_apply_config import BASE
from tests.boards.test_cascade import run_one, tier
from tests.factories import make_agent

# --- the tier's context window -------------------------------------------------------


def test_a_simulated_model_has_its_own_context_window():
    assert parse_tier({"provider": "simulated", "model": "sim-small"}, "t").window == 8_192
    assert parse_tier({"provider": "simulated", "model": "sim-medium"}, "t").window == 32_768
    assert parse_tier({"provider": "simulated", "model": "sim-large"}, "t").window == 128_000


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("gpt-4.1-nano", 1_047_576),
        ("gpt-3.5-turbo", 16_385),
        ("claude-sonnet-4-5", 200_000),
        ("llama3.1:8b", 131_072),
        ("llama3:8b", 8_192),
        ("my-own-finetune", None),
    ],
)
def test_a_known_real_model_has_its_window_by_the_longest_prefix(model, window):
    assert known_context_window("openai", model) == window


def test_a_tier_s_own_window_overrides_the_model_s_and_is_written_only_when_given():
    own = parse_tier({"provider": "simulated", "model": "sim-small", "context_window": 4096}, "t")
    assert (own.context_window, own.window) == (4096, 4096)
    assert own.as_json()["context_window"] == 4096
    # A window taken from the known models is not written: stored cascades keep their form.
    default = parse_tier({"provider": "simulated", "model": "sim-small"}, "t")
    assert "context_window" not in default.as_json()
    assert parse_cascade(cascade_json([own])) == [own]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be between 1 and 100000000, got 0"),
        (2.5, "must be an integer, got 2.5"),
        ("big", "must be an integer, got 'big'"),
        (True, "must be an integer, got True"),
    ],
)
def test_a_bad_context_window_is_refused_with_its_field(value, message):
    with pytest.raises(ConfigError) as caught:
        parse_tier({"provider": "simulated", "model": "sim-small", "context_window": value}, "cascade[0]")
    assert caught.value.problems == [("cascade[0].context_window", message)]


def test_the_config_file_takes_a_tier_s_context_window(db):
    text = BASE.replace(
        "      - {provider: simulated, model: sim-small, threshold: 0.8}",
        "      - {provider: simulated, model: sim-small, threshold: 0.8, context_window: 2048}",
    )
    document = config_parse(text, filename="line.yaml")
    assert document.agents[0].cascade[0]["context_window"] == 2048


def test_the_config_file_names_the_line_of_a_bad_context_window(db):
    text = BASE.replace(
        "      - {provider: simulated, model: sim-small, threshold: 0.8}",
        "      - {provider: simulated, model: sim-small, threshold: 0.8, context_window: -1}",
    )
    with pytest.raises(FileConfigError) as caught:
        config_parse(text, filename="line.yaml")
    assert any(
        "line.yaml:17" in problem and "context_window" in problem and "between 1 and" in problem
        for problem in caught.value.errors
    ), caught.value.errors


def _formset(window: str) -> TierFormSet:
    data = {
        "tier-TOTAL_FORMS": "1",
        "tier-INITIAL_FORMS": "0",
        "tier-0-provider": "simulated",
        "tier-0-model": "sim-small",
        "tier-0-context_window": window,
        "tier-0-ORDER": "1",
    }
    return TierFormSet(data, prefix="tier")


def test_the_agent_form_takes_a_context_window_and_says_what_is_wrong_on_its_field():
    good = _formset("4096")
    assert good.is_valid(), good.errors
    assert good.cascade[0]["context_window"] == 4096
    bad = _formset("0")
    assert not bad.is_valid()
    assert bad.forms[0].errors["context_window"] == ["must be between 1 and 100000000, got 0"]


# --- the ledger ---------------------------------------------------------------------------


def expected_key(model: str, prompt: str) -> str:
    # As boards.agents.response_cache.cache_key: the transport settings (latency_ms) left out.
    blob = json.dumps(["simulated", model, prompt, {"error_rate": 0.0}], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def test_a_cascade_run_records_request_keys_and_context_windows(board):
    make_agent(
        boards=[board],
        cache_responses=False,
        reuse_results=False,
        quality_checks=[{"check": "confidence", "min": 0.0}],
        cascade=[tier("sim-small", 1.0), {**tier("sim-medium", None), "context_window": 1000}],
    )

    task = run_one(board, input="scratch on the housing")

    rows = list(task.model_call_rows.order_by("tier"))
    assert [(r.tier, r.context_window) for r in rows] == [(1, 8_192), (2, 1000)]
    # The agent's template is "{input}": the prompt is the input.
    assert [r.request_key for r in rows] == [
        expected_key("sim-small", "scratch on the housing"),
        expected_key("sim-medium", "scratch on the housing"),
    ]
    # The same request again gives the same key (what motion counts).
    again = run_one(board, input="scratch on the housing")
    assert [r.request_key for r in again.model_call_rows.order_by("tier")] == [r.request_key for r in rows]


def test_a_passed_over_output_that_would_have_passed_inspection_says_so(board):
    # Tier 1 is passed over (threshold 1.0); the agent's only check takes any confidence.
    make_agent(
        boards=[board],
        cache_responses=False,
        quality_checks=[{"check": "confidence", "min": 0.0}],
        cascade=[tier("sim-small", 1.0), tier("sim-medium", None)],
    )
    task = run_one(board)
    rows = list(task.model_call_rows.order_by("tier"))
    assert [(r.tier, r.accepted, r.would_pass) for r in rows] == [(1, False, True), (2, True, None)]


def test_a_passed_over_output_that_would_have_failed_inspection_says_so(board):
    make_agent(
        boards=[board],
        cache_responses=False,
        quality_checks=[{"check": "length", "max_chars": 1}],
        cascade=[tier("sim-small", 1.0), tier("sim-medium", None)],
    )
    task = run_one(board)
    first = task.model_call_rows.get(tier=1)
    assert (first.accepted, first.would_pass) == (False, False)


def test_custom_checks_are_not_run_on_passed_over_outputs(board, settings):
    settings.KAIZEN_CUSTOM_CHECKS = ["andon.example_checks.no_email_addresses"]
    make_agent(
        boards=[board],
        cache_responses=False,
        quality_checks=[{"check": "custom", "path": "andon.example_checks.no_email_addresses"}],
        cascade=[tier("sim-small", 1.0), tier("sim-medium", None)],
    )
    task = run_one(board)
    assert task.model_call_rows.get(tier=1).would_pass is None


def test_a_failed_call_records_its_key_and_window_but_no_verdict(board):
    make_agent(
        boards=[board],
        cache_responses=False,
        cascade=[tier("sim-small", 0.0, error_rate=1.0), tier("sim-medium", None)],
    )
    task = run_one(board)
    failed = task.model_call_rows.get(tier=1)
    assert failed.error and failed.request_key and failed.context_window == 8_192
    assert failed.would_pass is None
    assert ModelCall.objects.filter(task=task, would_pass__isnull=False).count() == 0
