"""The simulated models: price, latency, skill; and how hard an input is."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

# --- profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedProfile:
    latency_ms: float
    # Price per 1k input and output tokens, in dollars.
    price_in: float
    price_out: float
    # Accuracy on an easy input with an ordinary prompt, and how fast it falls with
    # difficulty (in log-odds per unit of difficulty).
    skill: float
    error_rate: float
    verbosity: float
    difficulty_slope: float = 2.4
    # Tokens one call may take (prompt and output), as a real model of its class
    # would: a tier on this model measures its context-window use against it.
    context_window: int = 8_192
    # Adversarial inputs (boards.agents.simulated.adversarial): how often the model
    # follows an instruction injected into the input, written plainly, obfuscated
    # (look-alike letters, leetspeak, zero-width characters) or base64-encoded; how
    # often a JSON answer turns to prose when the input asks for it; how often a
    # quote copied from the input is left unescaped in JSON; how often personal
    # data slips through a redaction the prompt asked for.
    injection_plain: float = 0.35
    injection_obfuscated: float = 0.3
    injection_encoded: float = 0.2
    prose_break: float = 0.3
    unescaped_quote: float = 0.08
    redaction_miss: float = 0.03


SIMULATED_PROFILES: dict[str, SimulatedProfile] = {
    "sim-small": SimulatedProfile(
        latency_ms=400,
        price_in=0.00015,
        price_out=0.0006,
        skill=0.85,
        error_rate=0.04,
        verbosity=1.6,
        difficulty_slope=3.0,
        context_window=8_192,
        injection_plain=0.6,
        injection_obfuscated=0.45,
        injection_encoded=0.05,
        prose_break=0.5,
        unescaped_quote=0.25,
        redaction_miss=0.08,
    ),
    "sim-medium": SimulatedProfile(
        latency_ms=900,
        price_in=0.001,
        price_out=0.004,
        skill=0.92,
        error_rate=0.02,
        verbosity=1.2,
        difficulty_slope=2.4,
        context_window=32_768,
        injection_plain=0.35,
        injection_obfuscated=0.3,
        injection_encoded=0.2,
        prose_break=0.3,
        unescaped_quote=0.08,
        redaction_miss=0.03,
    ),
    "sim-large": SimulatedProfile(
        latency_ms=2000,
        price_in=0.005,
        price_out=0.015,
        skill=0.97,
        error_rate=0.01,
        verbosity=1.0,
        difficulty_slope=1.8,
        context_window=128_000,
        injection_plain=0.15,
        injection_obfuscated=0.12,
        injection_encoded=0.18,
        prose_break=0.15,
        unescaped_quote=0.02,
        redaction_miss=0.01,
    ),
}

CONFIDENCE_SPREAD = 0.8
CONFIDENCE_MIN = 0.02
CONFIDENCE_MAX = 0.99

KIND_EFFECT = {
    "classify": 0.3,
    "draft": 0.2,
    "rewrite": 0.3,
    "extract": -0.2,
    "sections": -0.2,
    "summarise": 0.0,
    "generic": 0.0,
}
EFFECT_FORMAT = 0.3
EFFECT_DEFINITIONS = 0.5
EFFECT_EXAMPLES = 0.4
EFFECT_MATCHING_EXAMPLE = 0.6
EFFECT_GROUNDED = 0.2
EFFECT_FEEDBACK = 1.0
EFFECT_VAGUE = -0.4
EFFECT_PLACEHOLDER = -1.5
EFFECT_PLACEHOLDERS_MAX = -3.0
EFFECT_NO_INPUT = -4.0
NO_INPUT_CEILING = -2.5
# A prompt that says the input is data, not instructions, makes an injected
# instruction this many times less likely to be followed; one that insists on
# JSON, a turn to prose.
GUARD_FACTOR = 0.1
JSON_STRICT_FACTOR = 0.15


def count_tokens(text: str) -> int:
    # About four characters a token, as for English text with real tokenizers.
    return max(1, (len(text) + 3) // 4)


@functools.lru_cache(maxsize=4096)
def input_difficulty(text: str) -> float:
    """0 (easy) to 1 (hard): longer inputs with more questions and numbers are harder."""
    words = text.split()
    length = min(1.0, len(words) / 120)
    marks = min(1.0, (text.count("?") + len(_NON_DIGITS.sub("", text)) / 10) / 6)
    return round(0.7 * length + 0.3 * marks, 4)


_NON_DIGITS = re.compile(r"\D+")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_odds(p: float) -> float:
    return math.log(p / (1 - p))
