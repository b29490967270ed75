"""One request being answered, and the flaws a wrong answer can have."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from boards.agents.simulated.profiles import SimulatedProfile
from boards.agents.simulated.reading import PromptReading, Source
from boards.agents.simulated.text import DIGITS, MONTHS, lower_first

# --- the work -------------------------------------------------------------------------------


@dataclass
class Work:
    """One request being answered: what the prompt asks, what the input says, and the
    model's draws (its confidence, and its random choices of flaw)."""

    reading: PromptReading
    source: Source
    model: str
    profile: SimulatedProfile
    rng: random.Random
    confidence: float

    @property
    def unsure(self) -> bool:
        return self.reading.hedge_when_unsure and self.confidence < 0.6


Writer = Callable[[Work, list[str]], tuple[str, str]]
_HEDGES = ("I'm not sure, but ", "I think ", "Possibly ", "I am not sure: ")


def _is_identifier_digits(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before.isalpha() or after.isalpha() and text[end : end + 2] not in ("th", "st", "nd", "rd"):
        return True
    if before in "-#" and start > 1 and (text[start - 2].isalnum()):
        return True
    return after == ":" or before == ":"


def _perturb(figure: str, following: str, known: frozenset[str]) -> str | None:
    """A plausible figure near ``figure`` that the input does not contain."""
    candidates: list[str] = []
    if "." in figure and "," not in figure:
        whole, decimals = figure.split(".", 1)
        if set(decimals) == {"0"}:
            candidates = [f"{int(whole) + step}.{decimals}" for step in (10, 1, 5)]
        else:
            digits = list(figure)
            last = len(digits) - 1
            for step in (3, 7, 1):
                digits[last] = str((int(figure[last]) + step) % 10)
                candidates.append("".join(digits))
    else:
        plain = figure.replace(",", "")
        if not plain.isdigit():
            return None
        value = int(plain)
        if re.match(r"\s*(?:" + "|".join(MONTHS) + r")", following, re.I) and 1 <= value <= 31:
            candidates = [str(value - 2 if value > 3 else value + 2), str(value + 1)]
        elif 1900 <= value <= 2100:
            candidates = [str(value + 1), str(value - 1)]
        else:
            steps = (2, 1, 3) if value < 10 else (10 ** (len(plain) - 1) // (1 if len(plain) < 3 else 10),)
            for step in steps:
                new = value + step
                candidates.append(f"{new:,}" if "," in figure else str(new))
            candidates.append(str(value + 1))
    for candidate in candidates:
        if candidate != figure and candidate not in known and candidate.replace(",", "") not in known:
            return candidate
    return None


def invent_figure(text: str, work: Work) -> tuple[str, str] | None:
    """Changes one figure taken from the input into one the input does not contain."""
    known = work.source.figures
    options = [
        m
        for m in DIGITS.finditer(text)
        if m.group(0) in known and not _is_identifier_digits(text, m.start(), m.end())
    ]
    work.rng.shuffle(options)
    for match in options:
        new = _perturb(match.group(0), text[match.end() : match.end() + 12], known)
        if new:
            changed = text[: match.start()] + new + text[match.end() :]
            return changed, f"the figure {new} is not in the input (it says {match.group(0)})"
    return None


def hedge_answer(text: str, work: Work) -> tuple[str, str]:
    hedge = work.rng.choice(_HEDGES)
    return hedge + lower_first(text), f"the answer hedges ({hedge.strip(' :,')}) instead of committing"


def flaw_order(work: Work, weights: dict[str, float]) -> list[str]:
    """The flaws to try, most likely first: a weighted draw without replacement."""
    pool = [(name, weight) for name, weight in weights.items() if weight > 0]
    order: list[str] = []
    while pool:
        total = sum(weight for _, weight in pool)
        pick = work.rng.random() * total
        for index, (name, weight) in enumerate(pool):
            pick -= weight
            if pick <= 0:
                order.append(name)
                pool.pop(index)
                break
        else:
            order.append(pool.pop()[0])
    return order
