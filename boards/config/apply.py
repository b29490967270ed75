"""Applying a parsed configuration: ``config_apply`` is the only writer. In one
transaction it re-checks the document against the database under the board
locks, then creates or updates boards (by slug), columns (by role within a
board) and agents (by name), touching only rows whose values differ. After
commit, changed boards are re-broadcast and pulled."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db import transaction

from boards import broadcast, services
from boards.config.parse import (
    ANDON_KEYS,
    AgentSpec,
    BoardSpec,
    ConfigDocument,
    ConfigError,
    check_against_database,
)
from boards.models import Agent, Board, Column, Task
from experiments.line import ensure_version, next_version_number
from experiments.models import AuditEntry, PromptVersion


@dataclass(frozen=True)
class Change:
    kind: str  # board, column, agent, proposal
    key: str  # the natural key: slug, slug/role, agent name (a proposal: agent and rationale)
    action: str  # created, updated, unchanged, removed, skipped
    fields: tuple[str, ...] = ()
    note: str = ""  # such as the prompt version an update started

    def __str__(self) -> str:
        detail = "; ".join(part for part in (", ".join(self.fields), self.note) if part)
        return f"{self.action} {self.kind} {self.key}" + (f" ({detail})" if detail else "")


@dataclass
class ApplyReport:
    filename: str
    changes: list[Change] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def summary(self) -> str:
        if not self.changed:
            return f"{self.filename}: no changes ({len(self.changes)} objects unchanged)"
        counts = ", ".join(
            f"{self.count(a)} {a}"
            for a in ("created", "updated", "removed", "skipped", "unchanged")
            if self.count(a)
        )
        return f"{self.filename}: {counts}"


def _agent_summary(spec: AgentSpec) -> str:
    """What a new agent runs, for the report: its class, or its cascade's models."""
    if spec.implementation:
        return f"implementation {spec.implementation}"
    return "cascade " + " → ".join(tier["model"] for tier in spec.cascade)


def _sync(obj: Any, values: dict[str, Any]) -> list[str]:
    """Set the fields whose value differs; return their names."""
    changed = [name for name, value in values.items() if getattr(obj, name) != value]
    for name in changed:
        setattr(obj, name, values[name])
    return changed


def _apply_columns(board: Board, spec: BoardSpec, report: ApplyReport) -> tuple[set[int], bool]:
    """Make the board's columns match the spec. Returns the ids of columns that
    changed in place, and whether columns were added or removed."""
    existing = {c.role: c for c in board.columns.all()}
    wanted = {c.role for c in spec.columns}
    reshaped = False
    for role, column in existing.items():
        if role not in wanted:
            # Checked under the board lock: no task can have entered it since.
            if Task.objects.filter(column=column).exists():
                raise ConfigError(
                    [
                        f"{report.filename}:{spec.columns_line}: {spec.path}.columns: "
                        f"the {role} column {column.name!r} is not in the file but holds tasks"
                    ]
                )
            column.delete()
            reshaped = True
            report.changes.append(Change("column", f"{spec.slug}/{role}", "removed"))
    # Column names are unique per board, so a rename that takes another column's
    # current name (a swap) would collide; park renamed columns on free names first.
    renamed = [
        existing[c.role] for c in spec.columns if c.role in existing and existing[c.role].name != c.name
    ]
    for column in renamed:
        Column.objects.filter(pk=column.pk).update(name=f"~{column.pk}~renaming")
    changed_ids: set[int] = set()
    for column_spec in spec.columns:
        values = {
            "name": column_spec.name,
            "position": column_spec.position,
            "wip_limit": column_spec.wip_limit,
            "hard_limit": column_spec.hard,
        }
        key = f"{spec.slug}/{column_spec.role}"
        current = existing.get(column_spec.role)
        if current is None:
            Column.objects.create(board=board, role=column_spec.role, **values)
            reshaped = True
            report.changes.append(Change("column", key, "created"))
            continue
        fields = _sync(current, values)
        if fields:
            current.save(update_fields=fields)
            changed_ids.add(current.pk)
            report.changes.append(Change("column", key, "updated", tuple(fields)))
        else:
            report.changes.append(Change("column", key, "unchanged"))
    return changed_ids, reshaped


def _check_in_transaction(document: ConfigDocument) -> None:
    errors: list[tuple[int, str]] = []

    def report(line: int, path: str, message: str) -> None:
        errors.append((line, f"{document.filename}:{line}: {path}: {message}"))

    check_against_database(document, report)
    if errors:
        raise ConfigError([message for _, message in sorted(errors)])


@transaction.atomic
def config_apply(*, document: ConfigDocument) -> ApplyReport:
    """Make the database match a parsed configuration, in one transaction.
    Boards are found by slug, columns by role within their board, agents by name;
    only rows whose values differ are written, and nothing is deleted but empty
    columns the file no longer lists. Tasks are never touched."""
    report = ApplyReport(filename=document.filename)
    slugs = [b.slug for b in document.boards]
    # The lock the services take before adding to a WIP-limited column
    # (services._lock_board: FOR NO KEY UPDATE, which excludes itself), so no
    # move, pull or limited intake runs while columns change under it. Not plain
    # FOR UPDATE: that would also block every TaskEvent insert on these boards,
    # and so every run finishing on them (see _lock_board).
    list(Board.objects.select_for_update(no_key=True).filter(slug__in=slugs).order_by("pk"))
    _check_in_transaction(document)

    touched: dict[int, set[int]] = {}  # board id -> columns changed in place
    boards_by_slug: dict[str, Board] = {}
    for spec in document.boards:
        values: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "demo_tasks": [t.as_json() for t in spec.demo_tasks],
            "demo_feed": spec.demo_feed,
            "experiment_plan": spec.experiment_plan,
        }
        board = Board.objects.filter(slug=spec.slug).first()
        if board is None:
            board = Board.objects.create(slug=spec.slug, **values)
            report.changes.append(Change("board", spec.slug, "created"))
        else:
            fields = _sync(board, values)
            if fields:
                board.save(update_fields=fields)
                report.changes.append(Change("board", spec.slug, "updated", tuple(fields)))
            else:
                report.changes.append(Change("board", spec.slug, "unchanged"))
        boards_by_slug[spec.slug] = board
        changed_ids, reshaped = _apply_columns(board, spec, report)
        if changed_ids or reshaped:
            touched.setdefault(board.pk, set()).update(changed_ids)

    named = {s for a in document.agents for s in a.boards} - set(boards_by_slug)
    boards_by_slug.update({b.slug: b for b in Board.objects.filter(slug__in=named)})
    # Locked as services.agent_save locks an agent, so a save from the agent page
    # cannot start the same prompt version at the same time; all at once and in
    # primary-key order, the order a pull locks a board's agents in, so the two
    # cannot deadlock.
    agents = {
        a.name: a
        for a in Agent.objects.select_for_update(of=("self",), no_key=True)
        .filter(name__in=[agent_spec.name for agent_spec in document.agents])
        .order_by("pk")
    }
    for agent_spec in document.agents:
        values = {
            "capabilities": list(agent_spec.capabilities),
            "prompt_template": agent_spec.prompt_template,
            "prompt_variables": list(agent_spec.prompt_variables),
            "parameters": agent_spec.parameters,
            "cascade": agent_spec.cascade,
            "reuse_results": agent_spec.reuse_results,
            "cache_responses": agent_spec.cache_responses,
            "implementation": agent_spec.implementation,
            "concurrency": agent_spec.concurrency,
            "max_attempts": agent_spec.max_attempts,
        }
        if agent_spec.paused is not None:
            values["paused"] = agent_spec.paused
        for key in ANDON_KEYS:
            if getattr(agent_spec, key) is not None:
                values[key] = getattr(agent_spec, key)
        board_ids = {boards_by_slug[s].pk for s in agent_spec.boards}
        agent = agents.get(agent_spec.name)
        if agent is None:
            agent = Agent.objects.create(name=agent_spec.name, **values)
            agent.boards.set(board_ids)
            report.changes.append(
                Change("agent", agent_spec.name, "created", note=_agent_summary(agent_spec))
            )
            for board_id in board_ids:
                touched.setdefault(board_id, set())
            continue
        before = Agent(
            pk=agent.pk,
            name=agent.name,
            prompt_version=agent.prompt_version,
            **{name: getattr(agent, name) for name in services.PROMPT_FIELDS},
        )
        fields = _sync(agent, values)
        note = ""
        if any(name in services.PROMPT_FIELDS for name in fields):
            # What the model is asked changed: a new prompt version, as services.agent_save
            # starts one, so results of the old prompt are no longer reused. The file is
            # the operator's direct word, past the kaizen loop's proposals and experiments;
            # both versions and the change are recorded, so the agent's history has no gap.
            replaced = ensure_version(before)
            agent.prompt_version = next_version_number(agent)
            agent.save(update_fields=[*fields, "prompt_version"])
            version = ensure_version(
                agent,
                source=PromptVersion.Source.CONFIG,
                rationale=f"applied from the config file {document.filename}",
            )
            AuditEntry.objects.create(
                agent=agent,
                action=AuditEntry.Action.VERSION,
                version=version,
                reason=(
                    f"v{replaced.number} → v{version.number}: applied from a config file or the admin "
                    f"({document.filename}; {', '.join(f for f in fields if f in services.PROMPT_FIELDS)})"
                ),
            )
            note = (
                f"new prompt version v{agent.prompt_version} "
                "(direct change from the config file, recorded in the audit log)"
            )
        elif fields:
            agent.save(update_fields=fields)
        current = set(agent.boards.values_list("pk", flat=True))
        if current != board_ids:
            agent.boards.set(board_ids)
            fields.append("boards")
        if fields:
            report.changes.append(Change("agent", agent_spec.name, "updated", tuple(fields), note))
            for board_id in current | board_ids:
                touched.setdefault(board_id, set())
        else:
            report.changes.append(Change("agent", agent_spec.name, "unchanged"))

    for board_id, column_ids in touched.items():
        # A raised limit, a new agent or a resumed one may free capacity now:
        # show the new headers and pull, once the change is visible to others.
        if column_ids:
            transaction.on_commit(partial(broadcast.columns_changed, board_id, column_ids))
        transaction.on_commit(partial(services.request_pull, board_id=board_id))
    return report
