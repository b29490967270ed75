"""What the demo feed adds to a board: varied tasks from templates, reproducibly.

A board's ``demo_tasks`` are entries as a config file gives them (boards.config
checks them with ``entry_problems`` below). A plain entry is one fixed task. An
entry with ``slots`` is a template: its title and input name slots as ``{name}``
(``{{`` and ``}}`` are literal braces), and each slot says where its value comes
from, so every task it yields differs (a part number, a measurement in or out
of tolerance, a customer, an amount, a date):

- a list: one of its values, each as likely;
- ``{"int": [low, high]}``: a whole number in the range, both ends included;
- ``{"number": [low, high], "decimals": 2}``: a number in the range, written with
  that many decimals;
- ``{"date": ["2025-03-01", "2025-06-30"], "format": "%d %b"}``: a day in the
  range, written with strftime's format (default "%d %B %Y").

A value chosen from a list may itself name slots defined before it, so values
can agree with each other (a complaint that quotes the amount).

``demo_task_at(entries, settings, number)`` is the feed's ``number``-th task
(0, 1, 2, ...), a pure function of the entries, the board's feed settings and
the number: a run replays exactly from a fresh database, and a test can check
what the feed will do. The settings' ``repeat_share`` of the numbers are exact
repeats of an earlier task (the same title, input and capability), so reuse
and the response cache have real work to save and no more.

Pure: no database, no Django models.
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from boards.text import MAX_TITLE

DEFAULT_SEED = 1
DEFAULT_REPEAT_SHARE = 0.1
DEFAULT_BATCH = 1
MAX_BATCH = 50
# A repeat copies one of this many tasks before it: recent enough that the
# earlier one has usually finished (and can be reused), old enough to vary.
REPEAT_WINDOW = 200
MAX_SLOTS = 40
MAX_CHOICES = 1000
MAX_DECIMALS = 6
DEFAULT_DATE_FORMAT = "%d %B %Y"
# Tasks rendered per entry when a file is checked: every slot kind and most
# choices come up, so a template that cannot render is found then, not in the feed.
CHECK_RENDERS = 50

_formatter = string.Formatter()


@dataclass(frozen=True)
class FeedSettings:
    """A board's demo feed: the seed of its sequence, the share of exact repeats
    and how many tasks each feed tick adds."""

    seed: int = DEFAULT_SEED
    repeat_share: float = DEFAULT_REPEAT_SHARE
    batch: int = DEFAULT_BATCH

    @classmethod
    def from_json(cls, data: dict | None) -> FeedSettings:
        data = data or {}
        return cls(
            seed=int(data.get("seed", DEFAULT_SEED)),
            repeat_share=float(data.get("repeat_share", DEFAULT_REPEAT_SHARE)),
            batch=int(data.get("batch", DEFAULT_BATCH)),
        )

    def as_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "repeat_share": self.repeat_share, "batch": self.batch}


# --- checking entries ------------------------------------------------------------------


def template_names(text: str) -> list[str]:
    """The slot names a text uses, in order; ValueError naming the problem when it
    is not a plain ``{name}`` template."""
    names = []
    try:
        parsed = list(_formatter.parse(text))
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for a literal brace)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"{{{shown}}} is not a slot: write {{name}} with a slot's name only "
                "(and {{ or }} for a literal brace)"
            )
        names.append(name)
    return names


def _texts(value: Any) -> list[str]:
    """The texts inside an input (a string, or a JSON object's string values, at any depth)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _day(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a date such as 2025-03-01") from None


def normal_slot(name: str, spec: Any, earlier: list[str]) -> dict[str, Any]:
    """A slot's source in its stored form; ValueError naming what is wrong.
    ``earlier`` holds the names of the slots defined before it (a chosen value may use them)."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"slot {name!r}: the list of values is empty")
        if len(spec) > MAX_CHOICES:
            raise ValueError(f"slot {name!r}: at most {MAX_CHOICES} values, got {len(spec)}")
        values = []
        for value in spec:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError(f"slot {name!r}: values must be text or numbers, got {value!r}")
            if isinstance(value, str):
                for used in template_names(value):
                    if used not in earlier:
                        before = ", ".join(earlier) or "none"
                        raise ValueError(
                            f"slot {name!r}: the value {value!r} uses {{{used}}}, but a value may use "
                            f"only slots defined before its own (here: {before})"
                        )
            values.append(value)
        return {"choice": values}
    if not isinstance(spec, dict) or len({"int", "number", "date"} & set(spec)) != 1:
        raise ValueError(
            f"slot {name!r}: give a list of values, or one of {{int: [low, high]}}, "
            f"{{number: [low, high], decimals: 2}}, {{date: [first, last], format: '%d %b'}}; got {spec!r}"
        )
    kind = next(k for k in ("int", "number", "date") if k in spec)
    allowed = {"int": {"int"}, "number": {"number", "decimals"}, "date": {"date", "format"}}[kind]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"slot {name!r}: unknown key(s) {', '.join(unknown)} for a {kind} slot")
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ValueError(f"slot {name!r}: {kind} takes [low, high], got {bounds!r}")
    low, high = bounds
    if kind == "int":
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) or low > high:
            raise ValueError(f"slot {name!r}: int takes two whole numbers, low <= high, got {bounds!r}")
        return {"int": [low, high]}
    if kind == "number":
        decimals = spec.get("decimals", 2)
        if not all(_number(b) for b in bounds) or low > high:
            raise ValueError(f"slot {name!r}: number takes two numbers, low <= high, got {bounds!r}")
        if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= MAX_DECIMALS:
            raise ValueError(f"slot {name!r}: decimals must be 0 to {MAX_DECIMALS}, got {decimals!r}")
        return {"number": [low, high], "decimals": decimals}
    first, last = _day(low, f"slot {name!r}"), _day(high, f"slot {name!r}")
    if first > last:
        raise ValueError(f"slot {name!r}: the first date {first} is after the last {last}")
    fmt = spec.get("format", DEFAULT_DATE_FORMAT)
    if not isinstance(fmt, str) or not fmt.strip():
        raise ValueError(f"slot {name!r}: format must be a strftime format such as '%d %b', got {fmt!r}")
    try:
        first.strftime(fmt)
    except ValueError as exc:
        raise ValueError(f"slot {name!r}: format {fmt!r}: {exc}") from None
    return {"date": [first.isoformat(), last.isoformat()], "format": fmt}


def slot_items(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """An entry's slots in definition order. Stored as a list of [name, source]
    pairs: the order is part of the meaning (a value may use the slots before
    it, and it decides the draws), and PostgreSQL's jsonb keeps no key order.
    A mapping (written by hand in the admin) is read in its own order."""
    slots = entry.get("slots") or []
    if isinstance(slots, dict):
        return list(slots.items())
    return [(name, spec) for name, spec in slots]


def stored_slots(slots: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """normal_slots' result as it is stored (see slot_items)."""
    return [[name, spec] for name, spec in slots.items()]


def normal_slots(slots: Any) -> dict[str, dict[str, Any]]:
    """All of an entry's slots, in their normal form (definition order kept)."""
    if not isinstance(slots, dict) or not slots:
        raise ValueError("slots must be a mapping of slot names to their values")
    if len(slots) > MAX_SLOTS:
        raise ValueError(f"at most {MAX_SLOTS} slots, got {len(slots)}")
    result: dict[str, dict[str, Any]] = {}
    for name, spec in slots.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"slot name {name!r} must be a name such as part_number")
        result[name] = normal_slot(name, spec, list(result))
    return result


def entry_problems(entry: dict[str, Any]) -> list[str]:
    """What is wrong with a stored entry's template: slots used but not defined,
    and any render that fails. Empty when fine."""
    slots = dict(slot_items(entry))
    if not slots:
        return []  # a plain entry is one fixed task: its braces are text
    problems: list[str] = []
    for field, texts in (("title", [entry.get("title", "")]), ("input", _texts(entry.get("input", "")))):
        for text in texts:
            try:
                names = template_names(text)
            except ValueError as exc:
                problems.append(f"{field}: {exc}")
                continue
            for name in names:
                if name not in slots:
                    defined = ", ".join(slots) or "none"
                    problems.append(f"{field}: {{{name}}} is not a slot (defined: {defined})")
    if problems:
        return problems
    # A slot nothing uses is harmless (entries may share a set of slots through a
    # YAML anchor); a misspelt one shows as the name used but not defined, above.
    for number in range(CHECK_RENDERS):
        try:
            render(entry, random.Random(f"check:{number}"))
        except (ValueError, KeyError, IndexError) as exc:
            problems.append(f"cannot render: {exc}")
            break
    return problems


# --- rendering ---------------------------------------------------------------------------


def _plain(number: float, decimals: int) -> str:
    return f"{number:.{decimals}f}"


def slot_value(spec: dict[str, Any], rng: random.Random, values: dict[str, str]) -> str:
    if "choice" in spec:
        value = rng.choice(spec["choice"])
        return value.format_map(values) if isinstance(value, str) else str(value)
    if "int" in spec:
        low, high = spec["int"]
        return str(rng.randint(low, high))
    if "number" in spec:
        low, high = spec["number"]
        decimals = spec.get("decimals", 2)
        # On the grid of the written decimals, so every written value is as likely.
        scale = 10**decimals
        return _plain(rng.randint(math.ceil(low * scale), math.floor(high * scale)) / scale, decimals)
    first, last = (date.fromisoformat(d) for d in spec["date"])
    day = first + timedelta(days=rng.randint(0, (last - first).days))
    return day.strftime(spec.get("format", DEFAULT_DATE_FORMAT))


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format_map(values)
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    return value


def input_text(value: Any) -> str:
    """A task's input as the line stores it: text as is, a JSON object as JSON."""
    if isinstance(value, str):
        return value
    # Keys sorted: the same text on every database (jsonb keeps no key order).
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def render(entry: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One task from an entry: {title, input, capability, priority}."""
    values: dict[str, str] = {}
    for name, spec in slot_items(entry):
        values[name] = slot_value(spec, rng, values)
    title = _fill(entry.get("title", ""), values) if values else entry.get("title", "")
    if len(title) > MAX_TITLE:  # longer than a task may hold: cut with an ellipsis
        title = title[: MAX_TITLE - 1] + "…"
    raw_input = entry.get("input", "")
    return {
        "title": title,
        "input": input_text(_fill(raw_input, values) if values else raw_input),
        "capability": entry.get("capability", ""),
        "priority": int(entry.get("priority", 0)),
    }


def _rng(seed: int, number: int, purpose: str) -> random.Random:
    # Seeded with text: Python hashes it with SHA-512, the same in every process
    # (unlike hash(), which PYTHONHASHSEED changes).
    return random.Random(f"kaizen-demo:{seed}:{number}:{purpose}")


def source_number(settings: FeedSettings, number: int) -> int:
    """The number whose fresh task the ``number``-th task is: itself, or, for a
    repeat, the earlier task it copies (followed back, as that one may be a repeat too)."""
    while number > 0 and settings.repeat_share > 0:
        rng = _rng(settings.seed, number, "repeat")
        if rng.random() >= settings.repeat_share:
            break
        number -= 1 + rng.randrange(min(number, REPEAT_WINDOW))
    return number


def demo_task_at(entries: list[dict[str, Any]], settings: FeedSettings, number: int) -> dict[str, Any]:
    """The feed's ``number``-th task (from 0): an entry picked by weight and rendered,
    or an exact repeat of an earlier task. The same arguments always give the same task."""
    if not entries:
        raise ValueError("a board without demo tasks has nothing to feed")
    fresh = source_number(settings, number)
    rng = _rng(settings.seed, fresh, "task")
    weights = [float(entry.get("weight", 1)) for entry in entries]
    entry = rng.choices(entries, weights=weights)[0]
    return render(entry, rng)


__all__ = [
    "FeedSettings",
    "demo_task_at",
    "entry_problems",
    "input_text",
    "normal_slots",
    "render",
    "slot_items",
    "source_number",
    "stored_slots",
    "template_names",
]
