"""Tasks in files: reading a CSV or JSON Lines file of tasks to import, and
writing the task list as CSV. Pure code: no database, no writes.

Reading keeps each row's line number and what is wrong with it, field by field,
so a person sees every problem of a file at once; the rules of a valid task
(a title, a capability some agent offers) are ``boards.services``' to check.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# The columns (CSV) or keys (JSON Lines) a file of tasks to import may have.
IMPORT_FIELDS = ("title", "input", "capability", "priority", "allow_reuse")

# The columns of the CSV export, in order. A file exported from one board can be
# imported into another: the columns that describe a task's run are skipped.
EXPORT_COLUMNS = (
    "id",
    "title",
    "status",
    "column",
    "capability",
    "priority",
    "agent",
    "input",
    "output",
    "confidence",
    "cost",
    "tokens_in",
    "tokens_out",
    "model_calls",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
)
_SKIPPED_ON_IMPORT = frozenset(EXPORT_COLUMNS) - frozenset(IMPORT_FIELDS)

FORMATS = ("csv", "jsonl")

_TRUE = {"true", "yes", "y", "1", "t", "on"}
_FALSE = {"false", "no", "n", "0", "f", "off"}


@dataclass
class TaskRow:
    """One task read from a file, with the line it starts on and what could not
    be read of it (``problems``: messages per field; ``row`` for the whole line)."""

    line: int
    title: str = ""
    input: str = ""
    capability: str = ""
    priority: int = 0
    allow_reuse: bool = True
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add_problem(self, name: str, message: str) -> None:
        self.problems.setdefault(name, []).append(message)


class TaskFileError(ValueError):
    """The file as a whole cannot be read (not UTF-8, no title column, no rows)."""


def detect_format(name: str, data: bytes) -> str:
    """``csv`` or ``jsonl``, from the file's name, else from its first character."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    return "jsonl" if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def _decode(data: bytes) -> str:
    try:
        # utf-8-sig: spreadsheets often start a UTF-8 CSV with a byte order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskFileError(
            f"Line {line} is not UTF-8 text (byte {exc.start + 1}): save the file as UTF-8 "
            "(in a spreadsheet, “CSV UTF-8”)."
        ) from None


def read_task_rows(data: bytes, *, format: str, max_rows: int | None = None) -> list[TaskRow]:
    """The tasks in ``data`` (a whole file), each with its line number and problems.

    Raises TaskFileError for what spoils the whole file."""
    text = _decode(data)
    rows = list(_read_csv(text) if format == "csv" else _read_jsonl(text))
    if not rows:
        raise TaskFileError("The file holds no tasks.")
    if max_rows is not None and len(rows) > max_rows:
        raise TaskFileError(
            f"The file holds {len(rows)} tasks; import at most {max_rows} at once here "
            "(or all of them with `python manage.py import_tasks`)."
        )
    return rows


# --- CSV -----------------------------------------------------------------------------


def _read_csv(text: str) -> Iterator[TaskRow]:
    first_line = text.split("\n", 1)[0]
    try:
        dialect: Any = csv.Sniffer().sniff(first_line, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        header = next(reader, None)
        while header == []:
            header = next(reader, None)
        if header is None:
            return
        names = [name.strip().lower() for name in header]
        _check_header(names)
        previous_line = reader.line_num
        for cells in reader:
            line = previous_line + 1
            previous_line = reader.line_num
            if not cells or all(not cell.strip() for cell in cells):
                continue
            yield _csv_row(line, names, cells)
    except csv.Error as exc:
        raise TaskFileError(f"Line {reader.line_num}: the CSV cannot be read: {exc}.") from None


def _check_header(names: list[str]) -> None:
    example = ",".join(IMPORT_FIELDS)
    if "title" not in names:
        raise TaskFileError(
            f"The first line must name the columns, with at least title (such as {example}); "
            f"it names {', '.join(repr(n) for n in names) or 'nothing'}."
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TaskFileError(f"The column {name!r} appears twice in the first line.")
        seen.add(name)
        if name and name not in IMPORT_FIELDS and name not in _SKIPPED_ON_IMPORT:
            raise TaskFileError(
                f"Unknown column {name!r} in the first line: the columns are {', '.join(IMPORT_FIELDS)}."
            )


def _csv_row(line: int, names: list[str], cells: list[str]) -> TaskRow:
    row = TaskRow(line=line)
    if len(cells) > len(names):
        row.add_problem("row", f"It has {len(cells)} cells but the first line names {len(names)} columns.")
    values = dict(zip(names, cells, strict=False))
    row.title = values.get("title", "")
    row.input = values.get("input", "")
    row.capability = values.get("capability", "")
    priority = values.get("priority", "").strip()
    if priority:
        try:
            row.priority = int(priority)
        except ValueError:
            row.add_problem(
                "priority", f"Priority must be a whole number from -1000 to 1000, not {priority!r}."
            )
    reuse = values.get("allow_reuse", "").strip().lower()
    if reuse in _FALSE:
        row.allow_reuse = False
    elif reuse and reuse not in _TRUE:
        row.add_problem(
            "allow_reuse", f"allow_reuse must be true or false (or empty for true), not {reuse!r}."
        )
    return row


# --- JSON Lines -------------------------------------------------------------------------


def _read_jsonl(text: str) -> Iterator[TaskRow]:
    # split("\n"), not splitlines(): that would also split inside a line at
    # U+2028 or a form feed, which JSON strings may hold.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        yield _jsonl_row(number, line)


def _jsonl_row(number: int, line: str) -> TaskRow:
    row = TaskRow(line=number)
    try:
        value = json.loads(line)
    except ValueError as exc:
        message = getattr(exc, "msg", str(exc))
        column = getattr(exc, "colno", None)
        where = f" at column {column}" if column else ""
        row.add_problem("row", f"It is not valid JSON ({message}{where}): each line must be one JSON object.")
        return row
    except RecursionError:
        row.add_problem("row", "It is nested too deeply to read: each line must be one flat JSON object.")
        return row
    if not isinstance(value, dict):
        row.add_problem(
            "row", f'Each line must be a JSON object such as {{"title": "..."}}, not {type(value).__name__}.'
        )
        return row
    for key in value:
        if key not in IMPORT_FIELDS and key not in _SKIPPED_ON_IMPORT:
            row.add_problem(str(key), f"Unknown key: the keys are {', '.join(IMPORT_FIELDS)}.")
    if "title" not in value:
        row.add_problem("title", "This field is required.")
    for name in ("title", "input", "capability"):
        item = value.get(name)
        if item is None:
            continue
        if isinstance(item, str):
            setattr(row, name, item)
        else:
            row.add_problem(name, f"It must be a string, not {_json_type(item)}.")
    priority = value.get("priority")
    if priority is not None:
        if isinstance(priority, int) and not isinstance(priority, bool):
            row.priority = priority
        else:
            row.add_problem(
                "priority", f"It must be a whole number from -1000 to 1000, not {_json_type(priority)}."
            )
    reuse = value.get("allow_reuse")
    if reuse is not None:
        if isinstance(reuse, bool):
            row.allow_reuse = reuse
        else:
            row.add_problem("allow_reuse", f"It must be true or false, not {_json_type(reuse)}.")
    return row


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


# --- the CSV export ---------------------------------------------------------------------

# A cell a spreadsheet would read as a formula (CSV injection): "=HYPERLINK(...)"
# in a task's title would run when someone opens the export. Such cells get a
# leading apostrophe, which spreadsheets show as text. Tab and carriage return
# start formulas in some spreadsheets too.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> object:
    """``value`` as a CSV cell a spreadsheet shows as text, never runs as a formula.
    Only text is guarded: numbers (a negative priority) are written as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _Line:
    """A file-like object that hands back what csv.writer writes to it."""

    def write(self, value: str) -> str:
        return value


def csv_chunks(rows: Iterable[Iterable[object]], *, rows_per_chunk: int = 500) -> Iterator[str]:
    """The header and ``rows`` as CSV text, ``rows_per_chunk`` rows a chunk, every
    text cell guarded against formula injection. Lazy: rows are read as the
    chunks are asked for, so a long export never sits in memory."""
    writer = csv.writer(_Line())
    yield writer.writerow(EXPORT_COLUMNS)
    chunk: list[str] = []
    for row in rows:
        chunk.append(writer.writerow([csv_safe(cell) for cell in row]))
        if len(chunk) >= rows_per_chunk:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)
