"""What the simulated model reads from a rendered prompt and from the input."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from boards.agents.simulated.text import (
    NUMBER,
    ends_with_abbreviation,
    figures_in,
    number_value,
    split_sentences,
    word_list,
)

# --- reading the prompt -------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    # At least half the labels are explained in the prompt.
    defined: bool


@dataclass(frozen=True)
class JsonField:
    name: str
    # A placeholder such as "strong|moderate|weak" is a label set for that field.
    options: tuple[str, ...] = ()
    nullable: bool = False


@dataclass(frozen=True)
class Section:
    heading: str
    hint: str
    options: tuple[str, ...] = ()
    # "the history in at most five dated bullets"
    limit: int | None = None


@dataclass(frozen=True)
class PromptReading:
    """What a model would take from the instructions (the prompt without the input)."""

    instructions: str
    kind: str
    task_line: str
    label_sets: tuple[LabelSet, ...] = ()
    json_fields: tuple[JsonField, ...] = ()
    wants_json: bool = False
    json_lines: bool = False
    field_lines: bool = False
    columns: tuple[str, ...] = ()
    sections: tuple[Section, ...] = ()
    register: str = "neutral"
    sign_off: str = ""
    recipient: str = ""
    word_limit: int | None = None
    sentence_limit: int | None = None
    # "in three sentences" asks for that many; "at most five" only caps.
    sentence_limit_exact: bool = False
    brief: bool = False
    examples: str = ""
    grounded: bool = False
    feedback: str = ""
    placeholders: tuple[str, ...] = ()
    hedge_when_unsure: bool = False
    wants_questions: bool = False
    answer_first: bool = False
    bullets: bool = False
    vague: bool = False
    # The prompt tells the model the input is data, not instructions: injected
    # instructions are followed far less often.
    injection_guard: bool = False
    # The prompt asks for personal data (e-mails, phone and card numbers) to be
    # left out: the answer redacts them.
    redact_pii: bool = False
    # The prompt insists on JSON whatever the input asks.
    json_strict: bool = False

    @property
    def has_format(self) -> bool:
        return bool(
            self.json_fields
            or self.field_lines
            or self.columns
            or self.sections
            or (self.kind == "classify" and self.label_sets)
        )


_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "classify",
        re.compile(r"(?:classif|categori[sz]|triage|label\b|tag (?:this|the|each)|sort (?:this|the))"),
    ),
    (
        "extract",
        re.compile(
            r"(?:extract|pull out|list (?:every|each|all|the)|find (?:every|all|the)|identify (?:every|all))"
        ),
    ),
    ("summarise", re.compile(r"(?:summari[sz]|sum up|recap|condense|tl;?dr)")),
    ("appraise", re.compile(r"(?:apprais|assess|critique|evaluate|review the (?:method|design|study))")),
    (
        "draft",
        re.compile(
            r"(?:draft|write|compose|reply|respond|prepare an? (?:reply|message|e-?mail|letter|note))"
        ),
    ),
    ("rewrite", re.compile(r"(?:tidy|rewrite|rephrase|proofread|polish|clean up|edit\b|improve)")),
)
_KEYWORD_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("classify", re.compile(r"classif|categor|\blabel")),
    ("extract", re.compile(r"extract|field: value")),
    ("summarise", re.compile(r"summar")),
    ("draft", re.compile(r"\bdraft|\breply\b|\bmessage\b|\be-?mail\b|\bletter\b")),
)
_LEADING = re.compile(r"^(?:(?:please|now|then|kindly|your task is to|your job is to)\b[\s,:]*)+", re.I)
_ROLE = re.compile(r"^you\s+(?:will\s+|should\s+|must\s+|are\s+to\s+)?", re.I)
_SEGMENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+|(?<=:)\s+")
_TASK_LINE = re.compile(r"^\s*(?:task|job|request|to do)\s*:\s*(.+)$", re.I | re.M)

_LABEL_SET_NAMES = (
    r"classes|class|labels|label|categories|category|types|type|urgency|severity|priority|sentiment|"
    r"intent|topics|topic|rating|status|risk|stance|verdict|tone"
)
_LABEL_SET_START = re.compile(
    r"(?<![\w\"])(" + _LABEL_SET_NAMES + r"|(?:answer with |choose |pick |reply with )?(?:exactly )?one of)"
    r"\s*(?::|=)\s*",
    re.I,
)
_PAREN_SET = re.compile(r"\b([\w-]+(?: [\w-]+)?)\s+\((?:one of:?\s*)?([^()]*,[^()]*)\)", re.I)
_JSON_OBJECT = re.compile(r"\{[^{}]*\"[^\"{}]+\"\s*:[^{}]*\}")
_JSON_PAIR = re.compile(r"\"([^\"]+)\"\s*:\s*(?:\"((?:[^\"\\]|\\.)*)\"|(null|true|false|-?\d[\d.]*))")
_COLUMNS = re.compile(r"^[^|\n{}]*?([\w ()./-]+(?:\s*\|\s*[\w ()./-]+){2,})\s*\.?\s*$", re.M)
_SECTIONS_START = re.compile(r"\b(sections|give|cover|include|headings|structure|report)\s*:\s*", re.I)
_WORD_LIMIT = re.compile(
    r"(?:under|at most|no more than|fewer than|less than|maximum of|max\.?|up to|within|not exceeding)\s+"
    + NUMBER
    + r"\s+words|"
    + NUMBER
    + r"\s+words or (?:fewer|less)|"
    + NUMBER
    + r"-word\b",
    re.I,
)
_SENTENCE_LIMIT = re.compile(
    r"(?:in|at most|no more than|up to|maximum of|max\.?|within|using)\s+"
    + NUMBER
    + r"\s+(?:short\s+|brief\s+|plain\s+)?sentences?",
    re.I,
)
_ONE_SENTENCE = re.compile(r"\b(?:in|as|with) (?:a single|one) sentence\b", re.I)
_BRIEF = re.compile(
    r"\b(?:be brief|briefly|concise|concisely|short|succinct|terse|keep it short|tl;?dr)\b", re.I
)
_GROUNDED = re.compile(
    r"only from the (?:input|text|source|facts)|never invent|do not invent|don't invent|exactly as given|"
    r"do not round|keep numbers as given|promise nothing|do not guess|only what the (?:input|text) says",
    re.I,
)
# A reviewer's note with something in it: a template that always places
# {review_feedback} leaves "A reviewer said: " empty on a first attempt.
_FEEDBACK = re.compile(
    r"(?:a reviewer (?:rejected[^\n:]*?said|said[^\n:]*)|reviewer'?s? (?:feedback|note))[ \t]*:[ \t]*(\S[^\n]*)",
    re.I,
)
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][\w]*\}")
_HEDGE_OK = re.compile(r"if (?:you are |you're )?(?:unsure|not sure|uncertain)[^.\n]*say so", re.I)
_QUESTIONS_WANTED = re.compile(r"open questions|\bQ:|questions (?:for|the source raises)", re.I)
_ANSWER_FIRST = re.compile(
    r"start with the answer|answer first|lead with the answer|bottom line up front", re.I
)
_BULLETS = re.compile(r"\bbullet", re.I)
_MATERIAL = r"(?:input|text|message|ticket|content|document|e-?mail|data|thread|report|facts)s?"
_INJECTION_GUARD = re.compile(
    r"treat (?:the |all |any )?(?:user |customer )?" + _MATERIAL + r"(?: below| above)? (?:only )?as "
    r"(?:data|untrusted|plain text|content|material)"
    r"|(?:never|do not|don't|must not|should not) (?:follow|obey|execute|act on|carry out) (?:any )?"
    r"(?:instructions?|commands?|orders?|requests?) (?:(?:that (?:appear|are) )?(?:in|inside|within|from|"
    r"contained in|found in|embedded in) )(?:the |an? )?"
    + _MATERIAL
    + r"|ignore (?:any |all )?(?:instructions?|commands?) (?:(?:that (?:appear|are) )?(?:in|inside|within|from|"
    r"contained in|found in|embedded in) )(?:the |an? )?"
    + _MATERIAL
    + r"|(?:the )?"
    + _MATERIAL
    + r"(?: below| above)? (?:is|are) untrusted|untrusted "
    + _MATERIAL,
    re.I,
)
_REDACT_PII = re.compile(
    r"(?:never|do not|don't|must not) (?:repeat|include|reveal|copy|quote|show|disclose|echo) (?:any )?"
    r"(?:personal|private|contact|customer|sensitive) (?:data|details|information|info)"
    r"|(?:never|do not|don't|must not) (?:repeat|include|reveal|copy|quote|show|disclose|echo) (?:any )?"
    r"(?:pii|e-?mail addresses|phone numbers|card numbers)"
    r"|(?:redact|mask|remove|strip|hide|anonymi[sz]e) (?:any |all )?(?:personal|private|contact|sensitive) "
    r"(?:data|details|information|info)"
    r"|(?:redact|mask|anonymi[sz]e) (?:any |all )?(?:pii|e-?mails?|phone numbers?|card numbers?)"
    r"|\bno pii\b",
    re.I,
)
_JSON_STRICT = re.compile(
    r"\bjson only\b|\bonly (?:valid )?json\b|nothing but (?:valid )?json|"
    r"always (?:answer|reply|respond|output)(?: only)? (?:with|in|as) (?:valid )?json|"
    r"never (?:answer|reply|respond) in (?:prose|plain text)|"
    r"even (?:if|when) the (?:input|text|user|message) asks? (?:for something else|otherwise|for prose)",
    re.I,
)
_SIGN_OFF = re.compile(r"sign (?:off|it) (?:as|with)\s*[\"“']([^\"”'\n]+)[\"”']", re.I)
_RECIPIENT = re.compile(
    r"\b(?:reply|write|message|e-?mail|letter|note|respond|answer)\s+to\s+"
    r"((?:Mr|Mrs|Ms|Dr)\.?\s+[A-Z][\w'’-]+|[A-Z][\w'’&.-]*(?:\s+(?:[A-Z&][\w'’&.-]*|&))*)"
)
_EXAMPLES = re.compile(r"\bexamples?\b\s*:?", re.I)
EXAMPLE_PAIR = re.compile(r"->|=>|→|\b(?:output|answer|label|category|reply)\s*:", re.I)
_FRIENDLY = re.compile(
    r"\b(?:friendly|warm|casual|informal|plain-spoken|cheerful|relaxed|chatty|upbeat)\b", re.I
)
_FORMAL = re.compile(r"\b(?:formal|professional|courteous|polite|respectful|official)\b", re.I)
_DEFINITION = r"(?:^|\n)\s*[-*•]?\s*[\"']?{label}[\"']?\s*(?::|=|–|—|-|\bmeans\b|\bcovers\b|\bis for\b|\bis when\b)\s*\w"


def _number_in(match: re.Match[str]) -> int | None:
    for group in match.groups():
        if group:
            return number_value(group)
    return None


def _set_body(text: str, start: int) -> str:
    """The text of a list starting at ``start``: up to the end of its sentence (a full
    stop outside parentheses), a blank line, or a line break not after a comma."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and ch == "." and (i + 1 == n or text[i + 1].isspace()):
            if not ends_with_abbreviation(text[start : i + 1]):
                break
        elif ch == "\n" and depth == 0:
            so_far = text[start:i].rstrip()
            following = text[i + 1 :].lstrip(" \t")[:1]
            if text[i + 1 : i + 2] == "\n" or not (
                following.islower()
                or following == "("
                or so_far.endswith(",")
                or so_far.endswith(";")
                or re.search(r"\b(?:or|and|of|with)$", so_far)
            ):
                break
        i += 1
    return text[start:i]


def _split_items(body: str) -> tuple[list[str], int]:
    """The labels of a list body, and how many carried a definition in parentheses."""
    defined = 0
    plain_parts: list[str] = []
    depth = 0
    current = []
    for ch in body:
        if ch == "(":
            depth += 1
            if depth == 1:
                defined += 1
            continue
        if ch == ")":
            depth = max(0, depth - 1)
            continue
        if depth == 0:
            current.append(ch)
    plain = "".join(current)
    for part in re.split(r",|\|(?!\|)|\s+or\s+|;", plain):
        part = part.strip().strip("\"'“”`").strip()
        part = re.sub(r"^(?:and|or)\s+", "", part).rstrip(".").strip()
        if part:
            plain_parts.append(part)
    labels = [
        p
        for p in plain_parts
        if 0 < len(p) <= 30 and len(p.split()) <= 3 and not re.match(r"(?:with|and why|etc|e\.g)\b", p, re.I)
    ]
    return labels, defined


def _label_sets(instructions: str, json_spans: list[tuple[int, int]]) -> tuple[LabelSet, ...]:
    sets: list[LabelSet] = []
    seen: set[tuple[str, ...]] = set()

    def inside_json(position: int) -> bool:
        return any(a <= position < b for a, b in json_spans)

    for match in _LABEL_SET_START.finditer(instructions):
        if inside_json(match.start()):
            continue
        body = _set_body(instructions, match.end())
        labels, defined_inline = _split_items(body)
        if len(labels) < 2:
            continue
        key = tuple(label.lower() for label in labels)
        if key in seen:
            continue
        seen.add(key)
        name = re.sub(
            r"^(?:answer with |choose |pick |reply with )?(?:exactly )?", "", match.group(1), flags=re.I
        )
        defined = defined_inline + sum(
            1 for label in labels if re.search(_DEFINITION.format(label=re.escape(label)), instructions, re.I)
        )
        sets.append(
            LabelSet(name=name.strip().lower(), labels=tuple(labels), defined=defined * 2 >= len(labels))
        )
    for match in _PAREN_SET.finditer(instructions):
        if inside_json(match.start()):
            continue
        labels, _ = _split_items(match.group(2))
        name = match.group(1).lower()
        if len(labels) < 2 or not re.search(_LABEL_SET_NAMES + r"|cause|disposition|rating|level", name):
            continue
        key = tuple(label.lower() for label in labels)
        if key in seen:
            continue
        seen.add(key)
        sets.append(LabelSet(name=name, labels=tuple(labels), defined=False))
    return tuple(sets)


def _json_fields(instructions: str) -> tuple[tuple[JsonField, ...], list[tuple[int, int]]]:
    fields: list[JsonField] = []
    spans: list[tuple[int, int]] = []
    for match in _JSON_OBJECT.finditer(instructions):
        spans.append(match.span())
        for pair in _JSON_PAIR.finditer(match.group(0)):
            name, text, literal = pair.group(1), pair.group(2), pair.group(3)
            if any(f.name == name for f in fields):
                continue
            options: tuple[str, ...] = ()
            nullable = literal == "null"
            if text is not None:
                nullable = nullable or bool(re.search(r"\bor null\b", text))
                parts = [p.strip() for p in text.split("|")]
                if len(parts) >= 2 and all(0 < len(p) <= 30 and "..." not in p for p in parts):
                    options = tuple(parts)
            fields.append(JsonField(name=name, options=options, nullable=nullable))
    return tuple(fields), spans


def _sections(instructions: str) -> tuple[Section, ...]:
    sections: list[Section] = []
    for match in _SECTIONS_START.finditer(instructions):
        body = _set_body(instructions, match.end())
        parts = _split_depth0(body, ";")
        if len(parts) < 2:
            continue
        for part in parts:
            section = _section(part)
            if section is not None:
                sections.append(section)
        break
    if sections:
        flat = " ".join(instructions.split())
        suggest = re.search(
            r"\bsuggest (?:the |a |an |one )?(?:single )?(?:most useful |best )?(\w[\w -]*?)(?:\.|$| to | for )",
            flat,
            re.I,
        )
        if suggest:
            sections.append(Section(heading=f"Suggested {suggest.group(1).strip()}", hint=""))
        if re.search(r"\bend with (?:the )?open questions", flat, re.I):
            sections.append(Section(heading="Open questions", hint=""))
    return tuple(sections)


def _split_depth0(body: str, separator: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [" ".join(p.split()) for p in parts if p.strip()]


def _section(text: str) -> Section | None:
    text = re.sub(r"^(?:and|the|a|an)\s+", "", text.strip(), flags=re.I).rstrip(".")
    hint_match = re.search(r"\(([^()]*)\)", text)
    hint = hint_match.group(1) if hint_match else ""
    name = re.sub(r"\s*\([^()]*\)", "", text).strip()
    options: tuple[str, ...] = ()
    if hint and "," in hint:
        labels, _ = _split_items(re.sub(r"^one of:?\s*", "", hint, flags=re.I))
        if len(labels) >= 2 and (
            re.match(r"one of", hint, re.I)
            or re.search(r"rating|disposition|cause|risk|level|verdict|decision|severity", name, re.I)
        ):
            options = tuple(labels)
    limit_match = re.search(r"(?:at most|up to|no more than|maximum of)\s+" + NUMBER, name, re.I)
    limit = _number_in(limit_match) if limit_match else None
    heading = re.split(r"\s+(?:in at most|in up to|with one sentence|with the|and whether|and why)\b", name)[
        0
    ]
    heading = re.sub(r"^(?:the|a|an)\s+", "", heading.strip(), flags=re.I)
    if not heading:
        return None
    return Section(heading=heading[0].upper() + heading[1:], hint=hint, options=options, limit=limit)


def _kind(instructions: str) -> tuple[str, str]:
    """The kind of task and the line that says it. An explicit "Task: ..." line weighs
    most, then imperatives ("Classify this ticket."), then role lines ("You classify
    defects ..."); failing those, keywords anywhere."""
    best: tuple[int, int, str, str] | None = None  # (weight, -position, kind, line)
    task_lines = {m.group(1).strip() for m in _TASK_LINE.finditer(instructions)}
    position = 0
    for segment in _SEGMENT_SPLIT.split(instructions):
        segment = segment.strip()
        if not segment:
            continue
        position += 1
        weight = 3 if any(line.startswith(segment) or segment.startswith(line) for line in task_lines) else 2
        text = _LEADING.sub("", segment)
        if _ROLE.match(text):
            weight = 1
            text = _ROLE.sub("", text)
        lowered = text.lower()
        for kind, pattern in _KIND_PATTERNS:
            if pattern.match(lowered):
                candidate = (weight, -position, kind, segment)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
                break
    if best is not None:
        return best[2], best[3]
    lowered = instructions.lower()
    counts = [(len(pattern.findall(lowered)), kind) for kind, pattern in _KEYWORD_KINDS]
    count, kind = max(counts)
    return (kind if count else "generic"), ""


def _recipient(name: str) -> str:
    name = name.strip().rstrip(",;:")
    # "Laura M." keeps the full stop of its initial; "Jana." does not.
    if name.endswith(".") and not re.search(r"\b[A-Z]\.$", name):
        name = name[:-1]
    return name.strip()


@functools.lru_cache(maxsize=2048)
def read_prompt(instructions: str) -> PromptReading:
    """The features of a prompt's instructions (the rendered prompt less the input)."""
    kind, task_line = _kind(instructions)
    json_fields, json_spans = _json_fields(instructions)
    label_sets = _label_sets(instructions, json_spans)
    lowered = instructions.lower()
    outside_json = _JSON_OBJECT.sub(" ", instructions)
    columns: tuple[str, ...] = ()
    column_match = _COLUMNS.search(outside_json)
    if column_match:
        columns = tuple(c.strip().rstrip(".").strip() for c in column_match.group(1).split("|") if c.strip())
    sections = _sections(instructions) if kind not in ("classify",) else ()
    word_match = _WORD_LIMIT.search(instructions)
    sentence_match = _SENTENCE_LIMIT.search(instructions)
    sentence_limit = _number_in(sentence_match) if sentence_match else None
    if sentence_limit is None and _ONE_SENTENCE.search(instructions):
        sentence_limit = 1
    friendly = len(_FRIENDLY.findall(instructions))
    formal = len(_FORMAL.findall(instructions))
    register = "friendly" if friendly > formal else "formal" if formal > friendly else "neutral"
    sign_off = _SIGN_OFF.search(instructions)
    recipient = _RECIPIENT.search(instructions)
    feedback = _FEEDBACK.search(instructions)
    examples = ""
    example_match = _EXAMPLES.search(instructions)
    if example_match and EXAMPLE_PAIR.search(instructions, example_match.end()):
        examples = instructions[example_match.start() :]
    placeholders = tuple(dict.fromkeys(_PLACEHOLDER.findall(outside_json)))
    instruction_words = len(word_list(instructions))
    return PromptReading(
        instructions=instructions,
        kind=kind,
        task_line=task_line,
        label_sets=label_sets,
        json_fields=json_fields,
        wants_json=bool(json_fields) or "json" in lowered,
        json_lines=bool(re.search(r"(?:line|lines) of json|json lines|jsonl|one json object per", lowered)),
        field_lines=bool(re.search(r"field\s*:\s*value|\"?key\"?\s*:\s*\"?value", lowered)),
        columns=columns if len(columns) >= 3 else (),
        sections=sections,
        register=register,
        sign_off=sign_off.group(1).strip() if sign_off else "",
        recipient=_recipient(recipient.group(1)) if recipient else "",
        word_limit=_number_in(word_match) if word_match else None,
        sentence_limit=sentence_limit,
        sentence_limit_exact=bool(
            sentence_match and sentence_match.group(0).lower().startswith(("in ", "using "))
        ),
        brief=bool(_BRIEF.search(instructions)),
        examples=examples,
        grounded=bool(_GROUNDED.search(instructions)),
        feedback=feedback.group(1).strip() if feedback else "",
        placeholders=placeholders,
        hedge_when_unsure=bool(_HEDGE_OK.search(instructions)),
        wants_questions=bool(_QUESTIONS_WANTED.search(instructions)),
        answer_first=bool(_ANSWER_FIRST.search(instructions)),
        bullets=bool(_BULLETS.search(instructions)),
        vague=kind == "generic" and instruction_words < 6,
        injection_guard=bool(_INJECTION_GUARD.search(instructions)),
        redact_pii=bool(_REDACT_PII.search(instructions)),
        json_strict=bool(_JSON_STRICT.search(instructions)),
    )


# --- reading the input --------------------------------------------------------------------

_NAME_FIELDS = ("customer", "name", "recipient", "to", "contact", "client", "person", "employee")


@dataclass(frozen=True)
class Source:
    """The text a model works from: the input (a JSON object's text fields joined)."""

    text: str
    sentences: tuple[str, ...]
    figures: frozenset[str]
    questions: tuple[str, ...]
    # From a JSON object input: the person or company addressed, when a field names one.
    recipient: str = ""


def _json_object(text: str) -> dict | None:
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@functools.lru_cache(maxsize=4096)
def read_source(text: str) -> Source:
    text = text.strip()
    recipient = ""
    data = _json_object(text)
    if data is not None:
        parts = []
        for key, value in data.items():
            value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if str(key).lower() in _NAME_FIELDS and len(value) <= 60:
                recipient = recipient or value.strip()
            else:
                parts.append(value.strip())
        text = "\n".join(p for p in parts if p)
    sentences = split_sentences(text)
    questions = tuple(s for s in sentences if s.rstrip().endswith("?"))
    return Source(
        text=text,
        sentences=sentences,
        figures=frozenset(figures_in(text)),
        questions=questions,
        recipient=recipient,
    )


def prompt_instructions(prompt: str, input_text: str) -> tuple[str, bool]:
    """The prompt less the input, and whether the input is in the prompt at all (a
    template may leave it out, or carry only some of a JSON input's fields)."""
    stripped = input_text.strip()
    if not stripped:
        return prompt, True
    if stripped in prompt:
        return prompt.replace(stripped, "\n"), True
    data = _json_object(stripped)
    if data:
        values = [v.strip() for v in data.values() if isinstance(v, str) and v.strip()]
        if values and all(v in prompt for v in values):
            text = prompt
            # Long values are the material; short ones (a name) stay: "Write to Laura M."
            for value in sorted(values, key=len, reverse=True):
                if len(value) > 60:
                    text = text.replace(value, "\n")
            return text, True
    return prompt, False
