"""Reading a YAML configuration as a node tree, so that every value keeps the line
it came from: ``Reader`` turns nodes into checked values and records each problem
as ``FILE:LINE: field.path: message``."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

import yaml


class _Invalid:
    """A value that failed validation (its error is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def describe(node: yaml.Node, value: Any = None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


class Reader:
    """Walks a composed YAML node tree, turning nodes into checked values and
    recording each problem with the line of the node it concerns."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[tuple[int, int, str]] = []
        # A loader used only for its constructor: it turns scalar nodes into
        # Python values by the same (safe) rules yaml.safe_load uses.
        self._constructor = yaml.SafeLoader("")

    def error(self, line: int, path: str, message: str) -> None:
        self.errors.append((line, len(self.errors), f"{self.filename}:{line}: {path}: {message}"))

    def messages(self) -> list[str]:
        return [message for _, _, message in sorted(self.errors)]

    # scalars

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(line_of(node), path, f"cannot read this value: {getattr(exc, 'problem', exc)}")
            return INVALID

    def string(
        self, node: yaml.Node, path: str, *, max_length: int, allow_empty: bool = False, strip: bool = True
    ) -> Any:
        value = self.scalar(node, path)
        if value is INVALID:
            return INVALID
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(node, yaml.ScalarNode) and value is not None else ""
            self.error(line_of(node), path, f"must be text, got {describe(node, value)}{hint}")
            return INVALID
        if strip:
            value = value.strip()
        if not value and not allow_empty:
            self.error(line_of(node), path, "must not be empty")
            return INVALID
        if len(value) > max_length:
            self.error(line_of(node), path, f"must be at most {max_length} characters, got {len(value)}")
            return INVALID
        return value

    def integer(
        self, node: yaml.Node, path: str, *, minimum: int, maximum: int | None = None, nullable: bool = False
    ) -> Any:
        value = self.scalar(node, path)
        if value is INVALID:
            return INVALID
        if value is None and nullable:
            return None
        # bool is an int in Python, but `wip_limit: yes` is a mistake, not 1.
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and value >= minimum and (maximum is None or value <= maximum)
        if not ok:
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            self.error(line_of(node), path, f"must be an integer {bound}, got {describe(node, value)}")
            return INVALID
        return value

    def number(self, node: yaml.Node, path: str, *, minimum: float, maximum: float | None) -> Any:
        value = self.scalar(node, path)
        if value is INVALID:
            return INVALID
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and value >= minimum and (maximum is None or value <= maximum)
        if not ok:
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            self.error(line_of(node), path, f"must be a number {bound}, got {describe(node, value)}")
            return INVALID
        return value

    def boolean(self, node: yaml.Node, path: str) -> Any:
        value = self.scalar(node, path)
        if value is INVALID:
            return INVALID
        if not isinstance(value, bool):
            self.error(line_of(node), path, f"must be true or false, got {describe(node, value)}")
            return INVALID
        return value

    def plain(self, node: yaml.Node, path: str) -> Any:
        """Any JSON-compatible value (a cascade tier's fields, before boards.agents.spec checks them)."""
        try:
            value = self._constructor.construct_object(node, deep=True)
            json.dumps(value)
        except (yaml.YAMLError, TypeError, ValueError) as exc:
            self.error(line_of(node), path, f"must be plain data (text, numbers, lists, mappings): {exc}")
            return INVALID
        return value

    # collections

    def sequence(self, node: yaml.Node, path: str, *, allow_empty: bool = True) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(line_of(node), path, f"must be a list, got {describe(node, self.scalar(node, path))}")
            return None
        if not node.value and not allow_empty:
            self.error(line_of(node), path, "must not be empty")
            return None
        return list(node.value)

    def mapping(
        self, node: yaml.Node, path: str, *, required: Iterable[str], optional: Iterable[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """The mapping's entries by key, after checking it is a mapping whose keys
        are known, present when required, and not repeated."""
        where = path or "the file"
        if not isinstance(node, yaml.MappingNode):
            self.error(
                line_of(node), where, f"must be a mapping, got {describe(node, self.scalar(node, path))}"
            )
            return None
        # Keys written in this mapping, as opposed to ones merged in: only those
        # can be "given twice"; a written key overrides a merged one, as in YAML.
        written = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        try:
            # Applies `<<: *anchor` merge keys (merged pairs come first), so
            # shared agent defaults work.
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.error(line_of(node), where, f"cannot merge: {getattr(exc, 'problem', exc)}")
            return None
        required, optional = list(required), list(optional)
        allowed = required + optional
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                self.error(line_of(key_node), where, f"keys must be text, got {describe(key_node, key)}")
                continue
            key_path = f"{path}.{key}" if path else key
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(
                    line_of(key_node), key_path, f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
                )
                continue
            if key in entries and id(entries[key][0]) in written:
                first = line_of(entries[key][0])
                self.error(line_of(key_node), key_path, f"given twice (first on line {first})")
                continue
            entries[key] = (key_node, value_node)
        for key in required:
            if key not in entries:
                self.error(line_of(node), f"{path}.{key}" if path else key, "is required")
        return entries
