"""The kaizen cycle (experiments.pdca): plans found from the ledger, inspections and
reviewers' decisions (and not without them), one proposal per cycle through the
real service, and the rewrite by a real provider's model (a local server speaking
the chat completions protocol). Evidence is made through the line's own services:
tasks claimed and completed with outputs and ledger rows, escalations decided by
a reviewer. The tuning planners (max_tokens, thresholds, tier order, sampling) are
tested in test_tuning.py."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from andon import jidoka
from andon import services as andon_services
from andon.models import Escalation
from boards import services
from boards.agents import CallRecord, Output
from boards.agents.spec import check_template
from experiments import pdca, tasks
from experiments import services as kaizen
from experiments.models import AgentGates, ChangeProposal, Experiment, PromptVersion
from tests.andon.helpers import DEFECTIVE, GOOD, claim_one
from tests.boards.provider_server import ProviderServer
from tests.boards.test_provider_openai import _completion, _error
from tests.factories import make_agent, make_approver, make_board, make_reviewer

KEY_ENV = "KAIZEN_TEST_PDCA_KEY"
# Inspection with a fixed optimum: an output over 1.5 x 20 tokens records waste.
WASTE_CHECKS = [
    {"check": "confidence", "min": 0.7},
    {"check": "token_waste", "ratio": 1.5, "optimal_tokens": 20},
]
TWO_TIERS = [
    {"provider": "simulated", "model": "sim-small", "threshold": 0.85},
    {"provider": "simulated", "model": "sim-large"},
]


@pytest.fixture(autouse=True)
def _fresh_optimal_lengths():
    # The line caches each agent's optimal length for a minute, by id; ids repeat between tests.
    jidoka.optimal_lengths.clear()
    yield
    jidoka.optimal_lengths.clear()


@pytest.fixture
def line(db):
    # No WIP limits in Ready and In progress: the evidence is many tasks, one after another.
    return make_board(ready_limit=None, doing_limit=None)


def _agent(board, **fields):
    # A rejected task fails at once (max_attempts=1) rather than coming back to be
    # claimed again; defects spread over the evidence must not stop the line.
    fields.setdefault("max_attempts", 1)
    fields.setdefault("spike_defects", 30)
    fields.setdefault("spike_window", 30)
    return make_agent(boards=[board], **fields)


def _call(
    *, tier: int = 1, tokens_out: int = 16, confidence: float | None = 0.95, accepted: bool = True, cost="0"
) -> CallRecord:
    return CallRecord(
        source="model",
        tier=tier,
        provider="simulated",
        model="sim-small" if tier == 1 else "sim-large",
        tokens_in=12,
        tokens_out=tokens_out,
        cost=Decimal(cost),
        confidence=confidence,
        accepted=accepted,
    )


def _outputs(
    board,
    n: int,
    *,
    text: str = GOOD,
    confidence: float = 0.95,
    calls: tuple[CallRecord, ...] = (),
    label: str = "part",
):
    """``n`` tasks claimed and completed with this output; their tasks."""
    done = []
    for i in range(n):
        task, claim = claim_one(board, title=f"Inspect {label} {i}", input=f"{label} {i}: scratch on housing")
        tier = max((c.tier for c in calls if c.accepted), default=None)
        output = Output(
            text=text, confidence=confidence, confidence_source="simulated", tier=tier, calls=calls
        )
        assert services.task_complete(task_id=claim.task_id, lease_token=claim.lease_token, output=output)
        done.append(task)
    return done


def _escalation(board, *, input: str, text: str = "Something may be wrong, possibly.") -> Escalation:
    task, claim = claim_one(board, title="Inspect", input=input)
    output = Output(text=text, confidence=DEFECTIVE, confidence_source="simulated")
    assert services.task_complete(task_id=claim.task_id, lease_token=claim.lease_token, output=output)
    return Escalation.objects.get(task=task, status=Escalation.Status.OPEN)


def _kinds(agent) -> list[str]:
    return [p.kind for p in pdca.plan(agent)]


def _plan(agent, kind: str) -> pdca.Plan:
    [found] = [p for p in pdca.plan(agent) if p.kind == kind]
    return found


# --- verbose ---------------------------------------------------------------------------


def _verbose(board, n: int = 30):
    # max_tokens 120: not far enough above what the outputs use (80) for the tuning
    # planner to lower it (experiments.tuning), still far above the optimum of 20.
    agent = _agent(board, parameters={"max_tokens": 120}, quality_checks=WASTE_CHECKS)
    _outputs(board, n, calls=(_call(tokens_out=80),))
    return agent


@pytest.mark.django_db
def test_verbose_outputs_ask_for_brevity(line):
    agent = _verbose(line)

    found = _plan(agent, "verbose")

    # max_tokens is the tuning planner's: this plan asks for brevity only.
    assert found.fields["parameters"] == {"max_tokens": 120}
    # 120 is still 6 times the optimum of 20: brevity is asked for.
    assert found.fields["prompt_template"].startswith("{input}\n\nBe concise: answer in about 15 words")
    assert found.fields["cascade"] == agent.cascade
    assert found.evidence["outputs_with_waste"] == 30
    assert found.evidence["wasted_tokens"] == 30 * 60
    assert found.evidence["median_tokens"] == 80
    assert found.evidence["max_tokens"] == 120
    assert found.evidence["example"]["tokens_out"] == 80
    assert "30 of 30 outputs in the last 7 days (100%)" in found.rationale
    assert "wasting 1,800 tokens" in found.rationale
    assert 'Proposed: ask for brevity ("Be concise: answer in about 15 words' in found.rationale


@pytest.mark.django_db
def test_brevity_is_not_asked_when_max_tokens_already_holds_outputs_near_the_optimum(line):
    agent = _agent(line, parameters={"max_tokens": 25}, quality_checks=WASTE_CHECKS)
    _outputs(line, 30, calls=(_call(tokens_out=80),))

    assert "verbose" not in _kinds(agent)


@pytest.mark.django_db
def test_outputs_of_the_right_length_make_no_verbose_plan(line):
    agent = _agent(line, parameters={"max_tokens": 1000}, quality_checks=WASTE_CHECKS)
    _outputs(line, 30, calls=(_call(tokens_out=25),))

    assert "verbose" not in _kinds(agent)


@pytest.mark.django_db
def test_too_few_outputs_make_no_plan_at_all(line):
    agent = _verbose(line, n=pdca.MIN_OUTPUTS - 1)

    assert pdca.plan(agent) == []


@pytest.mark.django_db
def test_outputs_older_than_the_window_are_not_evidence(line):
    from datetime import timedelta

    from django.utils import timezone

    agent = _verbose(line)

    assert pdca.plan(agent, since=timezone.now() + timedelta(seconds=1)) == []


# --- recurring rejections -> few-shot examples -----------------------------------


def _decided(board, agent, *, corrections: int, rejections: int, correction_note: str = "") -> None:
    # The corrections carry no note by default: three notes saying one thing would
    # be a recurring reason, the ``reasons`` plan's evidence (tests/experiments/test_pdca_reasons.py).
    user = make_reviewer()
    for i in range(corrections):
        escalation = _escalation(board, input=f"housing {{{i}}} has a scratch")
        andon_services.escalation_correct(
            escalation=escalation,
            user=user,
            output=f'Scratch on housing {i}: {{"severity": "minor"}}',
            note=correction_note,
        )
    for i in range(rejections):
        escalation = _escalation(board, input=f"seal {i} leaks")
        andon_services.escalation_reject(
            escalation=escalation, user=user, reason="too vague: name the defect"
        )


@pytest.mark.django_db
def test_recurring_rejections_add_reviewers_corrections_as_examples(line):
    agent = _agent(line)
    _outputs(line, 26)
    _decided(line, agent, corrections=3, rejections=2)

    found = _plan(agent, "few_shot")

    template = found.fields["prompt_template"]
    assert template.startswith(pdca.EXAMPLES_MARKER)
    assert template.endswith("Now the task.\n\n{input}")
    # Braces from the inputs and corrections are escaped: the template still renders.
    assert (
        'Input: housing {{0}} has a scratch\nAnswer: Scratch on housing 0: {{"severity": "minor"}}'
        in template
    )
    assert check_template(template, []) == []
    assert template.format(input="X").count("Input: housing {") == 3
    assert found.evidence["group"] == "failed check 'confidence'"
    assert (found.evidence["rejected"], found.evidence["corrected"]) == (2, 3)
    assert "too vague: name the defect" in found.evidence["reviewer_notes"]
    assert len(found.evidence["examples"]) == 3
    assert "rejected or corrected 5 outputs in the last 7 days" in found.rationale
    assert "(2 rejected, 3 corrected, of 31 outputs)" in found.rationale
    assert '"too vague: name the defect"' in found.rationale


@pytest.mark.django_db
def test_two_rejections_are_not_yet_recurring(line):
    agent = _agent(line)
    _outputs(line, 30)
    _decided(line, agent, corrections=1, rejections=1)

    assert "few_shot" not in _kinds(agent)


@pytest.mark.django_db
def test_rejections_without_a_correction_give_no_examples(line):
    agent = _agent(line)
    _outputs(line, 30)
    _decided(line, agent, corrections=0, rejections=4)

    assert "few_shot" not in _kinds(agent)


# --- rewrite by a model ----------------------------------------------------------------


def _failing(board, agent, *, defects: int = 6, rejections: int = 2) -> None:
    _outputs(board, 30)
    user = make_reviewer()
    for i in range(defects):
        escalation = _escalation(board, input=f"bracket {i} bent")
        if i < rejections:
            andon_services.escalation_reject(
                escalation=escalation, user=user, reason="Name the part number and the defect."
            )
        else:
            andon_services.escalation_approve(escalation=escalation, user=user)


@pytest.fixture
def provider(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-pdca")
    with ProviderServer() as server:
        yield server


def _openai_agent(board, server: ProviderServer):
    tier = {
        "provider": "openai",
        "model": "gpt-test",
        "parameters": {"base_url": f"{server.url}/v1", "api_key_env": KEY_ENV, "max_retries": 0},
    }
    return _agent(board, cascade=[tier], prompt_template="Inspect this part: {input}")


REWRITTEN = "You inspect parts. Name the part number, then the defect, in one sentence.\n\nPart: {input}"


@pytest.mark.django_db
def test_a_real_provider_rewrites_the_prompt_from_the_failures(line, provider):
    agent = _openai_agent(line, provider)
    _failing(line, agent)
    provider.then(200, _completion(f"```\n{REWRITTEN}\n```"))

    found = _plan(agent, "rewrite")

    assert found.fields["prompt_template"] == REWRITTEN
    [request] = provider.received
    assert request.path == "/v1/chat/completions"
    asked = request.body["messages"][0]["content"]
    assert "Inspect this part: {input}" in asked
    assert "Name the part number and the defect." in asked
    assert "6 of its 36 outputs failed inspection" in asked
    assert found.evidence["defects"] == 6
    assert found.evidence["model"] == {
        "provider": "openai",
        "model": "gpt-test",
        "tokens_in": 12,
        "tokens_out": 5,
        "cost": 0.0,
    }
    assert "6 of 36 outputs in the last 7 days failed inspection" in found.rationale
    assert "rewrote it from those failures" in found.rationale


@pytest.mark.django_db
def test_the_cycle_proposes_the_rewrite_as_a_major_change(line, provider):
    agent = _openai_agent(line, provider)
    _failing(line, agent)
    provider.then(200, _completion(REWRITTEN))

    proposal = pdca.cycle(agent)

    assert proposal.candidate.prompt_template == REWRITTEN
    assert proposal.major and proposal.status == ChangeProposal.Status.PENDING
    assert proposal.evidence["kind"] == "rewrite"


@pytest.mark.django_db
def test_a_provider_error_skips_the_rewrite_with_a_log_line(line, provider, caplog):
    agent = _openai_agent(line, provider)
    _failing(line, agent)
    provider.then(500, _error("The server had an error"))

    with caplog.at_level(logging.WARNING, logger="experiments.pdca"):
        kinds = _kinds(agent)

    assert "rewrite" not in kinds
    assert len(provider.received) == 1
    assert "failed, skipped: openai 500: The server had an error" in caplog.text


@pytest.mark.django_db
def test_a_rewrite_that_drops_the_input_is_not_proposed(line, provider, caplog):
    agent = _openai_agent(line, provider)
    _failing(line, agent)
    provider.then(200, _completion("Inspect the part carefully."))

    with caplog.at_level(logging.WARNING, logger="experiments.pdca"):
        assert "rewrite" not in _kinds(agent)

    assert "it drops input" in caplog.text


@pytest.mark.django_db
def test_without_the_key_in_the_environment_no_model_is_asked(line, provider, monkeypatch):
    agent = _openai_agent(line, provider)
    _failing(line, agent)
    monkeypatch.delenv(KEY_ENV)

    assert "rewrite" not in _kinds(agent)
    assert provider.received == []


@pytest.mark.django_db
def test_with_only_simulated_tiers_the_rewrite_is_skipped(line, monkeypatch, caplog):
    agent = _agent(line, cascade=TWO_TIERS)
    _failing(line, agent)

    def no_model(name):
        raise AssertionError(f"the {name} provider must not be asked to rewrite a prompt")

    monkeypatch.setattr(pdca, "get_provider", no_model)
    with caplog.at_level(logging.INFO, logger="experiments.pdca"):
        assert "rewrite" not in _kinds(agent)

    assert "no real provider" in caplog.text


# --- do: the cycle -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_cycle_opens_one_kaizen_proposal_citing_the_evidence(line):
    agent = _verbose(line)

    proposal = pdca.cycle(agent)

    assert proposal is not None
    assert proposal.source == PromptVersion.Source.KAIZEN
    assert proposal.author is None
    assert proposal.candidate.source == PromptVersion.Source.KAIZEN
    assert proposal.candidate.parameters == {"max_tokens": 120}
    assert "Be concise:" in proposal.candidate.prompt_template
    assert proposal.evidence["kind"] == "verbose"
    assert proposal.evidence["outputs_with_waste"] == 30
    assert "30 of 30 outputs" in proposal.rationale
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_with_several_plans_the_cycle_proposes_only_the_strongest(line):
    agent = _agent(line, parameters={"max_tokens": 1000}, quality_checks=WASTE_CHECKS)
    # Verbose on every output (strength 1); max_tokens far above what they use, though
    # none of them would be cut by the cap proposed (strength 0).
    _outputs(line, 30, calls=(_call(tokens_out=80),))
    plans = pdca.plan(agent)
    assert [p.kind for p in plans] == ["verbose", "max_tokens"]

    proposal = pdca.cycle(agent)

    assert proposal.evidence["kind"] == "verbose"
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_the_cycle_proposes_nothing_while_the_agent_has_an_experiment(line):
    agent = _verbose(line)
    # Straight to the canary (the gates before it are another test's).
    AgentGates.objects.create(agent=agent, replay="never", adversarial="never", shadow="never")
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    running = kaizen.proposal_create(
        agent=agent,
        fields={**fields, "parameters": {"max_tokens": 100}},  # minor: starts at once
        rationale="A little shorter.",
        source=PromptVersion.Source.KAIZEN,
    )
    assert Experiment.objects.filter(proposal=running, status__in=Experiment.ACTIVE).exists()

    assert pdca.cycle(agent) is None
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_the_cycle_proposes_nothing_while_a_proposal_is_in_its_gates(line):
    agent = _verbose(line)
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    seen = kaizen.proposal_create(
        agent=agent,
        fields={**fields, "parameters": {"max_tokens": 100}},  # minor: its gates start at once
        rationale="A little shorter.",
        source=PromptVersion.Source.KAIZEN,
    )
    assert seen.status == ChangeProposal.Status.VALIDATING

    assert pdca.cycle(agent) is None
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_the_cycle_proposes_nothing_while_a_proposal_is_pending(line):
    agent = _verbose(line)
    first = pdca.cycle(agent)
    assert first.status == ChangeProposal.Status.PENDING  # an added instruction is a major change

    assert pdca.cycle(agent) is None
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_the_same_change_is_never_proposed_twice(line, caplog):
    agent = _verbose(line)
    first = pdca.cycle(agent)
    kaizen.proposal_reject(proposal=first, user=make_approver(), note="Answers need the room.")

    with caplog.at_level(logging.INFO, logger="experiments.pdca"):
        assert pdca.cycle(agent) is None

    assert "verbose plan for" in caplog.text and "was proposed already" in caplog.text
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_the_daily_limit_stops_the_cycle(line, settings):
    settings.KAIZEN_MAX_CHANGES_PER_DAY = 1
    agent = _verbose(line)
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    other = kaizen.proposal_create(
        agent=agent,
        fields={**fields, "prompt_template": "Inspect carefully and report every defect you find: {input}"},
        rationale="Be thorough.",
        source=PromptVersion.Source.KAIZEN,
    )
    kaizen.proposal_reject(proposal=other, user=make_approver(), note="No.")

    assert pdca.cycle(agent) is None
    assert ChangeProposal.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_a_validation_error_from_the_service_is_logged_not_raised(line, monkeypatch, caplog):
    agent = _verbose(line)

    def refuse(**kwargs):
        from django.core.exceptions import ValidationError

        raise ValidationError("the limit was reached meanwhile")

    monkeypatch.setattr(kaizen, "proposal_create", refuse)
    with caplog.at_level(logging.WARNING, logger="experiments.pdca"):
        assert pdca.cycle(agent) is None

    assert "the limit was reached meanwhile" in caplog.text


@pytest.mark.django_db
def test_cycles_run_goes_on_past_an_agent_that_fails(line, monkeypatch):
    broken = _agent(make_board())
    agent = _verbose(line)
    real_plan = pdca.plan

    def plan(a, **kwargs):
        if a.pk == broken.pk:
            raise RuntimeError("boom")
        return real_plan(a, **kwargs)

    monkeypatch.setattr(pdca, "plan", plan)

    assert tasks.kaizen_cycle() == 1
    assert ChangeProposal.objects.filter(agent=agent, source=PromptVersion.Source.KAIZEN).count() == 1
    assert not ChangeProposal.objects.filter(agent=broken).exists()
