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
generated clients and fuzzers agree with the server.
"""

from __future__ import annotations

import re
import unicodedata

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
