"""What the line asks of the kaizen loop, on its hot path: which prompt version a
claimed task runs (the arm of the agent's experiment), what that version says,
and each experiment task's outcome. Imports no service module, so
``boards.services`` and ``boards.agents.runtime`` can use it.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, TypeAlias, TypedDict, cast

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from boards.models import Agent, Task
from experiments.models import (
    AgentGates,
    Experiment,
    ExperimentSample,
    PromptVersion,
    Replay,
    normal_prompt_fields,
)
from kaizen_web.prepared import Prepared, fields

Arm = ExperimentSample.Arm
# Not an experiment's arm: the task ran the agent's holdout version.
HOLDOUT = "holdout"


def share_position(salt: str, task_id: int) -> float:
    """Where a task falls in [0, 1) for a split salted with ``salt``: sticky and
    deterministic (a retry falls in the same place), independent between salts."""
    digest = hashlib.sha256(f"{salt}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Shadow:
    replay_id: int
    baseline: int
    share: float
    salt: str


@dataclass(frozen=True)
class Holdout:
    version: int
    share: float
    salt: str


class _Genchi:
    """The running shadows and the holdouts, by agent, as the line sees them:
    read at most once every TTL seconds per process, so a pull or a completion
    does not query for them. A shadow that starts is mirrored to within TTL."""

    TTL = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._shadows: dict[int, Shadow] = {}
        self._holdouts: dict[int, Holdout] = {}

    def get(self) -> tuple[dict[int, Shadow], dict[int, Holdout]]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < self.TTL:
                return self._shadows, self._holdouts
        shadows = {
            agent_id: Shadow(pk, baseline, share, salt)
            for pk, agent_id, baseline, share, salt in Replay.objects.filter(
                kind=Replay.Kind.SHADOW, state=Replay.State.RUNNING
            ).values_list("pk", "agent_id", "baseline__number", "share", "salt")
        }
        holdouts = {
            agent_id: Holdout(number, share, salt)
            for agent_id, number, share, salt in AgentGates.objects.filter(
                holdout_share__gt=0, holdout_version__isnull=False
            ).values_list("agent_id", "holdout_version__number", "holdout_share", "holdout_salt")
        }
        with self._lock:
            self._shadows, self._holdouts, self._read_at = shadows, holdouts, now
        return shadows, holdouts

    def clear(self) -> None:
        with self._lock:
            self._read_at = -1e9


genchi = _Genchi()


def shadow_picks(tasks: Iterable[Task]) -> list[tuple[int, int]]:
    """(shadow replay, task) for each task just completed that its agent's
    running shadow mirrors: a first attempt, run on the shadow's baseline
    version, in the shadow's share. Run after the task's own result is committed."""
    shadows, _ = genchi.get()
    if not shadows:
        return []
    picks = []
    for task in tasks:
        shadow = shadows.get(task.agent_id) if task.agent_id else None
        if (
            shadow is not None
            and task.attempts == 1
            and task.prompt_version == shadow.baseline
            and not task.arm
            and share_position(shadow.salt, task.pk) < shadow.share
        ):
            picks.append((shadow.replay_id, task.pk))
    return picks


def arm_of(experiment: Experiment, task_id: int) -> str:
    """Sticky and deterministic: the same task always lands in the same arm of an
    experiment (a retry too), and experiments split traffic independently."""
    return Arm.TREATMENT if share_position(experiment.salt, task_id) < experiment.share else Arm.CONTROL


if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _VersionNumbers(TypedDict):
        control_number: int
        treatment_number: int

    # An experiment as running_experiments reads it.
    RunningExperiment: TypeAlias = WithAnnotations[Experiment, _VersionNumbers]


# The experiments assigning traffic, with their versions' numbers, at every
# pull: compiled once (kaizen_web.prepared).
_RUNNING = Prepared(
    lambda *, agent_ids: (
        Experiment.objects.filter(agent_id__in=agent_ids, status__in=Experiment.ASSIGNING)
        .order_by()
        .values_list(*fields(Experiment), "control__number", "treatment__number")
    ),
    agent_ids=list,
)


def running_experiments(agents: Iterable[Agent]) -> dict[int, RunningExperiment]:
    """The experiments assigning traffic now, by agent (one query): each with
    ``control_number`` and ``treatment_number``, its versions' numbers (what
    ``assign`` reads; the versions are not loaded)."""
    ids = sorted({agent.pk for agent in agents})
    if not ids:
        return {}
    found = _RUNNING.instances(Experiment, ["control_number", "treatment_number"], agent_ids=ids)
    return {e.agent_id: cast("RunningExperiment", e) for e in found}


def assign(task: Task, agent: Agent, experiments: dict[int, RunningExperiment]) -> None:
    """Set a task being claimed by ``agent`` to the version it runs (not saved):
    the holdout's version when the task falls in the agent's holdout (kept out of
    experiments, as a holdout must be), else the active one, or, while the agent
    has an experiment, its arm's."""
    _, holdouts = genchi.get()
    holdout = holdouts.get(agent.pk)
    if (
        holdout is not None
        and holdout.version != agent.prompt_version
        and share_position(holdout.salt, task.pk) < holdout.share
    ):
        task.experiment_id = None
        task.arm = HOLDOUT
        task.prompt_version = holdout.version
        return
    experiment = experiments.get(agent.pk)
    if experiment is not None and experiment.control_number != agent.prompt_version:
        # The prompt was changed directly while the experiment ran: its control is
        # stale, so nothing is assigned until the next look rolls it back.
        experiment = None
    if experiment is None:
        task.experiment_id = None
        task.arm = ""
        task.prompt_version = agent.prompt_version
        return
    task.experiment_id = experiment.pk
    task.arm = arm_of(experiment, task.pk)
    task.prompt_version = (
        experiment.treatment_number if task.arm == Arm.TREATMENT else experiment.control_number
    )


@lru_cache(maxsize=1024)
def _found_version(agent_id: int, number: int) -> PromptVersion:
    # Versions never change once written: safe to keep for the process's life.
    return PromptVersion.objects.get(agent_id=agent_id, number=number)


def _version(agent_id: int, number: int) -> PromptVersion | None:
    try:
        return _found_version(agent_id, number)
    except PromptVersion.DoesNotExist:
        return None  # not cached: it may be written later


def agent_for_run(task: Task) -> Agent:
    """The agent as the task's prompt version has it: the agent itself when the
    task runs the active version (nearly always), else a copy carrying the
    version's prompt, variables, parameters and cascade."""
    agent = task.agent
    assert agent is not None  # a task that runs has its agent
    if task.prompt_version in (None, agent.prompt_version):
        return agent
    version = _version(agent.pk, task.prompt_version)
    if version is None:
        return agent
    shadow = copy.copy(agent)
    for name, value in version.fields().items():
        setattr(shadow, name, value)
    shadow.prompt_version = version.number
    return shadow


def sample_rows(finished: Iterable[tuple[Task, bool]]) -> list[ExperimentSample]:
    """The samples of finished experiment tasks: (task, passed inspection).
    Only tasks claimed into an experiment's current stage count (a task claimed
    in the canary that finishes after the advance is not efficacy data)."""
    tasks = [(task, passed) for task, passed in finished if task.experiment_id and task.arm]
    if not tasks:
        return []
    experiments: dict[int | None, Experiment] = {
        e.pk: e
        for e in Experiment.objects.filter(pk__in={t.experiment_id for t, _ in tasks}).only(
            "pk", "stage", "stage_started_at", "status"
        )
    }
    now = timezone.now()
    rows = []
    for task, passed in tasks:
        experiment = experiments.get(task.experiment_id)
        if experiment is None or not experiment.is_active:
            continue
        if task.started_at is None or task.started_at < experiment.stage_started_at:
            continue
        rows.append(
            ExperimentSample(
                experiment_id=experiment.pk,
                task_id=task.pk,
                stage=experiment.stage,
                arm=task.arm,
                success=passed,
                cost=task.cost,
                latency_ms=((task.finished_at or now) - task.started_at).total_seconds() * 1000,
            )
        )
    return rows


def has_active(agent_ids: Iterable[int]) -> set[int]:
    return set(
        Experiment.objects.filter(agent_id__in=list(agent_ids), status__in=Experiment.ACTIVE).values_list(
            "agent_id", flat=True
        )
    )


def _normal_fields(agent: Agent) -> dict:
    """The agent's prompt fields in their stored normal form, so versions compare
    by meaning: an agent made through the ORM with a bare cascade equals the same
    cascade saved through the services."""
    return normal_prompt_fields({name: getattr(agent, name) for name in PromptVersion.FIELDS})


def next_version_number(agent: Agent) -> int:
    """The number a new prompt version of the agent gets: after every number it has
    had (proposals' candidates, an active number lowered by a rollback), so one
    number is always one prompt."""
    highest = PromptVersion.objects.filter(agent_id=agent.pk).aggregate(n=Max("number"))["n"] or 0
    return max(agent.prompt_version, highest) + 1


def current_version(agent: Agent) -> PromptVersion:
    """The agent's active version as stored, or, when it has no row yet, as the
    agent holds it (in normal form, unsaved): what a change is compared with."""
    stored = PromptVersion.objects.filter(agent_id=agent.pk, number=agent.prompt_version).first()
    return stored or PromptVersion(agent=agent, number=agent.prompt_version, **_normal_fields(agent))


def ensure_version(agent: Agent, *, source: str = "", author=None, rationale: str = "") -> PromptVersion:
    """The PromptVersion row of the agent's active version, written from the
    agent's own fields if it is not there yet (agents made before the kaizen
    loop, or by a config file or the admin, start with none)."""
    existing = PromptVersion.objects.filter(agent=agent, number=agent.prompt_version).first()
    if existing is not None:
        return existing
    parent = (
        PromptVersion.objects.filter(agent=agent, number__lt=agent.prompt_version).order_by("-number").first()
    )
    if not source:
        source = PromptVersion.Source.INITIAL if agent.prompt_version == 1 else PromptVersion.Source.CONFIG
    try:
        with transaction.atomic():
            return PromptVersion.objects.create(
                agent=agent,
                number=agent.prompt_version,
                parent=parent,
                source=source,
                author=author,
                rationale=rationale,
                **_normal_fields(agent),
            )
    except IntegrityError:
        # Written meanwhile by another process: the same fields, by definition.
        return PromptVersion.objects.get(agent=agent, number=agent.prompt_version)
