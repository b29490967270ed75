"""Migration 0002 turned each agent's one provider and model into a one-tier
cascade. What it needs of the agent spec is frozen into it, so that moving or
changing the spec cannot change what the migration writes."""

from __future__ import annotations

import importlib

import pytest

migration = importlib.import_module("boards.migrations.0002_runtime_cascade_ledger")


def test_a_simulated_model_becomes_a_tier_at_its_list_price():
    assert migration.one_tier_cascade("simulated", "sim-medium", {"latency_ms": 400, "error_rate": None}) == [
        {
            "provider": "simulated",
            "model": "sim-medium",
            "parameters": {"latency_ms": 400.0},
            "price_in": "0.001",
            "price_out": "0.004",
            "threshold": None,
        }
    ]


def test_a_real_model_becomes_a_free_tier_with_its_settings():
    settings = {"base_url": "http://127.0.0.1:11434/v1", "max_retries": 2.0, "temperature": 1}
    assert migration.one_tier_cascade("openai", " llama3 ", settings) == [
        {
            "provider": "openai",
            "model": "llama3",
            "parameters": {"base_url": "http://127.0.0.1:11434/v1", "max_retries": 2, "temperature": 1.0},
            "price_in": "0",
            "price_out": "0",
            "threshold": None,
        }
    ]


@pytest.mark.parametrize(
    ("provider", "model", "settings"),
    [
        ("ollama", "llama3", {}),
        ("simulated", "sim-huge", {}),
        ("openai", "", {}),
        ("anthropic", "claude", {"logprobs": True}),
        ("openai", "gpt-4o", {"timeout": 0.01}),
        ("openai", "gpt-4o", {"api_key_env": "MY-KEY"}),
        ("simulated", "sim-small", {"error_rate": 2}),
    ],
)
def test_what_a_tier_does_not_accept_is_refused(provider, model, settings):
    # The migration then keeps the model and drops its settings.
    with pytest.raises(ValueError):
        migration.one_tier_cascade(provider, model, settings)
