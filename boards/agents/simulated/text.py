"""Text helpers of the simulated model: sentences, figures, dates, names."""

from __future__ import annotations

import functools
import hashlib
import re

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
NUMBER = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"
_ABBREVIATIONS = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|No|vs|approx|Inc|Ltd|Fig|etc|cf|e\.g|i\.e|Co)\.|\b[A-Z]\.)$"
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"'”)\]]*\s+(?=[\"'“(\[]?[A-Z0-9#])")
_LINE_ITEM = re.compile(
    r"^\s*(?:[-*•]\s|\d{1,2}[.)]\s|\d{1,2}\s+[A-Z][a-z]{2}\b|[A-Z][a-z]{2}\s+\d{1,2}\b|\d{4}-\d\d-\d\d|Q:)"
)
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
DATE = re.compile(
    r"\b(?:\d{1,2}(?:\s*[-–]\s*\d{1,2})?\s+(?:" + "|".join(MONTHS) + r")[a-z]*\.?"
    r"|(?:" + "|".join(MONTHS) + r")[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?"
    r"|\d{4}-\d\d-\d\d|(?:" + "|".join(WEEKDAYS) + r")(?:\s+\d{1,2}(?:st|nd|rd|th)?)?)\b",
    re.I,
)
AMOUNT = re.compile(r"(?<![\w.,-])(\d{1,3}(?:,\d{3})+|\d+)\.\d\d(?![\d%])")
IDENTIFIER = re.compile(r"\b[A-Z]{1,5}-?\d[\w-]*\b|#\d+\b")
CASE_ID = re.compile(r"\b[A-Z]{2,5}-\d{2,}\b")
_QUESTION_MARK = re.compile(r"\?")


def word_list(text: str) -> list[str]:
    return _WORD.findall(text)


def content_words(text: str) -> set[str]:
    return {w.lower() for w in word_list(text) if len(w) > 3 and w.lower() not in STOPWORDS}


def ends_with_abbreviation(text: str) -> bool:
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
        if merged and ends_with_abbreviation(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return tuple(merged)


def split_clauses(sentence: str) -> list[str]:
    return [c.strip() for c in re.split(r";\s+", sentence) if c.strip()]


def figures_in(text: str) -> set[str]:
    return set(DIGITS.findall(text))


def strip_end(text: str) -> str:
    return text.strip().rstrip(".;,: ").strip()


def as_sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def word_count(text: str) -> int:
    return len(text.split())


def number_value(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.get(word.lower())


def stable_index(key: str, n: int) -> int:
    """A deterministic pick that does not depend on the model (the right answer is the
    same whoever gives it)."""
    return int(hashlib.blake2b(key.encode(), digest_size=4).hexdigest(), 16) % n
