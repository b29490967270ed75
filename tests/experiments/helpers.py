"""Builders for the kaizen loop's tests: a line agent, its proposals and
experiments brought to a status through the services, the samples and looks that
move them on. Shared by the evolution review's view, websocket and browser tests."""

from __future__ import annotations

import json
import re

from boards.models import Board, Column, Task
from experiments import services as kaizen
from experiments.models import AgentGates, ChangeProposal, Experiment, ExperimentSample, PromptVersion
from tests.factories import (
    HTMX,  # noqa: F401  (re-exported for the experiments tests)
    make_agent,
    make_approver,
    make_board,
    make_editor,
)

NEW_TEMPLATE = "You are a meticulous inspector. Describe the defect first, then classify it.\n\n{input}"
RATIONALE = "Ask for the defect first: reviewers keep correcting the order."


def line_agent(name: str | None = None, *, gates: bool = False):
    """An agent on a board of its own. Its changes go straight to their canary
    unless ``gates``: these tests are about the experiment (tests/experiments/
    test_gates*.py are about the gates before it)."""
    board = make_board(ready_limit=None, doing_limit=None)
    agent = make_agent(boards=[board], name=name, concurrency=1000, quality_checks=[])
    if not gates:
        AgentGates.objects.create(agent=agent, replay="never", adversarial="never", shadow="never")
    return agent


def fields_of(agent, **changes) -> dict:
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    fields.update(changes)
    return fields


def major_proposal(agent, *, user=None, evidence: dict | None = None, **kwargs) -> ChangeProposal:
    """A major change (a different template) proposed by a person with boards.change_agent."""
    return kaizen.proposal_create(
        agent=agent,
        fields=fields_of(agent, prompt_template=NEW_TEMPLATE),
        rationale=RATIONALE,
        user=user or make_editor(),
        evidence=evidence,
        **kwargs,
    )


def started(agent, *, by=None) -> Experiment:
    """A major proposal, approved: its canary runs."""
    proposal = major_proposal(agent)
    kaizen.proposal_approve(proposal=proposal, user=by or make_approver(), note="The diff reads well.")
    return Experiment.objects.get(proposal=proposal)


def tasks_of(agent, n: int) -> list[Task]:
    """n done tasks of the agent's board, written directly: samples are the
    outcomes of finished tasks, and nothing here runs them."""
    board: Board = agent.boards.first()
    done = board.columns.get(role=Column.Role.DONE)
    return Task.objects.bulk_create(
        Task(board=board, column=done, agent=agent, title=f"sample {i}", status=Task.Status.DONE)
        for i in range(n)
    )


def samples(
    experiment: Experiment, tasks: list[Task], *, control: tuple[int, int], treatment: tuple[int, int]
):
    """(n, successes) per arm in the experiment's current stage, on these tasks."""
    experiment.refresh_from_db()
    (nc, sc), (nt, st) = control, treatment
    assert nc + nt <= len(tasks), "more samples than tasks"
    rows = [
        ExperimentSample(
            experiment=experiment,
            task=task,
            stage=experiment.stage,
            arm=arm,
            success=success,
            cost="0.0010" if arm == "control" else "0.0012",
            latency_ms=300.0 if arm == "control" else 360.0,
        )
        for task, (arm, success) in zip(
            tasks,
            [("control", i < sc) for i in range(nc)] + [("treatment", i < st) for i in range(nt)],
            strict=False,
        )
    ]
    ExperimentSample.objects.bulk_create(rows)


def look(experiment: Experiment):
    return kaizen.experiment_look(experiment=Experiment.objects.get(pk=experiment.pk))


def experiment_in(status: str, agent=None) -> Experiment:
    """An experiment brought to ``status`` through the services, with its looks:
    running (a canary not yet looked at), canary_passed, efficacy (running in
    the efficacy stage after one look), promote_ready, paused (a sample-ratio
    mismatch in the canary)."""
    agent = agent or line_agent()
    experiment = started(agent)
    if status == "running":
        return experiment
    tasks = tasks_of(agent, round(experiment.canary_size / experiment.canary_share))
    if status == "paused":
        samples(experiment, tasks, control=(100, 70), treatment=(100, 70))
        look(experiment)
        experiment.refresh_from_db()
        assert experiment.status == "paused", experiment.status_reason
        return experiment
    # The canary's planned size, at its share of the traffic (no sample-ratio mismatch).
    treated = experiment.canary_size
    controls = round(treated * (1 - experiment.canary_share) / experiment.canary_share)
    samples(
        experiment,
        tasks,
        control=(controls, round(controls * 0.7)),
        treatment=(treated, round(treated * 0.72)),
    )
    look(experiment)
    experiment.refresh_from_db()
    assert experiment.status == "canary_passed", experiment.status_reason
    if status == "canary_passed":
        return experiment
    kaizen.experiment_advance(experiment=experiment, user=make_approver(), note="No harm in the canary.")
    if status == "efficacy":
        samples(experiment, tasks, control=(200, 140), treatment=(200, 150))
    else:
        samples(experiment, tasks, control=(400, 280), treatment=(400, 380))
    look(experiment)
    experiment.refresh_from_db()
    expected = "running" if status == "efficacy" else status
    assert experiment.status == expected, experiment.status_reason
    return experiment


def chart_of(html: str, pk: int) -> dict:
    match = re.search(rf'<script type="application/json" id="chart-data-{pk}">(.*?)</script>', html, re.S)
    assert match, f"no chart data for experiment {pk}"
    return json.loads(match.group(1))
