"""`manage.py apply_config` and the config service behind it: the shipped
examples apply, applying twice writes nothing, every error names the file, the
line and the field, and a file with any error writes nothing."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from boards import services
from boards.config import ConfigError, config_apply, config_parse
from boards.models import Agent, Board, Column, Task
from experiments import services as kaizen
from experiments.models import AuditEntry, ChangeProposal, PromptVersion
from tests.boards.conftest import CeleryQueue
from tests.factories import make_editor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = ["demo.yaml", "manufacturing_qc.yaml", "customer_support.yaml", "research_synthesis.yaml"]

# A small valid line; the error cases below change one line of it, so the line
# numbers in the expected messages are the ones shown here.
BASE = """\
boards:
  - name: Line
    slug: line
    columns:
      - {name: Backlog, role: backlog}
      - {name: Ready, role: ready, wip_limit: 3}
      - {name: Doing, role: in_progress, wip_limit: 2}
      - {name: Review, role: review}
      - {name: Done, role: done}
    demo_tasks:
      - {title: First, input: hello, capability: summarise}
agents:
  - name: Worker
    boards: [line]
    capabilities: [summarise]
    cascade:
      - {provider: simulated, model: sim-small, threshold: 0.8}
      - provider: simulated
        model: sim-large
        parameters: {latency_ms: 0}
    prompt_template: "Do {title}: {input}"
"""

# BASE's cascade (lines 16 to 20).
CASCADE = BASE[BASE.index("    cascade:\n") : BASE.index("    prompt_template:")]

# The same agent written the way files were before cascades: one tier, as
# provider, model and provider_settings (lines 16 to 18).
SHORTHAND = BASE.replace(
    CASCADE, "    provider: simulated\n    model: sim-small\n    provider_settings: {latency_ms: 0}\n"
)


# What applying says of an agent whose prompt the file changed.
V2_DIRECT = "new prompt version v2 (direct change from the config file, recorded in the audit log)"


def variant(line: int, new: str | None, base: str = BASE) -> str:
    """``base`` with line ``line`` (1-based) replaced by ``new``, or removed if None."""
    lines = base.splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    return "\n".join(lines) + "\n"


def apply(*paths: Path | str, **options) -> str:
    out = StringIO()
    call_command("apply_config", *[str(p) for p in paths], stdout=out, **options)
    return out.getvalue()


def write(tmp_path: Path, text: str, name: str = "line.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def dump() -> dict[str, list[dict]]:
    """Every row apply_config may write, with every field."""
    return {
        "boards": list(Board.objects.order_by("pk").values()),
        "columns": list(Column.objects.order_by("pk").values()),
        "agents": list(Agent.objects.order_by("pk").values()),
        "agent_boards": list(Agent.boards.through.objects.order_by("pk").values()),
        "tasks": list(Task.objects.order_by("pk").values()),
    }


def writes(queries: CaptureQueriesContext) -> list[str]:
    verbs = ("INSERT", "UPDATE", "DELETE")
    return [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(verbs)]


# --- the shipped examples -----------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_each_shipped_example_applies(db, name):
    output = apply(EXAMPLES / name)

    # The line each file is about; demo.yaml also has the Kaizen lab (below).
    board = Board.objects.exclude(slug="kaizen-lab").get()
    roles = list(board.columns.order_by("position").values_list("role", flat=True))
    assert roles == ["backlog", "ready", "in_progress", "review", "done"]
    # Templates that write a new task each time (tests/boards/test_demo_feed.py).
    assert len(board.demo_tasks) >= 4 and sum(1 for t in board.demo_tasks if t.get("slots")) >= 3
    agents = list(board.agents.all())
    assert 3 <= len(agents) <= 4
    # Offline: every model an example names is simulated.
    assert all(t.provider == "simulated" for a in agents for t in a.tiers)
    # Every demo task can be done by some agent on its board.
    offered = {c for a in agents for c in a.offered_capabilities}
    assert {t["capability"] for t in board.demo_tasks} - {""} <= offered
    assert all(a.prompt_version == 1 for a in agents)
    assert f"examples/{name}: " in output
    assert "created board " + board.slug in output


def test_demo_line_has_the_columns_and_limits_the_demo_promises(db):
    apply(EXAMPLES / "demo.yaml")

    board = Board.objects.get(slug="demo")
    columns = [(c.name, c.wip_limit, c.hard_limit) for c in board.columns.order_by("position")]
    assert columns == [
        ("Backlog", 10, False),
        ("Ready", 6, True),
        ("In progress", 4, True),
        ("Review", 5, False),
        ("Done", None, True),
    ]
    tiers = {a.name: a.tiers for a in board.agents.all()}
    # Some tasks escalate: one agent climbs small -> medium -> large.
    assert [t.model for t in tiers["Quick summariser"]] == ["sim-small", "sim-medium", "sim-large"]
    assert all(t.threshold is not None for t in tiers["Quick summariser"][:-1])
    # Slow enough that the feed outruns the agents and queues form, quick enough to
    # watch: a task settled by the first tier takes seconds, a fully escalated one
    # well under half a minute.
    for agent_tiers in tiers.values():
        latencies = [t.parameters["latency_ms"] for t in agent_tiers]
        assert 3000 <= latencies[0] and sum(latencies) <= 16000
    assert sum(1 for t in board.demo_tasks if t.get("slots")) >= 6


def test_all_examples_apply_together_without_colliding(db):
    apply(*[EXAMPLES / n for n in EXAMPLE_FILES])

    assert Board.objects.count() == 5  # demo.yaml has the Kaizen lab too
    # Agent names are global keys: a name shared by two files would move the
    # agent from one board to the other instead of making two agents.
    assert Agent.objects.count() == 16
    assert all(a.boards.count() == 1 for a in Agent.objects.all())


def test_support_line_has_a_custom_agent_class_and_declared_variables(db):
    apply(EXAMPLES / "customer_support.yaml")

    router = Agent.objects.get(name="Support keyword router")
    assert router.implementation == "boards.example_agents.KeywordClassifier"
    assert router.offered_capabilities == ["classify"]
    drafter = Agent.objects.get(name="Support reply drafter")
    assert drafter.prompt_variables == ["customer", "facts"]
    # Every reply task gives the drafter's variables as fields of a JSON object.
    board = Board.objects.get(slug="support-triage")
    replies = [t for t in board.demo_tasks if t["capability"] == "draft_reply"]
    assert replies and all(set(t["input"]) == {"customer", "facts"} for t in replies)


# --- idempotency --------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_applying_twice_changes_nothing(db, name):
    apply(EXAMPLES / name)
    before = dump()

    with CaptureQueriesContext(connection) as queries:
        second = apply(EXAMPLES / name)
    third = apply(EXAMPLES / name)

    assert dump() == before
    assert writes(queries) == []
    assert "no changes" in second
    assert third == second


def test_service_reports_created_then_unchanged(db):
    document = config_parse(BASE, filename="line.yaml")

    first = config_apply(document=document)
    second = config_apply(document=config_parse(BASE, filename="line.yaml"))

    assert first.count("created") == 1 + 5 + 1
    assert first.changed
    assert not second.changed
    assert second.count("unchanged") == 7
    assert second.summary() == "line.yaml: no changes (7 objects unchanged)"


# --- errors name the file, the line and the field ------------------------------------

ERROR_CASES = {
    "bad wip_limit type": (
        6,
        "      - {name: Ready, role: ready, wip_limit: ten}",
        6,
        "boards[0].columns[1].wip_limit",
        "must be an integer >= 1, got 'ten'",
    ),
    "unknown role": (
        8,
        "      - {name: Review, role: qa}",
        8,
        "boards[0].columns[3].role",
        "unknown role 'qa'; use one of backlog, ready, in_progress, review, done",
    ),
    "duplicate role": (
        8,
        "      - {name: Review, role: in_progress}",
        8,
        "boards[0].columns[3].role",
        "duplicate role 'in_progress' (boards[0].columns[2] has it)",
    ),
    "unknown key": (
        7,
        "      - {name: Doing, role: in_progress, wip_limt: 2}",
        7,
        "boards[0].columns[2].wip_limt",
        "unknown key (did you mean 'wip_limit'?); allowed keys: name, role, wip_limit, hard",
    ),
    "missing done column": (
        9,
        None,
        4,
        "boards[0].columns",
        "no done column",
    ),
    "unknown provider in a tier": (
        18,
        "      - provider: mistral",
        18,
        "agents[0].cascade[1].provider",
        "must be one of simulated, openai, anthropic, got 'mistral'",
    ),
    "unknown simulated model in a tier": (
        19,
        "        model: sim-huge",
        19,
        "agents[0].cascade[1].model",
        "unknown simulated model 'sim-huge'; available: sim-large, sim-medium, sim-small",
    ),
    "tier threshold out of range": (
        17,
        "      - {provider: simulated, model: sim-small, threshold: 1.5}",
        17,
        "agents[0].cascade[0].threshold",
        "must be between 0 and 1, got 1.5",
    ),
    "tier without a threshold before the last": (
        17,
        "      - {provider: simulated, model: sim-small}",
        17,
        "agents[0].cascade[0].threshold",
        "tier 1 (sim-small) accepts every output, so the tiers after it would never run",
    ),
    "misspelt tier key": (
        17,
        "      - {provider: simulated, model: sim-small, treshold: 0.8}",
        17,
        "agents[0].cascade[0].treshold",
        "unknown key (did you mean 'threshold'?); allowed keys: provider, model, parameters, price_in, "
        "price_out, threshold",
    ),
    "unknown tier parameter": (
        20,
        "        parameters: {latency: 0}",
        20,
        "agents[0].cascade[1].parameters.latency",
        "unknown key (did you mean 'latency_ms'?)",
    ),
    "tier parameter out of range": (
        20,
        "        parameters:\n          latency_ms: 0\n          error_rate: 2",
        22,
        "agents[0].cascade[1].parameters.error_rate",
        "must be between 0 and 1, got 2",
    ),
    "negative tier price": (
        20,
        "        price_in: -0.5",
        20,
        "agents[0].cascade[1].price_in",
        "must be zero or more, got -0.5",
    ),
    "tier parameter another provider takes": (
        20,
        "        parameters: {base_url: http://127.0.0.1:11434/v1}",
        20,
        "agents[0].cascade[1].parameters.base_url",
        "unknown key",
    ),
    "template with an undeclared variable": (
        21,
        '    prompt_template: "Do {title} for {customer}"',
        21,
        "agents[0].prompt_template",
        "the template uses {customer}, which is not declared",
    ),
    "a built-in variable declared": (
        15,
        "    capabilities: [summarise]\n    prompt_variables: [customer, input]",
        16,
        "agents[0].prompt_variables[1]",
        "'input' is built in: every template may use it undeclared",
    ),
    "generation parameter out of range": (
        15,
        "    capabilities: [summarise]\n    parameters: {temperature: 3}",
        16,
        "agents[0].parameters.temperature",
        "must be between 0 and 2, got 3",
    ),
    "unknown generation parameter": (
        15,
        "    capabilities: [summarise]\n    parameters: {temprature: 0.2}",
        16,
        "agents[0].parameters.temprature",
        "unknown key (did you mean 'temperature'?); allowed keys: temperature, top_p, max_tokens",
    ),
    "reuse switch that is not a boolean": (
        15,
        "    capabilities: [summarise]\n    reuse_results: sometimes",
        16,
        "agents[0].reuse_results",
        "must be true or false, got 'sometimes'",
    ),
    "implementation not registered": (
        15,
        "    capabilities: [summarise]\n    implementation: boards.example_agents.KeywordClassifer",
        16,
        "agents[0].implementation",
        "'boards.example_agents.KeywordClassifer' is not a registered agent class "
        "(did you mean 'boards.example_agents.KeywordClassifier'?); "
        "registered: boards.example_agents.KeywordClassifier",
    ),
    "both a cascade and the shorthand": (
        15,
        "    capabilities: [summarise]\n    model: sim-small",
        17,
        "agents[0].cascade",
        "give either cascade or provider and model (the one-tier shorthand), not both; "
        "this agent also has model on line 16",
    ),
    "agent on unknown board": (
        14,
        "    boards: [line, lnie2]",
        14,
        "agents[0].boards[1]",
        "no board 'lnie2' in this file or the database",
    ),
    "demo task capability nobody offers": (
        11,
        "      - {title: First, input: hello, capability: translate}",
        11,
        "boards[0].demo_tasks[0].capability",
        "no agent on board 'line' offers 'translate' (offered: summarise)",
    ),
    "done column with a wip limit": (
        9,
        "      - {name: Done, role: done, wip_limit: 10}",
        9,
        "boards[0].columns[4].wip_limit",
        "a done column takes no WIP limit",
    ),
    "key given twice": (
        19,
        "        model: sim-large\n        model: sim-medium",
        20,
        "agents[0].cascade[1].model",
        "given twice (first on line 19)",
    ),
}

SHORTHAND_ERROR_CASES = {
    "unknown provider": (
        16,
        "    provider: mistral",
        16,
        "agents[0].provider",
        "must be one of simulated, openai, anthropic, got 'mistral'",
    ),
    "unknown model": (
        17,
        "    model: sim-huge",
        17,
        "agents[0].model",
        "unknown simulated model 'sim-huge'; available: sim-large, sim-medium, sim-small",
    ),
    "bad provider setting": (
        18,
        "    provider_settings: {latency_ms: 0, error_rate: 1.5}",
        18,
        "agents[0].provider_settings.error_rate",
        "must be between 0 and 1, got 1.5",
    ),
    "misspelt provider setting": (
        18,
        "    provider_settings:\n      latency: 0",
        19,
        "agents[0].provider_settings.latency",
        "unknown key (did you mean 'latency_ms'?)",
    ),
    "model without a provider": (
        16,
        None,
        13,
        "agents[0].provider",
        "is required with model: a single tier needs a provider and a model (or give a cascade)",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_error_names_file_line_and_field(db, tmp_path, case):
    replace_line, new, line, field, message = ERROR_CASES[case]
    path = write(tmp_path, variant(replace_line, new))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert f"{path}:{line}: {field}: {message}" in str(excinfo.value)
    assert Board.objects.count() == 0


@pytest.mark.parametrize("case", SHORTHAND_ERROR_CASES, ids=list(SHORTHAND_ERROR_CASES))
def test_shorthand_error_names_file_line_and_field(db, tmp_path, case):
    replace_line, new, line, field, message = SHORTHAND_ERROR_CASES[case]
    path = write(tmp_path, variant(replace_line, new, base=SHORTHAND))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert f"{path}:{line}: {field}: {message}" in str(excinfo.value)
    assert Board.objects.count() == 0


def test_yaml_syntax_error_names_file_and_line(db, tmp_path):
    path = write(tmp_path, variant(19, "\tmodel: sim-large"))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert f"{path}:19: YAML syntax error:" in str(excinfo.value)
    assert "found character '\\t' that cannot start any token" in str(excinfo.value)


def test_every_error_in_a_file_is_reported_in_line_order(db, tmp_path):
    text = variant(6, "      - {name: Ready, role: ready, wip_limit: ten}")
    text = text.replace("model: sim-large", "model: sim-huge").replace("threshold: 0.8", "threshold: 8")
    text = text.replace("{input}", "{inptu}")
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as excinfo:
        config_parse(path.read_text(), filename=str(path))

    assert [e.split(": ")[0] for e in excinfo.value.errors] == [
        f"{path}:6",
        f"{path}:17",
        f"{path}:19",
        f"{path}:21",
    ]


def errors_of(text: str, filename: str = "line.yaml") -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        config_parse(text, filename=filename)
    return excinfo.value.errors


def test_a_repeated_slug_is_reported_with_the_boards_other_errors(db):
    # The first board has an error of its own (a WIP limit that is not a number);
    # the second repeats its slug. Both are reported in one pass.
    second = BASE[: BASE.index("agents:")].replace("boards:\n", "", 1).replace("name: Line", "name: Again")
    text = variant(6, "      - {name: Ready, role: ready, wip_limit: ten}").replace(
        "agents:", second + "agents:", 1
    )

    errors = errors_of(text)

    assert "line.yaml:6: boards[0].columns[1].wip_limit: must be an integer >= 1, got 'ten'" in errors
    assert "line.yaml:13: boards[1].slug: duplicate board slug 'line' (boards[0] has it)" in errors


def test_a_repeated_agent_name_is_reported_when_both_entries_have_errors(db):
    agent = BASE[BASE.index("  - name: Worker") :]
    text = BASE.replace("model: sim-large", "model: sim-huge") + agent.replace(
        "boards: [line]", "boards: [line]\n    concurrency: lots"
    )

    errors = errors_of(text)

    assert any(
        e.startswith("line.yaml:19: agents[0].cascade[1].model: unknown simulated model") for e in errors
    )
    assert "line.yaml:22: agents[1].name: duplicate agent name 'Worker' (agents[0] has it)" in errors
    assert any(e.startswith("line.yaml:24: agents[1].concurrency: must be an integer") for e in errors)


def test_a_template_reports_every_problem_it_has(db):
    errors = errors_of(variant(21, '    prompt_template: "Do {title} {0} for {customer} at {a.b} by {when}"'))

    assert [e.split(": ", 2)[2] for e in errors] == [
        "{0} is not a variable: fields must be plain names such as {input} (write {{ and }} for literal braces)",
        "{a.b} is not a variable: fields must be plain names such as {input} (write {{ and }} for literal braces)",
        "the template uses {customer}, {when}, which is not declared: add them to the agent's variables, "
        "or use one of {examples}, {input}, {last_error}, {review_feedback}, {title}",
    ]
    assert {e.split(": ")[0] for e in errors} == {"line.yaml:21"}


def test_a_template_is_checked_even_when_its_variables_have_errors(db):
    text = variant(21, '    prompt_template: "Do {title} {0}"\n    prompt_variables: [input]')

    errors = errors_of(text)

    assert [e.split(": ", 1)[1] for e in errors] == [
        "agents[0].prompt_template: {0} is not a variable: fields must be plain names such as {input} "
        "(write {{ and }} for literal braces)",
        "agents[0].prompt_variables[0]: 'input' is built in: every template may use it undeclared",
    ]


def test_a_cascade_with_a_bad_tier_still_reports_a_missing_threshold(db):
    # Tier 1 accepts everything (no threshold) and tier 2 names an unknown model:
    # both are reported at once, not the threshold only once the model is fixed.
    text = BASE.replace(
        "{provider: simulated, model: sim-small, threshold: 0.8}", "{provider: simulated, model: sim-small}"
    )
    text = text.replace("model: sim-large", "model: sim-huge")

    errors = errors_of(text)

    assert [e.split(": ")[:2] for e in errors] == [
        ["line.yaml:17", "agents[0].cascade[0].threshold"],
        ["line.yaml:19", "agents[0].cascade[1].model"],
    ]
    assert "tier 1 (sim-small) accepts every output" in errors[0]


def test_a_missing_file_is_named(db, tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(CommandError, match=f"{missing}: no such file"):
        apply(missing)


# --- nothing is written when there is an error --------------------------------------


def test_nothing_is_written_when_a_file_has_an_error(db, tmp_path):
    apply(write(tmp_path, BASE))
    before = dump()
    counts = (Board.objects.count(), Column.objects.count(), Agent.objects.count())
    # A valid change (a new WIP limit, a new board) next to one mistake.
    text = variant(6, "      - {name: Ready, role: ready, wip_limit: 9}")
    text = text.replace("model: sim-large", "model: sim-huge")
    text = text.replace("boards:\n", "boards:\n  - {name: Other, slug: other, columns: []}\n", 1)

    with pytest.raises(CommandError):
        apply(write(tmp_path, text, "changed.yaml"))

    assert (Board.objects.count(), Column.objects.count(), Agent.objects.count()) == counts
    assert dump() == before


def test_one_bad_file_stops_every_file_of_the_run(db, tmp_path):
    good = write(tmp_path, BASE, "good.yaml")
    bad = write(tmp_path, variant(8, "      - {name: Review, role: qa}"), "bad.yaml")

    with pytest.raises(CommandError, match="bad.yaml:8"):
        apply(good, bad)

    assert Board.objects.count() == 0


def test_dry_run_shows_changes_and_writes_nothing(db, tmp_path):
    output = apply(write(tmp_path, BASE), dry_run=True)

    assert "would be created board line" in output
    assert "dry run: nothing written" in output
    assert Board.objects.count() == 0


@pytest.fixture
def board_without_backlog_doc(db):
    config_apply(document=config_parse(BASE, filename="line.yaml"))
    document = config_parse(variant(5, None), filename="line.yaml")
    return document, Board.objects.get(slug="line")


def test_apply_refuses_when_a_dropped_column_filled_up_after_the_check(db, board_without_backlog_doc):
    # The file was checked while Backlog was empty; a task arrived before the write.
    document, board = board_without_backlog_doc
    services.task_create(board=board, title="Arrived late")

    with pytest.raises(ConfigError, match="the backlog column 'Backlog' is not in the file but holds"):
        config_apply(document=document)

    assert board.columns.filter(role="backlog").exists()


# --- updating in place ----------------------------------------------------------------


def test_changing_a_wip_limit_in_the_file_updates_it(db, tmp_path):
    apply(write(tmp_path, BASE))
    column_ids = dict(Column.objects.values_list("role", "pk"))

    output = apply(
        write(tmp_path, variant(6, "      - {name: Ready, role: ready, wip_limit: 7, hard: false}"))
    )

    ready = Column.objects.get(role="ready")
    assert (ready.wip_limit, ready.hard_limit) == (7, False)
    assert dict(Column.objects.values_list("role", "pk")) == column_ids
    assert "updated column line/ready (wip_limit, hard_limit)" in output
    assert "1 updated, 6 unchanged" in output


def test_removing_a_column_that_holds_tasks_is_refused(db, tmp_path):
    apply(write(tmp_path, BASE))
    board = Board.objects.get(slug="line")
    services.task_create(board=board, title="Waiting in the backlog")
    services.task_create(board=board, title="Also waiting")
    before = dump()

    with pytest.raises(CommandError) as excinfo:
        apply(write(tmp_path, variant(5, None)))

    assert (
        f"{tmp_path / 'line.yaml'}:4: boards[0].columns: the backlog column 'Backlog' "
        "is not in the file but holds 2 task(s)"
    ) in str(excinfo.value)
    assert dump() == before


def test_removing_an_empty_column_deletes_it(db, tmp_path):
    apply(write(tmp_path, BASE))

    output = apply(write(tmp_path, variant(8, None)))

    roles = list(Column.objects.order_by("position").values_list("role", flat=True))
    assert roles == ["backlog", "ready", "in_progress", "done"]
    assert list(Column.objects.order_by("position").values_list("position", flat=True)) == [0, 1, 2, 3]
    assert "removed column line/review" in output


def test_columns_can_swap_names(db, tmp_path):
    apply(write(tmp_path, BASE))
    text = BASE.replace("{name: Review, role: review}", "{name: Done, role: review}", 1)
    text = text.replace("{name: Done, role: done}", "{name: Review, role: done}", 1)

    apply(write(tmp_path, text))

    names = dict(Column.objects.values_list("role", "name"))
    assert (names["review"], names["done"]) == ("Done", "Review")


def test_agent_fields_and_boards_follow_the_file(db, tmp_path):
    apply(write(tmp_path, BASE))
    other = Board.objects.create(name="Other", slug="other")
    text = BASE.replace("boards: [line]", "boards: [line, other]").replace(
        'prompt_template: "Do {title}: {input}"',
        'prompt_template: "Again {title}: {input} {last_error}"\n    concurrency: 7',
    )

    output = apply(write(tmp_path, text))

    agent = Agent.objects.get(name="Worker")
    assert set(agent.boards.all()) == {Board.objects.get(slug="line"), other}
    assert agent.concurrency == 7
    assert agent.prompt_template == "Again {title}: {input} {last_error}"
    assert f"updated agent Worker (prompt_template, concurrency, boards; {V2_DIRECT})" in output


def test_an_agent_may_serve_a_board_that_is_only_in_the_database(db, tmp_path):
    apply(write(tmp_path, BASE))
    agents_only = "agents:\n" + BASE.split("agents:\n", 1)[1].replace("name: Worker", "name: Helper")

    apply(write(tmp_path, agents_only, "agents.yaml"))

    assert set(Board.objects.get(slug="line").agents.values_list("name", flat=True)) == {"Worker", "Helper"}


def test_paused_left_out_of_the_file_keeps_a_paused_agent_paused(db, tmp_path):
    apply(write(tmp_path, BASE))
    services.agent_set_paused(agent=Agent.objects.get(name="Worker"), paused=True)

    output = apply(write(tmp_path, BASE))
    assert Agent.objects.get(name="Worker").paused is True
    assert "no changes" in output

    apply(write(tmp_path, BASE + "    paused: false\n"))
    assert Agent.objects.get(name="Worker").paused is False


def test_agents_can_share_settings_through_yaml_merge_keys(db, tmp_path):
    text = BASE.replace("  - name: Worker\n", "  - &worker\n    name: Worker\n")
    text += "  - <<: *worker\n    name: Second\n    cascade: [{provider: simulated, model: sim-medium}]\n"

    apply(write(tmp_path, text))

    second = Agent.objects.get(name="Second")
    assert ([t.model for t in second.tiers], second.capabilities) == (["sim-medium"], ["summarise"])
    assert [t.model for t in Agent.objects.get(name="Worker").tiers] == ["sim-small", "sim-large"]


@pytest.mark.redis
def test_a_new_agent_pulls_waiting_tasks_once_applied(db, tmp_path, django_capture_on_commit_callbacks):
    apply(write(tmp_path, BASE.split("agents:\n", 1)[0].replace(", capability: summarise", "")))
    board = Board.objects.get(slug="line")
    task = services.task_create(board=board, title="Waiting for an agent")
    services.board_pull(board_id=board.pk)  # moves it to Ready; nobody can claim it yet
    assert Task.objects.get(pk=task.pk).status == Task.Status.READY
    queue = CeleryQueue()
    queue.clear()

    try:
        with django_capture_on_commit_callbacks(execute=True):
            apply(write(tmp_path, BASE))
        # Outside a worker, the commit asks the workers for a pull of the board...
        assert queue.pulls_requested() == [board.pk]
        # ...and the worker's pull lets the new agent claim the waiting task.
        assert services.pull_request_serve(timeout=1) == board.pk
        task.refresh_from_db()
        assert task.status == Task.Status.RUNNING
        assert task.agent.name == "Worker"
    finally:
        # The claim enqueued a run on this suite's own queue; no worker is
        # listening in this test, so drop it rather than leave it behind.
        queue.clear()


# --- agents: cascades, prompt versions, custom classes ------------------------------


def test_a_cascade_is_stored_in_its_normal_form(db, tmp_path):
    output = apply(write(tmp_path, BASE))

    agent = Agent.objects.get(name="Worker")
    # Prices as exact decimal strings, a simulated tier's filled in from its list price.
    assert agent.cascade == [
        {
            "provider": "simulated",
            "model": "sim-small",
            "parameters": {},
            "price_in": "0.00015",
            "price_out": "0.0006",
            "threshold": 0.8,
        },
        {
            "provider": "simulated",
            "model": "sim-large",
            "parameters": {"latency_ms": 0},
            "price_in": "0.005",
            "price_out": "0.015",
            "threshold": None,
        },
    ]
    assert [t.model for t in agent.tiers] == ["sim-small", "sim-large"]
    assert agent.prompt_version == 1
    assert "created agent Worker (cascade sim-small → sim-large)" in output


def test_every_agent_field_applies_and_reapplying_writes_nothing(db, tmp_path):
    text = BASE.replace(
        '    prompt_template: "Do {title}: {input}"\n',
        """    prompt_template: "Reply to {customer}: {input}"
    prompt_variables: [customer]
    parameters: {temperature: 0.2, top_p: 0.9, max_tokens: 300}
    reuse_results: false
    cache_responses: false
""",
    ).replace(
        "      - {provider: simulated, model: sim-small, threshold: 0.8}\n",
        """      - provider: openai
        model: llama3.1:8b
        threshold: 0.8
        price_in: "0.0001"
        price_out: 0.0002
        parameters: {base_url: "http://127.0.0.1:11434/v1", api_key_env: OLLAMA_KEY, logprobs: true}
""",
    )
    path = write(tmp_path, text)
    apply(path)
    before = dump()

    with CaptureQueriesContext(connection) as queries:
        again = apply(path)

    agent = Agent.objects.get(name="Worker")
    assert agent.prompt_variables == ["customer"]
    assert agent.parameters == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 300}
    assert (agent.reuse_results, agent.cache_responses) == (False, False)
    first = agent.tiers[0]
    assert (first.provider, first.model, first.threshold) == ("openai", "llama3.1:8b", 0.8)
    assert (str(first.price_in), str(first.price_out)) == ("0.0001", "0.0002")
    # The key itself is never in the file or the database: only the variable's name.
    assert first.parameters == {
        "base_url": "http://127.0.0.1:11434/v1",
        "api_key_env": "OLLAMA_KEY",
        "logprobs": True,
    }
    assert dump() == before
    assert writes(queries) == []
    assert "no changes" in again


def test_the_shorthand_applies_as_a_one_tier_cascade(db, tmp_path):
    apply(write(tmp_path, SHORTHAND))

    agent = Agent.objects.get(name="Worker")
    assert agent.cascade == [
        {
            "provider": "simulated",
            "model": "sim-small",
            "parameters": {"latency_ms": 0},
            "price_in": "0.00015",
            "price_out": "0.0006",
            "threshold": None,
        }
    ]
    assert "no changes" in apply(write(tmp_path, SHORTHAND))


def test_rewriting_the_shorthand_as_the_same_cascade_changes_nothing(db, tmp_path):
    apply(write(tmp_path, SHORTHAND))
    as_cascade = SHORTHAND.replace(
        "    provider: simulated\n    model: sim-small\n    provider_settings: {latency_ms: 0}\n",
        "    cascade:\n      - {provider: simulated, model: sim-small, parameters: {latency_ms: 0}}\n",
    )

    output = apply(write(tmp_path, as_cascade))

    assert "no changes" in output
    assert Agent.objects.get(name="Worker").prompt_version == 1


def test_an_agent_needs_a_cascade(db, tmp_path):
    path = write(tmp_path, BASE.replace(CASCADE, ""))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert f"{path}:13: agents[0].cascade: is required: give a cascade" in str(excinfo.value)


def test_an_empty_cascade_is_refused(db, tmp_path):
    path = write(tmp_path, BASE.replace(CASCADE, "    cascade: []\n"))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert f"{path}:16: agents[0].cascade: must not be empty" in str(excinfo.value)


def test_a_declared_variable_may_be_used_in_the_template(db, tmp_path):
    text = variant(21, '    prompt_template: "Do {title} for {customer}"\n    prompt_variables: [customer]')

    apply(write(tmp_path, text))

    agent = Agent.objects.get(name="Worker")
    assert (agent.prompt_template, agent.prompt_variables) == ("Do {title} for {customer}", ["customer"])


def test_changing_the_template_starts_one_new_prompt_version(db, tmp_path):
    apply(write(tmp_path, BASE))
    changed = write(tmp_path, BASE.replace("Do {title}: {input}", "Please do {title}: {input}"), "v2.yaml")

    first = apply(changed)
    second = apply(changed)

    agent = Agent.objects.get(name="Worker")
    assert agent.prompt_version == 2
    assert f"updated agent Worker (prompt_template; {V2_DIRECT})" in first
    assert "no changes" in second


def test_a_prompt_changed_by_the_file_records_both_versions_and_an_audit_entry(db, tmp_path):
    apply(write(tmp_path, BASE))
    assert not PromptVersion.objects.exists()  # an agent's first version is recorded when it is replaced

    apply(write(tmp_path, BASE.replace("Do {title}: {input}", "Please do {title}: {input}"), "v2.yaml"))

    agent = Agent.objects.get(name="Worker")
    old, new = PromptVersion.objects.filter(agent=agent).order_by("number")
    assert (old.number, old.source, old.prompt_template) == (1, "initial", "Do {title}: {input}")
    assert (new.number, new.source, new.prompt_template, new.parent) == (
        2,
        "config",
        "Please do {title}: {input}",
        old,
    )
    assert new.cascade == agent.cascade and "v2.yaml" in new.rationale
    (entry,) = AuditEntry.objects.filter(agent=agent)
    assert (entry.action, entry.version, entry.user) == ("version", new, None)
    assert "applied from a config file or the admin" in entry.reason and "prompt_template" in entry.reason


def test_a_config_change_takes_a_number_after_every_proposed_version(db, tmp_path):
    apply(write(tmp_path, BASE))
    agent = Agent.objects.get(name="Worker")
    editor = make_editor()
    fields = {name: getattr(agent, name) for name in PromptVersion.FIELDS}
    proposal = kaizen.proposal_create(
        agent=agent,
        fields={**fields, "prompt_template": "A wholly different prompt for {title}: {input}"},
        rationale="Try a rewrite.",
        user=editor,
    )
    assert proposal.candidate.number == 2

    output = apply(write(tmp_path, BASE.replace("Do {title}: {input}", "Please do {title}: {input}")))

    agent.refresh_from_db()
    # Not 2: that number is the proposal's candidate, another prompt.
    assert agent.prompt_version == 3
    assert PromptVersion.objects.get(agent=agent, number=3).prompt_template == "Please do {title}: {input}"
    assert PromptVersion.objects.get(agent=agent, number=2).prompt_template.startswith("A wholly different")
    assert "new prompt version v3 (direct change from the config file" in output
    assert ChangeProposal.objects.get(pk=proposal.pk).status == "pending"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("threshold: 0.8", "threshold: 0.9", "cascade"),
        ("parameters: {latency_ms: 0}", "parameters: {latency_ms: 0, temperature: 0.5}", "cascade"),
        (
            "capabilities: [summarise]",
            "capabilities: [summarise]\n    parameters: {temperature: 0}",
            "parameters",
        ),
    ],
)
def test_changing_what_the_model_is_asked_starts_a_new_prompt_version(db, tmp_path, old, new, field):
    apply(write(tmp_path, BASE))

    output = apply(write(tmp_path, BASE.replace(old, new)))

    assert Agent.objects.get(name="Worker").prompt_version == 2
    assert f"updated agent Worker ({field}; {V2_DIRECT})" in output


def test_changing_how_an_agent_runs_keeps_its_prompt_version(db, tmp_path):
    apply(write(tmp_path, BASE))
    text = BASE.replace(
        "capabilities: [summarise]", "capabilities: [summarise]\n    concurrency: 9\n    reuse_results: false"
    )

    output = apply(write(tmp_path, text))

    agent = Agent.objects.get(name="Worker")
    assert (agent.concurrency, agent.reuse_results, agent.prompt_version) == (9, False, 1)
    assert "updated agent Worker (reuse_results, concurrency)" in output


def test_dry_run_names_the_changed_agent_fields_and_writes_nothing(db, tmp_path):
    apply(write(tmp_path, BASE))
    before = dump()
    text = BASE.replace("threshold: 0.8", "threshold: 0.7").replace(
        "capabilities: [summarise]", "capabilities: [summarise]\n    cache_responses: false"
    )

    output = apply(write(tmp_path, text), dry_run=True)

    assert f"would be updated agent Worker (cascade, cache_responses; {V2_DIRECT})" in output
    assert dump() == before
    assert not PromptVersion.objects.exists() and not AuditEntry.objects.exists()


def test_an_agent_class_needs_no_prompt_or_cascade(db, tmp_path):
    text = BASE.split("agents:\n", 1)[0].replace("capability: summarise", "capability: classify") + (
        "agents:\n"
        "  - name: Router\n"
        "    boards: [line]\n"
        "    implementation: boards.example_agents.KeywordClassifier\n"
    )
    path = write(tmp_path, text)

    output = apply(path)

    agent = Agent.objects.get(name="Router")
    assert agent.implementation == "boards.example_agents.KeywordClassifier"
    # The class says what it offers, so the demo task asking for classify is served.
    assert agent.offered_capabilities == ["classify"]
    assert agent.prompt_template == "{input}"
    assert [t.model for t in agent.tiers] == ["sim-small"]
    assert "created agent Router (implementation boards.example_agents.KeywordClassifier)" in output
    assert "no changes" in apply(path)


def test_capabilities_an_agent_class_does_not_offer_are_an_error(db, tmp_path):
    text = variant(
        15, "    capabilities: [summarise]\n    implementation: boards.example_agents.KeywordClassifier"
    )
    path = write(tmp_path, text)

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert (
        f"{path}:15: agents[0].capabilities: KeywordClassifier says its own capabilities (classify), "
        "so 'summarise' would never be pulled: remove it"
    ) in str(excinfo.value)


def test_a_prompt_agent_without_a_template_is_refused(db, tmp_path):
    path = write(tmp_path, variant(21, None))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert f"{path}:13: agents[0].prompt_template: is required" in str(excinfo.value)


def test_an_agent_class_already_in_the_database_serves_demo_tasks(db, tmp_path):
    router = "agents:\n  - name: Router\n    boards: [line]\n    implementation: boards.example_agents.KeywordClassifier\n"
    apply(write(tmp_path, BASE.split("agents:\n", 1)[0].replace(", capability: summarise", "") + router))
    board_only = BASE.split("agents:\n", 1)[0].replace("capability: summarise", "capability: classify")

    apply(write(tmp_path, board_only, "board.yaml"))

    assert Board.objects.get(slug="line").demo_tasks[0]["capability"] == "classify"


# --- jidoka settings -------------------------------------------------------------------

JIDOKA = (
    BASE
    + """\
    quality_checks:
      - {check: confidence, min: 0.8}
      - {check: regex, name: no-todo, must_not_match: TODO}
    breaker_threshold: 4
    breaker_cooldown_seconds: 30
    spike_defects: 2
    spike_window: 5
"""
)


def test_an_agents_checks_breaker_and_spike_settings_are_applied(db, tmp_path):
    apply(write(tmp_path, JIDOKA))

    agent = Agent.objects.get(name="Worker")
    assert [c["check"] for c in agent.quality_checks] == ["confidence", "regex"]
    assert agent.quality_checks[1]["name"] == "no-todo"
    assert (agent.breaker_threshold, agent.breaker_cooldown_seconds) == (4, 30)
    assert (agent.spike_defects, agent.spike_window) == (2, 5)


def test_an_agent_without_checks_in_the_file_gets_the_default_checks(db, tmp_path):
    apply(write(tmp_path, BASE))

    kinds = [c["check"] for c in Agent.objects.get(name="Worker").quality_checks]
    assert kinds == ["confidence", "uncertainty", "token_waste"]


def test_a_bad_check_names_its_line_and_field(db, tmp_path):
    text = JIDOKA.replace("must_not_match: TODO", "must_not_match: '(unclosed'")
    path = write(tmp_path, text)

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    message = str(excinfo.value)
    assert f"{path}:24: agents[0].quality_checks[1].must_not_match:" in message
    assert Board.objects.count() == 0


def test_more_spike_defects_than_the_window_holds_is_refused(db, tmp_path):
    path = write(tmp_path, JIDOKA.replace("spike_defects: 2", "spike_defects: 9"))

    with pytest.raises(CommandError) as excinfo:
        apply(path)

    assert "agents[0].spike_defects: 9 defects can never happen among the last 5 outputs" in str(
        excinfo.value
    )
