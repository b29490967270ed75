"""What the kaizen cycle's planners share: the window of evidence they read and the
plan they return. The cycle (experiments.pdca) and the tuning planners
(experiments.tuning) both import it, so neither imports the other's module to
name them."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from boards.models import Agent
from experiments.models import PromptVersion


@dataclass(frozen=True)
class Plan:
    """A candidate improvement: the full proposed prompt fields (the agent's own,
    changed), why in words that cite the evidence, and the evidence itself.
    ``strength`` is the share of the window's outputs the evidence concerns."""

    kind: str
    fields: dict[str, Any]
    rationale: str
    evidence: dict[str, Any]
    strength: float = field(default=0.0, compare=False)


@dataclass
class Window:
    """The evidence of one cycle: the agent's inspected outputs of its active
    prompt version since ``since`` (newest first), and from when their calls are
    read. ``memo`` keeps what several planners read (the tuning evidence), so a
    cycle reads it once."""

    agent: Agent
    since: datetime
    days: int
    outputs: Sequence[Mapping[str, Any]]  # inspections, newest first
    calls_since: datetime
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        return len(self.outputs)


def current_fields(agent: Agent) -> dict[str, Any]:
    """The agent's prompt fields as a proposal holds them (copies, to be changed)."""
    return {name: copy.deepcopy(getattr(agent, name)) for name in PromptVersion.FIELDS}
