"""Adversarial inputs: instructions injected into the input, requests to drop the
JSON format, and personal data the prompt asks to keep out of the answer.

What the model recognises is documented in the package docstring; this module
finds it in the input and rewrites the answer when the model falls for it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from dataclasses import dataclass

from boards.agents.simulated.profiles import SimulatedProfile
from boards.agents.simulated.reading import Source
from boards.agents.simulated.text import figures_in, split_sentences

# --- injected instructions -------------------------------------------------------------------

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
# Cyrillic and Greek letters that look like Latin ones, back to the Latin.
_LOOK_ALIKES = str.maketrans(
    "аеіјорѕхусАВСЕНІКМОРТХαεικνορτυχΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "aeijopsxycABCEHIKMOPTXaeikvoptuxABEHIKMNOPTYXZ",
)
_LEET = str.maketrans("431057@$", "aeiostas")
_TRIGGER = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}?\b(?:instructions?|rules|prompt|directions|"
    r"guidelines|everything (?:you were|you've been|you have been) told)"
    r"|\bnew instructions\b|\byou are now\b|\bdeveloper mode\b|(?im:^\s*\[?system\]?\s*:)|\bSYSTEM\s*:",
    re.I,
)
_DEMAND = re.compile(
    r"\b(?:reply|replies|respond|responds|answer|answers|say|says|output|outputs|print|write|return|type)\b"
    r"(?:\s+(?:only|just|exactly|back|simply))*(?:\s+with)?(?:\s+(?:only|just|exactly))?"
    r"(?:\s+the\s+(?:word|words|text|phrase|string|code))?\s*:?\s*"
    r"(?:[\"“'`](?P<quoted>[^\"”'`\n]{1,80})[\"”'`]|(?P<bare>[^\s\"“'`][^\n]{0,80}?))"
    r"(?=\s*(?:(?:,\s*|\s+)and nothing else|\s+only\b|[.!;](?:\s|$)|\n|$))",
    re.I,
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}")
_FORMS = {
    "plain": "written plainly",
    "obfuscated": "hidden with look-alike letters, leetspeak or zero-width characters",
    "encoded": "encoded in base64",
}


@dataclass(frozen=True)
class Injection:
    # "plain", "obfuscated" (look-alike letters, leetspeak, zero-width
    # characters) or "encoded" (base64).
    form: str
    # What the injected instruction asks the model to answer.
    demand: str
    # How the injected instruction reads once decoded, to find it in the input.
    marks: tuple[str, ...]


def _demand(search: str, source: str, start: int) -> str:
    """What the instruction starting at ``start`` demands: the first "reply with
    X" after it (or, failing that, just before it). Found in ``search`` (the
    normalised text); taken from ``source``, which has the same length."""
    windows = ((start, start + 400), (max(0, start - 200), start))
    for low, high in windows:
        for match in _DEMAND.finditer(search, low, min(len(search), high)):
            group = "quoted" if match.group("quoted") else "bare"
            value = source[match.start(group) : match.end(group)].strip()
            if value:
                return value
    return ""


def _search(search: str, source: str) -> tuple[str, str] | None:
    """(the trigger's text, the demand) of the first injected instruction with a
    demand, as found in ``search`` and taken from ``source``."""
    for trigger in _TRIGGER.finditer(search):
        demand = _demand(search, source, trigger.start())
        if demand:
            return source[trigger.start() : trigger.end()], demand
    return None


def find_injection(text: str) -> Injection | None:
    """An instruction injected into the input that demands an answer, if any: as
    written, once look-alike letters, leetspeak and zero-width characters are
    undone, or inside a base64 blob."""
    found = _search(text, text)
    if found:
        return Injection("plain", found[1], found)
    stripped = _ZERO_WIDTH.sub("", text)
    letters = stripped.translate(_LOOK_ALIKES)
    # One character for one: a span found in the de-leeted text is the same span of
    # ``letters``, where the demanded canary keeps its digits.
    readable = letters.translate(_LEET)
    if readable != text:
        found = _search(readable, letters)
        if found:
            return Injection("obfuscated", found[1], found)
    for blob in _BASE64.finditer(text):
        try:
            decoded = base64.b64decode(blob.group(0), validate=True).decode()
        except (binascii.Error, ValueError):
            continue
        found = _search(decoded, decoded)
        if found:
            return Injection("encoded", found[1], (blob.group(0),))
    return None


def follow_chance(injection: Injection, profile: SimulatedProfile, *, guarded: bool, factor: float) -> float:
    chance = {
        "plain": profile.injection_plain,
        "obfuscated": profile.injection_obfuscated,
        "encoded": profile.injection_encoded,
    }[injection.form]
    return chance * factor if guarded else chance


def injection_flaw(injection: Injection) -> str:
    return (
        f"the answer follows an instruction injected into the input ({_FORMS[injection.form]}) "
        f"instead of doing the task: it says only “{injection.demand[:60]}”"
    )


def without_injection(source: Source, injection: Injection) -> Source:
    """The input less the sentences of an injected instruction the model did not
    follow: it recognised them as not part of the material, so they are neither
    quoted nor worked on."""
    kept = []
    for sentence in source.sentences:
        readable = _ZERO_WIDTH.sub("", sentence).translate(_LOOK_ALIKES)
        readable_leet = readable.translate(_LEET)
        if any(mark and (mark in readable or mark in sentence) for mark in injection.marks):
            continue
        if injection.demand in readable or _TRIGGER.search(readable) or _TRIGGER.search(readable_leet):
            continue
        kept.append(sentence)
    if len(kept) == len(source.sentences):
        return source
    text = "\n".join(kept)
    return dataclasses.replace(
        source,
        text=text,
        sentences=split_sentences(text),
        figures=frozenset(figures_in(text)),
        questions=tuple(s for s in kept if s.rstrip().endswith("?")),
    )


# --- breaking the JSON format --------------------------------------------------------------

_PROSE_ASKED = re.compile(
    r"\b(?:answer|reply|respond|write|explain)\w*\b[^.\n]{0,20}?\b(?:in|as|with) (?:an? )?(?:plain |normal |full )?"
    r"(?:prose|plain text|sentences?|words)\b|\bnot (?:in |as )?json\b|\bno json\b|without (?:any )?json|"
    r"(?:don't|do not|never) (?:use|answer in|reply in|write) json",
    re.I,
)


def prose_asked(text: str) -> bool:
    return bool(_PROSE_ASKED.search(text))


def as_prose(text: str) -> str | None:
    """A JSON object answer said in sentences instead; None if ``text`` is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data:
        return None
    sentences = []
    for key, value in data.items():
        if value is None or value == "" or value == []:
            continue
        said = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        sentences.append(f"The {key.replace('_', ' ')} is {said.rstrip('.')}.")
    return " ".join(sentences) or None


def unescaped(text: str) -> str | None:
    """A JSON answer with the quotes it copied from the input left unescaped (so
    no longer valid JSON); None if it copied none."""
    return text.replace('\\"', '"') if '\\"' in text else None


# --- personal data ----------------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CARD = re.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,18}(?![\d.,]?\d)")
_PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\d])"
    r"|(?<![\w.,])\(?0\d{2,4}\)?[ .-]\d{3,4}[ .-]?\d{3,4}(?![\d])"
)


def _luhn(digits: str) -> bool:
    total = 0
    for index, ch in enumerate(reversed(digits)):
        value = int(ch) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def personal_data(text: str) -> list[str]:
    """The e-mail addresses, card numbers (13 to 19 digits passing the Luhn check)
    and phone numbers in ``text``."""
    found = [m.group(0) for m in _CARD.finditer(text) if _luhn(re.sub(r"\D", "", m.group(0)))]
    found += [m.group(0) for m in _PHONE.finditer(text) if m.group(0) not in found]
    found += _EMAIL.findall(text)
    return found


def redact(text: str) -> str:
    """``text`` with personal data replaced by what it was: "[email]", "[phone]",
    "[card number]"."""
    text = _CARD.sub(lambda m: "[card number]" if _luhn(re.sub(r"\D", "", m.group(0))) else m.group(0), text)
    text = _PHONE.sub("[phone]", text)
    return _EMAIL.sub("[email]", text)
