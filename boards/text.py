"""What text a task may hold, checked the same way wherever tasks come in (the
board's form, the API, an imported file).

PostgreSQL refuses a NUL in a text column and no database driver can encode a
lone UTF-16 surrogate (``\\ud800``, which JSON can spell): both reached the
database and came back as a 500. Other control characters are stored fine but
are never part of real text: they come from binary pasted as text or a file read
in the wrong encoding, and they garble the board, the CSV export and the prompt.
So one-line text (a title, a capability) holds no control character at all, and
multi-line text (an input) only tab, newline and carriage return.

The JSON Schema patterns below publish the same rules in the API's schema, so
generated clients and fuzzers agree with the server. ``task_fields_errors`` applies
them with the fields' sizes, for every way in; ``input_key`` is what reuse matches
inputs on. Nothing here reads or writes the database.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

# The sizes a task's fields may have, wherever it comes in.
MAX_TITLE = 200
# An input is what a model reads: 100,000 characters is about 25,000 tokens, past
# what a line should send in one task (the API's 2.5 MB body limit holds any such task).
MAX_INPUT = 100_000
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000

# C0 controls, DEL and the C1 controls. Tab, LF and CR are allowed in multi-line text.
_LINE_FORBIDDEN = "\x00-\x1f\x7f-\x9f"
_MULTILINE_FORBIDDEN = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SURROGATES = "\ud800-\udfff"

_LINE_BAD = re.compile(f"[{_LINE_FORBIDDEN}{_SURROGATES}]")
_MULTILINE_BAD = re.compile(f"[{_MULTILINE_FORBIDDEN}{_SURROGATES}]")

# The same rules as JSON Schema (ECMA-262) patterns, with \\u escapes so the
# published schema stays readable ASCII. A title must also hold something other
# than whitespace, as the server strips it and refuses an empty one.
LINE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"
TITLE_PATTERN = (
    r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
)
MULTILINE_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"


def _describe(char: str) -> str:
    code = f"U+{ord(char):04X}"
    if 0xD800 <= ord(char) <= 0xDFFF:
        return f"a lone surrogate ({code})"
    name = unicodedata.name(char, "")
    return f"a control character ({code}{', ' + name.lower() if name else ''})"


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` cannot be stored as task text, or None when it can."""
    match = (_MULTILINE_BAD if multiline else _LINE_BAD).search(value)
    if match is None:
        return None
    char = match.group()
    where = f"at character {match.start() + 1}"
    if 0xD800 <= ord(char) <= 0xDFFF:
        return f"This text holds {_describe(char)} {where}, which is not valid Unicode: send UTF-8 text."
    allowed = (
        "only tab, newline and carriage return are allowed" if multiline else "use plain text on one line"
    )
    return f"This text holds {_describe(char)} {where}: remove it ({allowed})."


def lone_surrogate(value: str) -> bool:
    return re.search(f"[{_SURROGATES}]", value) is not None


def task_fields_errors(
    *, title: str, input: str, capability: str, priority: int, offered: list[str]
) -> dict[str, list[str]]:
    """What is wrong with a task's fields, per field: the rules every way in
    (the board's form, the API, an imported file) shares. ``title`` and
    ``capability`` come stripped; ``offered`` is what the board's agents offer."""
    errors: dict[str, list[str]] = {}
    if not title:
        errors["title"] = ["Give the task a title."]
    elif len(title) > MAX_TITLE:
        errors["title"] = [f"Keep the title to {MAX_TITLE} characters (it has {len(title)})."]
    elif problem := text_problem(title):
        errors["title"] = [problem]
    if len(input) > MAX_INPUT:
        errors["input"] = [f"Keep the input to {MAX_INPUT:,} characters (it has {len(input):,})."]
    elif problem := text_problem(input, multiline=True):
        errors["input"] = [problem]
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        errors["priority"] = [f"Priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}."]
    if capability:
        if problem := text_problem(capability):
            errors["capability"] = [problem]
        elif capability not in offered:
            known = ", ".join(offered) or "none"
            errors["capability"] = [f"No agent on this board offers {capability!r} (offered: {known})."]
    return errors


def input_key(text: str) -> str:
    """What reuse matches tasks on: a digest of the input, normalised so that
    case, Unicode forms, spacing and a JSON object's key order do not make two
    inputs differ. Empty for an empty input (a task described by its title only
    is never taken for another)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict | list):
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    normalised = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    if not normalised:
        return ""
    return hashlib.sha256(normalised.encode()).hexdigest()
