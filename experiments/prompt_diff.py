"""What a prompt change changes, as the agent page and the evolution review show
it: a unified diff of the template, then each other field of the version that
changed (its name, then each value inside it that changed, by its path, old and
new as JSON: "- tier 1 threshold: 0.8" / "+ tier 1 threshold: 0.7", not the
whole cascade on one line), and each line's kind, for its colour."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from experiments.models import PromptVersion

# The template is diffed line by line; the other fields value by value.
OTHER_FIELDS = tuple(name for name in PromptVersion.FIELDS if name != "prompt_template")


def diff_lines(base: PromptVersion, candidate: PromptVersion) -> list[str]:
    """A unified diff of the template, then the other fields that changed."""
    lines = list(
        difflib.unified_diff(
            base.prompt_template.splitlines(),
            candidate.prompt_template.splitlines(),
            f"v{base.number}",
            f"v{candidate.number}",
            lineterm="",
        )
    )
    for name in OTHER_FIELDS:
        a, b = getattr(base, name), getattr(candidate, name)
        if a != b:
            lines.append(f"{name}:")
            lines += _value_diff(_leaves(a, name), _leaves(b, name))
    return lines


_MISSING = object()


def _leaves(value: Any, field: str, path: str = "") -> dict[str, Any]:
    """A field's value as path -> value for each scalar (or list of scalars)
    inside it, in order: a cascade's tiers read "tier 1 model", "tier 1
    parameters max_tokens"; the parameters "temperature"; a list of variables
    stays one value."""
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, inner in value.items():
            leaves.update(_leaves(inner, field, f"{path} {key}".strip()))
        return leaves
    if (
        field == "cascade"
        and not path
        and isinstance(value, list)
        and all(isinstance(t, dict) for t in value)
    ):
        leaves = {}
        for number, tier in enumerate(value, start=1):
            leaves.update(_leaves(tier, field, f"tier {number}"))
        return leaves
    return {path: value}


def _value_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One "-"/"+" pair for each path whose value changed, "-" alone for a
    path that went, "+" alone for one that came, in the new value's order
    (then the paths that went)."""
    lines = []
    for path in [*new, *(p for p in old if p not in new)]:
        a, b = old.get(path, _MISSING), new.get(path, _MISSING)
        if a == b:
            continue
        label = f"{path}: " if path else ""
        if a is not _MISSING:
            lines.append(f"- {label}{json.dumps(a, sort_keys=True)}")
        if b is not _MISSING:
            lines.append(f"+ {label}{json.dumps(b, sort_keys=True)}")
    return lines


def diff_rows(lines: Iterable[str]) -> list[tuple[str, str]]:
    """diff_lines' output, each line with its kind: "file" (the two header lines,
    which only a changed template has), "hunk", "field" (another field's name),
    "add", "del" or "context".

    Told apart by position and exact names, not by look alone: a template line
    "-- a note" that is removed reads "--- a note", as a header does."""
    fields = {f"{name}:" for name in OTHER_FIELDS}
    rows = []
    lines = list(lines)
    headers = 2 if lines and lines[0].startswith("--- ") else 0
    for i, line in enumerate(lines):
        if i < headers:
            kind = "file"
        elif line in fields:
            kind = "field"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "context"
        rows.append((kind, line))
    return rows
