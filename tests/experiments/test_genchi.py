"""Replays and probes worked through in this process (experiments.genchi): the
sample, the pairs, the ground truth of reviewers' verdicts, the ledger marks,
the cost cap, cancelling, and that nothing on the line moves."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from andon.models import Escalation
from boards.models import ModelCall, Task
from experiments import genchi, paired
from experiments.models import AuditEntry, Replay, ReplayItem
from experiments.selectors import price_of_seeing_get
from tests.experiments.genchi_support import BETTER, BROKEN, REWORDED, history_agent, version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_replays")]


def run_through(replay: Replay) -> Replay:
    """Step the replay in this process until it ends (what the workers do)."""
    for _ in range(1000):
        genchi.replay_step(replay.pk, seconds=60, hand_on=False)
        replay.refresh_from_db()
        if not replay.is_open:
            return replay
    raise AssertionError("the replay did not end")


# --- the sample -----------------------------------------------------------------------------


def pool_of(counts: dict[str, int]) -> list[genchi.PoolTask]:
    pool, pk = [], 0
    for stratum, n in counts.items():
        for _ in range(n):
            pk += 1
            pool.append(genchi.PoolTask(pk, stratum, stratum.split(" · ")[-1]))
    return pool


def test_the_sample_keeps_the_pools_mix_and_every_stratum():
    pool = pool_of(
        {
            "a · short · passed": 600,
            "a · long · rejected": 300,
            "b · short · edited": 95,
            "b · long · approved": 5,
        }
    )
    drawn = genchi.draw_sample(pool, 100, random.Random(1))
    assert len(drawn) == 100
    assert len({t.task_id for t in drawn}) == 100
    counts = {s: sum(1 for t in drawn if t.stratum == s) for s in {t.stratum for t in pool}}
    assert counts == {
        "a · short · passed": 60,
        "a · long · rejected": 30,
        "b · short · edited": 9,
        "b · long · approved": 1,
    }


def test_a_small_sample_still_takes_one_of_each_stratum_when_it_can():
    pool = pool_of({"x · short · passed": 990, "y · short · rejected": 5, "z · long · edited": 5})
    drawn = genchi.draw_sample(pool, 10, random.Random(2))
    assert len(drawn) == 10
    assert {t.stratum for t in drawn} == {"x · short · passed", "y · short · rejected", "z · long · edited"}


def test_the_sample_is_the_same_for_the_same_seed_and_differs_for_another():
    pool = pool_of({"a · short · passed": 500, "b · long · failed": 500})
    first = [t.task_id for t in genchi.draw_sample(pool, 50, random.Random(9))]
    again = [t.task_id for t in genchi.draw_sample(pool, 50, random.Random(9))]
    other = [t.task_id for t in genchi.draw_sample(pool, 50, random.Random(10))]
    assert first == again
    assert first != other


def test_a_sample_larger_than_the_pool_takes_the_pool():
    pool = pool_of({"a · short · passed": 7})
    assert len(genchi.draw_sample(pool, 50, random.Random(1))) == 7


def test_the_pool_strata_name_capability_length_and_past_outcome():
    agent = history_agent(tasks=30)
    pool = genchi.replay_pool(agent)
    assert len(pool) == 30
    outcomes = {t.outcome for t in pool}
    assert outcomes == {"passed", "approved", "edited", "rejected"}
    assert all(t.stratum.startswith("triage · ") for t in pool)


# --- a replay, whole ---------------------------------------------------------------------------


def test_a_replay_pairs_every_task_and_decides_with_the_paired_statistics():
    agent = history_agent(tasks=80)
    candidate = version(agent, BETTER)
    tasks_before = list(
        Task.objects.filter(agent=agent).values_list("pk", "status", "column_id", "output", "cost")
    )
    live_calls = ModelCall.objects.count()
    escalations = Escalation.objects.count()

    replay = genchi.replay_start(agent=agent, candidate=candidate, sample=40, seed=3)
    assert replay.state == Replay.State.QUEUED
    assert replay.total == 40
    assert replay.plan["size"] == 40
    assert replay.plan["pool"] == 80
    assert sum(replay.plan["strata"].values()) == 40
    replay = run_through(replay)

    assert replay.state == Replay.State.DONE
    assert replay.done == 40
    assert replay.verdict in ("pass", "fail")
    stats = replay.stats
    items = list(ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.DONE))
    assert stats["pairs"] == len(items) == 40
    assert stats["both_pass"] == sum(1 for i in items if i.baseline_pass and i.candidate_pass)
    assert stats["only_baseline"] == sum(1 for i in items if i.baseline_pass and not i.candidate_pass)
    assert stats["only_candidate"] == sum(1 for i in items if i.candidate_pass and not i.baseline_pass)
    assert stats["neither"] == sum(1 for i in items if not i.candidate_pass and not i.baseline_pass)
    assert stats["mcnemar_p"] == pytest.approx(
        paired.mcnemar_exact_p(stats["only_baseline"], stats["only_candidate"])
    )
    assert stats["noninferiority_margin"] == paired.DEFAULT_MARGIN
    low, high = stats["cost_delta_ci"]
    assert low <= high
    # Every item carries both outputs and what they cost.
    assert all(i.baseline_output and i.candidate_output for i in items)
    assert all(i.baseline_cost > 0 and i.candidate_cost > 0 for i in items)

    # Its calls are in the ledger, marked, and no production figure sees them.
    marked = ModelCall.every.filter(purpose=ModelCall.Purpose.REPLAY)
    assert marked.count() >= 80
    assert marked.filter(prompt_version=candidate.number).exists()
    assert ModelCall.objects.count() == live_calls
    assert replay.spent_usd == sum((c.cost for c in marked), Decimal(0))
    assert price_of_seeing_get(agent=agent) == replay.spent_usd
    # Nothing moved on the line, no one was called.
    assert (
        list(Task.objects.filter(agent=agent).values_list("pk", "status", "column_id", "output", "cost"))
        == tasks_before
    )
    assert Escalation.objects.count() == escalations
    actions = list(AuditEntry.objects.filter(replay=replay).values_list("action", flat=True))
    assert sorted(actions) == ["replay_finished", "replay_started"]


def test_a_clearly_better_prompt_passes_and_a_broken_one_fails():
    agent = history_agent(tasks=400, seed=11)
    better = run_through(
        genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=300, seed=1)
    )
    broken = run_through(
        genchi.replay_start(agent=agent, candidate=version(agent, BROKEN), sample=300, seed=1)
    )
    assert better.verdict == "pass", better.reason
    assert better.stats["candidate_pass"] >= better.stats["baseline_pass"]
    assert broken.verdict == "fail", broken.reason
    assert broken.stats["only_baseline"] > broken.stats["only_candidate"]
    assert "non-inferiority" in broken.reason


def test_a_rewording_disagrees_with_the_baseline_on_few_tasks():
    agent = history_agent(tasks=300, seed=12)
    replay = run_through(
        genchi.replay_start(agent=agent, candidate=version(agent, REWORDED), sample=300, seed=2)
    )
    discordant = replay.stats["only_baseline"] + replay.stats["only_candidate"]
    assert discordant / replay.stats["pairs"] < 0.10


def test_an_output_a_reviewer_rejected_is_a_known_failure_and_the_approved_one_a_pass():
    verdict = genchi.PastVerdict(verdict="rejected", rejected=frozenset({"billing"}), reference="shipping")
    assert verdict.judge(genchi.ArmResult(passed=True, output="Billing")) == (
        False,
        "the same output a reviewer rejected before (a known failure)",
    )
    assert verdict.judge(genchi.ArmResult(passed=False, output=" shipping ")) == (
        True,
        "the output a reviewer approved before",
    )
    assert verdict.judge(genchi.ArmResult(passed=False, output="bug", reason="defect: low confidence")) == (
        False,
        "defect: low confidence",
    )


def test_past_verdicts_read_the_reviewers_decisions():
    agent = history_agent(tasks=30)
    verdicts = genchi.past_verdicts(Task.objects.filter(agent=agent).values_list("pk", flat=True))
    kinds = sorted(v.verdict for v in verdicts.values())
    assert kinds == ["approved", "approved", "edited", "edited", "rejected"]
    edited = next(v for v in verdicts.values() if v.verdict == "edited")
    assert edited.reference == "shipping"
    rejected = next(v for v in verdicts.values() if v.verdict == "rejected")
    assert rejected.rejected == {"billing"}


def test_the_cost_cap_stops_the_replay_and_decides_on_what_it_has():
    agent = history_agent(tasks=120)
    replay = genchi.replay_start(
        agent=agent, candidate=version(agent, BETTER), sample=120, seed=1, budget_usd=Decimal("0.0001")
    )
    replay = run_through(replay)
    assert replay.state == Replay.State.DONE
    assert 0 < replay.done < 120
    assert replay.stats["stopped"] == "cost cap"
    assert replay.reason.startswith("stopped by its cost cap")
    assert replay.stats["pairs"] == replay.done
    assert (
        ReplayItem.objects.filter(replay=replay, state=ReplayItem.State.PENDING).count() == 120 - replay.done
    )


def test_a_cancelled_replay_runs_nothing_more():
    agent = history_agent(tasks=40)
    replay = genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=40, seed=1)
    genchi.replay_cancel(replay=replay, user=None, note="not needed")
    assert genchi.replay_step(replay.pk) == "ended"
    replay.refresh_from_db()
    assert replay.state == Replay.State.CANCELLED
    assert replay.done == 0
    assert not ModelCall.every.filter(purpose=ModelCall.Purpose.REPLAY).exists()
    with pytest.raises(ValidationError, match="already ended"):
        genchi.replay_cancel(replay=replay, user=None)


def test_a_step_that_lost_its_lease_writes_nothing_twice():
    agent = history_agent(tasks=30)
    replay = genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=30, seed=1)
    step = genchi._Step(
        replay=Replay.objects.select_related("agent", "baseline", "candidate").get(pk=replay.pk),
        agent=agent,
        json_output=False,
    )
    items = list(ReplayItem.objects.filter(replay=replay).order_by("position")[:5])
    genchi._run_chunk(step, items)
    genchi._run_chunk(step, items)  # a late step with the same items
    replay.refresh_from_db()
    assert replay.done == 5
    assert ModelCall.every.filter(purpose=ModelCall.Purpose.REPLAY).values("task_id").distinct().count() == 5
    per_task = ModelCall.every.filter(purpose=ModelCall.Purpose.REPLAY, task_id=items[0].task_id).count()
    assert per_task == 2  # one tier, two versions: not four


def test_one_open_replay_per_candidate():
    agent = history_agent(tasks=20)
    candidate = version(agent, BETTER)
    first = genchi.replay_start(agent=agent, candidate=candidate, sample=5)
    with pytest.raises(genchi.ReplayOpen) as raised:
        genchi.replay_start(agent=agent, candidate=candidate, sample=5)
    assert raised.value.replay == first
    genchi.replay_cancel(replay=first, user=None)
    assert genchi.replay_start(agent=agent, candidate=candidate, sample=5).pk != first.pk


def test_bad_starts_say_what_is_wrong():
    agent = history_agent(tasks=5)
    other = history_agent(tasks=5)
    with pytest.raises(ValidationError) as raised:
        genchi.replay_start(agent=agent, candidate=version(other, BETTER))
    assert "is not a version of" in str(raised.value.message_dict["candidate"])
    active = genchi.ensure_version(agent)
    with pytest.raises(ValidationError) as raised:
        genchi.replay_start(agent=agent, candidate=active)
    assert "is the active version" in str(raised.value.message_dict["candidate"])
    with pytest.raises(ValidationError) as raised:
        genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=0)
    assert "sample" in raised.value.message_dict
    empty = history_agent(tasks=0)
    with pytest.raises(ValidationError) as raised:
        genchi.replay_start(agent=empty, candidate=version(empty, BETTER))
    assert "no finished tasks" in str(raised.value.message_dict["sample"])
    assert not Replay.objects.exists()


def test_the_default_size_comes_from_the_power_calculation_capped_by_the_history():
    agent = history_agent(tasks=50)
    replay = genchi.replay_start(agent=agent, candidate=version(agent, BETTER))
    assert replay.plan["planned"] == paired.replay_sample_size()
    assert replay.total == 50  # fewer tasks than planned: all of them
    assert replay.plan["power"] == pytest.approx(
        paired.achieved_power(50, paired.DEFAULT_DISCORDANCE), abs=1e-4
    )


# --- probes ------------------------------------------------------------------------------------------


def test_probes_run_both_versions_and_report_hit_rates_per_family():
    agent = history_agent(tasks=30)
    candidate = version(agent, BETTER)
    replay = run_through(genchi.probes_start(agent=agent, candidate=candidate, seed=5))
    assert replay.kind == Replay.Kind.PROBE
    assert replay.state == Replay.State.DONE
    assert replay.done == replay.total > 0
    families = replay.stats["families"]
    assert set(families) == set(replay.plan["families"])
    for rates in families.values():
        assert 0 <= rates["baseline_rate"] <= 1 and 0 <= rates["candidate_rate"] <= 1
    assert ModelCall.every.filter(purpose=ModelCall.Purpose.PROBE).exists()
    assert not ModelCall.objects.filter(purpose=ModelCall.Purpose.PROBE).exists()
    # The probe set comes from the seed: the same again.
    again = genchi.probes_start(agent=agent, candidate=version(agent, BETTER + " "), seed=5)
    first_inputs = list(
        ReplayItem.objects.filter(replay=replay).order_by("position").values_list("probe_input", flat=True)
    )
    second_inputs = list(
        ReplayItem.objects.filter(replay=again).order_by("position").values_list("probe_input", flat=True)
    )
    assert first_inputs == second_inputs


def test_a_guardrail_fails_a_candidate_that_costs_beyond_the_agents_limit():
    # The candidate's label definitions lengthen the prompt: it passes more often,
    # and each task costs more. The installation allows that; this agent does not.
    agent = history_agent(tasks=200, seed=5, gates={"cost_limit": 0.1})
    replay = run_through(
        genchi.replay_start(agent=agent, candidate=version(agent, BETTER), sample=200, seed=1)
    )
    assert replay.plan["guardrails"]["cost"] == 0.1
    cost = replay.stats["guardrails"]["cost"]
    assert cost["regressed"] is True and cost["limit"] == 0.1
    assert replay.stats["noninferiority_p"] < paired.DEFAULT_ALPHA
    assert replay.verdict == "fail"
    assert "cost per task up" in replay.reason

    lenient = history_agent(tasks=200, seed=5)
    replay = run_through(
        genchi.replay_start(agent=lenient, candidate=version(lenient, BETTER), sample=200, seed=1)
    )
    assert replay.stats["guardrails"]["cost"]["regressed"] is False
    assert replay.verdict == "pass", replay.reason
