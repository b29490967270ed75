"""What a prompt change changes, as the agent page and the evolution review show
it: a unified diff of the template, then each other field of the version that
changed (its name, then its old and new value as JSON), and each line's kind,
for its colour."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable

from experiments.models import PromptVersion

# The template is diffed line by line; the other fields whole.
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
            lines += [f"{name}:", f"- {json.dumps(a, sort_keys=True)}", f"+ {json.dumps(b, sort_keys=True)}"]
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
