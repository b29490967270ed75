"""Drafts: replies, welcome notes, out-of-office messages in the register asked."""

from __future__ import annotations

import re

from boards.agents.simulated.extract import first_name
from boards.agents.simulated.text import as_sentence, split_clauses, strip_end, word_count
from boards.agents.simulated.work import Work, invent_figure

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
    return as_sentence(text)


def _draft_kind(work: Work) -> str:
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


def _draft_body(work: Work, register: str, kind: str) -> list[str]:
    source, reading = work.source, work.reading
    facts: list[str] = []
    directives: list[str] = []
    for sentence in source.sentences:
        if _DIRECTIVE.match(sentence):
            directives.append(sentence)
            continue
        for clause in split_clauses(sentence):
            if _DIRECTIVE.match(clause):
                directives.append(clause)
            else:
                facts.append(clause)
    apology = _REGISTERS[register][2]
    body: list[str] = []
    if kind == "away":
        for fact in facts:
            fact = strip_end(fact)
            away = re.match(r"(?:away|out|off|on leave)\b\s*(?:from\s+)?(.*)", fact, re.I)
            urgent = re.match(r"urgent (\w+) (?:go|goes|should go) to (\S+)", fact, re.I)
            if away:
                body.append(f"I am out of the office {away.group(1)}, with no access to e-mail.")
            elif urgent:
                body.append(f"For urgent {urgent.group(1)}, please write to {urgent.group(2)}.")
            else:
                body.append(as_sentence(fact))
        body.append("I will reply to your message when I am back.")
        return body
    if kind == "welcome":
        name = first_name(source.text) or "our new colleague"
        for index, fact in enumerate(facts):
            fact = strip_end(fact)
            if index == 0 and fact.startswith(name + " "):
                body.append(f"Please welcome {name}, who {fact[len(name) + 1 :]}.")
            elif fact[:1].islower():
                body.append(as_sentence(f"{name} {fact}"))
            else:
                body.append(as_sentence(fact))
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
        number = order.group(1) if order else None
        about = f" about order {number}" if number else ""
        if number and any(number in fact for fact in body):
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


def write_draft(work: Work, flaws: list[str]) -> tuple[str, str]:
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
        while len(body) > 1 and word_count(_compose(greeting, body, closing, signature)) > reading.word_limit:
            if closing:
                closing = ""
            else:
                body.pop()
    if long and reading.word_limit:  # (long is set only with a word limit)
        padding = [
            "We truly value you as a customer and want every experience with us to be a good one.",
            "Our team works hard every day to make sure that orders arrive on time and in perfect condition.",
            "We are always looking for ways to improve, and feedback like yours helps us do that.",
            "Please be assured that we take every message seriously and read each one carefully.",
            "Thank you once again for taking the time to write to us and for your patience.",
        ]
        while word_count(_compose(greeting, body, closing, signature)) <= reading.word_limit * 1.15:
            body.extend(padding)
    text = _compose(greeting, body, closing, signature)
    if invent:
        result = invent_figure(text, work)
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
