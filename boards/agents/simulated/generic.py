"""Tidying up a text, and anything else: the input's key points."""

from __future__ import annotations

import re

from boards.agents.simulated.summarise import compress, informativeness
from boards.agents.simulated.text import as_sentence, content_words, strip_end
from boards.agents.simulated.work import Work, hedge_answer, invent_figure

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


def write_rewrite(work: Work, flaws: list[str]) -> tuple[str, str]:
    text = " ".join(work.source.text.split())
    text = re.sub(
        r"(\d)\s*(h|hr|hrs|min|mins|d|wk|yr)\b", lambda m: f"{m.group(1)} {_UNITS[m.group(2)]}", text
    )
    parts = [p.strip() for p in re.split(r",\s+", strip_end(text)) if p.strip()]
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
        text = as_sentence(sentence)
    else:
        text = as_sentence(text)
    if flaws:
        result = invent_figure(text, work) if "invented_figure" in flaws[:2] else None
        return result or hedge_answer(text, work)
    return text, ""


def write_generic(work: Work, flaws: list[str]) -> tuple[str, str]:
    sentences = list(work.source.sentences) or [work.source.text or work.reading.task_line or "(no input)"]
    title_words = content_words(work.reading.task_line)
    limit = 1 if work.reading.brief else 3
    ranked = sorted(
        range(len(sentences)), key=lambda i: informativeness(sentences[i], i, title_words), reverse=True
    )
    chosen = sorted(ranked[:limit])
    points = [compress(sentences[i]) for i in chosen]
    text = points[0] if len(points) == 1 else "Key points:\n" + "\n".join(f"- {p}" for p in points)
    if work.unsure:
        text += "\nI am not sure this is complete."
    if flaws:
        result = invent_figure(text, work) if "invented_figure" in flaws[:2] else None
        return result or hedge_answer(text, work)
    return text, ""
