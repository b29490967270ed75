"""The simulated provider: offline, deterministic, and cheap models are weaker."""

from __future__ import annotations

from decimal import Decimal

import pytest

from boards.agents.providers import ModelRequest, ProviderError
from boards.agents.simulated import SIMULATED_PROFILES, SimulatedProvider, input_difficulty
from boards.agents.spec import parse_tier

EASY = "Classify: the part has a small scratch."
HARD = " ".join(
    f"Batch {n}: tolerance {n * 0.013:.3f} mm over spec? Was lot {n + 7} reworked? Check reading {n * 11}."
    for n in range(20)
)


def _call(model: str, text: str, **settings) -> object:
    provider = SimulatedProvider(latency_scale=0)
    return provider.complete(ModelRequest(model=model, prompt=f"Task: {text}", input=text, settings=settings))


def test_same_call_gives_the_same_answer():
    assert _call("sim-small", EASY) == _call("sim-small", EASY)


def test_output_is_labelled_simulated_and_a_tier_prices_it_at_the_models_list_price():
    response = _call("sim-medium", EASY)
    profile = SIMULATED_PROFILES["sim-medium"]
    # Labelled by its confidence source (the ledger, the API and the UI's badge say
    # "simulated"), not by a prefix in the text, which would break JSON checks.
    assert response.confidence_source == "simulated" and SimulatedProvider.simulated
    assert "[simulated" not in response.text
    tier = parse_tier({"provider": "simulated", "model": "sim-medium"}, "tier")
    expected = (
        Decimal(response.tokens_in) * Decimal(str(profile.price_in)) / 1000
        + Decimal(response.tokens_out) * Decimal(str(profile.price_out)) / 1000
    )
    assert tier.cost(response.tokens_in, response.tokens_out) == expected


def test_harder_inputs_lower_confidence_more_for_cheap_models():
    assert input_difficulty(HARD) > input_difficulty(EASY)
    small = [_call("sim-small", f"{HARD} #{i}", error_rate=0).confidence for i in range(20)]
    large = [_call("sim-large", f"{HARD} #{i}", error_rate=0).confidence for i in range(20)]
    easy_small = [_call("sim-small", f"{EASY} #{i}", error_rate=0).confidence for i in range(20)]
    assert sum(large) / 20 > sum(small) / 20
    assert sum(easy_small) / 20 > sum(small) / 20


def test_cheap_models_fail_more_often_on_hard_inputs():
    def failures(model: str, text: str) -> int:
        n = 0
        for i in range(300):
            try:
                _call(model, f"{text} #{i}")
            except ProviderError:
                n += 1
        return n

    assert failures("sim-small", HARD) > failures("sim-large", HARD)
    assert failures("sim-small", HARD) > failures("sim-small", EASY)


def test_error_rate_setting_forces_errors():
    with pytest.raises(ProviderError, match="simulated error"):
        _call("sim-large", EASY, error_rate=1.0)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ProviderError, match="sim-small"):
        _call("gpt-imaginary", EASY)


def test_latency_is_slept_scaled():
    slept: list[float] = []
    provider = SimulatedProvider(latency_scale=0.5, sleep=slept.append)
    response = provider.complete(
        ModelRequest(model="sim-small", prompt="p", input="i", settings={"latency_ms": 1000})
    )
    assert slept == [pytest.approx(response.latency_ms * 0.5 / 1000)]
    assert 750 <= response.latency_ms <= 1250
