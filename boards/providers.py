"""Model providers. The foundation ships the offline ``simulated`` provider, the
model of the demo and the tests; real providers plug in through the same interface.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Protocol


class ProviderError(Exception):
    """A model call failed; the message is the provider's, shown on the task."""


@dataclass(frozen=True)
class ModelRequest:
    model: str
    prompt: str
    input: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelResponse:
    text: str
    confidence: float
    tokens_in: int
    tokens_out: int
    cost: float
    latency_ms: float


class Provider(Protocol):
    name: str
    simulated: bool

    def complete(self, request: ModelRequest) -> ModelResponse: ...


@dataclass(frozen=True)
class SimulatedProfile:
    latency_ms: float
    # Price per 1k input and output tokens, in dollars.
    price_in: float
    price_out: float
    # Confidence on an easy input, and how much a hard one takes off it.
    skill: float
    error_rate: float
    verbosity: float


SIMULATED_PROFILES: dict[str, SimulatedProfile] = {
    "sim-small": SimulatedProfile(
        latency_ms=400, price_in=0.00015, price_out=0.0006, skill=0.78, error_rate=0.04, verbosity=1.6
    ),
    "sim-medium": SimulatedProfile(
        latency_ms=900, price_in=0.001, price_out=0.004, skill=0.88, error_rate=0.02, verbosity=1.2
    ),
    "sim-large": SimulatedProfile(
        latency_ms=2000, price_in=0.005, price_out=0.015, skill=0.96, error_rate=0.01, verbosity=1.0
    ),
}


def _tokens(text: str) -> int:
    # About four characters a token, as for English text with real tokenizers.
    return max(1, (len(text) + 3) // 4)


def input_difficulty(text: str) -> float:
    """0 (easy) to 1 (hard): longer inputs with more questions and numbers are harder."""
    words = text.split()
    length = min(1.0, len(words) / 120)
    marks = min(1.0, (text.count("?") + sum(ch.isdigit() for ch in text) / 10) / 6)
    return round(0.7 * length + 0.3 * marks, 4)


class SimulatedProvider:
    """Deterministic from (model, prompt, input): the same call always gives the
    same output, confidence, tokens and error, so tests and demos repeat exactly.
    Cheaper models are less sure and fail more often on harder inputs."""

    name = "simulated"
    simulated = True

    def __init__(self, *, latency_scale: float = 1.0, sleep=time.sleep) -> None:
        self.latency_scale = latency_scale
        self.sleep = sleep

    def profile(self, model: str) -> SimulatedProfile:
        try:
            return SIMULATED_PROFILES[model]
        except KeyError:
            known = ", ".join(sorted(SIMULATED_PROFILES))
            raise ProviderError(f"unknown simulated model {model!r} (known: {known})") from None

    def complete(self, request: ModelRequest) -> ModelResponse:
        profile = self.profile(request.model)
        seed = hashlib.sha256(f"{request.model}\x00{request.prompt}\x00{request.input}".encode()).hexdigest()
        rng = random.Random(int(seed[:16], 16))
        difficulty = input_difficulty(request.input)
        latency_ms = float(request.settings.get("latency_ms", profile.latency_ms))
        latency_ms *= 0.75 + 0.5 * rng.random()
        if latency_ms > 0 and self.latency_scale > 0:
            self.sleep(latency_ms * self.latency_scale / 1000)

        error_rate = float(request.settings.get("error_rate", profile.error_rate))
        if rng.random() < error_rate * (1 + 3 * difficulty):
            raise ProviderError(
                f"simulated {request.model}: the model returned an unusable answer (simulated error)"
            )
        confidence = profile.skill - difficulty * (1 - profile.skill) * 1.5 + rng.gauss(0, 0.04)
        confidence = round(min(0.999, max(0.01, confidence)), 3)
        summary = " ".join(request.input.split()[:24]) or "(empty input)"
        sentences = max(1, round(profile.verbosity * (1 + 2 * difficulty)))
        body = " ".join(f"Point {i + 1}: {summary[: 40 + 20 * i]}." for i in range(sentences))
        text = f"[simulated {request.model}] {body}"
        tokens_in = _tokens(request.prompt)
        tokens_out = _tokens(text)
        cost = tokens_in / 1000 * profile.price_in + tokens_out / 1000 * profile.price_out
        return ModelResponse(
            text=text,
            confidence=confidence,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost=round(cost, 8),
            latency_ms=round(latency_ms, 3),
        )


def get_provider(name: str) -> Provider:
    from django.conf import settings

    if name == "simulated":
        return SimulatedProvider(latency_scale=settings.KAIZEN_SIMULATED_LATENCY_SCALE)
    raise ProviderError(f"unknown provider {name!r} (available: simulated)")
