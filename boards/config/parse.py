"""Parsing and checking a configuration: each board, column, agent and proposal of
the file read into the specs of a ``ConfigDocument``, every field checked, then
the file checked against the database. All errors are gathered, in line order,
and raised together as one ``ConfigError``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db.models import Count

from andon.inspection import checks_json, parse_checks
from boards import demo_feed, services
from boards.agents import spec as agent_spec
from boards.agents.outputs import AgentFailed
from boards.agents.registry import agent_class, custom_capabilities
from boards.agents.spec import GENERATION_PARAMETERS, TIER_SETTINGS, cascade_json, check_template
from boards.config.read import INVALID, Reader, describe, line_of
from boards.models import Agent, Board, Column, default_cascade
from experiments import plans

Role = Column.Role

ROLE_ORDER: list[str] = [Role.BACKLOG, Role.READY, Role.IN_PROGRESS, Role.REVIEW, Role.DONE]
REQUIRED_ROLES = [Role.READY, Role.IN_PROGRESS, Role.DONE]
# The keys of a cascade tier in the file (boards.agents.spec.TIER_KEYS).
TIER_REQUIRED = ["provider", "model"]
TIER_OPTIONAL = ["parameters", "price_in", "price_out", "threshold", "context_window"]
# The one-tier shorthand for a cascade, as files written before cascades say it.
SHORTHAND_KEYS = ("provider", "model", "provider_settings")

SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]+$")

# Field defaults. On update, a field left out of the file goes back to its
# default, so the file alone says what the line looks like. ``paused`` is the
# exception: it is operational state (a person or a line stop may have paused an
# agent), so it changes only when the file says so.
AGENT_DEFAULT_CONCURRENCY = 4
AGENT_DEFAULT_MAX_ATTEMPTS = 3
AGENT_DEFAULT_TEMPLATE = "{input}"
PRIORITY_RANGE = (-1000, 1000)


class ConfigError(Exception):
    """A configuration file that cannot be applied; ``errors`` holds one
    ``FILE:LINE: field: message`` string per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


# --- the parsed document ----------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    role: str
    wip_limit: int | None
    hard: bool
    position: int
    path: str
    role_line: int


@dataclass(frozen=True)
class DemoTaskSpec:
    title: str
    # Text, or a JSON object (a task gets it as JSON text).
    input: Any
    capability: str
    priority: int
    path: str
    # A template's slots, in their stored form (boards.demo_feed); empty for a fixed task.
    slots: dict[str, Any] = field(default_factory=dict)
    weight: float = 1

    def as_json(self) -> dict[str, Any]:
        # These keys always present, so the stored list compares equal run after
        # run; a template's keys only when given, so a fixed task stores as before.
        data = {
            "title": self.title,
            "input": self.input,
            "capability": self.capability,
            "priority": self.priority,
        }
        if self.slots:
            data["slots"] = demo_feed.stored_slots(self.slots)
        if self.weight != 1:
            data["weight"] = self.weight
        return data


@dataclass(frozen=True)
class BoardSpec:
    name: str
    slug: str
    description: str
    columns: tuple[ColumnSpec, ...]
    demo_tasks: tuple[DemoTaskSpec, ...]
    path: str
    columns_line: int
    # The demo feed's settings (boards.demo_feed.FeedSettings) and the board's
    # experiment plan (experiments.plans), as stored; empty: the defaults.
    demo_feed: dict[str, Any] = field(default_factory=dict)
    experiment_plan: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSpec:
    name: str
    boards: tuple[str, ...]
    capabilities: tuple[str, ...]
    prompt_template: str
    prompt_variables: tuple[str, ...]
    parameters: dict[str, Any]
    # Normalised as stored (boards.agents.spec.cascade_json), so it compares
    # equal to the row it was applied to.
    cascade: list[dict[str, Any]]
    reuse_results: bool
    cache_responses: bool
    implementation: str
    concurrency: int
    max_attempts: int
    paused: bool | None
    path: str
    # Jidoka (andon.inspection): None leaves what the agent has (the default checks for a new one).
    quality_checks: list[dict[str, Any]] | None = None
    breaker_threshold: int | None = None
    breaker_cooldown_seconds: int | None = None
    spike_defects: int | None = None
    spike_window: int | None = None


@dataclass(frozen=True)
class ProposalSpec:
    """A change to an agent's prompt, proposed by the file: applied through the
    kaizen loop's own gate (experiments.config), so it is checked, audited and
    tried in an experiment like any other proposal."""

    agent: str
    rationale: str
    # The prompt fields that change (prompt_template, prompt_variables,
    # parameters, cascade), over the agent's active version.
    change: dict[str, Any]
    evidence: Any
    path: str
    line: int


@dataclass(frozen=True)
class Reference:
    """A value that names something the file or the database must hold (a board
    slug an agent serves, a capability a demo task needs), kept with its place
    even when the entry around it has errors, so those are all reported at once."""

    value: str
    board: str  # the board it concerns
    path: str
    line: int


@dataclass
class ConfigDocument:
    filename: str
    boards: list[BoardSpec] = field(default_factory=list)
    agents: list[AgentSpec] = field(default_factory=list)
    # What each agent entry offers (name, boards, capabilities), read even when
    # other fields of the entry have errors. When an entry's boards or
    # capabilities cannot be read, what the boards offer is unknown, so the check
    # that demo tasks are served is skipped rather than reporting noise.
    offers: list[tuple[str | None, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    offers_unknown: bool = False
    # Every slug a board entry gives, valid entry or not, so agents naming it
    # are not also told the board does not exist.
    declared_slugs: set[str] = field(default_factory=set)
    agent_boards: list[Reference] = field(default_factory=list)
    demo_capabilities: list[Reference] = field(default_factory=list)
    proposals: list[ProposalSpec] = field(default_factory=list)


# --- parsing and checking a document -------------------------------------------------


def _parse_columns(
    reader: Reader, node: yaml.Node, path: str, *, key_line: int
) -> tuple[ColumnSpec, ...] | None:
    items = reader.sequence(node, path, allow_empty=False)
    if items is None:
        return None
    columns: list[ColumnSpec] = []
    complete = True
    by_role: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for index, item in enumerate(items):
        col_path = f"{path}[{index}]"
        entries = reader.mapping(item, col_path, required=["name", "role"], optional=["wip_limit", "hard"])
        if entries is None:
            complete = False
            continue
        name = role = INVALID
        wip_limit: Any = None
        hard: Any = True
        role_line = line_of(item)
        if "name" in entries:
            name = reader.string(entries["name"][1], f"{col_path}.name", max_length=60)
            if name is not INVALID:
                if name in by_name:
                    reader.error(
                        line_of(entries["name"][1]),
                        f"{col_path}.name",
                        f"duplicate column name {name!r} ({by_name[name]} has it); "
                        "column names are unique within a board",
                    )
                    name = INVALID
                else:
                    by_name[name] = col_path
        if "role" in entries:
            role_node = entries["role"][1]
            role_line = line_of(role_node)
            value = reader.string(role_node, f"{col_path}.role", max_length=20)
            if value is not INVALID and value not in ROLE_ORDER:
                reader.error(
                    line_of(role_node),
                    f"{col_path}.role",
                    f"unknown role {value!r}; use one of {', '.join(ROLE_ORDER)}",
                )
            elif value is not INVALID and value in by_role:
                reader.error(
                    line_of(role_node),
                    f"{col_path}.role",
                    f"duplicate role {value!r} ({by_role[value]} has it); a board has one column per role",
                )
            elif value is not INVALID:
                role = value
                by_role[value] = col_path
        if "wip_limit" in entries:
            wip_node = entries["wip_limit"][1]
            wip_limit = reader.integer(wip_node, f"{col_path}.wip_limit", minimum=1, nullable=True)
            if role == Role.DONE and wip_limit not in (None, INVALID):
                reader.error(
                    line_of(wip_node),
                    f"{col_path}.wip_limit",
                    "a done column takes no WIP limit: finished work leaves the line there",
                )
                wip_limit = INVALID
        if "hard" in entries:
            hard = reader.boolean(entries["hard"][1], f"{col_path}.hard")
        if INVALID in (name, role, wip_limit, hard):
            complete = False
            continue
        columns.append(ColumnSpec(name, role, wip_limit, hard, index, col_path, role_line))

    missing = [r for r in REQUIRED_ROLES if r not in by_role]
    if missing:
        reader.error(
            key_line,
            path,
            f"no {' or '.join(missing)} column; every board needs columns with the roles "
            f"{', '.join(REQUIRED_ROLES[:-1])} and {REQUIRED_ROLES[-1]}",
        )
        complete = False
    # Columns left to right in the order work flows, so a card moved "right"
    # (by keyboard or drag) goes downstream.
    for before, after in zip(columns, columns[1:], strict=False):
        if ROLE_ORDER.index(after.role) < ROLE_ORDER.index(before.role):
            reader.error(
                after.role_line,
                f"{after.path}.role",
                f"a {after.role} column cannot come after a {before.role} column; "
                f"order columns as work flows: {', '.join(ROLE_ORDER)}",
            )
            complete = False
    return tuple(columns) if complete else None


def _parse_slots(reader: Reader, node: yaml.Node, path: str) -> Any:
    """A template's slots: a list's values are read as written (42.000 stays
    42.000, not 42.0), ranges and dates as YAML reads them; then checked and
    stored in the form boards.demo_feed renders from."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        reader.error(
            line_of(node), path, "must be a mapping of slot names to their values, such as part: [A, B]"
        )
        return INVALID
    try:
        # `<<: *shared` merges slots from an anchor (merged ones first; written ones win).
        reader._constructor.flatten_mapping(node)
    except yaml.YAMLError as exc:
        reader.error(line_of(node), path, f"cannot merge: {getattr(exc, 'problem', exc)}")
        return INVALID
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        name = reader.scalar(key_node, path)
        if not isinstance(name, str):
            reader.error(line_of(key_node), path, f"slot names must be text, got {describe(key_node, name)}")
            return INVALID
        if name in raw:
            # A slot written here over one merged in from an anchor replaces it.
            raw.pop(name)
        lines[name] = line_of(key_node)
        if isinstance(value_node, yaml.SequenceNode):
            values = []
            for item in value_node.value:
                # An empty value must be written "" (a bare dash is a missing one).
                if not isinstance(item, yaml.ScalarNode) or (item.value == "" and not item.style):
                    reader.error(
                        line_of(item), f"{path}.{name}", 'each value must be text or a number (or "")'
                    )
                    return INVALID
                values.append(item.value)
            raw[name] = values
        else:
            try:
                raw[name] = reader._constructor.construct_object(value_node, deep=True)
            except yaml.YAMLError as exc:
                reader.error(line_of(value_node), f"{path}.{name}", f"cannot read it: {exc}")
                return INVALID
    try:
        return demo_feed.normal_slots(raw)
    except ValueError as exc:
        # The message names the slot; point at its line when it does.
        named = next((name for name in raw if f"slot {name!r}" in str(exc)), None)
        line = lines.get(named, line_of(node)) if named is not None else line_of(node)
        reader.error(line, path, str(exc))
        return INVALID


def _parse_demo_tasks(
    reader: Reader, node: yaml.Node, path: str, *, board_slug: Any, needs: list[Reference]
) -> tuple[DemoTaskSpec, ...] | None:
    items = reader.sequence(node, path)
    if items is None:
        return None
    tasks: list[DemoTaskSpec] = []
    complete = True
    for index, item in enumerate(items):
        task_path = f"{path}[{index}]"
        entries = reader.mapping(
            item,
            task_path,
            required=["title"],
            optional=["input", "capability", "priority", "slots", "weight"],
        )
        if entries is None:
            complete = False
            continue
        title: Any = INVALID
        text: Any = ""
        capability: Any = ""
        priority: Any = 0
        slots: Any = {}
        weight: Any = 1
        if "title" in entries:
            title = reader.string(entries["title"][1], f"{task_path}.title", max_length=services.MAX_TITLE)
        if "input" in entries:
            input_node = entries["input"][1]
            if isinstance(input_node, yaml.MappingNode):
                # A JSON object input (a task gets it as JSON text), for agents whose
                # template fills declared variables from its fields.
                text = reader.plain(input_node, f"{task_path}.input")
            else:
                text = reader.string(
                    input_node, f"{task_path}.input", max_length=100_000, allow_empty=True, strip=False
                )
                if isinstance(text, str):
                    # Block scalars end with a newline; the task input should not.
                    text = text.strip("\n")
        if "capability" in entries:
            capability_node = entries["capability"][1]
            capability = reader.string(
                capability_node, f"{task_path}.capability", max_length=60, allow_empty=True
            )
            if capability and capability is not INVALID and board_slug is not INVALID:
                needs.append(
                    Reference(capability, board_slug, f"{task_path}.capability", line_of(capability_node))
                )
        if "priority" in entries:
            low, high = PRIORITY_RANGE
            priority = reader.integer(
                entries["priority"][1], f"{task_path}.priority", minimum=low, maximum=high
            )
        if "slots" in entries:
            slots = _parse_slots(reader, entries["slots"][1], f"{task_path}.slots")
        if "weight" in entries:
            weight = reader.number(entries["weight"][1], f"{task_path}.weight", minimum=0.001, maximum=1000)
        if INVALID in (title, text, capability, priority, slots, weight):
            complete = False
            continue
        spec = DemoTaskSpec(title, text, capability, priority, task_path, slots, weight)
        problems = demo_feed.entry_problems(spec.as_json())
        if problems:
            for problem in problems:
                reader.error(line_of(item), task_path, problem)
            complete = False
            continue
        tasks.append(spec)
    return tuple(tasks) if complete else None


def _parse_demo_feed(reader: Reader, node: yaml.Node, path: str) -> Any:
    entries = reader.mapping(node, path, required=[], optional=["seed", "repeat_share", "batch"])
    if entries is None:
        return INVALID
    values: dict[str, Any] = {}
    if "seed" in entries:
        values["seed"] = reader.integer(entries["seed"][1], f"{path}.seed", minimum=0, maximum=2**63 - 1)
    if "repeat_share" in entries:
        values["repeat_share"] = reader.number(
            entries["repeat_share"][1], f"{path}.repeat_share", minimum=0, maximum=1
        )
    if "batch" in entries:
        values["batch"] = reader.integer(
            entries["batch"][1], f"{path}.batch", minimum=1, maximum=demo_feed.MAX_BATCH
        )
    if INVALID in values.values():
        return INVALID
    return values


def _parse_experiment_plan(reader: Reader, node: yaml.Node, path: str) -> Any:
    data = reader.plain(node, path)
    if data is INVALID:
        return INVALID
    problems = plans.plan_problems(data)
    for key, message in problems:
        reader.error(line_of(node), f"{path}.{key}" if key else path, message)
    return INVALID if problems else data


def _parse_board(reader: Reader, node: yaml.Node, path: str, document: ConfigDocument) -> BoardSpec | None:
    entries = reader.mapping(
        node,
        path,
        required=["name", "slug", "columns"],
        optional=["description", "demo_tasks", "demo_feed", "experiments"],
    )
    if entries is None:
        return None
    name = slug = columns = INVALID
    description: Any = ""
    demo_tasks: Any = ()
    feed: Any = {}
    plan: Any = {}
    columns_line = line_of(node)
    if "name" in entries:
        name = reader.string(entries["name"][1], f"{path}.name", max_length=120)
    if "slug" in entries:
        slug_node = entries["slug"][1]
        slug = reader.string(slug_node, f"{path}.slug", max_length=80)
        if slug is not INVALID and not SLUG_RE.match(slug):
            reader.error(
                line_of(slug_node),
                f"{path}.slug",
                f"{slug!r} is not a slug: use letters, digits, hyphens and underscores (it is the board's URL)",
            )
            slug = INVALID
        if slug is not INVALID:
            document.declared_slugs.add(slug)
    if "description" in entries:
        description = reader.string(
            entries["description"][1], f"{path}.description", max_length=10_000, allow_empty=True
        )
    if "columns" in entries:
        columns_line = line_of(entries["columns"][0])
        parsed = _parse_columns(reader, entries["columns"][1], f"{path}.columns", key_line=columns_line)
        columns = INVALID if parsed is None else parsed
    if "demo_tasks" in entries:
        parsed_tasks = _parse_demo_tasks(
            reader,
            entries["demo_tasks"][1],
            f"{path}.demo_tasks",
            board_slug=slug,
            needs=document.demo_capabilities,
        )
        demo_tasks = INVALID if parsed_tasks is None else parsed_tasks
    if "demo_feed" in entries:
        feed = _parse_demo_feed(reader, entries["demo_feed"][1], f"{path}.demo_feed")
    if "experiments" in entries:
        plan = _parse_experiment_plan(reader, entries["experiments"][1], f"{path}.experiments")
    if INVALID in (name, slug, description, columns, demo_tasks, feed, plan):
        return None
    return BoardSpec(name, slug, description, columns, demo_tasks, path, columns_line, feed, plan)


# --- agents: prompt, variables, parameters and the cascade ---------------------------

# An agent's jidoka settings: its checks, circuit breaker and defect-spike stop.
ANDON_KEYS = [
    "quality_checks",
    "breaker_threshold",
    "breaker_cooldown_seconds",
    "spike_defects",
    "spike_window",
]
ANDON_LIMITS = {
    "breaker_threshold": (1, 1000),
    "breaker_cooldown_seconds": (1, 7 * 24 * 3600),
    "spike_defects": (1, 1000),
    "spike_window": (1, 1000),
}

AGENT_OPTIONAL = [
    "capabilities",
    "prompt_template",
    "prompt_variables",
    "parameters",
    "cascade",
    *SHORTHAND_KEYS,
    "reuse_results",
    "cache_responses",
    "implementation",
    "concurrency",
    "max_attempts",
    "paused",
    *ANDON_KEYS,
]


def _node_at(nodes: dict[str, yaml.Node], where: str, fallback: yaml.Node) -> yaml.Node:
    """The node a problem path of boards.agents.spec (``agents[0].cascade[1].threshold``)
    points at: the node recorded for that path, else for the nearest path enclosing it."""
    probe = where
    while probe:
        if probe in nodes:
            return nodes[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        if cut <= 0:
            break
        probe = probe[:cut]
    return fallback


def _report(
    reader: Reader,
    problems: list[tuple[str, str]],
    nodes: dict[str, yaml.Node],
    fallback: yaml.Node,
    rename: Callable[[str], str] = lambda where: where,
) -> None:
    for where, message in problems:
        where = rename(where)
        reader.error(line_of(_node_at(nodes, where, fallback)), where, message)


def _plain_entries(
    reader: Reader, node: yaml.Node, path: str, allowed: list[str], nodes: dict[str, yaml.Node]
) -> Any:
    """A mapping of plain values whose keys are among ``allowed``; ``null`` reads as empty.
    Each value's node is recorded in ``nodes`` under its path."""
    if isinstance(node, yaml.ScalarNode) and reader.scalar(node, path) is None:
        return {}
    entries = reader.mapping(node, path, required=[], optional=allowed)
    if entries is None:
        return INVALID
    result: dict[str, Any] = {}
    for key, (_, value_node) in entries.items():
        nodes[f"{path}.{key}"] = value_node
        result[key] = reader.plain(value_node, f"{path}.{key}")
    return INVALID if INVALID in result.values() else result


def _tier_data(
    reader: Reader,
    fields: dict[str, yaml.Node],
    path: str,
    nodes: dict[str, yaml.Node],
    *,
    parameters_key: str = "parameters",
) -> Any:
    """A tier as the plain data boards.agents.spec checks, from the nodes of its keys
    (named as in agent_spec.TIER_KEYS; the file may call ``parameters`` otherwise)."""
    tier: dict[str, Any] = {}
    for key in agent_spec.TIER_KEYS:
        if key not in fields:
            continue
        node = fields[key]
        key_path = f"{path}.{parameters_key if key == 'parameters' else key}"
        nodes[key_path] = node
        if key != "parameters":
            tier[key] = reader.plain(node, key_path)
            continue
        provider = tier.get("provider")
        if isinstance(provider, str) and provider in TIER_SETTINGS:
            allowed = [*GENERATION_PARAMETERS, *TIER_SETTINGS[provider]]
            tier[key] = _plain_entries(reader, node, key_path, allowed, nodes)
        else:
            # Which parameters apply depends on the provider, which is reported as wrong.
            tier[key] = reader.plain(node, key_path)
    return INVALID if INVALID in tier.values() else tier


def _parse_cascade(reader: Reader, key_node: yaml.Node, node: yaml.Node, path: str) -> Any:
    """``cascade:``, a list of tiers, cheapest first; the normalised JSON to store."""
    items = reader.sequence(node, path, allow_empty=False)
    if items is None:
        return INVALID
    # Problems of the whole cascade (too many tiers) at its key: a block list's
    # own node starts at its first tier.
    nodes: dict[str, yaml.Node] = {path: key_node}
    tiers: list[Any] = []
    # Each tier checked on its own, so every bad tier is reported, not only the
    # first; None for a bad one in what the cross-tier checks see.
    checked: list[agent_spec.Tier | None] = []
    for index, item in enumerate(items):
        tier_path = f"{path}[{index}]"
        nodes[tier_path] = item
        entries = reader.mapping(item, tier_path, required=TIER_REQUIRED, optional=TIER_OPTIONAL)
        if entries is None or any(key not in entries for key in TIER_REQUIRED):
            tiers.append(INVALID)
            checked.append(None)
            continue
        tier = _tier_data(reader, {k: v for k, (_, v) in entries.items()}, tier_path, nodes)
        parsed = None
        if tier is not INVALID:
            try:
                parsed = agent_spec.parse_tier(tier, tier_path)
            except agent_spec.ConfigError as exc:
                _report(reader, exc.problems, nodes, item)
                tier = INVALID
        tiers.append(tier)
        checked.append(parsed)
    if INVALID in tiers:
        # The good tiers are still checked as a cascade (a missing threshold
        # before the last tier), so fixing the bad ones brings no new surprise.
        _report(reader, agent_spec.cascade_order_problems(checked, where=path), nodes, key_node)
        return INVALID
    try:
        return cascade_json(agent_spec.parse_cascade(tiers, where=path))
    except agent_spec.ConfigError as exc:
        _report(reader, exc.problems, nodes, key_node)
        return INVALID


def _parse_shorthand(
    reader: Reader, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str, agent_node: yaml.Node
) -> Any:
    """``provider`` + ``model`` (+ ``provider_settings``): a cascade of one tier."""
    missing = [key for key in ("provider", "model") if key not in entries]
    for key in missing:
        given = next(k for k in SHORTHAND_KEYS if k in entries)
        reader.error(
            line_of(agent_node),
            f"{path}.{key}",
            f"is required with {given}: a single tier needs a provider and a model (or give a cascade)",
        )
    if missing:
        return INVALID
    fields = {key: entries[key][1] for key in ("provider", "model")}
    if "provider_settings" in entries:
        fields["parameters"] = entries["provider_settings"][1]
    nodes: dict[str, yaml.Node] = {}
    tier = _tier_data(reader, fields, path, nodes, parameters_key="provider_settings")
    if tier is INVALID:
        return INVALID
    settings_path = f"{path}.parameters"

    def in_file_terms(where: str) -> str:
        if where == settings_path or where.startswith(settings_path + "."):
            return f"{path}.provider_settings" + where[len(settings_path) :]
        return where

    try:
        return cascade_json([agent_spec.parse_tier(tier, path)])
    except agent_spec.ConfigError as exc:
        _report(reader, exc.problems, nodes, agent_node, rename=in_file_terms)
        return INVALID


def _parse_variables(reader: Reader, node: yaml.Node, path: str) -> Any:
    items = reader.sequence(node, path)
    if items is None:
        return INVALID
    names: list[str] = []
    ok = True
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        value = reader.string(item, item_path, max_length=60)
        if value is INVALID:
            ok = False
        elif value in names:
            reader.error(line_of(item), item_path, f"variable {value!r} is listed twice")
            ok = False
        else:
            try:
                agent_spec.parse_variables([value])
            except agent_spec.ConfigError as exc:
                for _, message in exc.problems:
                    reader.error(line_of(item), item_path, message)
                ok = False
                continue
            names.append(value)
    return tuple(names) if ok else INVALID


def _parse_parameters(reader: Reader, node: yaml.Node, path: str) -> Any:
    nodes: dict[str, yaml.Node] = {path: node}
    raw = _plain_entries(reader, node, path, list(GENERATION_PARAMETERS), nodes)
    if raw is INVALID:
        return INVALID
    try:
        return agent_spec.parse_parameters(raw, where=path)
    except agent_spec.ConfigError as exc:
        _report(reader, exc.problems, nodes, node)
        return INVALID


def _check_implementation(reader: Reader, node: yaml.Node, path: str) -> Any:
    value = reader.string(node, path, max_length=200)
    if value is INVALID:
        return INVALID
    registered = list(settings.KAIZEN_AGENT_CLASSES)
    if value not in registered:
        close = difflib.get_close_matches(value, registered, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        reader.error(
            line_of(node),
            path,
            f"{value!r} is not a registered agent class{hint}; registered: {', '.join(registered) or 'none'} "
            "(a class must be listed in the KAIZEN_AGENT_CLASSES setting to be used)",
        )
        return INVALID
    try:
        agent_class(value)
    except AgentFailed as exc:
        reader.error(line_of(node), path, str(exc))
        return INVALID
    return value


def _default_cascade() -> list[dict[str, Any]]:
    return cascade_json(agent_spec.parse_cascade(default_cascade()))


def _parse_agent(reader: Reader, node: yaml.Node, path: str, document: ConfigDocument) -> AgentSpec | None:
    entries = reader.mapping(node, path, required=["name", "boards"], optional=AGENT_OPTIONAL)
    if entries is None:
        document.offers_unknown = True
        return None
    values: dict[str, Any] = {
        "name": INVALID,
        "boards": INVALID,
        "capabilities": (),
        "prompt_template": AGENT_DEFAULT_TEMPLATE,
        "prompt_variables": (),
        "parameters": {},
        "cascade": None,
        "reuse_results": True,
        "cache_responses": True,
        "implementation": "",
        "concurrency": AGENT_DEFAULT_CONCURRENCY,
        "max_attempts": AGENT_DEFAULT_MAX_ATTEMPTS,
        "paused": None,
    }

    def field_of(key: str) -> yaml.Node | None:
        return entries[key][1] if key in entries else None

    if (n := field_of("name")) is not None:
        values["name"] = reader.string(n, f"{path}.name", max_length=80)
    if (n := field_of("boards")) is not None:
        values["boards"] = _string_list(
            reader,
            n,
            f"{path}.boards",
            max_length=80,
            allow_empty=False,
            refs=document.agent_boards,
            what="board",
        )
    if (n := field_of("capabilities")) is not None:
        values["capabilities"] = _string_list(
            reader, n, f"{path}.capabilities", max_length=60, allow_empty=True, refs=None, what="capability"
        )
    if (n := field_of("implementation")) is not None:
        values["implementation"] = _check_implementation(reader, n, f"{path}.implementation")
    _record_offers(reader, values, entries, path, document)

    shorthand = [key for key in SHORTHAND_KEYS if key in entries]
    if "cascade" in entries and shorthand:
        where = ", ".join(f"{key} on line {line_of(entries[key][0])}" for key in shorthand)
        reader.error(
            line_of(entries["cascade"][0]),
            f"{path}.cascade",
            "give either cascade or provider and model (the one-tier shorthand), not both; "
            f"this agent also has {where}: move them into a tier of the cascade",
        )
        values["cascade"] = INVALID
    elif "cascade" in entries:
        values["cascade"] = _parse_cascade(reader, *entries["cascade"], f"{path}.cascade")
    elif shorthand:
        values["cascade"] = _parse_shorthand(reader, entries, path, node)
    elif values["implementation"] == "":
        reader.error(
            line_of(node),
            f"{path}.cascade",
            "is required: give a cascade (a list of tiers, cheapest first), or provider and model "
            "for a single tier",
        )
        values["cascade"] = INVALID
    else:
        # An agent class that does not use the cascade has the model's default.
        values["cascade"] = _default_cascade()

    if (n := field_of("prompt_variables")) is not None:
        values["prompt_variables"] = _parse_variables(reader, n, f"{path}.prompt_variables")
    if (n := field_of("prompt_template")) is not None:
        template = reader.string(n, f"{path}.prompt_template", max_length=50_000, strip=False)
        if template is not INVALID:
            # The check the runtime's rendering relies on, so a template that passes
            # here cannot fail a task later for an unknown variable. With variables
            # that have errors of their own, the template's own problems are still
            # reported; which fields are declared is not known then.
            declared = values["prompt_variables"]
            problems = check_template(template, None if declared is INVALID else list(declared))
            for problem in problems:
                reader.error(line_of(n), f"{path}.prompt_template", problem)
            if problems:
                template = INVALID
        values["prompt_template"] = template
    elif values["implementation"] == "":
        reader.error(
            line_of(node),
            f"{path}.prompt_template",
            "is required: what the model is asked (only an agent with an implementation may leave it out)",
        )
        values["prompt_template"] = INVALID
    if (n := field_of("parameters")) is not None:
        values["parameters"] = _parse_parameters(reader, n, f"{path}.parameters")
    for key in ("reuse_results", "cache_responses"):
        if (n := field_of(key)) is not None:
            values[key] = reader.boolean(n, f"{path}.{key}")
    if (n := field_of("concurrency")) is not None:
        values["concurrency"] = reader.integer(n, f"{path}.concurrency", minimum=1, maximum=10_000)
    if (n := field_of("max_attempts")) is not None:
        values["max_attempts"] = reader.integer(n, f"{path}.max_attempts", minimum=1, maximum=100)
    if (n := field_of("paused")) is not None:
        values["paused"] = reader.boolean(n, f"{path}.paused")
    if "quality_checks" in entries:
        values["quality_checks"] = _parse_checks(reader, *entries["quality_checks"], f"{path}.quality_checks")
    for key, (low, high) in ANDON_LIMITS.items():
        if (n := field_of(key)) is not None:
            values[key] = reader.integer(n, f"{path}.{key}", minimum=low, maximum=high)
    spike, window = values.get("spike_defects"), values.get("spike_window")
    if isinstance(spike, int) and isinstance(window, int) and spike > window:
        reader.error(
            line_of(entries["spike_defects"][1]),
            f"{path}.spike_defects",
            f"{spike} defects can never happen among the last {window} outputs: make it at most spike_window",
        )
        values["spike_defects"] = INVALID
    if INVALID in values.values():
        return None
    return AgentSpec(**values, path=path)


def _parse_checks(reader: Reader, key_node: yaml.Node, node: yaml.Node, path: str) -> Any:
    """``quality_checks:``, a list of checks (andon.inspection); the normalised JSON to store."""
    if isinstance(node, yaml.ScalarNode) and reader.scalar(node, path) is None:
        return []
    items = reader.sequence(node, path, allow_empty=True)
    if items is None:
        return INVALID
    nodes: dict[str, yaml.Node] = {path: key_node}
    checks: list[Any] = []
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        nodes[item_path] = item
        if isinstance(item, yaml.MappingNode):
            for key_item, value_node in item.value:
                nodes[f"{item_path}.{key_item.value}"] = value_node
        checks.append(reader.plain(item, item_path))
    if INVALID in checks:
        return INVALID
    try:
        return checks_json(parse_checks(checks, where=path))
    except agent_spec.ConfigError as exc:
        _report(reader, exc.problems, nodes, key_node)
        return INVALID


def _record_offers(
    reader: Reader,
    values: dict[str, Any],
    entries: dict[str, tuple[yaml.Node, yaml.Node]],
    path: str,
    document: ConfigDocument,
) -> None:
    """What the agent entry offers, for the check that every demo task is served. An
    agent class says its own capabilities, so capabilities listed in the file that
    the class does not offer would never be pulled: an error."""
    if INVALID in (values["boards"], values["capabilities"], values["implementation"]):
        document.offers_unknown = True
        return
    offered = values["capabilities"]
    if values["implementation"]:
        unsaved = Agent(implementation=values["implementation"], capabilities=list(offered))
        offered = tuple(custom_capabilities(unsaved))
        ignored = [c for c in values["capabilities"] if c not in offered]
        if ignored:
            cls = values["implementation"].rsplit(".", 1)[-1]
            reader.error(
                line_of(entries["capabilities"][1]),
                f"{path}.capabilities",
                f"{cls} says its own capabilities ({', '.join(offered) or 'none'}), so "
                f"{', '.join(map(repr, ignored))} would never be pulled: remove "
                f"{'it' if len(ignored) == 1 else 'them'}",
            )
            values["capabilities"] = INVALID
    name = None if values["name"] is INVALID else values["name"]
    document.offers.append((name, values["boards"], offered))


def _string_list(
    reader: Reader,
    node: yaml.Node,
    path: str,
    *,
    max_length: int,
    allow_empty: bool,
    refs: list[Reference] | None,
    what: str,
) -> Any:
    items = reader.sequence(node, path, allow_empty=allow_empty)
    if items is None:
        return INVALID
    result: list[str] = []
    ok = True
    for index, item in enumerate(items):
        value = reader.string(item, f"{path}[{index}]", max_length=max_length)
        if value is INVALID:
            ok = False
        elif value in result:
            reader.error(line_of(item), f"{path}[{index}]", f"{what} {value!r} is listed twice")
            ok = False
        else:
            result.append(value)
            if refs is not None:
                refs.append(Reference(value, value, f"{path}[{index}]", line_of(item)))
    return tuple(result) if ok else INVALID


def _parse_document(reader: Reader, root: yaml.Node | None) -> ConfigDocument:
    document = ConfigDocument(filename=reader.filename)
    if root is None:
        reader.error(1, "the file", "is empty; declare boards and/or agents (see examples/README.md)")
        return document
    entries = reader.mapping(root, "", required=[], optional=["boards", "agents", "proposals"])
    if entries is None:
        return document
    if not entries:
        reader.error(line_of(root), "the file", "declares nothing; give boards and/or agents")
    if "boards" in entries:
        document.boards = _parse_unique(
            reader, entries["boards"][1], "boards", _parse_board, "slug", document
        )
    if "agents" in entries:
        document.agents = _parse_unique(
            reader, entries["agents"][1], "agents", _parse_agent, "name", document
        )
    if "proposals" in entries:
        document.proposals = _parse_proposals(reader, entries["proposals"][1], "proposals", document)
    return document


PROPOSAL_CHANGES = ["prompt_template", "prompt_variables", "parameters", "cascade"]


def _parse_proposals(
    reader: Reader, node: yaml.Node, path: str, document: ConfigDocument
) -> list[ProposalSpec]:
    """The file's proposals, each checked as far as the file can tell (the agent,
    the template against the agent's variables); experiments.config checks the
    rest as a proposal made on the agent page would be, when it is applied."""
    proposals: list[ProposalSpec] = []
    agents = {spec.name: spec for spec in document.agents}
    for index, item in enumerate(reader.sequence(node, path) or []):
        item_path = f"{path}[{index}]"
        entries = reader.mapping(
            item, item_path, required=["agent", "rationale", "change"], optional=["evidence"]
        )
        if entries is None:
            continue
        agent: Any = INVALID
        rationale: Any = INVALID
        change: Any = INVALID
        evidence: Any = {}
        if "agent" in entries:
            agent = reader.string(entries["agent"][1], f"{item_path}.agent", max_length=80)
        if "rationale" in entries:
            rationale = reader.string(entries["rationale"][1], f"{item_path}.rationale", max_length=5000)
        if "evidence" in entries:
            evidence = reader.plain(entries["evidence"][1], f"{item_path}.evidence")
        if "change" in entries:
            change_node = entries["change"][1]
            fields = reader.mapping(
                change_node, f"{item_path}.change", required=[], optional=PROPOSAL_CHANGES
            )
            if fields is not None and not fields:
                reader.error(
                    line_of(change_node),
                    f"{item_path}.change",
                    f"changes nothing; give one or more of {', '.join(PROPOSAL_CHANGES)}",
                )
            elif fields is not None:
                change = {}
                for key, (_, value_node) in fields.items():
                    if key == "prompt_template":
                        value = reader.string(
                            value_node, f"{item_path}.change.{key}", max_length=100_000, strip=False
                        )
                    else:
                        value = reader.plain(value_node, f"{item_path}.change.{key}")
                    change[key] = value
                if INVALID in change.values():
                    change = INVALID
        if agent is not INVALID and agent not in agents and not Agent.objects.filter(name=agent).exists():
            close = difflib.get_close_matches(agent, sorted(agents), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            reader.error(
                line_of(entries["agent"][1]),
                f"{item_path}.agent",
                f"no agent {agent!r} in this file or the database{hint}",
            )
            agent = INVALID
        # A dict change was read from ``fields`` (so it is set).
        if (
            agent in agents
            and isinstance(change, dict)
            and fields is not None
            and isinstance(change.get("prompt_template"), str)
        ):
            variables = change.get("prompt_variables", list(agents[agent].prompt_variables))
            if isinstance(variables, list) and all(isinstance(v, str) for v in variables):
                for problem in check_template(change["prompt_template"], variables):
                    reader.error(
                        line_of(fields["prompt_template"][1]), f"{item_path}.change.prompt_template", problem
                    )
                    change = INVALID
        if INVALID in (agent, rationale, change, evidence):
            continue
        proposals.append(ProposalSpec(agent, rationale, change, evidence, item_path, line_of(item)))
    return proposals


def _parse_unique(reader, node, section: str, parse, key: str, document) -> list:
    """Parse each item of a section, refusing a second item with the same natural key.
    The key is read from the item whether or not its other fields have errors, so
    a repeated slug or name is reported along with them, not only once they are fixed."""
    parsed = []
    seen: dict[str, str] = {}
    noun = "board slug" if section == "boards" else "agent name"
    for index, item in enumerate(reader.sequence(node, section) or []):
        path = f"{section}[{index}]"
        entry = parse(reader, item, path, document)
        given = _natural_key(item, key)
        if given is not None:
            value, value_node = given
            if value in seen:
                reader.error(
                    line_of(value_node), f"{path}.{key}", f"duplicate {noun} {value!r} ({seen[value]} has it)"
                )
                continue
            seen[value] = path
        if entry is not None:
            parsed.append(entry)
    return parsed


def _natural_key(item: yaml.Node, key: str) -> tuple[str, yaml.Node] | None:
    """The text an item gives for ``key`` and its node, read straight from the node
    tree (after the item's merge keys were applied: the last pair wins, as in
    YAML); None when the item has none that is text (its parse reported that)."""
    if not isinstance(item, yaml.MappingNode):
        return None
    found = None
    for key_node, value_node in item.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found = value_node
    if isinstance(found, yaml.ScalarNode) and found.tag == "tag:yaml.org,2002:str" and found.value.strip():
        return found.value.strip(), found
    return None


def check_against_database(document: ConfigDocument, report: Callable[[int, str, str], None]) -> None:
    """What the file alone cannot tell: boards the agents name may live in the
    database, agents already in the database serve boards too, and a column
    dropped from the file may still hold tasks."""
    named = {ref.value for ref in document.agent_boards} - document.declared_slugs
    known = document.declared_slugs | set(Board.objects.filter(slug__in=named).values_list("slug", flat=True))
    for ref in document.agent_boards:
        if ref.value not in known:
            close = difflib.get_close_matches(ref.value, sorted(known | _all_board_slugs()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            report(ref.line, ref.path, f"no board {ref.value!r} in this file or the database{hint}")

    if not document.offers_unknown:
        in_file = {name for name, _, _ in document.offers if name}
        offered: dict[str, set[str]] = {}
        for slug in {ref.board for ref in document.demo_capabilities}:
            caps = {c for _, boards, capabilities in document.offers if slug in boards for c in capabilities}
            # Agents this file does not redefine keep serving the board.
            for agent in (
                Agent.objects.filter(boards__slug=slug)
                .exclude(name__in=in_file)
                .only("capabilities", "implementation")
            ):
                caps.update(agent.offered_capabilities)
            offered[slug] = caps
        for ref in document.demo_capabilities:
            if ref.value not in offered[ref.board]:
                listed = ", ".join(sorted(offered[ref.board])) or "none"
                report(
                    ref.line,
                    ref.path,
                    f"no agent on board {ref.board!r} offers {ref.value!r} (offered: {listed})",
                )

    for board in document.boards:
        roles = {c.role for c in board.columns}
        dropped = (
            Column.objects.filter(board__slug=board.slug)
            .exclude(role__in=roles)
            .annotate(task_count=Count("tasks"))
            .filter(task_count__gt=0)
            .order_by("position")
        )
        for column in dropped:
            report(
                board.columns_line,
                f"{board.path}.columns",
                f"the {column.role} column {column.name!r} is not in the file but holds "
                f"{column.task_count} task(s); move them out first or keep the column",
            )


def _all_board_slugs() -> set[str]:
    return set(Board.objects.values_list("slug", flat=True))


def config_parse(text: str, *, filename: str) -> ConfigDocument:
    """Read and check a configuration (including against the database); raise
    ConfigError listing every problem found, each with file, line and field."""
    reader = Reader(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        detail = "; ".join(str(p) for p in (exc.context, exc.problem) if p)
        if exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
            detail += f" (the construct began on line {exc.context_mark.line + 1})"
        raise ConfigError([f"{filename}:{line}: YAML syntax error: {detail}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}:1: YAML error: {exc}"]) from None
    document = _parse_document(reader, root)
    check_against_database(document, reader.error)
    if reader.errors:
        raise ConfigError(reader.messages())
    return document


def config_load(path: str | Path) -> ConfigDocument:
    """``config_parse`` for a file; the path is named in every error as given."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{filename}: no such file"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{filename}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{filename}: cannot read it: {exc.strerror}"]) from None
    return config_parse(text, filename=filename)
