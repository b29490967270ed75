"""Jidoka: every output an agent produces is inspected before it moves on.

An agent is configured with a list of **checks** (a JSON list, each item a
mapping such as ``{"check": "confidence", "min": 0.8}``). ``parse_checks`` is the
one place that list is checked, so a configuration that passes here cannot fail
an inspection later for being malformed; ``inspect`` then runs every check on an
output and returns a ``Verdict``: pass, or defect with every failed check's reason
(all of them, not just the first, so the reviewer sees the whole story at once).

Kinds of check: ``confidence``, ``uncertainty`` (hedges and refusals in the text),
``json`` (parses, optionally matches a JSON Schema), ``length``, ``token_waste``,
``regex`` and ``custom`` (a registered Python function, see ``KAIZEN_CUSTOM_CHECKS``).

Pure functions over plain values: no database, no Django models. ``inspect`` runs
on every output in a worker's hot path, so whatever can be prepared once (regexes,
marker patterns, schema validators, custom functions) is prepared once and cached.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from boards.agents.spec import ConfigError, _number, _plain

logger = logging.getLogger(__name__)

CHECK_KINDS: tuple[str, ...] = (
    "confidence",
    "uncertainty",
    "json",
    "length",
    "token_waste",
    "regex",
    "custom",
)

DEFAULT_CHECKS: list[dict[str, Any]] = [
    {"check": "confidence", "min": 0.7},
    {"check": "uncertainty"},
    {"check": "token_waste", "ratio": 1.5},
]

MAX_CHECKS = 20
MAX_NAME_LENGTH = 60

# Hedges and refusals a model writes when it does not really know. Each is a phrase
# a confident answer has no reason to contain: first-person forms ("I'm not sure",
# not "not sure", which ordinary advice such as "if you are not sure, ask" uses) and
# no lone modal verbs ("may", "might", "perhaps", "likely"), which fill ordinary
# prose and would stop the line on good work.
DEFAULT_UNCERTAINTY_MARKERS: tuple[str, ...] = (
    "I'm not sure",
    "I am not sure",
    "not certain",
    "I don't know",
    "I do not know",
    "I have no way of knowing",
    "I cannot",
    "I can't",
    "I'm unable",
    "I am unable",
    "I'm not able to",
    "I am not able to",
    "unable to determine",
    "cannot be determined",
    "I don't have access",
    "I do not have access",
    "as an AI",
    "as a language model",
    "I think",
    "I believe",
    "I'm guessing",
    "my best guess",
    "possibly",
    "it is unclear",
    "it's unclear",
    "hard to say",
    "difficult to say",
    "not enough information",
    "insufficient information",
)

REGEX_FLAGS: dict[str, re.RegexFlag] = {
    "IGNORECASE": re.IGNORECASE,
    "MULTILINE": re.MULTILINE,
    "DOTALL": re.DOTALL,
}

# A reason quotes at most this much of a matched text or a schema message: a
# verdict is read in an inbox row, and an output may be megabytes long.
MAX_QUOTE = 200

# The parameters each kind takes, in the order checks_json writes them
# (``custom`` takes any others too: they are passed to its function).
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "confidence": ("min", "when_missing"),
    "uncertainty": ("markers",),
    "json": ("schema",),
    "length": ("min_chars", "max_chars", "min_words", "max_words"),
    "token_waste": ("ratio", "optimal_tokens", "defect"),
    "regex": ("must_match", "must_not_match", "flags"),
    "custom": ("path",),
}

CustomCheck = Callable[..., str | None]


@dataclass(frozen=True)
class CheckSpec:
    """One configured check: its kind, its name (unique on the agent) and its
    normalised parameters, defaults filled in. Hashable on kind and name only,
    as the parameters are a dict; equality compares all three."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    @functools.cached_property
    def _prepared(self) -> Any:
        # Compiled once per spec (cached_property writes the instance's __dict__,
        # which a frozen dataclass allows); the helpers are cached by value as well,
        # so a configuration parsed afresh for each task is not compiled afresh.
        if self.kind == "uncertainty":
            return _markers(tuple(self.params["markers"]))
        if self.kind == "regex":
            flags = _flag_bits(self.params.get("flags", ()))
            return tuple(
                _compile(self.params[key], flags) if self.params.get(key) else None
                for key in ("must_match", "must_not_match")
            )
        if self.kind == "json" and self.params.get("schema") is not None:
            return _schema_validator(_canonical(self.params["schema"]))
        if self.kind == "custom":
            return {key: value for key, value in self.params.items() if key != "path"}
        return None


@dataclass(frozen=True)
class InspectionContext:
    title: str = ""
    input: str = ""
    # Tokens of the accepted output, when the provider reported them.
    tokens_out: int | None = None
    # The estimated optimal length of an output, from the agent's history, when known.
    optimal_tokens: int | None = None


@dataclass(frozen=True)
class Failure:
    name: str
    check: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "check": self.check, "reason": self.reason}


@dataclass(frozen=True)
class Verdict:
    failures: tuple[Failure, ...] = ()
    # Tokens beyond the optimal length, recorded whether or not it made a defect.
    waste_tokens: int = 0
    # What was not judged, or judged without stopping the line, and why.
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.passed:
            return "pass"
        # A check with its own name says so: two regex checks' reasons alone
        # would not tell the reviewer which rule was broken.
        reasons = (f.reason if f.name == f.check else f"{f.name}: {f.reason}" for f in self.failures)
        return "defect: " + "; ".join(reasons)

    def failures_json(self) -> list[dict[str, str]]:
        return [failure.to_json() for failure in self.failures]


# --- Configuration -------------------------------------------------------------


def _canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _flag_bits(names: Any) -> int:
    bits = 0
    for name in names:
        bits |= REGEX_FLAGS[name]
    return bits


# Any apostrophe a model may write: straight, curly (’ and ‘) or the modifier letter.
_APOSTROPHES = "['\u2019\u2018\u02bc]"
_APOSTROPHE = re.compile(_APOSTROPHES)
_WORD_CHARACTER = re.compile(r"\w")
MAX_MARKERS = 100
MAX_MARKER_LENGTH = 100


def _marker_key(phrase: str) -> str:
    """What a marker and a matched phrase are compared by: lower case, one
    apostrophe, single spaces."""
    return " ".join(_APOSTROPHE.sub("'", phrase.lower()).split())


@dataclass(frozen=True)
class _Markers:
    pattern: re.Pattern[str]
    # Each marker's key -> the marker as configured, to name it in the reason.
    names: dict[str, str]


@functools.lru_cache(maxsize=256)
def _markers(markers: tuple[str, ...]) -> _Markers:
    """One pattern for all the markers, searched in the lower-cased text.

    Built as a trie ("i(?:\\s+(?:am|can...))") rather than an alternation of whole
    phrases, and without IGNORECASE: then every branch starts with a literal and
    the regex engine skips straight to the few places a marker could begin, about
    eight times faster on ordinary text (this runs on every output). Word boundaries
    are lookarounds, checked after the first character so as not to defeat that
    skip, and only where the marker's own end is a word character (a marker may
    end in punctuation). Spaces in a marker match any run of whitespace,
    apostrophes any apostrophe."""
    names: dict[str, str] = {}
    trie: dict[str, Any] = {}
    for marker in markers:
        key = _marker_key(marker)
        names.setdefault(key, marker)
        node = trie
        for character in key:
            node = node.setdefault(character, {})
        node[""] = {}  # a marker ends here
    return _Markers(re.compile(_trie_pattern(trie, first=True)), names)


def _trie_pattern(node: dict[str, Any], *, first: bool = False, previous: str = "") -> str:
    branches = []
    for character, child in sorted(node.items()):
        if character == "":
            continue
        if character == " ":
            piece = r"\s+"
        elif character == "'":
            piece = _APOSTROPHES
        else:
            piece = re.escape(character)
        if first and _WORD_CHARACTER.match(character):
            piece += r"(?<!\w.)"  # no word character just before the marker
        branches.append(piece + _trie_pattern(child, previous=character))
    if "" in node:
        # Last, so a longer marker is preferred to one that is its beginning.
        branches.append(r"(?!\w)" if _WORD_CHARACTER.match(previous) else "")
    if len(branches) == 1:
        return branches[0]
    return "(?:" + "|".join(branches) + ")"


@functools.lru_cache(maxsize=64)
def _schema_validator(canonical: str) -> Validator:
    """A validator for a schema (given as canonical JSON, so it can be a cache key).
    jsonschema.SchemaError for a schema that is not valid. Formats ("email",
    "date-time", ...) are checked too: a schema that names one means it."""
    schema = json.loads(canonical)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@functools.lru_cache(maxsize=64)
def _import_check(path: str) -> CustomCheck:
    """The function a dotted path names, imported once per process. The path is
    checked against KAIZEN_CUSTOM_CHECKS by the callers, not here, so a change to
    the setting is seen at once."""
    function = import_string(path)
    if not callable(function):
        raise TypeError(f"{path} is a {type(function).__name__}, not a function")
    return function


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError([(where, f"must be a non-empty string, got {value!r}")])
    return value


def _parse_confidence(raw: dict[str, Any], where: str) -> dict[str, Any]:
    params: dict[str, Any] = {"min": 0.7, "when_missing": "pass"}
    if raw.get("min") is not None:
        params["min"] = _number(raw["min"], f"{where}.min", 0, 1, integer=False)
    if raw.get("when_missing") is not None:
        if raw["when_missing"] not in ("pass", "defect"):
            raise ConfigError(
                [(f"{where}.when_missing", f'must be "pass" or "defect", got {raw["when_missing"]!r}')]
            )
        params["when_missing"] = raw["when_missing"]
    return params


def _parse_uncertainty(raw: dict[str, Any], where: str) -> dict[str, Any]:
    markers = raw.get("markers")
    if markers is None:
        return {"markers": list(DEFAULT_UNCERTAINTY_MARKERS)}
    if not isinstance(markers, list | tuple) or not markers:
        raise ConfigError(
            [(f"{where}.markers", f'must be a list of phrases such as ["I\'m not sure"], got {markers!r}')]
        )
    if len(markers) > MAX_MARKERS:
        raise ConfigError([(f"{where}.markers", f"at most {MAX_MARKERS} markers, got {len(markers)}")])
    problems = []
    kept: dict[str, str] = {}
    for index, marker in enumerate(markers):
        if not isinstance(marker, str) or not marker.strip():
            problems.append((f"{where}.markers[{index}]", f"must be a non-empty phrase, got {marker!r}"))
        elif len(marker) > MAX_MARKER_LENGTH:
            problems.append((f"{where}.markers[{index}]", f"keep a marker to {MAX_MARKER_LENGTH} characters"))
        else:
            # Markers differing only in case, spacing or apostrophes match alike:
            # the first is kept, so the reason never names one phrase twice.
            kept.setdefault(_marker_key(marker), marker.strip())
    if problems:
        raise ConfigError(problems)
    return {"markers": list(kept.values())}


def _parse_json(raw: dict[str, Any], where: str) -> dict[str, Any]:
    schema = raw.get("schema")
    if schema is None:
        return {"schema": None}
    if not isinstance(schema, dict):
        raise ConfigError(
            [(f"{where}.schema", f'must be a JSON Schema such as {{"type": "object"}}, got {schema!r}')]
        )
    try:
        _schema_validator(_canonical(schema))
    except (TypeError, ValueError) as exc:  # not JSON at all: a set, a datetime, NaN...
        raise ConfigError([(f"{where}.schema", f"must be plain JSON: {exc}")]) from None
    except SchemaError as exc:
        at = f" at {exc.json_path}" if exc.json_path != "$" else ""
        raise ConfigError([(f"{where}.schema", f"is not a valid JSON Schema{at}: {exc.message}")]) from None
    return {"schema": schema}


def _parse_length(raw: dict[str, Any], where: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key in _PARAMETERS["length"]:
        if raw.get(key) is not None:
            try:
                params[key] = _number(raw[key], f"{where}.{key}", 0, None, integer=True)
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    if not params:
        raise ConfigError([(where, "give at least one of min_chars, max_chars, min_words, max_words")])
    for unit in ("chars", "words"):
        low, high = params.get(f"min_{unit}"), params.get(f"max_{unit}")
        if low is not None and high is not None and low > high:
            problems.append((f"{where}.min_{unit}", f"{low} is more than max_{unit} {high}"))
    if problems:
        raise ConfigError(problems)
    return params


def _parse_token_waste(raw: dict[str, Any], where: str) -> dict[str, Any]:
    params: dict[str, Any] = {"ratio": 1.5, "optimal_tokens": None, "defect": False}
    problems: list[tuple[str, str]] = []
    if raw.get("ratio") is not None:
        try:
            ratio = _number(raw["ratio"], f"{where}.ratio", 1, 1000, integer=False)
            if ratio == 1:
                raise ConfigError(
                    [
                        (
                            f"{where}.ratio",
                            "must be more than 1 (1.5 allows outputs half as long again as the optimal)",
                        )
                    ]
                )
            params["ratio"] = ratio
        except ConfigError as exc:
            problems.extend(exc.problems)
    if raw.get("optimal_tokens") is not None:
        try:
            params["optimal_tokens"] = _number(
                raw["optimal_tokens"], f"{where}.optimal_tokens", 1, 10_000_000, integer=True
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if raw.get("defect") is not None:
        if not isinstance(raw["defect"], bool):
            problems.append((f"{where}.defect", f"must be true or false, got {raw['defect']!r}"))
        else:
            params["defect"] = raw["defect"]
    if problems:
        raise ConfigError(problems)
    return params


def _parse_regex(raw: dict[str, Any], where: str) -> dict[str, Any]:
    problems: list[tuple[str, str]] = []
    flags = raw.get("flags")
    if flags is None:
        flags = []
    elif not isinstance(flags, list | tuple) or any(flag not in REGEX_FLAGS for flag in flags):
        problems.append((f"{where}.flags", f"must be a list of {', '.join(REGEX_FLAGS)}, got {flags!r}"))
        flags = []
    # Kept in one order, so equal configurations are written alike.
    params: dict[str, Any] = {
        "must_match": None,
        "must_not_match": None,
        "flags": [f for f in REGEX_FLAGS if f in flags],
    }
    bits = _flag_bits(params["flags"])
    for key in ("must_match", "must_not_match"):
        if raw.get(key) is None:
            continue
        try:
            params[key] = _string(raw[key], f"{where}.{key}")
            # No guard against patterns that backtrack catastrophically: only an
            # admin configures them, and a timeout would cost every output a thread.
            _compile(params[key], bits)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except re.error as exc:
            problems.append((f"{where}.{key}", f"is not a valid regular expression: {exc}"))
    if not problems and params["must_match"] is None and params["must_not_match"] is None:
        problems.append((where, "give must_match, must_not_match or both"))
    if problems:
        raise ConfigError(problems)
    return params


def _parse_custom(raw: dict[str, Any], where: str) -> dict[str, Any]:
    path = raw.get("path")
    registered = list(settings.KAIZEN_CUSTOM_CHECKS)
    if not isinstance(path, str) or not path:
        raise ConfigError(
            [(f"{where}.path", f"name the function's dotted path, one of: {', '.join(registered) or 'none'}")]
        )
    if path not in registered:
        close = difflib.get_close_matches(path, registered, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            [
                (
                    f"{where}.path",
                    f"{path!r} is not a registered check{hint}; registered: {', '.join(registered) or 'none'} "
                    "(a function must be listed in the KAIZEN_CUSTOM_CHECKS setting to be used)",
                )
            ]
        )
    try:
        _import_check(path)
    except Exception as exc:  # whatever importing it raised, the check cannot be used
        raise ConfigError([(f"{where}.path", f"cannot be used: {exc!r}")]) from None
    # Everything else is the function's own business, passed to it as ``params``.
    return {
        "path": path,
        **{key: value for key, value in raw.items() if key not in ("check", "name", "path")},
    }


_PARSERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "confidence": _parse_confidence,
    "uncertainty": _parse_uncertainty,
    "json": _parse_json,
    "length": _parse_length,
    "token_waste": _parse_token_waste,
    "regex": _parse_regex,
    "custom": _parse_custom,
}


def _parse_check(value: Any, where: str) -> CheckSpec:
    if not isinstance(value, dict):
        raise ConfigError(
            [(where, f'must be a mapping such as {{"check": "confidence", "min": 0.7}}, got {value!r}')]
        )
    kind = value.get("check")
    if kind not in CHECK_KINDS:
        said = "say which check" if kind is None else f"unknown check {kind!r}"
        raise ConfigError([(f"{where}.check", f"{said}: one of {', '.join(CHECK_KINDS)}")])
    problems: list[tuple[str, str]] = []
    name = value.get("name")
    if name is None:
        name = kind
    elif not isinstance(name, str) or not name.strip():
        problems.append((f"{where}.name", f"must be a non-empty label, got {name!r}"))
    elif len(name.strip()) > MAX_NAME_LENGTH:
        problems.append((f"{where}.name", f"keep the name to {MAX_NAME_LENGTH} characters"))
    if kind != "custom":
        allowed = _PARAMETERS[kind]
        for key in value:
            if key not in ("check", "name", *allowed):
                problems.append(
                    (
                        f"{where}.{key}",
                        f"unknown parameter for a {kind} check; allowed: name, {', '.join(allowed)}",
                    )
                )
    params: dict[str, Any] = {}
    try:
        params = _PARSERS[kind](value, where)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return CheckSpec(kind=kind, name=name.strip(), params=params)


def parse_checks(value: Any, where: str = "checks") -> list[CheckSpec]:
    """An agent's checks, normalised. ConfigError listing every problem found."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            [(where, f'must be a list of checks such as [{{"check": "confidence"}}], got {value!r}')]
        )
    if len(value) > MAX_CHECKS:
        raise ConfigError([(where, f"at most {MAX_CHECKS} checks, got {len(value)}")])
    problems: list[tuple[str, str]] = []
    specs: list[CheckSpec] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        try:
            spec = _parse_check(item, f"{where}[{index}]")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if spec.name in seen:
            problems.append(
                (
                    f"{where}[{index}].name",
                    f"{spec.name!r} already names {where}[{seen[spec.name]}]: give each check its own name",
                )
            )
            continue
        seen[spec.name] = index
        specs.append(spec)
    if problems:
        raise ConfigError(problems)
    return specs


def checks_json(specs: list[CheckSpec]) -> list[dict[str, Any]]:
    """The normalised form to store; parse_checks reads it back to equal specs."""
    result = []
    for spec in specs:
        params = dict(spec.params)
        # The built-in marker list is not frozen into each agent's configuration,
        # so an improvement to it reaches every agent that did not choose its own.
        if spec.kind == "uncertainty" and tuple(params.get("markers", ())) == DEFAULT_UNCERTAINTY_MARKERS:
            del params["markers"]
        result.append({"check": spec.kind, "name": spec.name, **params})
    return result


# --- Inspection ----------------------------------------------------------------

# What one check found: a defect reason (None passes), a note, and wasted tokens.
_Outcome = tuple[str | None, str | None, int]
_PASS: _Outcome = (None, None, 0)


def _quote(text: str) -> str:
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 1] + "…"


def _check_confidence(
    spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext
) -> _Outcome:
    threshold = spec.params["min"]
    if confidence is None:
        # A custom agent may report no confidence; the admin decides if that stops the line.
        if spec.params["when_missing"] == "defect":
            return ("no confidence reported, and this check requires one", None, 0)
        return (None, f"{spec.name}: no confidence reported, not judged", 0)
    # Written as "not >=" so a NaN from a broken provider is a defect, not a pass.
    if not confidence >= threshold:
        shown = f"{confidence:.3g}"
        if shown == f"{threshold:.3g}":  # 0.6999 is not "0.7 is below 0.7"
            shown = repr(confidence)
        return (f"confidence {shown} is below {_plain(threshold)}", None, 0)
    return _PASS


def _check_uncertainty(
    spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext
) -> _Outcome:
    markers: _Markers = spec._prepared
    # The lower-cased copy costs far less than IGNORECASE would (see _markers).
    found = dict.fromkeys(
        markers.names.get(_marker_key(match.group()), match.group())
        for match in markers.pattern.finditer(text.lower())
    )
    if not found:
        return _PASS
    return ("uncertainty marker(s): " + ", ".join(f'"{marker}"' for marker in found), None, 0)


# One surrounding markdown fence, as models often wrap JSON in ```json ... ```.
_FENCE = re.compile(r"\A\s*```[\w+-]*[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_json(spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext) -> _Outcome:
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        # NaN and Infinity are Python's extension, not JSON: a strict reader downstream would refuse them.
        document = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return (f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", None, 0)
    except ValueError as exc:
        return (f"not JSON: {exc}", None, 0)
    validator = spec._prepared
    if validator is None:
        return _PASS
    error = best_match(validator.iter_errors(document))
    if error is None:
        return _PASS
    return (f"does not match the schema at {error.json_path}: {_quote(error.message)}", None, 0)


def _count(number: int, unit: str) -> str:
    return f"{number:,} {unit}{'' if number == 1 else 's'}"


def _check_length(
    spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext
) -> _Outcome:
    params = spec.params
    reasons = []
    for unit, key in (("character", "chars"), ("word", "words")):
        low, high = params.get(f"min_{key}"), params.get(f"max_{key}")
        if low is None and high is None:
            continue
        size = len(text) if key == "chars" else len(text.split())
        if high is not None and size > high:
            reasons.append(f"{_count(size, unit)}, more than the maximum {high:,}")
        elif low is not None and size < low:
            reasons.append(f"{_count(size, unit)}, fewer than the minimum {low:,}")
    return ("; ".join(reasons) or None, None, 0)


def _check_token_waste(
    spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext
) -> _Outcome:
    optimal = spec.params["optimal_tokens"] or context.optimal_tokens
    if not optimal or optimal <= 0:
        return (None, f"{spec.name}: no optimal length known yet, not judged", 0)
    tokens = context.tokens_out if context.tokens_out is not None else math.ceil(len(text) / 4)
    ratio = spec.params["ratio"]
    if tokens <= ratio * optimal:
        return _PASS
    waste = tokens - optimal
    finding = (
        f"{_count(tokens, 'token')}, {tokens / optimal:.1f} times the optimal {optimal:,} ({waste:,} wasted)"
    )
    if spec.params["defect"]:
        return (finding, None, waste)
    # Recorded, for the waste figures, without stopping the line.
    return (None, f"{spec.name}: {finding}", waste)


def _check_regex(
    spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext
) -> _Outcome:
    must_match, must_not_match = spec._prepared
    reasons = []
    if must_match is not None and must_match.search(text) is None:
        reasons.append(f"does not match /{must_match.pattern}/")
    if must_not_match is not None:
        match = must_not_match.search(text)
        if match is not None:
            reasons.append(f"matches /{must_not_match.pattern}/ at {_quote(match.group(0))!r}")
    return ("; ".join(reasons) or None, None, 0)


def _check_custom(
    spec: CheckSpec, text: str, confidence: float | None, context: InspectionContext
) -> _Outcome:
    path = spec.params["path"]
    # Checked on every call (a list lookup), not only when configured: a spec built
    # by hand, or a path since dropped from the setting, must not run unregistered code.
    if path not in settings.KAIZEN_CUSTOM_CHECKS:
        return (f"custom check {path} is not registered in KAIZEN_CUSTOM_CHECKS", None, 0)
    function = _import_check(path)
    # A fresh copy each call: a function that changes its params cannot change the next inspection.
    reason = function(text, confidence=confidence, context=context, params=dict(spec._prepared))
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"{path} returned {type(reason).__name__}, not a reason (str) or None")
    return (_quote(reason) if reason else None, None, 0)


_CHECKERS: dict[str, Callable[[CheckSpec, str, float | None, InspectionContext], _Outcome]] = {
    "confidence": _check_confidence,
    "uncertainty": _check_uncertainty,
    "json": _check_json,
    "length": _check_length,
    "token_waste": _check_token_waste,
    "regex": _check_regex,
    "custom": _check_custom,
}


def inspect(
    text: str,
    *,
    confidence: float | None,
    checks: list[CheckSpec],
    context: InspectionContext = InspectionContext(),
) -> Verdict:
    """Run every check on an output (none stops the others) and say pass or defect."""
    failures: list[Failure] = []
    notes: list[str] = []
    waste = 0
    for spec in checks:
        try:
            reason, note, wasted = _CHECKERS[spec.kind](spec, text, confidence, context)
        except Exception as exc:
            # Jidoka: a check that cannot say the output is good has not passed it.
            logger.exception("andon: check %r (%s) crashed inspecting an output", spec.name, spec.kind)
            reason, note, wasted = f"check crashed: {exc!r}", None, 0
        if reason is not None:
            failures.append(Failure(name=spec.name, check=spec.kind, reason=reason))
        if note is not None:
            notes.append(note)
        # Several token_waste checks measure the same tokens: the largest is the waste, not the sum.
        waste = max(waste, wasted)
    return Verdict(failures=tuple(failures), waste_tokens=waste, notes=tuple(notes))
