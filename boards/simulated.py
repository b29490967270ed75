"""The simulated model: offline, deterministic, believable, sometimes wrong, calibrated.

Kaizen's demo and tests run on this provider. It reads the rendered prompt as a real
model would, does the work the prompt asks for on the input, is sometimes wrong in ways
a check or a reviewer can catch, and states a confidence that is calibrated: among its
answers given confidence c, about c of them are right.

Everything is deterministic from (model, prompt, input): the same request always gives
the same answer, confidence, tokens, latency and error.

What it does, by kind of task (the kind is read from the prompt's imperative: "Classify
...", "Extract ...", "List every ...", "Summarise ...", "Draft/Write a reply ...",
"Appraise ...", "Tidy up ..."; a "Task: ..." line weighs most, "You ..." role lines least):

- classify: a label from the label set written in the prompt ("Classes: a, b, c",
  "category: a, b", "Severity: x (...), y (...)", "rating (low, some concerns, high)",
  a JSON placeholder "a|b|c"), chosen from the input by keyword cues for common label
  vocabularies, else a deterministic pick; with no label set, a label from a general
  business vocabulary. Plain answers give the label first and a reason; a prompt
  showing a JSON object gets that object, every field filled.
- extract: "field: value" lines, a table when the prompt shows columns ("a | b | c";
  measurements get IN/OUT computed from nominal and tolerance), a JSON object with the
  fields asked, or JSON lines (claims with evidence, effect size, sample, strength, then
  "Q:" lines). Values are copied from the input.
- summarise: the input's most informative sentences in their order (extractive),
  within the sentence or word limit asked, always shorter than the input.
- draft: a message in the register asked (formal, friendly/warm/plain-spoken, or
  neutral), with a greeting and a sign-off to match (or the sign-off the prompt names),
  built from the facts of the input (names, order numbers, amounts, dates), cut to the
  word limit. Replies, welcome notes and out-of-office messages have their own shape.
- a prompt listing sections ("Sections: a; b; c", "Give: ...", "Cover: ...") gets one
  entry per section, filled from the input (dated history bullets, money refunded or
  credited added up, case numbers, a risk or rating chosen from the options given...).
- anything else: the input's key points.

Outputs carry no "[simulated]" text: the ledger, the API (``simulated``,
``confidence_source: "simulated"``) and a "simulated" badge beside every output in the
UI say so, and a prefix would break JSON checks.

How often it is right, and its confidence
-----------------------------------------
For each request the model has an accuracy p, in log-odds (logit):

    logit p = base(model) - slope(model) * difficulty + kind + prompt effects

    model        base (p at difficulty 0)   slope per unit of difficulty
    sim-small    1.7  (0.85)                3.0
    sim-medium   2.4  (0.92)                2.4
    sim-large    3.4  (0.97)                1.8

``input_difficulty`` (0 easy .. 1 hard) grows with length (120 words is the maximum),
question marks and digits. Kind: classify +0.3, draft +0.2, rewrite +0.3, extract -0.2,
an answer in sections -0.2, summarise and anything else 0.

Prompt effects (added to logit p; all deterministic, read from the rendered prompt):

    +0.3  a clear output format: a label set (for a classification), JSON fields,
          "field: value", columns "a | b | c", or sections
    +0.5  label definitions, for a classification: at least half the labels of a set
          explained ("minor (cosmetic)", "billing: charges and refunds", "x means ..."),
          times the share of the prompt's label sets so explained
    +0.4  few-shot examples: the word "Example(s)" followed by input/output pairs
          (a line with "->", "=>", "Output:", "Answer:" or "Label:" after it)
    +0.6  more when an example matches the input: for a classification an example's
          answer is the input's right label; otherwise an example shares 3+ content
          words with the input (so +1.0 in all on matching inputs)
    +0.2  grounding, for extract/summarise/draft/sections: "only from the input",
          "never invent", "do not invent", "exactly as given", "do not round",
          "keep numbers as given", "promise nothing"
    +1.0  a reviewer's feedback on a rejected answer ("A reviewer rejected an earlier
          answer ... said: ...", as the line appends it, or "A reviewer said ...")
    -0.4  a vague prompt: no kind of task recognised and fewer than 6 words of
          instructions besides the input (the bare default "{input}")
    -1.5  each unfilled placeholder left in the prompt ("{customer}"), at most -3
    input absent from the prompt (a template without {input}, or whose declared
          variables do not carry the input's fields): logit p = min(logit p - 4, -2.5),
          so p <= 0.08 whatever the model; the answer is made from the title alone

Length: "be brief", "briefly", "concise", "short", "succinct" shorten summaries and
drafts (about a quarter of the input's sentences, drafts without pleasantries);
"at most/under/no more than N words" and "in/at most N sentences" are obeyed; with no
limit, sim-small adds one more sentence to a summary than the larger models.

The confidence is then drawn around p, in log-odds with a spread of 0.8
(``sigmoid(logit p + N(0, 0.8))``, kept in [0.02, 0.99] and rounded to 3 places), and the
answer is right with probability equal to that confidence: calibrated by construction.
A wrong answer has one concrete flaw, which ``SimulatedAnswer.flaw`` describes as a
reviewer would: a label from the set that is not the right one, a label outside the set,
a JSON field missing or malformed JSON, a figure not in the input, an IN/OUT verdict
flipped, an item or a section left out, the wrong register, a sign-off other than the
one asked, an answer over the length asked, the key point missed, or a hedge ("I'm not
sure ...", which the uncertainty check catches). A prompt saying "if unsure, say so"
makes answers with confidence under 0.6 say so (right or not).

Calls fail (``ProviderError``) with probability ``error_rate * (1 + 3 * difficulty)``;
``latency_ms`` is the profile's or the tier's parameter, times 0.75 to 1.25.
``SimulatedProvider.judge(request)`` returns the whole ``SimulatedAnswer`` (text,
confidence, whether it is right, the flaw, p) without sleeping, for tests and for a
simulated reviewer; a real provider has nothing like it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from boards.providers import ModelRequest, ModelResponse, ProviderError

# --- profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedProfile:
    latency_ms: float
    # Price per 1k input and output tokens, in dollars.
    price_in: float
    price_out: float
    # Accuracy on an easy input with an ordinary prompt, and how fast it falls with
    # difficulty (in log-odds per unit of difficulty).
    skill: float
    error_rate: float
    verbosity: float
    difficulty_slope: float = 2.4


SIMULATED_PROFILES: dict[str, SimulatedProfile] = {
    "sim-small": SimulatedProfile(
        latency_ms=400,
        price_in=0.00015,
        price_out=0.0006,
        skill=0.85,
        error_rate=0.04,
        verbosity=1.6,
        difficulty_slope=3.0,
    ),
    "sim-medium": SimulatedProfile(
        latency_ms=900,
        price_in=0.001,
        price_out=0.004,
        skill=0.92,
        error_rate=0.02,
        verbosity=1.2,
        difficulty_slope=2.4,
    ),
    "sim-large": SimulatedProfile(
        latency_ms=2000,
        price_in=0.005,
        price_out=0.015,
        skill=0.97,
        error_rate=0.01,
        verbosity=1.0,
        difficulty_slope=1.8,
    ),
}

CONFIDENCE_SPREAD = 0.8
CONFIDENCE_MIN = 0.02
CONFIDENCE_MAX = 0.99

KIND_EFFECT = {
    "classify": 0.3,
    "draft": 0.2,
    "rewrite": 0.3,
    "extract": -0.2,
    "sections": -0.2,
    "summarise": 0.0,
    "generic": 0.0,
}
EFFECT_FORMAT = 0.3
EFFECT_DEFINITIONS = 0.5
EFFECT_EXAMPLES = 0.4
EFFECT_MATCHING_EXAMPLE = 0.6
EFFECT_GROUNDED = 0.2
EFFECT_FEEDBACK = 1.0
EFFECT_VAGUE = -0.4
EFFECT_PLACEHOLDER = -1.5
EFFECT_PLACEHOLDERS_MAX = -3.0
EFFECT_NO_INPUT = -4.0
NO_INPUT_CEILING = -2.5


def _tokens(text: str) -> int:
    # About four characters a token, as for English text with real tokenizers.
    return max(1, (len(text) + 3) // 4)


@functools.lru_cache(maxsize=4096)
def input_difficulty(text: str) -> float:
    """0 (easy) to 1 (hard): longer inputs with more questions and numbers are harder."""
    words = text.split()
    length = min(1.0, len(words) / 120)
    marks = min(1.0, (text.count("?") + len(_NON_DIGITS.sub("", text)) / 10) / 6)
    return round(0.7 * length + 0.3 * marks, 4)


_NON_DIGITS = re.compile(r"\D+")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --- text helpers -----------------------------------------------------------------------

STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be been
    being it its this that these those there here we our us you your i my me he she they them
    their his her not no yes do does did done have has had will would can could should may might
    must shall than too very just also into out up down over under about after before again more
    most some any all each every both few other such own same only which who whom whose what when
    where why how per via vs etc please thanks thank hello hi dear""".split()
)
MONTHS = (
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "fifty": 50,
    "hundred": 100,
}
_NUMBER = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"
_ABBREVIATIONS = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|No|vs|approx|Inc|Ltd|Fig|etc|cf|e\.g|i\.e|Co)\.|\b[A-Z]\.)$"
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"'”)\]]*\s+(?=[\"'“(\[]?[A-Z0-9#])")
_LINE_ITEM = re.compile(
    r"^\s*(?:[-*•]\s|\d{1,2}[.)]\s|\d{1,2}\s+[A-Z][a-z]{2}\b|[A-Z][a-z]{2}\s+\d{1,2}\b|\d{4}-\d\d-\d\d|Q:)"
)
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_DATE = re.compile(
    r"\b(?:\d{1,2}(?:\s*[-–]\s*\d{1,2})?\s+(?:" + "|".join(MONTHS) + r")[a-z]*\.?"
    r"|(?:" + "|".join(MONTHS) + r")[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?"
    r"|\d{4}-\d\d-\d\d|(?:" + "|".join(WEEKDAYS) + r")(?:\s+\d{1,2}(?:st|nd|rd|th)?)?)\b",
    re.I,
)
_AMOUNT = re.compile(r"(?<![\w.,-])(\d{1,3}(?:,\d{3})+|\d+)\.\d\d(?![\d%])")
_IDENTIFIER = re.compile(r"\b[A-Z]{1,5}-?\d[\w-]*\b|#\d+\b")
_CASE_ID = re.compile(r"\b[A-Z]{2,5}-\d{2,}\b")
_QUESTION_MARK = re.compile(r"\?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _words(text) if len(w) > 3 and w.lower() not in STOPWORDS}


def _ends_with_abbreviation(text: str) -> bool:
    return bool(_ABBREVIATIONS.search(text))


@functools.lru_cache(maxsize=4096)
def split_sentences(text: str) -> tuple[str, ...]:
    """The input's sentences. Lines that look like items (dated entries, bullets)
    stay one unit each; other text is joined (YAML and e-mail wrap lines mid-sentence)
    and split at sentence ends, not after abbreviations ("Mr.", "vs.")."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ()
    if len(lines) >= 2 and sum(bool(_LINE_ITEM.match(line)) for line in lines) >= 0.6 * len(lines):
        return tuple(lines)
    pieces = _SENTENCE_SPLIT.split(" ".join(lines))
    merged: list[str] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if merged and _ends_with_abbreviation(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return tuple(merged)


def _clauses(sentence: str) -> list[str]:
    return [c.strip() for c in re.split(r";\s+", sentence) if c.strip()]


def _figures(text: str) -> set[str]:
    return set(_DIGITS.findall(text))


def _strip_end(text: str) -> str:
    return text.strip().rstrip(".;,: ").strip()


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _word_count(text: str) -> int:
    return len(text.split())


def _number_value(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.get(word.lower())


def _stable_index(key: str, n: int) -> int:
    """A deterministic pick that does not depend on the model (the right answer is the
    same whoever gives it)."""
    return int(hashlib.blake2b(key.encode(), digest_size=4).hexdigest(), 16) % n


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
    + _NUMBER
    + r"\s+words|"
    + _NUMBER
    + r"\s+words or (?:fewer|less)|"
    + _NUMBER
    + r"-word\b",
    re.I,
)
_SENTENCE_LIMIT = re.compile(
    r"(?:in|at most|no more than|up to|maximum of|max\.?|within|using)\s+"
    + _NUMBER
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
_FEEDBACK = re.compile(
    r"(?:a reviewer (?:rejected[^\n]*?said|said[^\n]*?)|reviewer'?s? feedback)\s*:?\s*([^\n]+)", re.I
)
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][\w]*\}")
_HEDGE_OK = re.compile(r"if (?:you are |you're )?(?:unsure|not sure|uncertain)[^.\n]*say so", re.I)
_QUESTIONS_WANTED = re.compile(r"open questions|\bQ:|questions (?:for|the source raises)", re.I)
_ANSWER_FIRST = re.compile(
    r"start with the answer|answer first|lead with the answer|bottom line up front", re.I
)
_BULLETS = re.compile(r"\bbullet", re.I)
_SIGN_OFF = re.compile(r"sign (?:off|it) (?:as|with)\s*[\"“']([^\"”'\n]+)[\"”']", re.I)
_RECIPIENT = re.compile(
    r"\b(?:reply|write|message|e-?mail|letter|note|respond|answer)\s+to\s+"
    r"((?:Mr|Mrs|Ms|Dr)\.?\s+[A-Z][\w'’-]+|[A-Z][\w'’&.-]*(?:\s+(?:[A-Z&][\w'’&.-]*|&))*)"
)
_EXAMPLES = re.compile(r"\bexamples?\b\s*:?", re.I)
_EXAMPLE_PAIR = re.compile(r"->|=>|→|\b(?:output|answer|label|category|reply)\s*:", re.I)
_FRIENDLY = re.compile(
    r"\b(?:friendly|warm|casual|informal|plain-spoken|cheerful|relaxed|chatty|upbeat)\b", re.I
)
_FORMAL = re.compile(r"\b(?:formal|professional|courteous|polite|respectful|official)\b", re.I)
_DEFINITION = r"(?:^|\n)\s*[-*•]?\s*[\"']?{label}[\"']?\s*(?::|=|–|—|-|\bmeans\b|\bcovers\b|\bis for\b|\bis when\b)\s*\w"


def _number_in(match: re.Match[str]) -> int | None:
    for group in match.groups():
        if group:
            return _number_value(group)
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
            if not _ends_with_abbreviation(text[start : i + 1]):
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
    limit_match = re.search(r"(?:at most|up to|no more than|maximum of)\s+" + _NUMBER, name, re.I)
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
    if example_match and _EXAMPLE_PAIR.search(instructions, example_match.end()):
        examples = instructions[example_match.start() :]
    placeholders = tuple(dict.fromkeys(_PLACEHOLDER.findall(outside_json)))
    instruction_words = len(_words(instructions))
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
        recipient=_strip_end(recipient.group(1)) if recipient else "",
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
        figures=frozenset(_figures(text)),
        questions=questions,
        recipient=recipient,
    )


def _instructions(prompt: str, input_text: str) -> tuple[str, bool]:
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


# --- labels -------------------------------------------------------------------------------


def _cues(table: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """A cue table written compactly: each label's cues separated by "|". A cue is a
    lower-case substring of the input (" sue " with spaces to match the word only)."""
    return {label: tuple(cues.split("|")) for label, cues in table.items()}


_TOPIC_CUES = _cues(
    {
        "billing": "charg|refund|payment|paid|card|billed|invoice|price|fee|money",
        "payment": "charg|refund|payment|paid|card|billed",
        "invoice": "invoice|vat|receipt|reissue|tax id|credit note",
        "shipping": "ship|parcel|tracking|deliver|courier|carrier|package|dispatch",
        "delivery": "ship|parcel|tracking|deliver|courier|carrier|package|dispatch",
        "account": "log in|login|password|sign in|locked|account|reset|username|token",
        "access": "log in|login|password|sign in|locked|access|reset",
        "login": "log in|login|password|sign in|locked",
        "bug": "crash|error|closes the app|freez|bug|glitch|app version|ios|android",
        "technical": "crash|error|closes the app|freez|bug|glitch|site down|not load",
        "feature": "add a way|could you add|feature|would be nice|wish|option to|pause",
        "request": "could you add|please add|add a way|would like",
        "cancellation": "cancel|unsubscribe|terminate|stop my subscription|close my account",
        "cancel": "cancel|unsubscribe|terminate",
        "food": "warm|melted|smell|spoil|allerg|nuts|reaction|ice pack|rotten|cold chain",
        "safety": "safe|allerg|reaction|injur|hazard|smelled off",
        "complaint": "disappoint|unacceptable|angry|terrible|worst|half empty|again|still not",
        "praise": "love|great|thank you|excellent|amazing",
        "feedback": "love|great| but |packaging|too much|half empty",
        "product": "packaging|quality|box was|jar|recipe",
        "question": "how long|do you|can i|when will",
        "sales": "quote|pricing|discount|bulk|order more",
        "dimensional": "diameter|oversize|undersize|out of tolerance|depth|width|position|bore",
        "surface": "chatter|scratch|roughness|marks|finish|dent",
        "finish": "chatter|scratch|roughness|marks|finish|dent",
        "burr": "burr|sharp edge|sharp to the touch",
        "porosity": "porosity|pores|void|blowhole",
        "crack": "crack|fracture|dye penetrant|fissure",
        "contamination": "oil|fingerprint|dirt|residue|contamin|grease|dust",
        "thread": "thread|tapped|tap |go/no-go",
        "none": "no marks after cleaning|no defect|within tolerance|acceptable",
    }
)
_URGENCY_CUES = _cues(
    {
        "high": "charged|twice|refund|urgent|asap|immediately|deadline|before friday|today|tomorrow|!|safety|reaction|allerg",
        "urgent": "urgent|asap|immediately|charged|twice|!|safety",
        "low": "feature|could you add|add a way|when you have time|no rush|would be nice|pause",
    }
)
_SEVERITY_CUES = _cues(
    {
        "critical": "crack|safety|fracture|leak|injur",
        "major": "out of tolerance|oversize|undersize|fails|limit of|porosity|sealing|noise|not threaded|sharp",
        "minor": "cosmetic|fingerprint|oil film|no marks|stain|after cleaning",
    }
)
_SEVERITY_BY_CLASS = {
    "crack": "critical",
    "dimensional": "major",
    "thread": "major",
    "porosity": "major",
    "burr": "minor",
    "surface_finish": "minor",
    "contamination": "minor",
    "none": "minor",
}
_SENTIMENT_CUES = _cues(
    {
        "positive": "love|great|thanks|excellent|happy|fast",
        "negative": "disappoint|angry|bad|broken|late|half empty|worst|never",
        "mixed": " but ",
    }
)
_BIAS_CUES = _cues(
    {
        "low": "randomis|randomiz|parallel trends|natural experiment|difference-in-differences|pre-registered|blind",
        "high": "self-selected|observational|no pre-period|knew who|no control|case study|did not control",
        "some concerns": "survey|heterogeneity|i-squared|funnel|asymmetric|response rate|meta-analysis|self-report|publication bias",
    }
)
_CAUSE_CUES = _cues(
    {
        "man": "overrid|operator|second shift|alarm|manual|training|ignored",
        "machine": "tool change|boring bar|insert|spindle|wear|tap breakage|offset|hobbing",
        "method": "procedure|sequence|program|method|fixture",
        "material": "supplier|casting|heat|bar stock|x-ray|cert",
        "measurement": "gauge|cmm|measurement error|calibrat|probe",
    }
)
_DISPOSITION_CUES = _cues(
    {
        "scrap": "crack|no deviation|oversize|fracture",
        "rework": "not threaded|missing thread|burr|re-tap|deburr|undersize",
        "use as is": "concession|cosmetic|passed on all",
        "return to supplier": "supplier|x-ray|cert|casting",
    }
)
_FALLBACK_LABELS = ("other", "none", "normal", "neutral", "medium", "general", "unknown", "some concerns")
# What a model writes when it strays outside the label set.
_NEAR_MISSES = {
    "billing": "payment",
    "shipping": "delivery",
    "account_access": "login_problem",
    "bug": "technical_issue",
    "feature_request": "suggestion",
    "cancellation": "churn_risk",
    "invoice": "paperwork",
    "food_safety": "quality",
    "other": "misc",
    "dimensional": "oversize",
    "surface_finish": "scratch",
    "burr": "sharp_edge",
    "porosity": "voids",
    "crack": "fracture",
    "contamination": "dirty",
    "thread": "tapping",
    "none": "ok",
    "critical": "severe",
    "major": "significant",
    "minor": "low",
    "high": "urgent",
    "normal": "medium",
    "low": "minor",
}
DEFAULT_LABELS = (
    "billing",
    "shipping",
    "account_access",
    "bug",
    "feature_request",
    "feedback",
    "complaint",
    "other",
)


def _cue_table(set_name: str) -> dict[str, tuple[str, ...]]:
    name = set_name.lower()
    if re.search(r"urgen|priority", name):
        return _URGENCY_CUES
    if "sever" in name:
        return _SEVERITY_CUES
    if re.search(r"sentiment|tone|stance", name):
        return _SENTIMENT_CUES
    if re.search(r"bias|risk|rating|quality", name):
        return _BIAS_CUES
    if "cause" in name:
        return _CAUSE_CUES
    if "disposition" in name or "decision" in name:
        return _DISPOSITION_CUES
    return _TOPIC_CUES


def _label_cues(label: str, table: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    key = label.lower()
    if key in table:
        return table[key]
    cues: list[str] = []
    for token in re.split(r"[\s_/-]+", key):
        for cue in table.get(token, ()):
            if cue not in cues:
                cues.append(cue)
    return tuple(cues)


def _cue_score(label: str, table: dict[str, tuple[str, ...]], lowered: str, first: str = "") -> int:
    # What the message opens with is usually what it is about: its cues count twice.
    score = sum((2 if cue in first else 1) for cue in _label_cues(label, table) if cue in lowered)
    plain = label.lower().replace("_", " ")
    if len(plain) > 3 and re.search(r"\b" + re.escape(plain) + r"\b", lowered):
        score += 2
    return score


@functools.lru_cache(maxsize=4096)
def best_label(labels: tuple[str, ...], set_name: str, text: str, *, default: str = "") -> str:
    """The label the input's wording points to; with no cue at all, a neutral label
    of the set ("other", "normal", ...), else ``default``, else a stable pick."""
    lowered = f" {text.lower()} "
    sentences = split_sentences(text)
    first = f" {sentences[0].lower()} " if len(sentences) > 1 else ""
    table = _cue_table(set_name)
    scores = [(_cue_score(label, table, lowered, first), -index, label) for index, label in enumerate(labels)]
    score, _, label = max(scores)
    if score > 0:
        return label
    for fallback in _FALLBACK_LABELS:
        for candidate in labels:
            if candidate.lower() == fallback:
                return candidate
    if default and default in labels:
        return default
    return labels[_stable_index(set_name + "\x00" + text, len(labels))]


def _cue_sentence(source: Source, label: str, set_name: str) -> str:
    table = _cue_table(set_name)
    cues = _label_cues(label, table)
    best = ""
    best_score: tuple[float, bool] = (-1, False)
    for sentence in source.sentences:
        lowered = f" {sentence.lower()} "
        # A statement is better evidence than a question with as many cues.
        hits = sum(1 for cue in cues if cue in lowered)
        score = (hits / 2 if sentence.endswith("?") else hits, not sentence.endswith("?"))
        if score > best_score:
            best, best_score = sentence, score
    return _clean_reason(best)


_GREETING = re.compile(r"^(?:hi|hello|hey|dear [\w .]+|good (?:morning|afternoon))\b[,!]?\s*", re.I)
_CLOSING = re.compile(r"\s*(?:thanks|thank you|cheers|regards|best)[,!.]?\s*[\w .]*$", re.I)


def _clean_reason(sentence: str) -> str:
    text = _GREETING.sub("", sentence.strip())
    text = _CLOSING.sub("", text) if len(text) > 30 else text
    return _strip_end(text)


# --- the work -------------------------------------------------------------------------------


@dataclass
class _Work:
    """One request being answered: what the prompt asks, what the input says, and the
    model's draws (its confidence, and its random choices of flaw)."""

    reading: PromptReading
    source: Source
    model: str
    profile: SimulatedProfile
    rng: random.Random
    confidence: float

    @property
    def unsure(self) -> bool:
        return self.reading.hedge_when_unsure and self.confidence < 0.6


Writer = Callable[[_Work, list[str]], tuple[str, str]]
_HEDGES = ("I'm not sure, but ", "I think ", "Possibly ", "I am not sure: ")


def _is_identifier_digits(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before.isalpha() or after.isalpha() and text[end : end + 2] not in ("th", "st", "nd", "rd"):
        return True
    if before in "-#" and start > 1 and (text[start - 2].isalnum()):
        return True
    return after == ":" or before == ":"


def _perturb(figure: str, following: str, known: frozenset[str]) -> str | None:
    """A plausible figure near ``figure`` that the input does not contain."""
    candidates: list[str] = []
    if "." in figure and "," not in figure:
        whole, decimals = figure.split(".", 1)
        if set(decimals) == {"0"}:
            candidates = [f"{int(whole) + step}.{decimals}" for step in (10, 1, 5)]
        else:
            digits = list(figure)
            last = len(digits) - 1
            for step in (3, 7, 1):
                digits[last] = str((int(figure[last]) + step) % 10)
                candidates.append("".join(digits))
    else:
        plain = figure.replace(",", "")
        if not plain.isdigit():
            return None
        value = int(plain)
        if re.match(r"\s*(?:" + "|".join(MONTHS) + r")", following, re.I) and 1 <= value <= 31:
            candidates = [str(value - 2 if value > 3 else value + 2), str(value + 1)]
        elif 1900 <= value <= 2100:
            candidates = [str(value + 1), str(value - 1)]
        else:
            steps = (2, 1, 3) if value < 10 else (10 ** (len(plain) - 1) // (1 if len(plain) < 3 else 10),)
            for step in steps:
                new = value + step
                candidates.append(f"{new:,}" if "," in figure else str(new))
            candidates.append(str(value + 1))
    for candidate in candidates:
        if candidate != figure and candidate not in known and candidate.replace(",", "") not in known:
            return candidate
    return None


def _invent_figure(text: str, work: _Work) -> tuple[str, str] | None:
    """Changes one figure taken from the input into one the input does not contain."""
    known = work.source.figures
    options = [
        m
        for m in _DIGITS.finditer(text)
        if m.group(0) in known and not _is_identifier_digits(text, m.start(), m.end())
    ]
    work.rng.shuffle(options)
    for match in options:
        new = _perturb(match.group(0), text[match.end() : match.end() + 12], known)
        if new:
            changed = text[: match.start()] + new + text[match.end() :]
            return changed, f"the figure {new} is not in the input (it says {match.group(0)})"
    return None


def _hedge(text: str, work: _Work) -> tuple[str, str]:
    hedge = work.rng.choice(_HEDGES)
    return hedge + _lower_first(text), f"the answer hedges ({hedge.strip(' :,')}) instead of committing"


def _order(work: _Work, weights: dict[str, float]) -> list[str]:
    """The flaws to try, most likely first: a weighted draw without replacement."""
    pool = [(name, weight) for name, weight in weights.items() if weight > 0]
    order: list[str] = []
    while pool:
        total = sum(weight for _, weight in pool)
        pick = work.rng.random() * total
        for index, (name, weight) in enumerate(pool):
            pick -= weight
            if pick <= 0:
                order.append(name)
                pool.pop(index)
                break
        else:
            order.append(pool.pop()[0])
    return order


# --- classify -------------------------------------------------------------------------------

_REASON_FIELDS = re.compile(r"reason|evidence|explanation|rationale|why|justification|because|note", re.I)
_CLASS_FIELD = re.compile(r"class|categor|label|type|topic|intent", re.I)


def _set_for_field(field: JsonField, sets: list[LabelSet], used: set[str]) -> LabelSet | None:
    if field.options:
        return LabelSet(name=field.name, labels=field.options, defined=False)
    name = field.name.lower()
    for label_set in sets:
        if label_set.name == name or label_set.name in name or name in label_set.name:
            return label_set
    if _CLASS_FIELD.search(name):
        for label_set in sets:
            if label_set.name not in used and _CLASS_FIELD.search(label_set.name):
                return label_set
        for label_set in sets:
            if label_set.name not in used:
                return label_set
    return None


def _write_classify(work: _Work, flaws: list[str]) -> tuple[str, str]:
    reading, source = work.reading, work.source
    sets = list(reading.label_sets)
    from_prompt = bool(sets) or any(f.options for f in reading.json_fields)
    fields = list(reading.json_fields)
    if not sets and not any(f.options for f in fields):
        sets = [LabelSet(name="label", labels=DEFAULT_LABELS, defined=False)]
    # Which set fills which JSON field (in the order of the fields, or of the sets).
    slots: list[tuple[str, LabelSet | None]] = []
    used: set[str] = set()
    if fields:
        for field in fields:
            label_set = _set_for_field(field, sets, used)
            if label_set is not None:
                used.add(label_set.name)
            slots.append((field.name, label_set))
    else:
        slots = [(label_set.name, label_set) for label_set in sets]
    chosen: dict[str, str] = {}
    first_label = ""
    for _, label_set in slots:
        if label_set is None or label_set.name in chosen:
            continue
        default = _SEVERITY_BY_CLASS.get(first_label, "") if "sever" in label_set.name else ""
        chosen[label_set.name] = best_label(label_set.labels, label_set.name, source.text, default=default)
        first_label = first_label or chosen[label_set.name]
    primary = next((s for _, s in slots if s is not None), sets[0])
    reason = _cue_sentence(source, chosen.get(primary.name, ""), primary.name) or _strip_end(
        source.text[:160]
    )
    if work.unsure:
        reason = f"I am not sure: {_lower_first(reason)}"
    flaw = ""
    drop_field = ""
    malformed = False
    label_sets = [s for _, s in slots if s is not None]
    for name in flaws:
        if name == "wrong_label":
            target = (
                primary if work.rng.random() < 0.7 or len(label_sets) == 1 else work.rng.choice(label_sets)
            )
            others = [label for label in target.labels if label != chosen[target.name]]
            if others:
                wrong = work.rng.choice(others)
                flaw = f"the {target.name} should be {chosen[target.name]}, not {wrong}"
                chosen[target.name] = wrong
                break
        elif name == "outside_label" and from_prompt:
            target = primary
            wrong = _NEAR_MISSES.get(chosen[target.name], f"{chosen[target.name]}_issue")
            if wrong not in target.labels:
                flaw = f"{wrong!r} is not one of the {target.name} labels ({', '.join(target.labels)})"
                chosen[target.name] = wrong
                break
        elif name == "missing_field" and fields:
            labelled = [field for field, label_set in slots if label_set is not None]
            drop_field = work.rng.choice(labelled or [f.name for f in fields])
            flaw = f'the JSON has no "{drop_field}" field'
            break
        elif name == "malformed_json" and reading.wants_json:
            malformed = True
            flaw = "the answer is not valid JSON"
            break
    else:
        if flaws:
            target = primary
            wrong = next(label for label in (*target.labels, "other", "misc") if label != chosen[target.name])
            flaw = f"the {target.name} should be {chosen[target.name]}, not {wrong}"
            chosen[target.name] = wrong
    if reading.wants_json:
        data: dict[str, object] = {}
        if fields:
            for field_name, label_set in slots:
                if field_name == drop_field:
                    continue
                if label_set is not None:
                    data[field_name] = chosen[label_set.name]
                elif field_name.lower() == "confidence":
                    data[field_name] = work.confidence
                elif _REASON_FIELDS.search(field_name):
                    data[field_name] = reason
                else:
                    data[field_name] = _field_value(field_name, source)
        else:
            data = {"label": chosen[primary.name], "reason": reason}
        text = json.dumps(data, ensure_ascii=False)
        if malformed:
            text = text[:-1].replace('"', "'", 2)
        return text, flaw
    if len(chosen) > 1:
        lines = [f"{name}: {label}" for name, label in chosen.items()]
        return "\n".join([*lines, f"Reason: {_sentence(reason)}"]), flaw
    label = chosen[primary.name]
    return f"{label}\nReason: {_sentence(reason)}", flaw


# --- extract --------------------------------------------------------------------------------

_VERBS = frozenset(
    """is are was were runs run rises rise falls fall offers offer owns own checks check lists list costs cost
    starts start ends end expires expire applies apply takes take joins join arrives arrive includes include
    needs need goes go reads read shows show rose fell increased decreased passed failed found measured has
    have had raised reported said says asked asks wants want confirms confirmed issued lasts last becomes
    remains stays grew dropped returned""".split()
)
_ACTION = re.compile(
    r"^(?P<who>[A-Z][a-z]+(?: [A-Z][a-z]+)?)\s+(?P<verb>to|will|owns|checks|must|should|needs to|is to|leads|drafts"
    r"|sends|books|prepares|reviews|writes|calls)\s+(?P<what>.+?)(?:\s+by\s+(?P<due>[A-Z]?[\w ]{2,20}?))?$"
)
_LABELLED = re.compile(r"^(?P<field>[A-Za-z][\w /&()-]{0,30}?):\s+(?P<value>.+)$")
_DEADLINE = re.compile(r"\b(?:due|until|deadline|expir|before|by|from|valid|notice)\b", re.I)
_FOCUS = (
    ("dates", re.compile(r"\bdates?\b|deadlines?|when\b", re.I)),
    ("figures", re.compile(r"figures|numbers|prices?|amounts?|costs?|quote|measurements", re.I)),
    ("actions", re.compile(r"action items?|actions|to-?dos?|tasks", re.I)),
)


def _focus(task_line: str) -> str:
    for name, pattern in _FOCUS:
        if pattern.search(task_line):
            return name
    return ""


def _subject_split(clause: str) -> tuple[str, str]:
    words = clause.split()
    for index, word in enumerate(words[1:6], start=1):
        if word.lower().strip(",") in _VERBS:
            subject = " ".join(words[:index])
            value = " ".join(
                words[index + 1 :] if word.lower() in ("is", "are", "was", "were") else words[index:]
            )
            return subject, value
    match = re.search(r"\s(?=[\d(+-]|\d)", clause)
    if match and match.start() > 0:
        return clause[: match.start()], clause[match.end() :]
    return "", clause


def _clean_field(subject: str) -> str:
    subject = re.sub(r"^(?:the|a|an|our|their|its)\s+", "", subject.strip(), flags=re.I)
    subject = subject.rstrip(",:; ")
    if subject[:1].isupper() and subject[1:2].islower():
        subject = subject[0].lower() + subject[1:]
    return subject


def _facts(source: Source, focus: str) -> list[tuple[str, str]]:
    """(field, value) pairs taken from the input's clauses."""
    facts: list[tuple[str, str]] = []
    for sentence in source.sentences:
        for clause in _clauses(sentence):
            clause = _strip_end(_GREETING.sub("", clause)) if not clause.endswith("?") else clause.strip()
            if not clause:
                continue
            has_digits = any(ch.isdigit() for ch in clause)
            has_date = bool(_DATE.search(clause))
            if clause.endswith("?"):
                question = re.sub(r"^[A-Za-z ]{1,20}:\s*", "", clause)
                facts.append(("open question", question[0].upper() + question[1:]))
                continue
            action = _ACTION.match(clause)
            if action and focus in ("actions", ""):
                verb = action.group("verb")
                what = (
                    action.group("what")
                    if verb in ("to", "will", "is to")
                    else f"{verb} {action.group('what')}"
                )
                due = action.group("due")
                value = f"{action.group('who')}: {what}" + (f" (due {due})" if due else "")
                facts.append(("action", value))
                continue
            if focus == "dates" and not (has_date or _DEADLINE.search(clause)):
                continue
            if focus == "figures" and not has_digits:
                continue
            labelled = _LABELLED.match(clause)
            if labelled:
                facts.append((_clean_field(labelled.group("field")), labelled.group("value")))
                continue
            if not (has_digits or has_date) and focus:
                continue
            subject, value = _subject_split(clause)
            if subject and value:
                facts.append((_clean_field(subject), value))
            elif has_digits or has_date:
                facts.append(("note", clause))
    return facts


def _field_value(name: str, source: Source) -> object:
    """The value of a JSON field asked for by name, from the input; None if absent."""
    lowered = name.lower()
    text = source.text
    if re.search(r"date|deadline|when|due", lowered):
        match = _DATE.search(text)
        return match.group(0) if match else None
    if re.search(r"amount|price|total|cost|fee|sum|refund", lowered):
        match = _AMOUNT.search(text) or re.search(r"\d[\d,.]*\s*(?:EUR|USD|GBP|%)", text)
        return match.group(0) if match else None
    if re.search(r"order|ref|id$|number|invoice|case|ticket", lowered):
        match = _IDENTIFIER.search(text)
        return match.group(0) if match else None
    if re.search(r"email", lowered):
        match = re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text)
        return match.group(0) if match else None
    if re.search(r"name|customer|person|owner|who", lowered):
        return source.recipient or _first_name(text) or None
    if re.search(r"question", lowered):
        return list(source.questions) or None
    words = _content_words(name)
    for sentence in source.sentences:
        if words & _content_words(sentence):
            return _strip_end(sentence)
    return None


def _first_name(text: str) -> str:
    for match in re.finditer(r"\b([A-Z][a-z]{1,15})\b", text):
        word = match.group(1)
        lowered = word.lower()
        start = match.start()
        at_sentence_start = start == 0 or text[:start].rstrip()[-1:] in ".!?:;\n"
        if (
            lowered in STOPWORDS
            or lowered in MONTHS
            or lowered in WEEKDAYS
            or at_sentence_start
            and (
                lowered in _VERBS or lowered in {"order", "away", "urgent", "customer", "carrier", "billing"}
            )
        ):
            continue
        return word
    return ""


def _drop_line(lines: list[str], work: _Work, *, keep_first: int = 0) -> tuple[list[str], str] | None:
    candidates = [i for i in range(keep_first, len(lines)) if lines[i].strip()]
    if len(candidates) < 2:
        return None
    with_figures = [i for i in candidates if any(ch.isdigit() for ch in lines[i])]
    index = work.rng.choice(with_figures or candidates)
    dropped = lines[index]
    return lines[:index] + lines[index + 1 :], f"an item is missing: {dropped.strip()[:80]}"


def _write_field_lines(work: _Work, flaws: list[str]) -> tuple[str, str]:
    facts = _facts(work.source, _focus(work.reading.task_line)) or _facts(work.source, "")
    if not facts:
        facts = [("summary", _strip_end(work.source.text[:200]))]
    lines = [f"{field}: {value}" for field, value in facts]
    if work.unsure:
        lines.append("note: I am not sure every item is complete")
    return _apply_line_flaws(lines, work, flaws)


def _apply_line_flaws(
    lines: list[str], work: _Work, flaws: list[str], *, keep_first: int = 0
) -> tuple[str, str]:
    if not flaws:
        return "\n".join(lines), ""
    for name in flaws:
        if name == "invented_figure":
            result = _invent_figure("\n".join(lines), work)
            if result:
                return result
        elif name == "missing_item":
            dropped = _drop_line(lines, work, keep_first=keep_first)
            if dropped:
                return "\n".join(dropped[0]), dropped[1]
    return _hedge("\n".join(lines), work)


# Measurements: "Bore A diameter nominal 42.000 mm, tol +0.025/-0.000, measured 42.031".
_NUM = r"\d+(?:\.\d+)?"
_TOL_SYMMETRIC = re.compile(r"(?:\+/-|±)\s*(" + _NUM + r")")
_TOL_ASYMMETRIC = re.compile(r"\+\s*(" + _NUM + r")\s*/\s*-?\s*(" + _NUM + r")")
_LIMIT_MAX = re.compile(
    r"(" + _NUM + r")\s*(?:mm\s*|µm\s*)?max\b|\(allowed\s+(" + _NUM + r")\)|limit of\s+(" + _NUM + r")"
)
_LIMIT_MIN = re.compile(r"\(min\.?\s*(" + _NUM + r")\s*%?\)|\bmin\.?\s+(" + _NUM + r")")
_NOMINAL = re.compile(r"nominal\s+(" + _NUM + r")")
_MEASURED = re.compile(r"measured\s+(" + _NUM + r"(?:\s*(?:,\s*|and\s+)" + _NUM + r")*)")
_STANDALONE = re.compile(r"(?<![\w.+/-])(" + _NUM + r")(?![\w.]*[a-zA-Z]\d)")
_UNIT_AFTER = re.compile(r"\s*(mm|µm|um|MPa|HB|HRC|dB|N|Nm|bar|kg|turns)\b|(%)")
_ID_WORDS = re.compile(
    r"(?:char|port|holes?|part|parts|slot|tooth|teeth|bore|face|pin|step|op|station|lot|no\.?)\s*$", re.I
)


@dataclass
class _Measurement:
    name: str
    nominal: str = ""
    tolerance: str = ""
    measured: str = ""
    verdict: str = ""


def _measurement(clause: str) -> _Measurement | None:
    clause = clause.strip().rstrip(".")
    prefix = re.match(r"^([A-Za-z ]+):\s+(?=.*\d)", clause)
    if prefix:
        clause = clause[prefix.end() :]
    clause = re.sub(r"^(?:the )?\w+ (?:lists|shows|reports|gives|states)\s+", "", clause, flags=re.I)
    symmetric = _TOL_SYMMETRIC.search(clause)
    asymmetric = None if symmetric else _TOL_ASYMMETRIC.search(clause)
    limit_max = _LIMIT_MAX.search(clause)
    limit_min = _LIMIT_MIN.search(clause)
    nominal_match = _NOMINAL.search(clause)
    measured_match = _MEASURED.search(clause)
    tolerance_match = symmetric or asymmetric
    nominal = nominal_match.group(1) if nominal_match else ""
    nominal_at = nominal_match.start() if nominal_match else None
    if not nominal and tolerance_match:
        before = list(_STANDALONE.finditer(clause[: tolerance_match.start()]))
        if before:
            nominal = before[-1].group(1)
            nominal_at = before[-1].start()
    # Where the characteristic's name ends: at the first figure that is not part of it.
    name_end = len(clause)
    head = clause.split(":", 1)[0] if ":" in clause else None
    if head is not None and not re.search(r"\d\s*$", head.strip()) or head is not None and "max" in clause:
        name_end = len(head)
    for match in _STANDALONE.finditer(clause):
        if _ID_WORDS.search(clause[: match.start()]) or re.match(
            r"-\d", clause[match.end() : match.end() + 2]
        ):
            continue
        name_end = min(name_end, match.start())
        break
    for position in (nominal_at, tolerance_match.start() if tolerance_match else None):
        if position is not None:
            name_end = min(name_end, position)
    name = re.sub(r"\s+(?:nominal|tol)\s*$", "", clause[:name_end].strip().rstrip(":,")).strip()
    limits = [m.span() for m in (tolerance_match, limit_max, limit_min, nominal_match) if m]
    measured = ""
    if measured_match:
        measured = measured_match.group(1)
    else:
        after_colon = re.search(r":\s*(" + _NUM + r")\s*$", clause)
        if after_colon:
            measured = after_colon.group(1)
        else:
            for match in _STANDALONE.finditer(clause):
                if match.start() < len(name) or any(a <= match.start() < b for a, b in limits):
                    continue
                if (
                    nominal
                    and match.group(1) == nominal
                    and nominal_at is not None
                    and match.start() <= nominal_at + 12
                ):
                    continue
                measured = match.group(1)
                unit = _UNIT_AFTER.match(clause, match.end())
                if unit and unit.group(2):
                    measured += "%"
                elif unit and unit.group(1) != "turns":
                    measured += f" {unit.group(1)}"
                break
    has_unit = bool(re.search(_NUM + r"\s*(?:mm|µm|MPa|HB|HRC|%|dB)\b", clause))
    if (
        not name
        or not measured
        or not (tolerance_match or limit_max or limit_min or measured_match or has_unit)
    ):
        return None
    result = _Measurement(name=name.replace("|", "/"), nominal=nominal, measured=measured)
    values = [float(v) for v in re.findall(_NUM, measured.replace(" HB", ""))]
    out: list[float] = []
    if symmetric and nominal:
        tolerance = float(symmetric.group(1))
        result.tolerance = f"+/-{symmetric.group(1)}"
        out = [v for v in values if abs(v - float(nominal)) > tolerance + 1e-9]
    elif asymmetric and nominal:
        upper, lower = float(asymmetric.group(1)), float(asymmetric.group(2))
        result.tolerance = asymmetric.group(0).replace(" ", "")
        out = [v for v in values if not float(nominal) - lower - 1e-9 <= v <= float(nominal) + upper + 1e-9]
    elif limit_max:
        limit = next(g for g in limit_max.groups() if g)
        result.tolerance = f"{limit} max"
        out = [v for v in values if v > float(limit) + 1e-9]
    elif limit_min:
        limit = next(g for g in limit_min.groups() if g)
        result.tolerance = f"min {limit}" + ("%" if "%" in limit_min.group(0) else "")
        out = [v for v in values if v < float(limit) - 1e-9]
    else:
        result.verdict = "not reported"
        return result
    result.verdict = "OUT" if out else "IN"
    if out and len(values) > 1:
        result.verdict = "OUT (" + ", ".join(f"{v:g}" for v in out) + ")"
    return result


def _measurements(source: Source) -> list[_Measurement]:
    rows = []
    for sentence in source.sentences:
        if sentence.rstrip().endswith("?"):
            continue
        for clause in _clauses(sentence):
            # "Rm 310 MPa (min 295), Rp0.2 265 MPa (min 250)": one characteristic a part.
            limits = len(_LIMIT_MIN.findall(clause)) + len(_LIMIT_MAX.findall(clause))
            parts = re.split(r",\s+(?=[A-Za-z])", clause) if limits >= 2 else [clause]
            for part in parts:
                row = _measurement(part)
                if row is not None:
                    rows.append(row)
    return rows


def _column_value(column: str, row: _Measurement) -> str:
    lowered = column.lower()
    if re.search(r"\bin\b|out|status|result|verdict|pass|ok", lowered):
        return row.verdict or "not reported"
    if "nominal" in lowered or "target" in lowered or "spec" in lowered:
        return row.nominal or "not reported"
    if "tol" in lowered or "limit" in lowered:
        return row.tolerance or "not reported"
    if "measur" in lowered or "actual" in lowered or "value" in lowered or "reading" in lowered:
        return row.measured or "not reported"
    return row.name


def _write_table(work: _Work, flaws: list[str]) -> tuple[str, str]:
    columns = work.reading.columns
    rows = _measurements(work.source)
    if not rows:
        facts = _facts(work.source, "") or [("input", _strip_end(work.source.text[:120]))]
        rows = [_Measurement(name=field, measured=value, verdict="not reported") for field, value in facts]
    flaw = ""
    if flaws:
        for name in flaws:
            if name == "wrong_verdict":
                judged = [r for r in rows if r.verdict.startswith(("IN", "OUT"))]
                if judged:
                    row = work.rng.choice(judged)
                    right = row.verdict
                    row.verdict = "IN" if right.startswith("OUT") else "OUT"
                    flaw = f"{row.name} is marked {row.verdict}, but {row.measured} is {right.split()[0]} of tolerance"
                    break
            elif name == "missing_item" and len(rows) >= 2:
                out_rows = [r for r in rows if r.verdict.startswith("OUT")]
                row = work.rng.choice(out_rows or rows)
                rows.remove(row)
                flaw = f"the row for {row.name} is missing"
                break
            elif name == "invented_figure":
                break
    lines = [" | ".join(columns)] + [" | ".join(_column_value(c, row) for c in columns) for row in rows]
    if flaws and not flaw:
        return _apply_line_flaws(lines, work, ["invented_figure", "missing_item"], keep_first=1)
    return "\n".join(lines), flaw


_DESIGNS = (
    ("randomised", re.compile(r"randomi[sz]", re.I)),
    ("natural experiment", re.compile(r"natural experiment|difference-in-differences", re.I)),
    ("meta-analysis", re.compile(r"meta-analys", re.I)),
    ("observational", re.compile(r"observational|self-selected", re.I)),
    ("case study", re.compile(r"case study", re.I)),
    ("survey", re.compile(r"survey|respondents", re.I)),
    ("interviews", re.compile(r"interview", re.I)),
    ("lab study", re.compile(r"lab studies|vignette", re.I)),
)
_SAMPLE = re.compile(
    r"\b(?:n\s*=\s*\d[\d,]*|\d[\d,]*\s+(?:[a-z-]+\s+){0,2}(?:engineers|respondents|managers|agents|interviews|"
    r"studies|staff|employees|new hires|workers|people|participants|firms|companies|pilots)|"
    r"(?:one|a|an) \d+-person (?:company|firm|team|organisation))",
    re.I,
)
_EFFECT = re.compile(
    r"(?:p\s*[=<]\s*0?\.\d+|95% CI[^;,)]*|d\s*=\s*-?\d?\.\d+|\d+(?:\.\d+)?/\d+ vs \d+(?:\.\d+)?/\d+"
    r"|\bfrom \d+(?:\.\d+)?%? to \d+(?:\.\d+)?%?(?: days| points)?|\d+(?:\.\d+)? (?:higher|lower)"
    r"|[-+−]?\d+(?:\.\d+)?\s*(?:%|points)(?:\s+to\s+\d+(?:\.\d+)?%)?|\d+x)",
    re.I,
)


@functools.lru_cache(maxsize=1024)
def design_of(text: str) -> str:
    for name, pattern in _DESIGNS:
        if pattern.search(text):
            return name
    return "unclear"


def _write_claims(work: _Work, flaws: list[str]) -> tuple[str, str]:
    source = work.source
    design = design_of(source.text)
    sample_match = _SAMPLE.search(source.text)
    sample = sample_match.group(0) if sample_match else "not reported"
    field_names = [f.name for f in work.reading.json_fields] or [
        "claim",
        "evidence",
        "effect_size",
        "sample",
        "strength",
    ]
    strength_options = next(
        (f.options for f in work.reading.json_fields if f.options), ("strong", "moderate", "weak")
    )
    claims = []
    for sentence in source.sentences:
        if (
            sentence.endswith("?")
            or not any(ch.isdigit() for ch in sentence)
            and not re.search(
                r"\b(?:more|less|higher|lower|rose|fell|increase|decrease|reduc|improv|prefer|felt|reported|found|"
                r"suggest|associated)\w*",
                sentence,
                re.I,
            )
        ):
            continue
        effects = list(dict.fromkeys(e.strip() for e in _EFFECT.findall(sentence)))
        # A sentence giving the design or the sample only is not a claim.
        about_sample = bool(sample_match and sample_match.group(0) in sentence)
        rest = sentence.replace(sample_match.group(0), "") if about_sample else sentence
        if (not effects and (about_sample or design_of(sentence) != "unclear")) or (
            about_sample and len(_words(rest)) < 5
        ):
            continue
        null_result = re.search(r"no difference|did not differ|no new data|CI -\d", sentence, re.I)
        if design in ("randomised", "natural experiment") and not null_result:
            strength = "strong"
        elif design in ("case study", "interviews", "lab study"):
            strength = "weak"
        elif design in ("randomised", "natural experiment", "meta-analysis", "survey") or effects:
            strength = "moderate"
        else:
            strength = "weak"
        if strength not in strength_options:
            strength = strength_options[
                min(len(strength_options) - 1, ("strong", "moderate", "weak").index(strength))
            ]
        row: dict[str, object] = {}
        for name in field_names:
            lowered = name.lower()
            if "claim" in lowered:
                row[name] = _strip_end(sentence)
            elif "evidence" in lowered:
                row[name] = f"{design} ({sample})" if design != "unclear" else f"reported figures ({sample})"
            elif "effect" in lowered:
                row[name] = "; ".join(e.strip() for e in effects) or None
            elif "sample" in lowered:
                row[name] = sample
            elif "strength" in lowered:
                row[name] = strength
            else:
                row[name] = _field_value(name, source)
        claims.append(row)
    if not claims:
        claims.append(
            {name: (_strip_end(source.text[:160]) if "claim" in name else None) for name in field_names}
        )
    lines = [json.dumps(c, ensure_ascii=False) for c in claims]
    questions = [f"Q: {q}" for q in source.questions]
    if work.reading.wants_questions and not questions:
        questions = [f"Q: Would the finding hold beyond this {design if design != 'unclear' else 'sample'}?"]
    flaw = ""
    for name in flaws:
        if name == "malformed_json":
            index = work.rng.randrange(len(lines))
            lines[index] = lines[index][:-1]
            flaw = "a claim line is not valid JSON"
            break
        if name == "outside_label":
            index = work.rng.randrange(len(claims))
            key = next((k for k in claims[index] if "strength" in k.lower()), None)
            if key:
                claims[index][key] = "very strong"
                lines[index] = json.dumps(claims[index], ensure_ascii=False)
                flaw = f'"very strong" is not one of the strengths ({", ".join(strength_options)})'
                break
        if name == "missing_item" and len(lines) >= 2:
            index = work.rng.randrange(len(lines))
            flaw = f"a claim is missing: {claims[index].get(field_names[0], '')}"[:120]
            lines.pop(index)
            break
        if name == "invented_figure":
            result = _invent_figure("\n".join(lines), work)
            if result:
                return "\n".join([result[0], *questions]), result[1]
    if flaws and not flaw:
        text, flaw = _hedge("\n".join(lines), work)
        return "\n".join([text, *questions]), flaw
    return "\n".join([*lines, *questions]), flaw


def _write_json_object(work: _Work, flaws: list[str]) -> tuple[str, str]:
    data = {}
    for field in work.reading.json_fields:
        if field.options:
            data[field.name] = best_label(field.options, field.name, work.source.text)
        elif field.name.lower() == "confidence":
            data[field.name] = work.confidence
        else:
            data[field.name] = _field_value(field.name, work.source)
    flaw = ""
    malformed = False
    for name in flaws:
        if name == "missing_field" and data:
            present = [k for k, v in data.items() if v is not None] or list(data)
            key = work.rng.choice(present)
            del data[key]
            flaw = f'the JSON has no "{key}" field'
            break
        if name == "malformed_json":
            malformed = True
            flaw = "the answer is not valid JSON"
            break
        if name == "invented_figure":
            result = _invent_figure(json.dumps(data, ensure_ascii=False), work)
            if result:
                return result
    text = json.dumps(data, ensure_ascii=False)
    if malformed:
        text = text[:-1]
    if flaws and not flaw:
        data.pop(next(iter(data)), None)
        return json.dumps(data, ensure_ascii=False), "a field of the JSON is missing"
    return text, flaw


def _write_extract(work: _Work, flaws: list[str]) -> tuple[str, str]:
    reading = work.reading
    if reading.json_lines:
        return _write_claims(work, flaws)
    if reading.columns:
        return _write_table(work, flaws)
    if reading.json_fields:
        return _write_json_object(work, flaws)
    return _write_field_lines(work, flaws)


# --- summarise ------------------------------------------------------------------------------

_KEY_WORDS = re.compile(
    r"\b(?:because|found|result|rose|fell|failed|decided|agreed|risk|propos|wants?|need|gap|cause|"
    r"follow-ups?|questions?|main|key|increase|decrease|higher|lower|more|less)\w*",
    re.I,
)


def _informativeness(sentence: str, index: int, title_words: set[str]) -> float:
    words = len(sentence.split())
    score = 0.8 * min(3, len(_figures(sentence)))
    score += 1.0 * len(_content_words(sentence) & title_words)
    score += 0.5 * min(2, len(_KEY_WORDS.findall(sentence)))
    score += 0.6 if index == 0 else 0
    score += 0.03 * min(words, 30)
    score -= 0.4 if sentence.endswith("?") else 0
    score -= 0.8 if words < 4 else 0
    return score


def _compress(sentence: str) -> str:
    text = re.sub(r"^(?:notes?|summary|update|fyi)\s*:\s*", "", sentence.strip(), flags=re.I)
    # Parentheses without a figure are asides; those with one keep numbers as given.
    text = re.sub(r"\s*\((?![^()]*\d)[^()]*\)", "", text)
    return _sentence(_GREETING.sub("", text))


def _write_summary(work: _Work, flaws: list[str]) -> tuple[str, str]:
    reading, source = work.reading, work.source
    sentences = list(source.sentences) or [source.text]
    title_words = _content_words(reading.task_line)
    scored = [(_informativeness(s, i, title_words), i) for i, s in enumerate(sentences)]
    n = len(sentences)
    limit = reading.sentence_limit
    if reading.brief:
        usual = max(1, round(n / 4))
    else:
        usual = max(2 if n >= 3 else 1, round(n * 0.4)) + (
            1 if work.profile.verbosity >= 1.5 and n >= 4 else 0
        )
    if limit and reading.sentence_limit_exact:
        k = min(limit, n)
    else:
        k = min(limit, usual) if limit else usual
        if n > 1:
            k = min(k, n - 1)
    ranked = sorted(scored, reverse=True)
    chosen = sorted(i for _, i in ranked[:k])
    if re.search(r"no new data", reading.instructions, re.I):
        for i, s in enumerate(sentences):
            if re.search(r"no new data|reports no", s, re.I) and i not in chosen:
                chosen = sorted([*chosen[: max(0, k - 1)], i])
    flaw = ""
    extra_sentence = ""
    for name in flaws:
        if name == "missed_point" and n >= 3:
            top = ranked[0][1]
            spare = [i for _, i in reversed(ranked) if i not in chosen]
            if top in chosen and spare:
                chosen = sorted([i for i in chosen if i != top] + [spare[0]])
                flaw = f"the summary misses the key point: {_compress(sentences[top])[:100]}"
                break
        elif name == "too_long" and (limit or reading.word_limit):
            spare = [i for _, i in ranked if i not in chosen]
            if limit and len(spare) >= 1:
                chosen = sorted(chosen + spare[:2])
                flaw = f"the summary has {len(chosen)} sentences; at most {limit} were asked"
                break
            if reading.word_limit:
                extra_sentence = " ".join(_compress(s) for s in sentences)
                flaw = f"the summary runs over the {reading.word_limit} words asked"
                break
        elif name == "invented_figure":
            flaw = "invent"
            break
    parts = [_compress(sentences[i]) for i in chosen]
    if reading.word_limit and not extra_sentence:
        while len(parts) > 1 and _word_count(" ".join(parts)) > reading.word_limit:
            parts.pop()
        if _word_count(" ".join(parts)) > reading.word_limit:
            parts = [" ".join(parts[0].split()[: reading.word_limit - 1]).rstrip(",;") + "."]
    text = "\n".join(f"- {p}" for p in parts) if reading.bullets else " ".join(parts)
    if extra_sentence:
        text = f"{text} {extra_sentence}"
    # A summary is never longer than what it summarises.
    if len(text) > len(source.text) and not extra_sentence and len(source.text) > 20:
        clauses = re.split(r"(?<=[;,])\s+", source.text.strip())
        if len(clauses) > 1:
            text = _sentence(_strip_end(" ".join(clauses[: max(1, len(clauses) // 2)])))
        if len(text) >= len(source.text):
            words = source.text.split()
            text = _sentence(_strip_end(" ".join(words[: max(3, int(len(words) * 0.6))])))
    if work.unsure:
        text = f"{text} I am not sure this covers everything."
    if flaw == "invent":
        result = _invent_figure(text, work)
        if result:
            return result
        flaw = ""
    if flaws and not flaw:
        return _hedge(text, work)
    return text, flaw


# --- sections -------------------------------------------------------------------------------

_RISK_CUES = _cues(
    {
        "safety": "smell|allerg|reaction|injur|crack|cashew|nuts|melted|warm",
        "legal": "consumer protection|lawyer|legal|court| sue |mislabel",
        "churn": "cancel|third time|or i go|again|leave|all 4",
        "reputational": "review|social media|press",
    }
)
_DATED_LINE = re.compile(r"^\s*(\d{1,2}\s+[A-Z][a-z]{2}|[A-Z][a-z]{2}\s+\d{1,2}|\d{4}-\d\d-\d\d)\b\s*(.*)$")
_IMPROVEMENTS = {
    "observational": "a randomised design, or at least a comparison with a pre-period, with outcomes measured "
    "by people who do not know who works where",
    "meta-analysis": "analyse studies with objective outcomes and pandemic-era studies separately, and adjust "
    "for publication bias",
    "survey": "a longitudinal design with a comparison group and a higher response rate",
    "case study": "a comparison with similar teams or firms that did not change",
    "natural experiment": "a placebo test on staff whose commute did not change",
    "randomised": "a longer follow-up with objective outcomes",
    "interviews": "a field study with objective outcomes alongside the interviews",
    "lab study": "a field study with real employees and controls for role",
    "unclear": "a comparison group and a pre-registered analysis",
}


def _options_pick(section: Section, work: _Work) -> tuple[str, str]:
    table_name = section.heading.lower()
    label = best_label(section.options, table_name, work.source.text)
    evidence = _cue_sentence(work.source, label, table_name)
    return label, evidence


def _section_content(section: Section, work: _Work) -> str | list[str]:
    source = work.source
    heading = section.heading.lower()
    text = source.text
    design = design_of(text)
    if section.options and heading.startswith("risk") and "rating" not in heading:
        lowered = f" {text.lower()} "
        found = [
            f"{option} ({_cue_clause(source, _RISK_CUES.get(option.lower(), ()))})"
            for option in section.options
            if any(cue in lowered for cue in _RISK_CUES.get(option.lower(), ()))
        ]
        return "; ".join(found) if found else "none found in the thread"
    if section.options:
        label, evidence = _options_pick(section, work)
        if "rating" in heading or "bias" in heading:
            reason = {
                "randomised": "random assignment protects against selection",
                "natural experiment": "the comparison is credible, with trends shown before the change",
                "meta-analysis": "heterogeneity is high and most included studies rely on self-report",
            }.get(design, "the design cannot separate the effect from who chose to take part")
            return f"{label}; {reason}"
        return f"{label}, because {_lower_first(evidence)}" if evidence else label
    if re.search(r"\bpart\b|\blot\b", heading):
        ids = _CASE_ID.findall(work.reading.instructions) or _IDENTIFIER.findall(work.reading.instructions)
        lot = re.search(r"\blot \d+", work.reading.instructions + " " + text, re.I)
        found = ", ".join(dict.fromkeys([*ids[:1], *([lot.group(0)] if lot else [])]))
        return found or "not stated"
    if "nonconform" in heading or "finding" in heading or "problem" in heading:
        return _strip_end(source.sentences[0]) if source.sentences else "not stated"
    if "extent" in heading:
        pattern = r"\b\d+ of \d+\b|lot size|shipped|stock|parts? \d|\d+ parts|all \d"
        hits = [
            _strip_end(s) for s in source.sentences[1:] if re.search(pattern, s, re.I) and not s.endswith("?")
        ]
        if not hits and source.sentences:
            # The first sentence is the nonconformance itself: only its count is the extent.
            count = re.search(r"\b\d+ of \d+(?: [a-z]+){0,3}", source.sentences[0])
            hits = [count.group(0)] if count else []
        return "; ".join(hits[:2]) or "not stated"
    if "containment" in heading:
        lot = re.search(r"\blot \d+", work.reading.instructions + " " + text, re.I)
        steps = [f"quarantine {lot.group(0) if lot else 'the affected lot'}"]
        stock = re.search(r"(\d+) shipped to stock", text)
        if stock:
            steps.append(f"hold and re-inspect the {stock.group(1)} parts already in stock")
        if re.search(r"tool|alarm|machine|insert|tap", text, re.I):
            steps.append("stop the machine until the cause is confirmed")
        if re.search(r"supplier", text, re.I):
            steps.append("block further deliveries from the supplier pending their response")
        return "; ".join(steps)
    if "question" in heading:
        return list(source.questions) or "none"
    if "want" in heading:
        wants = [s for s in source.sentences if re.search(r"\b(?:want|asks?|request|expect|demand)", s, re.I)]
        line = wants[-1] if wants else (source.sentences[-1] if source.sentences else "")
        dated = _DATED_LINE.match(line)
        said = re.sub(r"^[a-z ]{0,20}:\s*", "", dated.group(2) if dated else line)
        asks = [
            p
            for p in re.split(r"(?<=[.!?])\s+", said)
            if re.search(r"want|ask|request|expect|why|\?", p, re.I)
        ]
        said = " ".join(asks) or said
        if not said:
            return "not stated"
        # The customer's own words are quoted; a report of them is not.
        if re.search(r"\b(?:I|my|we|our)\b", said):
            return f"“{_strip_end(said)}”"
        return _strip_end(re.sub(r"^(?:the )?customer (?:asks|wants)(?: to know)?\s*", "", said, flags=re.I))
    if "history" in heading or "timeline" in heading:
        lines = [s for s in source.sentences if _DATED_LINE.match(s)] or list(source.sentences)
        limit = section.limit or len(lines)
        if len(lines) > limit:
            ranked = sorted(
                range(len(lines)),
                key=lambda i: (
                    i in (0, len(lines) - 1),
                    len(_figures(lines[i])) + len(_KEY_WORDS.findall(lines[i])),
                ),
                reverse=True,
            )
            lines = [lines[i] for i in sorted(ranked[:limit])]
        return [_history_item(line) for line in lines]
    if re.search(r"money|refund|credit|paid|cost", heading):
        items = []
        total = 0.0
        for line in source.sentences:
            if re.search(r"credit|refund", line, re.I) and not re.search(r"\bwant|\bask|request", line, re.I):
                for amount in _AMOUNT.finditer(line):
                    dated = _DATED_LINE.match(line)
                    kind = "credit" if re.search(r"credit", line, re.I) else "refund"
                    items.append(f"{amount.group(0)} {kind}" + (f" ({dated.group(1)})" if dated else ""))
                    total += float(amount.group(0).replace(",", ""))
        if not items:
            return "none mentioned"
        return " + ".join(items) + (f" = {total:.2f}" if len(items) > 1 else "")
    if "case" in heading:
        cases = list(dict.fromkeys(_CASE_ID.findall(text)))
        return ", ".join(cases) if cases else "none mentioned"
    if "design" in heading:
        sentence = _cue_sentence_for(
            source,
            (
                "randomis",
                "observational",
                "meta-analysis",
                "survey",
                "case study",
                "natural experiment",
                "interview",
                "uses",
                "study",
            ),
        )
        causal = (
            "supports causal claims"
            if design in ("randomised", "natural experiment")
            else "does not support causal claims on its own"
        )
        described = _strip_end(sentence)
        if design.split()[0] not in described.lower():
            described = f"{design}; {_lower_first(described)}"
        return f"{described}; it {causal}"
    if "bias" in heading:
        sentence = _cue_sentence_for(
            source,
            (
                "self-selected",
                "self-report",
                "response rate",
                "knew",
                "funnel",
                "students",
                "vignette",
                "supervisors",
                "egger",
            ),
        )
        return _strip_end(sentence) if sentence else "no source of bias is reported"
    if "confound" in heading:
        sentence = _cue_sentence_for(
            source, ("control", "pre-period", "confound", "did not control", "parallel")
        )
        return _strip_end(sentence) if sentence else "no adjustment for confounders is reported"
    if "statist" in heading:
        sentence = _cue_sentence_for(source, ("i-squared", "p =", "ci", "egger", "heterogeneity", "subgroup"))
        return _strip_end(sentence) if sentence else "no statistical tests are reported"
    if "improve" in heading or "suggest" in heading:
        return _IMPROVEMENTS.get(design, _IMPROVEMENTS["unclear"])
    words = _content_words(section.heading + " " + section.hint)
    best = max(source.sentences, key=lambda s: len(words & _content_words(s)), default="")
    if best and words & _content_words(best):
        return _strip_end(best)
    return "not stated in the input"


def _cue_clause(source: Source, cues: tuple[str, ...]) -> str:
    """The shortest clause holding one of the cues, without a date or speaker before it."""
    clauses = []
    for sentence in source.sentences:
        dated = _DATED_LINE.match(sentence)
        body = re.sub(r"^[a-z][a-z ]{0,20}:\s*", "", dated.group(2)) if dated else sentence
        clauses += [c.strip() for c in re.split(r"[.;!?]\s+|,\s+(?=[a-z])", body) if c.strip()]
    for cue in cues:
        hits = [c for c in clauses if cue in f" {c.lower()} "]
        if hits:
            return _strip_end(min(hits, key=len))
    return ""


def _cue_sentence_for(source: Source, cues: tuple[str, ...]) -> str:
    best, best_score = "", 0
    for sentence in source.sentences:
        lowered = sentence.lower()
        score = sum(1 for cue in cues if cue in lowered)
        if score > best_score:
            best, best_score = sentence, score
    return best


def _history_item(line: str) -> str:
    dated = _DATED_LINE.match(line)
    if not dated:
        return _strip_end(line)
    rest = dated.group(2)
    speaker = re.match(r"([a-z][a-z ]{0,20}):\s*", rest)
    if speaker:
        rest = rest[speaker.end() :]
    first = re.split(r"(?<=[.!?])\s+", rest)[0]
    who = f" ({speaker.group(1)})" if speaker else ""
    return f"{dated.group(1)}{who}: {_strip_end(first)}"


def _render_sections(entries: list[tuple[str, str | list[str]]]) -> str:
    lines = []
    for heading, content in entries:
        if isinstance(content, list):
            lines.append(f"{heading}:")
            lines.extend(f"- {item}" for item in content)
        else:
            lines.append(f"{heading}: {content}")
    return "\n".join(lines)


def _write_sections(work: _Work, flaws: list[str]) -> tuple[str, str]:
    entries: list[tuple[str, str | list[str]]] = [
        (section.heading, _section_content(section, work)) for section in work.reading.sections
    ]
    if work.unsure:
        entries.append(("Note", "I am not sure about every point above"))
    flaw = ""
    for name in flaws:
        if name == "missing_section" and len(entries) >= 3:
            index = work.rng.randrange(len(entries))
            flaw = f"the section “{entries[index][0]}” is missing"
            entries.pop(index)
            break
        if name == "wrong_option":
            picks = [
                (i, s)
                for i, s in enumerate(work.reading.sections)
                if s.options and not s.heading.lower().startswith("risks")
            ]
            if picks:
                index, section = work.rng.choice(picks)
                right, _ = _options_pick(section, work)
                others = [o for o in section.options if o != right]
                if others:
                    wrong = work.rng.choice(others)
                    entries[index] = (section.heading, wrong)
                    flaw = f"{section.heading}: {wrong} is wrong here; the findings point to {right}"
                    break
        if name == "too_long":
            limited = [(i, s) for i, s in enumerate(work.reading.sections) if s.limit]
            if limited:
                index, section = limited[0]
                items = [s for s in work.source.sentences if _DATED_LINE.match(s)] or list(
                    work.source.sentences
                )
                if len(items) > (section.limit or 0):
                    entries[index] = (section.heading, [_history_item(s) for s in items])
                    flaw = f"{section.heading} has {len(items)} items; at most {section.limit} were asked"
                    break
        if name == "invented_figure":
            result = _invent_figure(_render_sections(entries), work)
            if result:
                return result
    if flaws and not flaw:
        return _hedge(_render_sections(entries), work)
    return _render_sections(entries), flaw


# --- draft ----------------------------------------------------------------------------------

_DIRECTIVE = re.compile(
    r"^(?:apologi[sz]e|confirm|offer|explain|mention|tell|ask|say|thank|include|remind|do not|don't|never|"
    r"keep|avoid|state|promise|invite|point out|no [\w ]+ needed)\b",
    re.I,
)
_YOU_VERBS = {
    "wants": "want",
    "asks": "ask",
    "is": "are",
    "has": "have",
    "was": "were",
    "needs": "need",
    "prefers": "prefer",
    "says": "say",
    "reports": "report",
    "likes": "like",
    "finds": "find",
}
_RESOLUTION = re.compile(
    r"\b(?:refund|issued|reissued|attached|estimate|offer|resolved|fixed|sent|credited|confirmed|arrive)",
    re.I,
)
_APOLOGY_CUES = re.compile(
    r"\b(?:late|delay|complain|wrong|twice|broken|damaged|missing|apologi|sorry)", re.I
)
_REGISTERS = {
    # greeting with a name, greeting without, apology, closing line, sign-off word
    "formal": (
        "Dear {name},",
        "Dear Sir or Madam,",
        "We apologise for the inconvenience.",
        "Please do not hesitate to contact us should you have any further questions.",
        "Kind regards",
    ),
    "friendly": (
        "Hi {name},",
        "Hi there,",
        "I'm sorry about the trouble.",
        "Just reply to this message if there is anything else we can do.",
        "Best wishes",
    ),
    "neutral": (
        "Hello {name},",
        "Hello,",
        "We are sorry for the trouble.",
        "Let us know if you have any questions.",
        "Best regards",
    ),
    "casual": ("Hey {name}!", "Hey!", "Oops, sorry about that!", "Catch you later!", "Cheers"),
}


def _you(sentence: str) -> str:
    """A fact about the customer, said to the customer."""
    text = sentence
    text = re.sub(r"^(?:The )?[Cc]ustomer's\b", "Your", text)
    text = re.sub(r"^(?:The )?[Cc]ustomer\b", "You", text)
    text = re.sub(r"^(Charged|Billed)\b", lambda m: f"You were {m.group(1).lower()}", text)
    text = re.sub(r"^Ordered\b", "You ordered", text)
    text = re.sub(r"^Order\b", "Your order", text)
    text = re.sub(r"^Carrier\b", "The carrier", text)
    if text.startswith("You "):
        words = text.split(" ")
        if len(words) > 1 and words[1] in _YOU_VERBS:
            words[1] = _YOU_VERBS[words[1]]
        text = " ".join(words)
        text = re.sub(
            r"\b(and|but) (wants|asks|needs|prefers|is|has)\b",
            lambda m: f"{m.group(1)} {_YOU_VERBS[m.group(2)]}",
            text,
        )
    # Said back to the customer: what they asked is past, what they want is understood.
    text = re.sub(r"^You ask\b", "You asked", text)
    text = re.sub(r"\band want to know\b", "and wanted to know", text)
    text = re.sub(r"^You want\b", "We understand you want", text)
    text = re.sub(r"^We offer\b", "We can offer you", text)
    text = re.sub(r"\bthe (parcel|order|box|boxes|subscription|account)\b", r"your \1", text)
    text = re.sub(r"\bnew estimate (\w+)", r"the new estimate is \1", text)
    text = re.sub(
        r"^(?:a |the )?(refund|credit|replacement) of ([\d.,]+) (issued|sent|processed|approved) (\w+)",
        lambda m: f"We {m.group(3)} a {m.group(1)} of {m.group(2)} {m.group(4)}",
        text,
        flags=re.I,
    )
    text = re.sub(
        r", (\d[\d–-]* (?:business |working )?days) to (appear|arrive)", r"; it takes \1 to \2", text
    )
    return _sentence(text)


def _draft_kind(work: _Work) -> str:
    reading = work.reading
    line = reading.task_line + " " + reading.instructions
    if re.search(r"out[- ]of[- ]office|\bauto-?reply|\bvacation\b", line, re.I) or re.match(
        r"away\b", work.source.text, re.I
    ):
        return "away"
    if re.search(
        r"welcome|introduc|new (?:team )?member|new colleague|joins", reading.task_line or line, re.I
    ):
        return "welcome"
    if re.search(r"reply|respond|complaint|customer|ticket|answer", line, re.I):
        return "reply"
    return "message"


def _greeting(register: str, name: str, kind: str) -> str:
    named, anonymous, *_ = _REGISTERS[register]
    if kind == "welcome":
        return {"formal": "Dear colleagues,", "casual": "Hey folks!"}.get(register, "Hi team,")
    if not name:
        return anonymous
    if re.search(r"&|\b(?:GmbH|Ltd|Inc|LLC|AG|SA|BV|plc|Co)\b", name):
        return f"Dear {name} team," if register == "formal" else f"Hello {name} team,"
    if register in ("friendly", "casual") and not re.match(r"(?:Mr|Mrs|Ms|Dr)\b", name):
        name = name.split()[0]
    return named.format(name=name)


def _draft_body(work: _Work, register: str, kind: str) -> list[str]:
    source, reading = work.source, work.reading
    facts: list[str] = []
    directives: list[str] = []
    for sentence in source.sentences:
        if _DIRECTIVE.match(sentence):
            directives.append(sentence)
            continue
        for clause in _clauses(sentence):
            if _DIRECTIVE.match(clause):
                directives.append(clause)
            else:
                facts.append(clause)
    apology = _REGISTERS[register][2]
    body: list[str] = []
    if kind == "away":
        for fact in facts:
            fact = _strip_end(fact)
            away = re.match(r"(?:away|out|off|on leave)\b\s*(?:from\s+)?(.*)", fact, re.I)
            urgent = re.match(r"urgent (\w+) (?:go|goes|should go) to (\S+)", fact, re.I)
            if away:
                body.append(f"I am out of the office {away.group(1)}, with no access to e-mail.")
            elif urgent:
                body.append(f"For urgent {urgent.group(1)}, please write to {urgent.group(2)}.")
            else:
                body.append(_sentence(fact))
        body.append("I will reply to your message when I am back.")
        return body
    if kind == "welcome":
        name = _first_name(source.text) or "our new colleague"
        for index, fact in enumerate(facts):
            fact = _strip_end(fact)
            if index == 0 and fact.startswith(name + " "):
                body.append(f"Please welcome {name}, who {fact[len(name) + 1 :]}.")
            elif fact[:1].islower():
                body.append(_sentence(f"{name} {fact}"))
            else:
                body.append(_sentence(fact))
        if not reading.brief:
            body.append(
                {
                    "formal": f"Please join me in welcoming {name} to the team.",
                    "casual": f"Go say hi to {name}!",
                }.get(register, f"Say hello when you see {name}, and help them settle in.")
            )
        return body
    body = [_you(fact) for fact in facts]
    if reading.answer_first:
        answers = [s for s in body if _RESOLUTION.search(s)]
        body = answers[:1] + [s for s in body if s not in answers[:1]]
    elif kind == "reply" and register != "casual":
        order = re.search(r"\b[Oo]rder (?:ref\.? )?#?([A-Z]*-?\d+)|\b([A-Z]{2,5}-\d{3,})", source.text)
        about = f" about order {order.group(1)}" if order and order.group(1) else ""
        if about and any(order.group(1) in fact for fact in body):
            about = ""
        if not re.search(r"not with thanks", reading.instructions, re.I):
            body.insert(0, f"Thank you for your message{about}.")
    wants_apology = any(re.match(r"apologi", d, re.I) for d in directives) or (
        kind == "reply" and _APOLOGY_CUES.search(source.text + " " + reading.task_line)
    )
    if wants_apology and not reading.brief:
        body.insert(1 if reading.answer_first else len(body), apology)
    if any(re.search(r"how to cancel", d, re.I) for d in directives):
        body.append("If you would still rather cancel, reply to this message and we will take care of it.")
    if (
        kind == "reply"
        and re.search(r"\b(?:asks?|wants? to know|requests?)\b", source.text)
        and not any(_RESOLUTION.search(s) for s in body)
    ):
        body.append("We are looking into this and will get back to you shortly.")
    return body


def _compose(greeting: str, body: list[str], closing: str, sign_off: str) -> str:
    parts = [greeting, "", " ".join(body)]
    if closing:
        parts.append(closing)
    parts += ["", sign_off]
    return "\n".join(parts)


def _write_draft(work: _Work, flaws: list[str]) -> tuple[str, str]:
    reading, source = work.reading, work.source
    kind = _draft_kind(work)
    register = reading.register
    asked = register
    flaw = ""
    invent = False
    long = False
    sign_off_name = reading.sign_off
    for name in flaws:
        if name == "wrong_tone":
            register = "formal" if asked in ("friendly", "casual") else "casual"
            flaw = f"the tone is {register}, not the {asked if asked != 'neutral' else 'plain business'} tone asked"
            break
        if name == "wrong_sign_off" and reading.sign_off:
            sign_off_name = "Alex"
            flaw = f"it is signed “Alex”, not “{reading.sign_off}” as asked"
            break
        if name == "too_long" and reading.word_limit:
            long = True
            flaw = f"the draft runs over the {reading.word_limit} words asked"
            break
        if name == "invented_figure" and source.figures:
            invent = True
            break
    recipient = reading.recipient or source.recipient
    greeting = _greeting(register, recipient, kind)
    body = _draft_body(work, register, kind)
    closing = "" if reading.brief or kind in ("welcome", "away") else _REGISTERS[register][3]
    if "reply to this message" in " ".join(body):
        closing = ""
    if kind == "away":
        greeting = "Hello," if register != "casual" else "Hey!"
    word = _REGISTERS[register][4]
    signature = (
        f"{word},\n{sign_off_name}"
        if sign_off_name
        else (f"{word},\nThe customer service team" if kind == "reply" else f"{word}")
    )
    if work.unsure:
        body.append("I'm not sure all of this is right.")
    if reading.word_limit and not long:
        while (
            len(body) > 1 and _word_count(_compose(greeting, body, closing, signature)) > reading.word_limit
        ):
            if closing:
                closing = ""
            else:
                body.pop()
    if long:
        padding = [
            "We truly value you as a customer and want every experience with us to be a good one.",
            "Our team works hard every day to make sure that orders arrive on time and in perfect condition.",
            "We are always looking for ways to improve, and feedback like yours helps us do that.",
            "Please be assured that we take every message seriously and read each one carefully.",
            "Thank you once again for taking the time to write to us and for your patience.",
        ]
        while _word_count(_compose(greeting, body, closing, signature)) <= reading.word_limit * 1.15:
            body.extend(padding)
    text = _compose(greeting, body, closing, signature)
    if invent:
        result = _invent_figure(text, work)
        if result:
            return result
    if flaws and not flaw:
        register = "formal" if asked in ("friendly", "casual") else "casual"
        text = _compose(
            _greeting(register, recipient, kind),
            _draft_body(work, register, kind),
            _REGISTERS[register][3],
            _REGISTERS[register][4],
        )
        flaw = f"the tone is {register}, not the tone asked"
    return text, flaw


# --- rewrite and anything else ----------------------------------------------------------------

_UNITS = {
    "h": "hours",
    "hr": "hours",
    "hrs": "hours",
    "min": "minutes",
    "mins": "minutes",
    "d": "days",
    "wk": "weeks",
    "yr": "years",
    "pcs": "pieces",
    "qty": "quantity",
}


def _write_rewrite(work: _Work, flaws: list[str]) -> tuple[str, str]:
    text = " ".join(work.source.text.split())
    text = re.sub(
        r"(\d)\s*(h|hr|hrs|min|mins|d|wk|yr)\b", lambda m: f"{m.group(1)} {_UNITS[m.group(2)]}", text
    )
    parts = [p.strip() for p in re.split(r",\s+", _strip_end(text)) if p.strip()]
    if len(parts) >= 2:
        subject, rest = parts[0], parts[1:]
        sizes = [p for p in rest if re.match(r"^\d", p)]
        verbs = [
            p
            for p in rest
            if p not in sizes and p.split()[0].lower().endswith("s") and not re.search(r"\d", p.split()[0])
        ]
        others = [p for p in rest if p not in sizes and p not in verbs]
        sentence = subject + (f" ({', '.join(sizes)})" if sizes else "")
        if verbs:
            verb_phrase = " ".join(verbs)
            tail = [re.sub(r"^(\w+) (\d)", r"\1 for \2", o) for o in others]
            verb_phrase = re.sub(r"^(\w+ \w+) (\w+) (\d)", r"\1 \2 for \3", verb_phrase)
            if tail:
                verb_phrase += " and " + " and ".join(tail)
            sentence += f" that {verb_phrase}"
        elif others:
            sentence += ", " + ", ".join(others)
        text = _sentence(sentence)
    else:
        text = _sentence(text)
    if flaws:
        result = _invent_figure(text, work) if "invented_figure" in flaws[:2] else None
        return result or _hedge(text, work)
    return text, ""


def _write_generic(work: _Work, flaws: list[str]) -> tuple[str, str]:
    sentences = list(work.source.sentences) or [work.source.text or work.reading.task_line or "(no input)"]
    title_words = _content_words(work.reading.task_line)
    limit = 1 if work.reading.brief else 3
    ranked = sorted(
        range(len(sentences)), key=lambda i: _informativeness(sentences[i], i, title_words), reverse=True
    )
    chosen = sorted(ranked[:limit])
    points = [_compress(sentences[i]) for i in chosen]
    text = points[0] if len(points) == 1 else "Key points:\n" + "\n".join(f"- {p}" for p in points)
    if work.unsure:
        text += "\nI am not sure this is complete."
    if flaws:
        result = _invent_figure(text, work) if "invented_figure" in flaws[:2] else None
        return result or _hedge(text, work)
    return text, ""


# --- the answer ----------------------------------------------------------------------------------

_FLAWS: dict[str, dict[str, float]] = {
    "classify": {"wrong_label": 0.5, "outside_label": 0.2, "missing_field": 0.15, "malformed_json": 0.15},
    "extract": {
        "invented_figure": 0.45,
        "missing_item": 0.3,
        "wrong_verdict": 0.25,
        "malformed_json": 0.1,
        "missing_field": 0.15,
        "outside_label": 0.1,
    },
    "summarise": {"invented_figure": 0.35, "missed_point": 0.3, "too_long": 0.25, "hedge": 0.1},
    "sections": {"missing_section": 0.3, "invented_figure": 0.3, "wrong_option": 0.25, "too_long": 0.15},
    "draft": {"wrong_tone": 0.35, "invented_figure": 0.3, "too_long": 0.2, "wrong_sign_off": 0.15},
    "rewrite": {"invented_figure": 0.6, "hedge": 0.4},
    "generic": {"invented_figure": 0.6, "hedge": 0.4},
}
_WRITERS: dict[str, Writer] = {
    "classify": _write_classify,
    "extract": _write_extract,
    "summarise": _write_summary,
    "sections": _write_sections,
    "draft": _write_draft,
    "rewrite": _write_rewrite,
    "generic": _write_generic,
}


def _writer_kind(reading: PromptReading) -> str:
    if reading.kind in ("classify", "extract"):
        return reading.kind
    if reading.sections:
        return "sections"
    if reading.kind == "appraise":
        return "generic"
    return reading.kind


def _example_matches(reading: PromptReading, source: Source, work_kind: str) -> bool:
    examples = reading.examples
    if not examples:
        return False
    if work_kind == "classify":
        for label_set in reading.label_sets[:1] or (LabelSet("label", DEFAULT_LABELS, False),):
            right = best_label(label_set.labels, label_set.name, source.text)
            for line in examples.splitlines():
                if _EXAMPLE_PAIR.search(line) and re.search(r"\b" + re.escape(right) + r"\b", line, re.I):
                    return True
        return False
    return len(_content_words(examples) & _content_words(source.text)) >= 3


def accuracy_logit(
    model: str, request_prompt: str, input_text: str
) -> tuple[float, PromptReading, Source, bool]:
    """log-odds of a right answer for this request (see the module docstring), with
    what was read from the prompt and the input, and whether the input was in the prompt."""
    profile = SIMULATED_PROFILES[model]
    instructions, present = _instructions(request_prompt, input_text)
    reading = read_prompt(instructions)
    source = read_source(input_text) if present else read_source(reading.task_line or instructions)
    kind = _writer_kind(reading)
    logit = _logit(profile.skill) - profile.difficulty_slope * input_difficulty(input_text)
    logit += KIND_EFFECT.get(kind, 0.0)
    if reading.has_format:
        logit += EFFECT_FORMAT
    if kind == "classify" and reading.label_sets:
        # In proportion to the label sets explained: both of two sets, the full effect.
        defined = sum(1 for label_set in reading.label_sets if label_set.defined)
        logit += EFFECT_DEFINITIONS * defined / len(reading.label_sets)
    if reading.examples:
        logit += EFFECT_EXAMPLES
        if _example_matches(reading, source, kind):
            logit += EFFECT_MATCHING_EXAMPLE
    if reading.grounded and kind in ("extract", "summarise", "draft", "sections"):
        logit += EFFECT_GROUNDED
    if reading.feedback:
        logit += EFFECT_FEEDBACK
    if reading.vague:
        logit += EFFECT_VAGUE
    if reading.placeholders:
        logit += max(EFFECT_PLACEHOLDERS_MAX, EFFECT_PLACEHOLDER * len(reading.placeholders))
    if not present:
        logit = min(logit + EFFECT_NO_INPUT, NO_INPUT_CEILING)
    return logit, reading, source, present


@dataclass(frozen=True)
class SimulatedAnswer:
    """Everything the simulated model decided for one request."""

    text: str
    confidence: float
    # Whether the answer is right; when not, ``flaw`` says what is wrong, as a
    # reviewer would.
    correct: bool
    flaw: str
    # The accuracy the model had on this request, before the draws.
    p: float
    kind: str
    latency_ms: float
    tokens_in: int
    tokens_out: int
    # Non-empty when the call fails: complete() raises ProviderError with it.
    error: str = ""


def _seed(request: ModelRequest) -> int:
    digest = hashlib.sha256(f"{request.model}\x00{request.prompt}\x00{request.input}".encode()).hexdigest()
    return int(digest[:16], 16)


def simulate(request: ModelRequest) -> SimulatedAnswer:
    """The simulated model's whole answer to a request, without sleeping."""
    try:
        profile = SIMULATED_PROFILES[request.model]
    except KeyError:
        known = ", ".join(sorted(SIMULATED_PROFILES))
        raise ProviderError(f"unknown simulated model {request.model!r} (known: {known})") from None
    rng = random.Random(_seed(request))
    settings = request.settings or {}
    difficulty = input_difficulty(request.input)
    # The draws come in the order they always have (latency, then error), so the
    # latency and the failures of a request are what they were before.
    latency_ms = float(settings.get("latency_ms", profile.latency_ms))
    latency_ms *= 0.75 + 0.5 * rng.random()
    error_rate = float(settings.get("error_rate", profile.error_rate))
    tokens_in = _tokens(request.prompt)
    if rng.random() < error_rate * (1 + 3 * difficulty):
        return SimulatedAnswer(
            text="",
            confidence=0.0,
            correct=False,
            flaw="",
            p=0.0,
            kind="",
            latency_ms=round(latency_ms, 3),
            tokens_in=tokens_in,
            tokens_out=0,
            error=f"simulated {request.model}: the model returned an unusable answer (simulated error)",
        )
    logit, reading, source, _ = accuracy_logit(request.model, request.prompt, request.input)
    confidence = _sigmoid(logit + rng.gauss(0, CONFIDENCE_SPREAD))
    confidence = round(min(CONFIDENCE_MAX, max(CONFIDENCE_MIN, confidence)), 3)
    correct = rng.random() < confidence
    kind = _writer_kind(reading)
    work = _Work(
        reading=reading, source=source, model=request.model, profile=profile, rng=rng, confidence=confidence
    )
    flaws = [] if correct else _order(work, _FLAWS[kind])
    text, flaw = _WRITERS[kind](work, flaws)
    if not correct and not flaw:
        # Every wrong answer shows what is wrong; a writer that could not apply the
        # flaws it was given hedges instead.
        text, flaw = _hedge(text, work)
    return SimulatedAnswer(
        text=text,
        confidence=confidence,
        correct=correct,
        flaw="" if correct else flaw,
        p=round(_sigmoid(logit), 4),
        kind=kind,
        latency_ms=round(latency_ms, 3),
        tokens_in=tokens_in,
        tokens_out=_tokens(text),
    )


class SimulatedProvider:
    """Deterministic from (model, prompt, input): the same call always gives the same
    output, confidence, tokens and error, so tests and demos repeat exactly. See the
    module docstring for what it answers and how often it is right."""

    name = "simulated"
    simulated = True

    def __init__(self, *, latency_scale: float = 1.0, sleep: Callable[[float], object] = time.sleep) -> None:
        self.latency_scale = latency_scale
        self.sleep = sleep

    def profile(self, model: str) -> SimulatedProfile:
        try:
            return SIMULATED_PROFILES[model]
        except KeyError:
            known = ", ".join(sorted(SIMULATED_PROFILES))
            raise ProviderError(f"unknown simulated model {model!r} (known: {known})") from None

    def judge(self, request: ModelRequest) -> SimulatedAnswer:
        """The answer with whether it is right and why not, without sleeping: for
        tests and a simulated reviewer (a real model has no such thing)."""
        self.profile(request.model)
        return simulate(request)

    def complete(self, request: ModelRequest) -> ModelResponse:
        answer = self.judge(request)
        if answer.latency_ms > 0 and self.latency_scale > 0:
            self.sleep(answer.latency_ms * self.latency_scale / 1000)
        if answer.error:
            raise ProviderError(answer.error)
        return ModelResponse(
            text=answer.text,
            confidence=answer.confidence,
            tokens_in=answer.tokens_in,
            tokens_out=answer.tokens_out,
            latency_ms=answer.latency_ms,
            confidence_source="simulated",
        )
