"""Summaries: extractive, within the limit asked; and answers in the sections a prompt lists."""

from __future__ import annotations

import re

from boards.agents.simulated.extract import design_of
from boards.agents.simulated.labels import GREETING, best_label, cue_sentence, cue_table
from boards.agents.simulated.reading import Section, Source
from boards.agents.simulated.text import (
    AMOUNT,
    CASE_ID,
    IDENTIFIER,
    as_sentence,
    content_words,
    figures_in,
    lower_first,
    strip_end,
    word_count,
)
from boards.agents.simulated.work import Work, hedge_answer, invent_figure

# --- summarise ------------------------------------------------------------------------------

_KEY_WORDS = re.compile(
    r"\b(?:because|found|result|rose|fell|failed|decided|agreed|risk|propos|wants?|need|gap|cause|"
    r"follow-ups?|questions?|main|key|increase|decrease|higher|lower|more|less)\w*",
    re.I,
)


def informativeness(sentence: str, index: int, title_words: set[str]) -> float:
    words = len(sentence.split())
    score = 0.8 * min(3, len(figures_in(sentence)))
    score += 1.0 * len(content_words(sentence) & title_words)
    score += 0.5 * min(2, len(_KEY_WORDS.findall(sentence)))
    score += 0.6 if index == 0 else 0
    score += 0.03 * min(words, 30)
    score -= 0.4 if sentence.endswith("?") else 0
    score -= 0.8 if words < 4 else 0
    return score


def compress(sentence: str) -> str:
    text = re.sub(r"^(?:notes?|summary|update|fyi)\s*:\s*", "", sentence.strip(), flags=re.I)
    # Parentheses without a figure are asides; those with one keep numbers as given.
    text = re.sub(r"\s*\((?![^()]*\d)[^()]*\)", "", text)
    return as_sentence(GREETING.sub("", text))


def write_summary(work: Work, flaws: list[str]) -> tuple[str, str]:
    reading, source = work.reading, work.source
    sentences = list(source.sentences) or [source.text]
    title_words = content_words(reading.task_line)
    scored = [(informativeness(s, i, title_words), i) for i, s in enumerate(sentences)]
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
                flaw = f"the summary misses the key point: {compress(sentences[top])[:100]}"
                break
        elif name == "too_long" and (limit or reading.word_limit):
            spare = [i for _, i in ranked if i not in chosen]
            if limit and len(spare) >= 1:
                chosen = sorted(chosen + spare[:2])
                flaw = f"the summary has {len(chosen)} sentences; at most {limit} were asked"
                break
            if reading.word_limit:
                extra_sentence = " ".join(compress(s) for s in sentences)
                flaw = f"the summary runs over the {reading.word_limit} words asked"
                break
        elif name == "invented_figure":
            flaw = "invent"
            break
    parts = [compress(sentences[i]) for i in chosen]
    if reading.word_limit and not extra_sentence:
        while len(parts) > 1 and word_count(" ".join(parts)) > reading.word_limit:
            parts.pop()
        if word_count(" ".join(parts)) > reading.word_limit:
            parts = [" ".join(parts[0].split()[: reading.word_limit - 1]).rstrip(",;") + "."]
    text = "\n".join(f"- {p}" for p in parts) if reading.bullets else " ".join(parts)
    if extra_sentence:
        text = f"{text} {extra_sentence}"
    # A summary is never longer than what it summarises.
    if len(text) > len(source.text) and not extra_sentence and len(source.text) > 20:
        clauses = re.split(r"(?<=[;,])\s+", source.text.strip())
        if len(clauses) > 1:
            text = as_sentence(strip_end(" ".join(clauses[: max(1, len(clauses) // 2)])))
        if len(text) >= len(source.text):
            words = source.text.split()
            text = as_sentence(strip_end(" ".join(words[: max(3, int(len(words) * 0.6))])))
    if work.unsure:
        text = f"{text} I am not sure this covers everything."
    if flaw == "invent":
        result = invent_figure(text, work)
        if result:
            return result
        flaw = ""
    if flaws and not flaw:
        return hedge_answer(text, work)
    return text, flaw


# --- sections -------------------------------------------------------------------------------

_RISK_CUES = cue_table(
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


def _options_pick(section: Section, work: Work) -> tuple[str, str]:
    table_name = section.heading.lower()
    label = best_label(section.options, table_name, work.source.text)
    evidence = cue_sentence(work.source, label, table_name)
    return label, evidence


def _section_content(section: Section, work: Work) -> str | list[str]:
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
        return f"{label}, because {lower_first(evidence)}" if evidence else label
    if re.search(r"\bpart\b|\blot\b", heading):
        ids = CASE_ID.findall(work.reading.instructions) or IDENTIFIER.findall(work.reading.instructions)
        lot = re.search(r"\blot \d+", work.reading.instructions + " " + text, re.I)
        part = ", ".join(dict.fromkeys([*ids[:1], *([lot.group(0)] if lot else [])]))
        return part or "not stated"
    if "nonconform" in heading or "finding" in heading or "problem" in heading:
        return strip_end(source.sentences[0]) if source.sentences else "not stated"
    if "extent" in heading:
        pattern = r"\b\d+ of \d+\b|lot size|shipped|stock|parts? \d|\d+ parts|all \d"
        hits = [
            strip_end(s) for s in source.sentences[1:] if re.search(pattern, s, re.I) and not s.endswith("?")
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
            return f"“{strip_end(said)}”"
        return strip_end(re.sub(r"^(?:the )?customer (?:asks|wants)(?: to know)?\s*", "", said, flags=re.I))
    if "history" in heading or "timeline" in heading:
        lines = [s for s in source.sentences if _DATED_LINE.match(s)] or list(source.sentences)
        limit = section.limit or len(lines)
        if len(lines) > limit:
            ranked = sorted(
                range(len(lines)),
                key=lambda i: (
                    i in (0, len(lines) - 1),
                    len(figures_in(lines[i])) + len(_KEY_WORDS.findall(lines[i])),
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
                for amount in AMOUNT.finditer(line):
                    dated = _DATED_LINE.match(line)
                    kind = "credit" if re.search(r"credit", line, re.I) else "refund"
                    items.append(f"{amount.group(0)} {kind}" + (f" ({dated.group(1)})" if dated else ""))
                    total += float(amount.group(0).replace(",", ""))
        if not items:
            return "none mentioned"
        return " + ".join(items) + (f" = {total:.2f}" if len(items) > 1 else "")
    if "case" in heading:
        cases = list(dict.fromkeys(CASE_ID.findall(text)))
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
        described = strip_end(sentence)
        if design.split()[0] not in described.lower():
            described = f"{design}; {lower_first(described)}"
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
        return strip_end(sentence) if sentence else "no source of bias is reported"
    if "confound" in heading:
        sentence = _cue_sentence_for(
            source, ("control", "pre-period", "confound", "did not control", "parallel")
        )
        return strip_end(sentence) if sentence else "no adjustment for confounders is reported"
    if "statist" in heading:
        sentence = _cue_sentence_for(source, ("i-squared", "p =", "ci", "egger", "heterogeneity", "subgroup"))
        return strip_end(sentence) if sentence else "no statistical tests are reported"
    if "improve" in heading or "suggest" in heading:
        return _IMPROVEMENTS.get(design, _IMPROVEMENTS["unclear"])
    words = content_words(section.heading + " " + section.hint)
    best = max(source.sentences, key=lambda s: len(words & content_words(s)), default="")
    if best and words & content_words(best):
        return strip_end(best)
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
            return strip_end(min(hits, key=len))
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
        return strip_end(line)
    rest = dated.group(2)
    speaker = re.match(r"([a-z][a-z ]{0,20}):\s*", rest)
    if speaker:
        rest = rest[speaker.end() :]
    first = re.split(r"(?<=[.!?])\s+", rest)[0]
    who = f" ({speaker.group(1)})" if speaker else ""
    return f"{dated.group(1)}{who}: {strip_end(first)}"


def _render_sections(entries: list[tuple[str, str | list[str]]]) -> str:
    lines = []
    for heading, content in entries:
        if isinstance(content, list):
            lines.append(f"{heading}:")
            lines.extend(f"- {item}" for item in content)
        else:
            lines.append(f"{heading}: {content}")
    return "\n".join(lines)


def write_sections(work: Work, flaws: list[str]) -> tuple[str, str]:
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
            result = invent_figure(_render_sections(entries), work)
            if result:
                return result
    if flaws and not flaw:
        return hedge_answer(_render_sections(entries), work)
    return _render_sections(entries), flaw
