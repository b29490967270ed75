"""The demo feed (boards.demo_feed, services.demo_task_feed): tasks generated from
templates with a seed, deterministic given the seed and the task's number,
varied, with a small share of exact repeats; the config format that declares
them; and the shipped reference lines, each of which must run as a believable
line (every template renders, every capability has an agent, inputs vary)."""

from __future__ import annotations

import json
import re
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

from boards import demo_feed, services
from boards.config import ConfigError, config_apply, config_parse
from boards.demo_feed import FeedSettings, demo_task_at, source_number
from boards.models import Board, Task
from tests.factories import make_agent, make_board

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))

CMM = {
    "title": "CMM report: {part}, lot {lot}",
    "capability": "extract",
    "input": "Bore A nominal 42.000 mm, tol +0.025/-0.000, measured {bore}. Inspector {inspector}.",
    # As stored: [name, source] pairs, in order.
    "slots": [
        ["part", {"choice": ["HX-220", "BR-17", "SH-9"]}],
        ["lot", {"int": [4400, 4999]}],
        ["bore", {"number": [41.990, 42.040], "decimals": 3}],
        ["inspector", {"choice": ["Ana", "Bo", "Chidi"]}],
    ],
}
PLAIN = {
    "title": "Summarise the weekly ops update",
    "input": "Volumes were flat.",
    "capability": "",
    "priority": 0,
}


def tasks(entries, settings: FeedSettings, n: int) -> list[dict]:
    return [demo_task_at(entries, settings, number) for number in range(n)]


# --- the generator ------------------------------------------------------------------


def test_the_same_seed_and_number_always_give_the_same_task():
    settings = FeedSettings(seed=7, repeat_share=0.1)

    first = tasks([CMM, PLAIN], settings, 300)
    again = tasks([CMM, PLAIN], settings, 300)

    assert first == again
    # Another seed is another run.
    assert tasks([CMM, PLAIN], FeedSettings(seed=8, repeat_share=0.1), 300) != first


def test_templates_give_varied_tasks_with_every_slot_filled():
    generated = tasks([CMM], FeedSettings(seed=3, repeat_share=0), 200)

    inputs = {(t["title"], t["input"]) for t in generated}
    assert len(inputs) >= 195  # 3 parts x 600 lots x 51 readings x 3 inspectors: repeats are rare
    assert all("{" not in t["title"] + t["input"] for t in generated)
    written = [re.search(r"measured (\S+)\.", t["input"]).group(1) for t in generated]
    # Written with the decimals asked for, both in tolerance (42.000..42.025) and out of it.
    assert all(re.fullmatch(r"4[12]\.\d{3}", reading) for reading in written)
    assert any(42.000 <= float(r) <= 42.025 for r in written)
    assert any(not 42.000 <= float(r) <= 42.025 for r in written)
    assert {t["title"].split(":")[1].split(",")[0].strip() for t in generated} == {"HX-220", "BR-17", "SH-9"}


def test_about_the_repeat_share_of_tasks_are_exact_repeats_of_earlier_ones():
    settings = FeedSettings(seed=11, repeat_share=0.1)
    n = 3000
    generated = tasks([CMM], settings, n)

    repeats = [number for number in range(n) if source_number(settings, number) != number]
    assert 0.08 <= len(repeats) / n <= 0.12
    for number in repeats:
        source = source_number(settings, number)
        assert source < number
        assert generated[number] == generated[source]
    # Apart from the repeats, inputs are new: reuse and the cache save work on
    # about a tenth of the tasks, and no more.
    distinct = len({(t["title"], t["input"]) for t in generated})
    # (Fresh tasks may still coincide by chance: 2,700 draws from 275,000 combinations.)
    assert distinct >= n - len(repeats) - 30


def test_no_repeats_when_the_share_is_zero():
    settings = FeedSettings(seed=11, repeat_share=0)

    assert all(source_number(settings, number) == number for number in range(500))


def test_weights_set_how_often_each_entry_comes_up():
    heavy = {**PLAIN, "title": "Heavy", "weight": 3}
    light = {**PLAIN, "title": "Light"}

    counts = Counter(t["title"] for t in tasks([heavy, light], FeedSettings(seed=2, repeat_share=0), 2000))

    assert 2.5 <= counts["Heavy"] / counts["Light"] <= 3.5


def test_a_value_may_use_slots_defined_before_it():
    entry = {
        "title": "Reply to {customer}",
        "input": {"customer": "{customer}", "facts": "{fact}"},
        "slots": {
            "customer": {"choice": ["Laura M.", "Mr. Okafor"]},
            "amount": {"number": [9, 99], "decimals": 2},
            "fact": {"choice": ["Charged {amount} twice.", "Refund of {amount} issued."]},
        },
    }

    generated = tasks([entry], FeedSettings(seed=5, repeat_share=0), 50)

    for task in generated:
        fields = json.loads(task["input"])  # a mapping input is given to the task as JSON
        assert fields["customer"] in {"Laura M.", "Mr. Okafor"}
        assert task["title"] == f"Reply to {fields['customer']}"
        assert fields["facts"].startswith(("Charged ", "Refund of "))
        amount = fields["facts"].split(" ")[1 if fields["facts"].startswith("Charged") else 2]
        assert 9 <= float(amount) <= 99 and len(amount.split(".")[1]) == 2


def test_dates_come_from_their_range_in_their_format():
    entry = {
        "title": "Due {due}",
        "slots": {"due": {"date": ["2025-03-01", "2025-03-05"], "format": "%d %b"}},
    }

    days = {t["title"] for t in tasks([entry], FeedSettings(seed=1, repeat_share=0), 100)}

    assert days == {f"Due 0{d} Mar" for d in range(1, 6)}


def test_a_plain_entry_is_one_fixed_task_and_keeps_its_braces():
    entry = {"title": "Reply", "input": '{"customer": "Jana"}', "capability": "draft", "priority": 5}

    task = demo_task_at([entry], FeedSettings(), 0)

    assert task == {"title": "Reply", "input": '{"customer": "Jana"}', "capability": "draft", "priority": 5}


# --- the feed on a board ----------------------------------------------------------------


def test_the_feed_adds_the_sequence_its_seed_gives_and_counts_on(db):
    board = make_board(backlog=True)
    make_agent(boards=[board], capabilities=["extract"])
    board.demo_tasks = [CMM]
    board.demo_feed = {"seed": 4, "repeat_share": 0.2, "batch": 3}
    board.save()

    assert services.demo_boards_feed() == 3
    assert services.demo_boards_feed() == 3

    board.refresh_from_db()
    assert board.demo_feed_count == 6
    expected = tasks([CMM], FeedSettings(seed=4, repeat_share=0.2), 6)
    made = list(Task.objects.filter(board=board).order_by("pk").values("title", "input", "capability"))
    assert made == [{k: t[k] for k in ("title", "input", "capability")} for t in expected]


def test_a_task_the_line_refuses_is_skipped_not_retried_forever(db):
    board = make_board()
    make_agent(boards=[board], capabilities=["extract"])
    board.demo_tasks = [{**PLAIN, "capability": "welding"}]  # no agent offers it
    board.save()

    assert services.demo_boards_feed() == 0
    assert services.demo_boards_feed() == 0

    board.refresh_from_db()
    assert board.demo_feed_count == 2
    assert not Task.objects.exists()


def test_old_boards_with_plain_examples_keep_feeding(db):
    board = make_board()
    make_agent(boards=[board])
    board.demo_tasks = [{"title": "Inspect", "input": "scratch"}, {"title": "Weigh"}]
    board.save()

    for _ in range(10):
        services.demo_task_feed(board=board)

    assert set(Task.objects.values_list("title", flat=True)) <= {"Inspect", "Weigh"}
    assert Task.objects.count() == 10


# --- the config format ----------------------------------------------------------------

LINE = """\
boards:
  - name: Line
    slug: line
    demo_feed: {seed: 9, repeat_share: 0.05, batch: 2}
    columns:
      - {name: Ready, role: ready}
      - {name: Doing, role: in_progress}
      - {name: Done, role: done}
    demo_tasks:
      - title: "CMM report: {part}"
        capability: extract
        weight: 2
        input: "Bore nominal 42.000, measured {bore}; was {old}."
        slots:
          part: [HX-220, BR-17]
          bore: [42.000, 42.031, 41.998]
          old: {number: [1, 2], decimals: 1}
      - title: Plain {braces} stay
        input: '{"a": 1}'
agents:
  - name: Worker
    boards: [line]
    capabilities: [extract]
    cascade: [{provider: simulated, model: sim-small}]
    prompt_template: "{input}"
"""


def test_a_template_entry_is_stored_with_its_slots_and_values_as_written(db):
    config_apply(document=config_parse(LINE, filename="line.yaml"))

    board = Board.objects.get(slug="line")
    assert board.demo_feed == {"seed": 9, "repeat_share": 0.05, "batch": 2}
    template, plain = board.demo_tasks
    # In order (a value may use the slots before it), as [name, source] pairs:
    # PostgreSQL's jsonb keeps no key order. 42.000 stays 42.000: a reading's
    # decimals are part of it.
    assert template["slots"] == [
        ["part", {"choice": ["HX-220", "BR-17"]}],
        ["bore", {"choice": ["42.000", "42.031", "41.998"]}],
        ["old", {"number": [1, 2], "decimals": 1}],
    ]
    assert template["weight"] == 2
    # A fixed task is stored as before, its braces as text.
    assert plain == {"title": "Plain {braces} stay", "input": '{"a": 1}', "capability": "", "priority": 0}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '        input: "Bore nominal 42.000, measured {bore}; was {old}."',
            '        input: "Bore nominal 42.000, measured {bore}; was {old}; by {inspector}."',
            "line.yaml:10: boards[0].demo_tasks[0]: input: {inspector} is not a slot (defined: part, bore, old)",
        ),
        (
            '        input: "Bore nominal 42.000, measured {bore}; was {old}."',
            '        input: "Bore nominal 42.000, measured {bore:.3f}; was {old}."',
            "line.yaml:10: boards[0].demo_tasks[0]: input: {bore:.3f} is not a slot: write {name}",
        ),
        (
            "          old: {number: [1, 2], decimals: 1}",
            "          old: {number: [3, 2]}",
            "line.yaml:17: boards[0].demo_tasks[0].slots: slot 'old': number takes two numbers, low <= high",
        ),
        (
            "          part: [HX-220, BR-17]",
            "          part: [HX-220, 'with {bore}']",
            "line.yaml:15: boards[0].demo_tasks[0].slots: slot 'part': the value 'with {bore}' uses {bore}, "
            "but a value may use only slots defined before its own (here: none)",
        ),
        (
            "          old: {number: [1, 2], decimals: 1}",
            "          old: {range: [1, 2]}",
            "line.yaml:17: boards[0].demo_tasks[0].slots: slot 'old': give a list of values, or one of",
        ),
        (
            "        weight: 2",
            "        weight: 0",
            "line.yaml:12: boards[0].demo_tasks[0].weight: must be a number between 0.001 and 1000, got 0",
        ),
        (
            "    demo_feed: {seed: 9, repeat_share: 0.05, batch: 2}",
            "    demo_feed: {seed: 9, repeat_share: 1.5, batchs: 2}",
            "line.yaml:4: boards[0].demo_feed.batchs: unknown key (did you mean 'batch'?)",
        ),
    ],
)
def test_a_template_that_cannot_render_is_refused_naming_the_line_and_the_problem(db, old, new, message):
    assert old in LINE
    with pytest.raises(ConfigError) as caught:
        config_parse(LINE.replace(old, new), filename="line.yaml")

    assert any(error.startswith(message) for error in caught.value.errors), caught.value.errors
    assert not Board.objects.exists()


def test_every_problem_of_the_feed_settings_is_listed(db):
    text = LINE.replace(
        "    demo_feed: {seed: 9, repeat_share: 0.05, batch: 2}",
        "    demo_feed: {seed: -1, repeat_share: 1.5, batch: 51}",
    )
    with pytest.raises(ConfigError) as caught:
        config_parse(text, filename="line.yaml")

    errors = "\n".join(caught.value.errors)
    assert "boards[0].demo_feed.seed: must be an integer between 0 and" in errors
    assert "boards[0].demo_feed.repeat_share: must be a number between 0 and 1, got 1.5" in errors
    assert "boards[0].demo_feed.batch: must be an integer between 1 and 50, got 51" in errors


# --- the shipped lines ---------------------------------------------------------------------


def _boards(name: str) -> list[dict]:
    return yaml.safe_load((EXAMPLES / name).read_text())["boards"]


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_shipped_template_renders_into_varied_tasks_an_agent_offers(db, name):
    document = config_parse((EXAMPLES / name).read_text(), filename=name)
    report = config_apply(document=document)
    assert report.changed

    for board in Board.objects.filter(slug__in=[b.slug for b in document.boards]):
        assert board.demo_tasks, f"{board.slug} has no demo tasks"
        assert any(entry.get("slots") for entry in board.demo_tasks), f"{board.slug} has no template"
        settings = FeedSettings.from_json(board.demo_feed)
        offered = {c for agent in board.agents.all() for c in agent.offered_capabilities}
        generated = tasks(board.demo_tasks, settings, 1000)
        for task in generated:
            assert 0 < len(task["title"]) <= services.MAX_TITLE
            assert task["capability"] in offered or not task["capability"]
        # Varied: at most about the repeat share, plus the fixed examples' recurrences.
        fixed = sum(1 for entry in board.demo_tasks if not entry.get("slots"))
        distinct = len({(t["title"], t["input"]) for t in generated})
        assert distinct >= 1000 * (1 - settings.repeat_share) * 0.8 - fixed * 10, (board.slug, distinct)
        # Every entry comes up.
        titles = {t["title"] for t in generated}
        for entry in board.demo_tasks:
            if not entry.get("slots"):
                assert entry["title"] in titles
        # Each line repeats a little, so reuse and the cache are seen to save money.
        assert 0.05 <= settings.repeat_share <= 0.15


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_shipped_agent_reuses_and_caches_now_that_inputs_vary(db, name):
    out = StringIO()
    call_command("apply_config", str(EXAMPLES / name), stdout=out)

    for spec in yaml.safe_load((EXAMPLES / name).read_text())["agents"]:
        assert spec.get("reuse_results", True) is True, spec["name"]
        assert spec.get("cache_responses", True) is True, spec["name"]


def test_entry_problems_is_empty_for_a_good_template():
    assert demo_feed.entry_problems(CMM) == []


# --- the Kaizen lab: experiments a visitor can watch decide ----------------------------


def _lab_tasks(n: int) -> list[dict]:
    board = Board.objects.get(slug="kaizen-lab")
    return tasks(board.demo_tasks, FeedSettings.from_json(board.demo_feed), n)


def _pass_rate(agent, fields: dict, lab_tasks: list[dict]) -> float:
    """The share of the agent's lab tasks whose output, under the simulated model,
    passes the agent's checks, with the prompt fields given."""
    from andon.inspection import InspectionContext, inspect, parse_checks
    from boards.agents import PromptCascadeAgent
    from boards.agents.providers import ModelRequest
    from boards.agents.simulated import SimulatedProvider
    from boards.agents.spec import parse_cascade

    # An unsaved copy with the version's fields: read, never saved.
    version = type(agent)(**{f.attname: getattr(agent, f.attname) for f in agent._meta.concrete_fields})
    for name, value in fields.items():
        setattr(version, name, value)
    tier = parse_cascade(version.cascade)[0]
    checks = parse_checks(version.quality_checks)
    passed = done = 0
    for spec in lab_tasks:
        if spec["capability"] not in agent.capabilities:
            continue
        task = Task(title=spec["title"], input=spec["input"], capability=spec["capability"])
        answer = SimulatedProvider(latency_scale=0).judge(
            ModelRequest(model=tier.model, prompt=PromptCascadeAgent(version).prompt(task), input=task.input)
        )
        if answer.error:
            continue  # a failed call is a failed attempt, not an experiment sample
        done += 1
        verdict = inspect(
            answer.text,
            confidence=answer.confidence,
            checks=checks,
            context=InspectionContext(title=task.title, input=task.input),
        )
        passed += verdict.passed
    return passed / done


def test_the_lab_proposals_are_made_through_the_kaizen_gate_once(db):
    from experiments.models import AuditEntry, ChangeProposal, Experiment

    first = StringIO()
    call_command("apply_config", str(EXAMPLES / "demo.yaml"), stdout=first)

    triager = ChangeProposal.objects.get(agent__name="Lab message triager")
    extractor = ChangeProposal.objects.get(agent__name="Lab order extractor")
    # The helpful change is major: it waits for a person in the evolution review.
    assert (triager.major, triager.status, triager.source) == (True, "pending", "config")
    # The harmful one is a small edit (minor): its canary starts at once, on the
    # lab's small plan, where a real line would use the settings' 5% and 200.
    assert (extractor.major, extractor.status) == (False, "experimenting")
    experiment = Experiment.objects.get(proposal=extractor)
    assert (experiment.canary_share, experiment.canary_size, experiment.max_n) == (0.25, 100, 200)
    proposed = AuditEntry.objects.filter(action=AuditEntry.Action.PROPOSED)
    assert {entry.actor for entry in proposed} == {"a config file"}
    assert "created proposal Lab message triager: " in first.getvalue()
    assert "major: waits for approval in the evolution review" in first.getvalue()
    assert "minor: its canary has started" in first.getvalue()

    again = StringIO()
    call_command("apply_config", str(EXAMPLES / "demo.yaml"), stdout=again)

    assert ChangeProposal.objects.count() == 2
    assert "no changes" in again.getvalue()


def test_the_lab_proposals_truly_help_and_hurt_under_the_simulated_model(db):
    from boards.models import Agent
    from experiments.models import ChangeProposal

    call_command("apply_config", str(EXAMPLES / "demo.yaml"), stdout=StringIO())
    lab_tasks = _lab_tasks(600)

    for name, effect in (("Lab message triager", "helps"), ("Lab order extractor", "hurts")):
        agent = Agent.objects.get(name=name)
        candidate = ChangeProposal.objects.get(agent=agent).candidate
        current = _pass_rate(agent, {}, lab_tasks)
        new = _pass_rate(agent, candidate.fields(), lab_tasks)
        # Large enough for the lab's small plan to decide (about 15 points at 200
        # tasks per prompt), and not all-or-nothing: the current prompt often passes.
        assert 0.55 <= current <= 0.9, (name, current)
        if effect == "helps":
            assert new >= current + 0.15, (name, current, new)
        else:
            assert new <= current - 0.4, (name, current, new)


def test_a_board_may_plan_its_experiments_smaller_never_outside_what_a_test_needs(db):
    text = LINE.replace(
        "    demo_feed: {seed: 9, repeat_share: 0.05, batch: 2}",
        "    experiments: {canary_share: 0.9, canary_size: 50, max_n: 100, looks: 3}",
    )
    with pytest.raises(ConfigError) as caught:
        config_parse(text, filename="line.yaml")

    errors = "\n".join(caught.value.errors)
    assert "boards[0].experiments.canary_share: must be a share between 0.01 and 0.5, got 0.9" in errors
    assert (
        "boards[0].experiments.canary_size: must be a whole number from 100 (the fewest tasks per arm"
        in errors
    )
    assert "boards[0].experiments.looks: unknown key" in errors
    assert "experiments.max_n" not in errors  # 100 is allowed


def test_an_agent_on_several_boards_takes_the_most_careful_plan(db, settings):
    from experiments.plans import agent_plan

    settings.KAIZEN_CANARY_SHARE, settings.KAIZEN_CANARY_SIZE, settings.KAIZEN_EXPERIMENT_MAX_N = (
        0.05,
        200,
        2000,
    )
    lab, fast, plain = make_board(), make_board(), make_board()
    lab.experiment_plan = {"canary_share": 0.25, "canary_size": 100, "max_n": 200}
    lab.save()
    fast.experiment_plan = {"canary_share": 0.4, "max_n": 150}
    fast.save()

    only_lab = make_agent(boards=[lab])
    lab_and_fast = make_agent(boards=[lab, fast])
    anywhere = make_agent(boards=[lab, plain])

    shadow = {"shadow_size": 200, "shadow_hours": 24.0}  # no board here sizes its shadow
    assert agent_plan(only_lab).as_json() == {
        "canary_share": 0.25,
        "canary_size": 100,
        "max_n": 200,
        **shadow,
    }
    # fast asks for no canary size: the settings' 200 counts for it.
    assert agent_plan(lab_and_fast).as_json() == {
        "canary_share": 0.25,
        "canary_size": 200,
        "max_n": 200,
        **shadow,
    }
    assert agent_plan(anywhere).as_json() == {
        "canary_share": 0.05,
        "canary_size": 200,
        "max_n": 2000,
        **shadow,
    }
    fast.experiment_plan = {"shadow_size": 40, "shadow_hours": 0.5}
    fast.save()
    # The most careful shadow too: the most pairs, the longest time.
    assert agent_plan(lab_and_fast).shadow_size == 200
    assert agent_plan(make_agent(boards=[fast])).as_json()["shadow_size"] == 40
