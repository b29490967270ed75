"""Extractions: "field: value" lines, measurement tables, JSON objects, claims as JSON lines."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from boards.agents.simulated.labels import GREETING, best_label
from boards.agents.simulated.reading import Source
from boards.agents.simulated.text import (
    AMOUNT,
    DATE,
    IDENTIFIER,
    MONTHS,
    STOPWORDS,
    WEEKDAYS,
    content_words,
    split_clauses,
    strip_end,
    word_list,
)
from boards.agents.simulated.work import Work, hedge_answer, invent_figure

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
        for clause in split_clauses(sentence):
            clause = strip_end(GREETING.sub("", clause)) if not clause.endswith("?") else clause.strip()
            if not clause:
                continue
            has_digits = any(ch.isdigit() for ch in clause)
            has_date = bool(DATE.search(clause))
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


def field_value(name: str, source: Source) -> object:
    """The value of a JSON field asked for by name, from the input; None if absent."""
    lowered = name.lower()
    text = source.text
    if re.search(r"date|deadline|when|due", lowered):
        match = DATE.search(text)
        return match.group(0) if match else None
    if re.search(r"amount|price|total|cost|fee|sum|refund", lowered):
        match = AMOUNT.search(text) or re.search(r"\d[\d,.]*\s*(?:EUR|USD|GBP|%)", text)
        return match.group(0) if match else None
    if re.search(r"order|ref|id$|number|invoice|case|ticket", lowered):
        match = IDENTIFIER.search(text)
        return match.group(0) if match else None
    if re.search(r"email", lowered):
        match = re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text)
        return match.group(0) if match else None
    if re.search(r"name|customer|person|owner|who", lowered):
        return source.recipient or first_name(text) or None
    if re.search(r"question", lowered):
        return list(source.questions) or None
    words = content_words(name)
    for sentence in source.sentences:
        if words & content_words(sentence):
            return strip_end(sentence)
    return None


def first_name(text: str) -> str:
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


def _drop_line(lines: list[str], work: Work, *, keep_first: int = 0) -> tuple[list[str], str] | None:
    candidates = [i for i in range(keep_first, len(lines)) if lines[i].strip()]
    if len(candidates) < 2:
        return None
    with_figures = [i for i in candidates if any(ch.isdigit() for ch in lines[i])]
    index = work.rng.choice(with_figures or candidates)
    dropped = lines[index]
    return lines[:index] + lines[index + 1 :], f"an item is missing: {dropped.strip()[:80]}"


def _write_field_lines(work: Work, flaws: list[str]) -> tuple[str, str]:
    facts = _facts(work.source, _focus(work.reading.task_line)) or _facts(work.source, "")
    if not facts:
        facts = [("summary", strip_end(work.source.text[:200]))]
    lines = [f"{field}: {value}" for field, value in facts]
    if work.unsure:
        lines.append("note: I am not sure every item is complete")
    return _apply_line_flaws(lines, work, flaws)


def _apply_line_flaws(
    lines: list[str], work: Work, flaws: list[str], *, keep_first: int = 0
) -> tuple[str, str]:
    if not flaws:
        return "\n".join(lines), ""
    for name in flaws:
        if name == "invented_figure":
            result = invent_figure("\n".join(lines), work)
            if result:
                return result
        elif name == "missing_item":
            dropped = _drop_line(lines, work, keep_first=keep_first)
            if dropped:
                return "\n".join(dropped[0]), dropped[1]
    return hedge_answer("\n".join(lines), work)


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
        for clause in split_clauses(sentence):
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


def _write_table(work: Work, flaws: list[str]) -> tuple[str, str]:
    columns = work.reading.columns
    rows = _measurements(work.source)
    if not rows:
        facts = _facts(work.source, "") or [("input", strip_end(work.source.text[:120]))]
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


def _write_claims(work: Work, flaws: list[str]) -> tuple[str, str]:
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
        rest = sentence.replace(sample_match.group(0), "") if about_sample and sample_match else sentence
        if (not effects and (about_sample or design_of(sentence) != "unclear")) or (
            about_sample and len(word_list(rest)) < 5
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
                row[name] = strip_end(sentence)
            elif "evidence" in lowered:
                row[name] = f"{design} ({sample})" if design != "unclear" else f"reported figures ({sample})"
            elif "effect" in lowered:
                row[name] = "; ".join(e.strip() for e in effects) or None
            elif "sample" in lowered:
                row[name] = sample
            elif "strength" in lowered:
                row[name] = strength
            else:
                row[name] = field_value(name, source)
        claims.append(row)
    if not claims:
        claims.append(
            {name: (strip_end(source.text[:160]) if "claim" in name else None) for name in field_names}
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
            result = invent_figure("\n".join(lines), work)
            if result:
                return "\n".join([result[0], *questions]), result[1]
    if flaws and not flaw:
        text, flaw = hedge_answer("\n".join(lines), work)
        return "\n".join([text, *questions]), flaw
    return "\n".join([*lines, *questions]), flaw


def _write_json_object(work: Work, flaws: list[str]) -> tuple[str, str]:
    data: dict[str, object] = {}
    for field in work.reading.json_fields:
        if field.options:
            data[field.name] = best_label(field.options, field.name, work.source.text)
        elif field.name.lower() == "confidence":
            data[field.name] = work.confidence
        else:
            data[field.name] = field_value(field.name, work.source)
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
            result = invent_figure(json.dumps(data, ensure_ascii=False), work)
            if result:
                return result
    text = json.dumps(data, ensure_ascii=False)
    if malformed:
        text = text[:-1]
    if flaws and not flaw:
        data.pop(next(iter(data)), None)
        return json.dumps(data, ensure_ascii=False), "a field of the JSON is missing"
    return text, flaw


def write_extract(work: Work, flaws: list[str]) -> tuple[str, str]:
    reading = work.reading
    if reading.json_lines:
        return _write_claims(work, flaws)
    if reading.columns:
        return _write_table(work, flaws)
    if reading.json_fields:
        return _write_json_object(work, flaws)
    return _write_field_lines(work, flaws)
