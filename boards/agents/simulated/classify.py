"""Classifications: a label from the prompt's label set, plain or as JSON."""

from __future__ import annotations

import json
import re

from boards.agents.simulated.extract import field_value
from boards.agents.simulated.labels import (
    NEAR_MISSES,
    SEVERITY_BY_CLASS,
    best_label,
    cue_sentence,
    default_labels,
)
from boards.agents.simulated.reading import JsonField, LabelSet
from boards.agents.simulated.text import as_sentence, lower_first, strip_end
from boards.agents.simulated.work import Work

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


def write_classify(work: Work, flaws: list[str]) -> tuple[str, str]:
    reading, source = work.reading, work.source
    sets = list(reading.label_sets)
    from_prompt = bool(sets) or any(f.options for f in reading.json_fields)
    fields = list(reading.json_fields)
    if not sets and not any(f.options for f in fields):
        sets = [LabelSet(name="label", labels=default_labels(source.text), defined=False)]
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
    if not any(label_set is not None for _, label_set in slots):
        # No field of the JSON asked for names the label set: the label takes the first
        # field that is not a reason, or a "label" field of its own.
        free = [i for i, (name, _) in enumerate(slots) if not _REASON_FIELDS.search(name)]
        if free:
            slots[free[0]] = (slots[free[0]][0], sets[0])
        else:
            slots.insert(0, ("label", sets[0]))
    chosen: dict[str, str] = {}
    first_label = ""
    for _, label_set in slots:
        if label_set is None or label_set.name in chosen:
            continue
        default = SEVERITY_BY_CLASS.get(first_label, "") if "sever" in label_set.name else ""
        chosen[label_set.name] = best_label(label_set.labels, label_set.name, source.text, default=default)
        first_label = first_label or chosen[label_set.name]
    primary = next((s for _, s in slots if s is not None), sets[0])
    reason = cue_sentence(source, chosen.get(primary.name, ""), primary.name) or strip_end(source.text[:160])
    if work.unsure:
        reason = f"I am not sure: {lower_first(reason)}"
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
            wrong = NEAR_MISSES.get(chosen[target.name], f"{chosen[target.name]}_issue")
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
                    data[field_name] = field_value(field_name, source)
        else:
            data = {"label": chosen[primary.name], "reason": reason}
        text = json.dumps(data, ensure_ascii=False)
        if malformed:
            text = text[:-1].replace('"', "'", 2)
        return text, flaw
    if len(chosen) > 1:
        lines = [f"{name}: {label}" for name, label in chosen.items()]
        return "\n".join([*lines, f"Reason: {as_sentence(reason)}"]), flaw
    label = chosen[primary.name]
    return f"{label}\nReason: {as_sentence(reason)}", flaw
