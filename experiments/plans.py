"""How big an experiment is planned to be: the canary's share of traffic and its
size, and the efficacy stage's planned samples per arm.

The installation's settings give the plan (KAIZEN_CANARY_SHARE,
KAIZEN_CANARY_SIZE, KAIZEN_EXPERIMENT_MAX_N); a board may ask for its own
(``Board.experiment_plan``, from a config file's ``experiments:``), so that a demo
board reaches decisions in minutes while real lines keep the defaults.

A smaller plan never loosens the test. ``experiments.stats`` computes its
boundaries for the plan actually used (the information fraction is the arm's
samples over the planned size, and alpha is spent over the looks actually
taken), so the false-promotion and false-rollback rates hold at any planned
size of at least ``stats.MIN_PER_ARM`` per arm; what a smaller plan gives up is
power: it detects only larger effects (about 15 points at 200 per arm, where
2,000 per arm detect 5). With so few tasks the z-test's normal approximation is a
little generous: 2.6% false promotions for the nominal 2.5% at 200 per arm, 5.4%
false canary rollbacks for 5% at 100 (tests/experiments/test_plans.py), where the
default plan measures 2.50%. Fine for a demo board; real lines keep the defaults.

An agent serving several boards takes the most careful plan among them (the
smallest canary share, the largest sizes), counting the installation's own for
a board that asks for none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from experiments import stats

# The canary watches for harm on a small share; more than half is no canary.
MIN_CANARY_SHARE = 0.01
MAX_CANARY_SHARE = 0.5
MAX_SIZE = 1_000_000


# The shadow gate before the canary (experiments.genchi): its planned pairs and
# its time limit, for an agent with no gate policy of its own (AgentGates).
DEFAULT_SHADOW_SIZE = 200
DEFAULT_SHADOW_HOURS = 24.0
MIN_SHADOW_SIZE = 10
SHADOW_HOURS = (0.05, 24.0 * 30)


@dataclass(frozen=True)
class ExperimentPlan:
    canary_share: float
    canary_size: int
    max_n: int
    shadow_size: int = DEFAULT_SHADOW_SIZE
    shadow_hours: float = DEFAULT_SHADOW_HOURS

    def as_json(self) -> dict[str, Any]:
        return {
            "canary_share": self.canary_share,
            "canary_size": self.canary_size,
            "max_n": self.max_n,
            "shadow_size": self.shadow_size,
            "shadow_hours": self.shadow_hours,
        }


def default_plan() -> ExperimentPlan:
    return ExperimentPlan(
        canary_share=settings.KAIZEN_CANARY_SHARE,
        canary_size=settings.KAIZEN_CANARY_SIZE,
        max_n=settings.KAIZEN_EXPERIMENT_MAX_N,
    )


def plan_problems(data: Any) -> list[tuple[str, str]]:
    """(key, message) for each problem of a board's plan as a file gives it: a
    mapping with any of canary_share (0.01..0.5), canary_size and max_n (whole
    numbers, at least stats.MIN_PER_ARM, the fewest per arm a decision needs)."""
    if not isinstance(data, dict):
        return [
            (
                "",
                "must be a mapping with canary_share, canary_size, max_n, shadow_size and/or "
                f"shadow_hours, got {data!r}",
            )
        ]
    problems: list[tuple[str, str]] = []
    allowed = ("canary_share", "canary_size", "max_n", "shadow_size", "shadow_hours")
    for key in data:
        if key not in allowed:
            problems.append((str(key), f"unknown key; allowed keys: {', '.join(allowed)}"))
    size = data.get("shadow_size")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not MIN_SHADOW_SIZE <= size <= MAX_SIZE
    ):
        problems.append(
            (
                "shadow_size",
                f"must be a whole number of pairs from {MIN_SHADOW_SIZE} to {MAX_SIZE:,}, got {size!r}",
            )
        )
    hours = data.get("shadow_hours")
    if hours is not None and (
        isinstance(hours, bool)
        or not isinstance(hours, int | float)
        or not SHADOW_HOURS[0] <= hours <= SHADOW_HOURS[1]
    ):
        problems.append(
            (
                "shadow_hours",
                f"must be hours between {SHADOW_HOURS[0]} and {SHADOW_HOURS[1]:g}, got {hours!r}",
            )
        )
    share = data.get("canary_share")
    if share is not None and (
        isinstance(share, bool)
        or not isinstance(share, int | float)
        or not MIN_CANARY_SHARE <= share <= MAX_CANARY_SHARE
    ):
        problems.append(
            (
                "canary_share",
                f"must be a share between {MIN_CANARY_SHARE} and {MAX_CANARY_SHARE}, got {share!r}",
            )
        )
    for key in ("canary_size", "max_n"):
        value = data.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not stats.MIN_PER_ARM <= value <= MAX_SIZE
        ):
            problems.append(
                (
                    key,
                    f"must be a whole number from {stats.MIN_PER_ARM} (the fewest tasks per arm a "
                    f"decision needs) to {MAX_SIZE:,}, got {value!r}",
                )
            )
    return problems


def board_plan(data: dict | None) -> ExperimentPlan:
    """A board's plan: what it asks for, the installation's settings for the rest."""
    base = default_plan()
    data = data or {}
    return ExperimentPlan(
        canary_share=float(data.get("canary_share", base.canary_share)),
        canary_size=int(data.get("canary_size", base.canary_size)),
        max_n=int(data.get("max_n", base.max_n)),
        shadow_size=int(data.get("shadow_size", base.shadow_size)),
        shadow_hours=float(data.get("shadow_hours", base.shadow_hours)),
    )


def most_careful(plans: Iterable[ExperimentPlan]) -> ExperimentPlan:
    plans = list(plans) or [default_plan()]
    return ExperimentPlan(
        canary_share=min(p.canary_share for p in plans),
        canary_size=max(p.canary_size for p in plans),
        max_n=max(p.max_n for p in plans),
        shadow_size=max(p.shadow_size for p in plans),
        shadow_hours=max(p.shadow_hours for p in plans),
    )


def agent_plan(agent) -> ExperimentPlan:
    """The plan of an experiment on ``agent``'s prompt (see the module's docstring)."""
    return most_careful(board_plan(data) for data in agent.boards.values_list("experiment_plan", flat=True))
