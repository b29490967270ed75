"""Choosing a label from the input: keyword cues for common label vocabularies."""

from __future__ import annotations

import functools
import re

from boards.agents.simulated.reading import Source
from boards.agents.simulated.text import split_sentences, stable_index, strip_end

# --- labels -------------------------------------------------------------------------------


def cue_table(table: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """A cue table written compactly: each label's cues separated by "|". A cue is a
    lower-case substring of the input (" sue " with spaces to match the word only)."""
    return {label: tuple(cues.split("|")) for label, cues in table.items()}


_TOPIC_CUES = cue_table(
    {
        "billing": "charg|refund|payment|paid|card|billed|invoice|price|fee|money",
        "payment": "charg|refund|payment|paid|card|billed",
        "invoice": "invoice|vat|receipt|reissue|tax id|credit note",
        "shipping": "ship|parcel|tracking|deliver|courier|carrier|package|dispatch",
        "delivery": "ship|parcel|tracking|deliver|courier|carrier|package|dispatch",
        "account": "log in|login|password|sign in|locked|account|reset|username|token",
        "access": "log in|login|password|sign in|locked|access|reset",
        "login": "log in|login|password|sign in|locked",
        "bug": "crash|error|closes the app|app closes|not working|does not work|freez|bug|glitch|app version|ios|android",
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
_URGENCY_CUES = cue_table(
    {
        "high": "charged|twice|refund|urgent|asap|immediately|deadline|before friday|today|tomorrow|!|safety|reaction|allerg",
        "urgent": "urgent|asap|immediately|charged|twice|!|safety",
        "low": "feature|could you add|add a way|when you have time|no rush|would be nice|pause",
    }
)
_SEVERITY_CUES = cue_table(
    {
        "critical": "crack|safety|fracture|leak|injur",
        "major": "out of tolerance|oversize|undersize|fails|limit of|porosity|sealing|noise|not threaded|sharp",
        "minor": "cosmetic|fingerprint|oil film|no marks|stain|after cleaning",
    }
)
SEVERITY_BY_CLASS = {
    "crack": "critical",
    "dimensional": "major",
    "thread": "major",
    "porosity": "major",
    "burr": "minor",
    "surface_finish": "minor",
    "contamination": "minor",
    "none": "minor",
}
_SENTIMENT_CUES = cue_table(
    {
        "positive": "love|great|thanks|excellent|happy|fast",
        "negative": "disappoint|angry|bad|broken|late|half empty|worst|never",
        "mixed": " but ",
    }
)
_BIAS_CUES = cue_table(
    {
        "low": "randomis|randomiz|parallel trends|natural experiment|difference-in-differences|pre-registered|blind",
        "high": "self-selected|observational|no pre-period|knew who|no control|case study|did not control",
        "some concerns": "survey|heterogeneity|i-squared|funnel|asymmetric|response rate|meta-analysis|self-report|publication bias",
    }
)
_CAUSE_CUES = cue_table(
    {
        "man": "overrid|operator|second shift|alarm|manual|training|ignored",
        "machine": "tool change|boring bar|insert|spindle|wear|tap breakage|offset|hobbing",
        "method": "procedure|sequence|program|method|fixture",
        "material": "supplier|casting|heat|bar stock|x-ray|cert",
        "measurement": "gauge|cmm|measurement error|calibrat|probe",
    }
)
_DISPOSITION_CUES = cue_table(
    {
        "scrap": "crack|no deviation|oversize|fracture",
        "rework": "not threaded|missing thread|burr|re-tap|deburr|undersize",
        "use as is": "concession|cosmetic|passed on all",
        "return to supplier": "supplier|x-ray|cert|casting",
    }
)
_FALLBACK_LABELS = ("other", "none", "normal", "neutral", "medium", "general", "unknown", "some concerns")
# What a model writes when it strays outside the label set.
NEAR_MISSES = {
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
# When the prompt names no labels: a business message vocabulary, or a defect one
# when the input reads like an inspection finding.
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
DEFECT_LABELS = (
    "dimensional",
    "surface_finish",
    "burr",
    "porosity",
    "crack",
    "contamination",
    "thread",
    "none",
)


@functools.lru_cache(maxsize=1024)
def default_labels(text: str) -> tuple[str, ...]:
    lowered = f" {text.lower()} "

    def hits(labels: tuple[str, ...]) -> int:
        return sum(
            _cue_score(label, _TOPIC_CUES, lowered) for label in labels if label not in ("none", "other")
        )

    return DEFECT_LABELS if hits(DEFECT_LABELS) > hits(DEFAULT_LABELS) else DEFAULT_LABELS


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
    return _label_cues_cached(label, id(table))


_TABLES = {
    id(table): table
    for table in (
        _TOPIC_CUES,
        _URGENCY_CUES,
        _SEVERITY_CUES,
        _SENTIMENT_CUES,
        _BIAS_CUES,
        _CAUSE_CUES,
        _DISPOSITION_CUES,
    )
}


@functools.lru_cache(maxsize=1024)
def _label_cues_cached(label: str, table_id: int) -> tuple[str, ...]:
    # Keyed by the table's id: the tables are module constants, one per vocabulary.
    table = _TABLES[table_id]
    key = label.lower()
    if key in table:
        return table[key]
    cues: list[str] = []
    for token in re.split(r"[\s_/-]+", key):
        for cue in table.get(token, ()):
            if cue not in cues:
                cues.append(cue)
    return tuple(cues)


@functools.lru_cache(maxsize=1024)
def _label_word(label: str) -> tuple[str, re.Pattern[str]] | None:
    """The label as a word (its text, and the pattern finding it whole), if long enough."""
    plain = label.lower().replace("_", " ")
    return (plain, re.compile(r"\b" + re.escape(plain) + r"\b")) if len(plain) > 3 else None


def _cue_score(label: str, table: dict[str, tuple[str, ...]], lowered: str, first: str = "") -> int:
    # What the message opens with is usually what it is about: its cues count twice.
    score = sum((2 if cue in first else 1) for cue in _label_cues(label, table) if cue in lowered)
    word = _label_word(label)
    # The pattern only where the text holds the word at all: most labels are not in
    # an input, and a substring test costs a fraction of a search.
    if word is not None and word[0] in lowered and word[1].search(lowered):
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
    return labels[stable_index(set_name + "\x00" + text, len(labels))]


def cue_sentence(source: Source, label: str, set_name: str) -> str:
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


GREETING = re.compile(r"^(?:hi|hello|hey|dear [\w .]+|good (?:morning|afternoon))\b[,!]?\s*", re.I)
_CLOSING = re.compile(r"\s*(?:thanks|thank you|cheers|regards|best)[,!.]?\s*[\w .]*$", re.I)


_INSTRUCTION = re.compile(
    r"^(?:please\s+)?(?:classify|categori[sz]e|label|triage|sort)\b[^:]{0,60}:\s*", re.I
)


def _clean_reason(sentence: str) -> str:
    # The evidence is what the input says, not the instruction a user wrote into it.
    text = GREETING.sub("", _INSTRUCTION.sub("", sentence.strip()))
    text = _CLOSING.sub("", text) if len(text) > 30 else text
    return strip_end(text)
