"""The kaizen loop's services and the line's side of experiments: prompt
versions, proposals and their human gates, the daily limit, arm assignment,
samples, looks (automatic rollback, SRM pause, canary, promotion), rollback and
the append-only audit log. Real database; runs in-process."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from boards import services
from boards.agents import cascade, runtime
from boards.agents.simulated import SimulatedProvider
from boards.models import Task
from experiments import line
from experiments import services as kaizen
from experiments.models import (
    AgentGates,
    AuditEntry,
    ChangeProposal,
    Experiment,
    ExperimentSample,
    PromptVersion,
)
from tests.experiments.helpers import tasks_of
from tests.factories import make_agent, make_board, make_user

Action = AuditEntry.Action
NEW_TEMPLATE = "You are a meticulous inspector. Describe the defect, then classify it.\n\n{input}"


@pytest.fixture
def line_agent(db):
    board = make_board(ready_limit=None, doing_limit=None)
    agent = make_agent(boards=[board], concurrency=1000, quality_checks=[])
    # The experiment's own tests: its changes go straight to the canary (the
    # gates before it have theirs, tests/experiments/test_gates.py).
    AgentGates.objects.create(agent=agent, replay="never", adversarial="never", shadow="never")
    return board, agent


def _fields(agent, **changes) -> dict:
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    fields.update(changes)
    return fields


def _major(
    agent, user, rationale: str = "Ask for the defect first: reviewers keep correcting the order."
) -> ChangeProposal:
    return kaizen.proposal_create(
        agent=agent, fields=_fields(agent, prompt_template=NEW_TEMPLATE), rationale=rationale, user=user
    )


def _minor(agent, user) -> ChangeProposal:
    return kaizen.proposal_create(
        agent=agent,
        fields=_fields(agent, parameters={**agent.parameters, "temperature": 0.2}),
        rationale="A little less randomness.",
        user=user,
    )


def _samples(experiment: Experiment, arm: str, n: int, successes: int) -> None:
    # Done tasks written directly (tasks_of): thousands of them, and nothing
    # here runs them; only the samples' outcomes matter.
    ExperimentSample.objects.bulk_create(
        ExperimentSample(
            experiment=experiment, task=task, stage=experiment.stage, arm=arm, success=i < successes
        )
        for i, task in enumerate(tasks_of(experiment.agent, n))
    )


# --- versions ---------------------------------------------------------------------------


def test_a_proposal_makes_a_new_numbered_version_whose_parent_is_the_active_one(line_agent, editor):
    _, agent = line_agent

    proposal = _major(agent, editor)

    base, candidate = proposal.base_version, proposal.candidate
    assert (base.number, candidate.number) == (1, 2)
    assert candidate.parent == base and candidate.author == editor
    assert candidate.prompt_template == NEW_TEMPLATE and base.prompt_template == agent.prompt_template
    agent.refresh_from_db()
    assert agent.prompt_version == 1  # proposing changes nothing yet


def test_a_prompt_version_is_immutable(line_agent, editor):
    _, agent = line_agent
    version = _major(agent, editor).candidate

    version.prompt_template = "rewritten in place"
    with pytest.raises(PermissionDenied):
        version.save()


# --- the human gates ----------------------------------------------------------------------


def test_a_major_change_reaches_no_traffic_before_approval(line_agent, editor):
    board, agent = line_agent
    proposal = _major(agent, editor)
    assert proposal.major and "template changes beyond a small edit" in proposal.classification
    for i in range(200):
        services.task_create(board=board, title=f"t{i}", input=f"input {i}")

    services.board_pull(board_id=board.pk)

    assert not Experiment.objects.exists()
    assert set(Task.objects.filter(board=board).values_list("prompt_version", flat=True)) == {1}


def test_approval_starts_a_canary_that_sends_about_five_percent_to_the_candidate(
    line_agent, editor, approver
):
    board, agent = line_agent
    proposal = _major(agent, editor)

    kaizen.proposal_approve(proposal=proposal, user=approver, note="Reviewed the diff.")
    for i in range(400):
        services.task_create(board=board, title=f"t{i}", input=f"input {i}")
    services.board_pull(board_id=board.pk)

    experiment = Experiment.objects.get(proposal=proposal)
    assert (experiment.stage, experiment.status) == ("canary", "running")
    tasks = Task.objects.filter(board=board)
    treatment = tasks.filter(arm="treatment")
    assert 5 <= treatment.count() <= 40  # 5% of 400, with room for chance
    assert set(treatment.values_list("prompt_version", flat=True)) == {2}
    assert set(tasks.filter(arm="control").values_list("prompt_version", flat=True)) == {1}


def test_only_an_approver_may_approve(line_agent, editor):
    _, agent = line_agent
    proposal = _major(agent, editor)

    with pytest.raises(PermissionDenied):
        kaizen.proposal_approve(proposal=proposal, user=editor, note="Looks fine to me.")


def test_a_minor_change_starts_at_once(line_agent, editor):
    _, agent = line_agent

    proposal = _minor(agent, editor)

    assert not proposal.major and "temperature" in proposal.classification
    assert Experiment.objects.get(proposal=proposal).status == "running"


def test_proposing_needs_the_change_agent_permission(line_agent):
    _, agent = line_agent

    with pytest.raises(PermissionDenied):
        _major(agent, make_user())


def test_at_most_three_changes_a_day_per_agent(line_agent, editor, settings):
    _, agent = line_agent
    for i in range(3):
        kaizen.proposal_create(
            agent=agent,
            fields=_fields(agent, prompt_template=f"Variant {i}: {{input}}"),
            rationale="try",
            user=editor,
        )

    with pytest.raises(ValidationError, match="3 changes proposed in the last 24 hours"):
        _major(agent, editor)
    assert ChangeProposal.objects.filter(agent=agent).count() == 3


def test_one_experiment_per_agent_at_a_time(line_agent, editor, approver):
    _, agent = line_agent
    first, second = _minor(agent, editor), _major(agent, editor)

    kaizen.proposal_approve(proposal=second, user=approver, note="ok")

    assert Experiment.objects.filter(agent=agent).count() == 1
    second.refresh_from_db()
    assert second.status == ChangeProposal.Status.APPROVED  # waits for the first to end
    kaizen.experiment_rollback(experiment=first.experiment, user=approver, note="not needed")
    assert Experiment.objects.get(proposal=second).status == "running"


# --- the runtime runs the arm's version ------------------------------------------------------


def test_a_treatment_task_runs_with_the_candidates_prompt(line_agent, editor, monkeypatch):
    board, agent = line_agent
    prompts: list[str] = []
    simulated = SimulatedProvider(latency_scale=0)

    class Recording:
        def complete(self, request):
            prompts.append(request.prompt)
            return simulated.complete(request)

    monkeypatch.setattr(cascade, "get_provider", lambda name: Recording())
    experiment = _minor(agent, editor).experiment
    Experiment.objects.filter(pk=experiment.pk).update(canary_share=1.0)  # every task in the treatment
    task = services.task_create(board=board, title="Weld", input="porosity at the root")
    [claim] = services.board_pull(board_id=board.pk)

    assert runtime.run(claim.task_id, str(claim.lease_token)) == "done"

    task.refresh_from_db()
    assert (task.arm, task.prompt_version) == ("treatment", 2)
    sample = ExperimentSample.objects.get(task=task)
    assert (sample.arm, sample.stage, sample.success) == ("treatment", "canary", True)


def test_assignment_is_sticky_for_a_task(line_agent, editor):
    board, agent = line_agent
    experiment = _minor(agent, editor).experiment
    arms = {line.arm_of(experiment, task_id) for _ in range(3) for task_id in [41]}
    assert len(arms) == 1


# --- looks ----------------------------------------------------------------------------------


def test_a_harmful_canary_is_rolled_back_automatically(line_agent, editor):
    board, agent = line_agent
    experiment = _minor(agent, editor).experiment
    Experiment.objects.filter(pk=experiment.pk).update(canary_share=0.5)
    experiment.refresh_from_db()
    _samples(experiment, "control", 200, 180)
    _samples(experiment, "treatment", 200, 100)

    kaizen.experiment_look(experiment=experiment)

    experiment.refresh_from_db()
    assert experiment.status == "rolled_back" and experiment.status_reason.startswith("automatic")
    entry = AuditEntry.objects.filter(experiment=experiment, action=Action.ROLLED_BACK).get()
    assert entry.user is None and entry.stats["decision"] == "rollback"
    # The next task runs the active version.
    services.task_create(board=board, title="next", input="after the rollback")
    services.board_pull(board_id=board.pk)
    assert Task.objects.get(title="next").prompt_version == 1


def test_a_sample_ratio_mismatch_pauses_the_experiment(line_agent, editor):
    _, agent = line_agent
    experiment = _minor(agent, editor).experiment  # canary: 5% expected in the treatment
    _samples(experiment, "control", 200, 180)
    _samples(experiment, "treatment", 200, 180)

    kaizen.experiment_look(experiment=experiment)

    experiment.refresh_from_db()
    assert experiment.status == "paused" and "mismatch" in experiment.status_reason.lower()
    assert AuditEntry.objects.filter(experiment=experiment, action=Action.PAUSED).exists()


def test_a_canary_without_harm_waits_for_a_person_then_efficacy_decides_and_a_person_promotes(
    line_agent, editor, approver
):
    board, agent = line_agent
    experiment = _major(agent, editor)
    kaizen.proposal_approve(proposal=experiment, user=approver, note="ok")
    experiment = Experiment.objects.get(proposal=experiment)
    Experiment.objects.filter(pk=experiment.pk).update(canary_share=0.5)
    experiment.refresh_from_db()
    _samples(experiment, "control", 200, 140)
    _samples(experiment, "treatment", 200, 144)

    kaizen.experiment_look(experiment=experiment)
    experiment.refresh_from_db()
    assert experiment.status == "canary_passed"
    with pytest.raises(ValidationError):
        kaizen.experiment_promote(experiment=experiment, user=approver, note="too early")

    kaizen.experiment_advance(experiment=experiment, user=approver, note="no harm in the canary")
    experiment.refresh_from_db()
    assert (experiment.stage, experiment.status) == ("efficacy", "running")
    # Canary data is not reused: the efficacy stage starts from nothing.
    assert kaizen.arm_counts(experiment)["treatment"]["n"] == 0
    _samples(experiment, "control", 2000, 1400)
    _samples(experiment, "treatment", 2000, 1600)
    kaizen.experiment_look(experiment=experiment)
    experiment.refresh_from_db()
    assert experiment.status == "promote_ready"
    agent.refresh_from_db()
    assert agent.prompt_version == 1  # not without a person

    kaizen.experiment_promote(experiment=experiment, user=approver, note="clearly better")

    agent.refresh_from_db()
    assert agent.prompt_version == 2 and agent.prompt_template == NEW_TEMPLATE
    actions = list(AuditEntry.objects.filter(agent=agent).order_by("pk").values_list("action", flat=True))
    assert actions == [
        Action.PROPOSED,
        Action.APPROVED,
        Action.STARTED,
        Action.LOOK,
        Action.CANARY_PASSED,
        Action.ADVANCED,
        Action.LOOK,
        Action.PROMOTE_READY,
        Action.PROMOTED,
    ]


def test_a_person_rolls_back_in_one_step_and_the_next_task_runs_the_active_version(
    line_agent, editor, approver
):
    board, agent = line_agent
    experiment = _minor(agent, editor).experiment
    Experiment.objects.filter(pk=experiment.pk).update(canary_share=1.0)

    kaizen.experiment_rollback(experiment=experiment, user=approver, note="customers complained")

    services.task_create(board=board, title="next", input="anything")
    services.board_pull(board_id=board.pk)
    assert Task.objects.get(title="next").prompt_version == 1
    entry = AuditEntry.objects.get(experiment=experiment, action=Action.ROLLED_BACK)
    assert entry.user == approver and entry.reason == "customers complained"


def test_an_earlier_version_can_be_made_active_again(line_agent, editor, approver):
    _, agent = line_agent
    proposal = _major(agent, editor)
    kaizen.proposal_approve(proposal=proposal, user=approver, note="ok")
    experiment = Experiment.objects.get(proposal=proposal)
    Experiment.objects.filter(pk=experiment.pk).update(status="promote_ready")
    kaizen.experiment_promote(experiment=Experiment.objects.get(pk=experiment.pk), user=approver, note="go")

    kaizen.prompt_version_rollback(
        agent=agent, version=proposal.base_version, user=approver, note="worse in use"
    )

    agent.refresh_from_db()
    assert agent.prompt_version == 1 and agent.prompt_template == proposal.base_version.prompt_template


# --- the audit log ---------------------------------------------------------------------------


def test_the_audit_log_refuses_edits_and_deletions(line_agent, editor):
    _, agent = line_agent
    _major(agent, editor)
    entry = AuditEntry.objects.get(action=Action.PROPOSED)

    entry.reason = "rewritten history"
    with pytest.raises(PermissionDenied):
        entry.save()
    with pytest.raises(PermissionDenied):
        entry.delete()
    with pytest.raises(PermissionDenied):
        AuditEntry.objects.filter(pk=entry.pk).update(reason="rewritten")
    with pytest.raises(PermissionDenied):
        AuditEntry.objects.all().delete()
    assert AuditEntry.objects.get(pk=entry.pk).reason.startswith("Ask for the defect first")


def test_a_treatment_task_that_runs_out_of_attempts_counts_as_a_failure(line_agent, editor):
    board, agent = line_agent
    agent.max_attempts = 1
    agent.save(update_fields=["max_attempts"])
    experiment = _minor(agent, editor).experiment
    Experiment.objects.filter(pk=experiment.pk).update(canary_share=1.0)
    services.task_create(board=board, title="doomed", input="the provider is down")
    [claim] = services.board_pull(board_id=board.pk)

    services.task_attempt_fail(
        task_id=claim.task_id, lease_token=claim.lease_token, error="503 from the provider"
    )

    sample = ExperimentSample.objects.get(task_id=claim.task_id)
    assert (sample.arm, sample.success) == ("treatment", False)


def test_a_parameter_step_on_an_agent_made_with_a_bare_cascade_is_minor(db, editor):
    board = make_board()
    agent = make_agent(boards=[board], quality_checks=[])
    # As the model's default leaves it: no prices, no parameters.
    type(agent).objects.filter(pk=agent.pk).update(
        cascade=[{"provider": "simulated", "model": "sim-small", "threshold": None}],
        parameters={"max_tokens": 1000},
    )
    agent.refresh_from_db()

    proposal = kaizen.proposal_create(
        agent=agent, fields=_fields(agent, parameters={"max_tokens": 900}), rationale="shorter", user=editor
    )

    assert not proposal.major, proposal.classification
    assert "cascade" not in "\n".join(kaizen.diff_lines(proposal.base_version, proposal.candidate))


def test_a_person_cannot_promote_past_the_guard(line_agent, editor, approver):
    _, agent = line_agent
    experiment = _minor(agent, editor).experiment
    Experiment.objects.filter(pk=experiment.pk).update(stage="efficacy", status="promote_ready")
    experiment.refresh_from_db()
    _samples(experiment, "control", 100, 90)
    _samples(experiment, "treatment", 100, 75)  # lower bound far below 90% - 5 points

    with pytest.raises(ValidationError, match="lower bound"):
        kaizen.experiment_promote(experiment=experiment, user=approver, note="ship it")

    agent.refresh_from_db()
    assert agent.prompt_version == 1


def test_a_direct_change_during_an_experiment_rolls_it_back_at_the_next_look(line_agent, editor):
    board, agent = line_agent
    experiment = _minor(agent, editor).experiment
    agent.prompt_template = "Changed by a config file: {input}"
    services.agent_save(agent=agent)

    services.task_create(board=board, title="after", input="the direct change")
    services.board_pull(board_id=board.pk)
    kaizen.experiment_look(experiment=experiment)

    agent.refresh_from_db()
    task = Task.objects.get(title="after")
    assert (task.arm, task.prompt_version) == ("", agent.prompt_version)  # the new active version, no arm
    experiment.refresh_from_db()
    assert experiment.status == "rolled_back" and "direct change" in experiment.status_reason


def test_the_preview_classifies_and_numbers_a_change_as_the_proposal_then_does(db, editor):
    board = make_board()
    agent = make_agent(boards=[board], quality_checks=[])
    # A bare cascade, as the model's default leaves it, and no version row yet.
    type(agent).objects.filter(pk=agent.pk).update(
        cascade=[{"provider": "simulated", "model": "sim-small", "threshold": None}],
        parameters={"max_tokens": 1000},
    )
    agent.refresh_from_db()
    fields = _fields(agent, parameters={"max_tokens": 900})

    preview = kaizen.proposal_preview(agent=agent, fields=fields)
    assert not PromptVersion.objects.exists()  # a preview writes nothing
    proposal = kaizen.proposal_create(agent=agent, fields=fields, rationale="shorter", user=editor)

    assert (preview["major"], preview["classification"]) == (proposal.major, proposal.classification)
    assert preview["candidate"].number == proposal.candidate.number
    assert preview["diff"] == kaizen.diff_lines(proposal.base_version, proposal.candidate)
