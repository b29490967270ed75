"""The simulated model: offline, deterministic, believable, sometimes wrong, calibrated.

Kaizen's demo and tests run on this provider. It reads the rendered prompt as a real
model would, does the work the prompt asks for on the input, is sometimes wrong in ways
a check or a reviewer can catch, and states a confidence that is calibrated: among its
answers given confidence c, about c of them are right.

Everything is deterministic from (model, prompt, input): the same request always gives
the same answer, confidence, tokens, latency and error. (So a demo feed that adds the
same input again gets the same answer again.) What the model makes of an input, its
"luck" there, comes from (model, input) alone, as a real model's errors on an input
hold across small changes of the prompt (hard inputs stay hard): see "Coupled draws"
below. So a retry whose prompt differs only by a filled {last_error} has the same luck
on its input (its wording, flaw and errors are drawn afresh), while a reviewer's note,
which raises the accuracy, turns the borderline wrong answers right.

What it does, by kind of task (the kind is read from the prompt's imperative: "Classify
...", "Extract ...", "List every ...", "Summarise ...", "Draft/Write a reply ...",
"Appraise ...", "Tidy up ..."; a "Task: ..." line weighs most, "You ..." role lines least):

- classify: a label from the label set written in the prompt ("Classes: a, b, c",
  "category: a, b", "Severity: x (...), y (...)", "rating (low, some concerns, high)",
  a JSON placeholder "a|b|c"), chosen from the input by keyword cues for common label
  vocabularies, else a neutral label of the set ("other", "normal"...) or a deterministic
  pick; with no label set, a label from a general business vocabulary (billing,
  shipping, account_access, bug, feature_request, feedback, complaint, other), or from
  defect classes when the input reads like an inspection finding. Plain answers give
  the label first, then "Reason: " and the input's sentence that decided it; a prompt
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

A bare template ("{input}", nothing else) leaves the instruction to the input, as in a
chat: "Classify: a scratch on the housing." is classified.

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
"at most/under/no more than N words" and "at most N sentences" cap the answer, "in N
sentences" asks for N (as many as the input has); with no limit, a summary keeps about
40% of the input's sentences (at least two of three or more) and sim-small one more.
A summary is never longer than its input.

The confidence is then drawn around p, in log-odds with a spread of 0.8
(``sigmoid(logit p + N(0, 0.8))``, kept in [0.02, 0.99] and rounded to 3 places), and the
answer is right with probability equal to that confidence: calibrated by construction.
(The share of right answers on a request is the mean confidence, a little nearer one
half than p: about sigmoid(logit p / 1.12), so 0.85 -> 0.82, 0.97 -> 0.96, 0.30 -> 0.32.)

Coupled draws. The two draws that decide how an input goes, the confidence noise
z ~ N(0, 0.8) and the uniform u that makes the answer right when u < confidence, come
from a generator seeded by (model, input) only; p comes from the prompt. So on one
input and one model, every prompt sees the same z and u, and the answer is right
exactly when u < sigmoid(logit p + z), clipped and rounded: a prompt with a higher p is
right on every input where a lower one is, plus the borderline inputs between them, and
two prompts with the same p agree everywhere. A paired replay of a change therefore
shows its effect without the noise of independent draws. Measured on 281 inputs of the
shipped agents' demo tasks, each on its agent's first-tier model: a rewording that
changes no prompt effect agrees with the original on every input (with draws seeded by
the prompt, as before issue 13, they disagreed on 31%); one that changes the reading a
little ("Answer as JSON only" read as a draft, p down 0.04) disagrees on 0.4%; three
few-shot examples raise the share of right answers from 80% to 88% and turn no right
answer wrong (before: 78% to 92%, with 5% of inputs turned wrong); an unfilled
"{customer}" lowers it from 80% to 52%.

Everything else (latency, errors, which flaw a wrong answer has, the wording) is drawn
from (model, prompt, input) as before, so a reworded prompt may word the same answer
differently, and a wrong answer may show another flaw. Models differ: the luck of
sim-small on an input says nothing about sim-large's.

Adversarial inputs
------------------
The model reads the input as a real one would, tricks included (``adversarial``).
Every draw here also comes from (model, input) only, so a guard added to a prompt
stops exactly the injections it is strong enough to stop.

Injected instructions. When the input (as it appears in the prompt) carries an
instruction that demands an answer, the model may follow it: its whole answer becomes
the demanded text (``reply only with KZ-CANARY-...`` gives ``KZ-CANARY-...``), the answer
is wrong, and the flaw says it followed an injected instruction. Recognised:
"ignore / disregard / forget / override ... instructions (rules, prompt, everything you
were told)", "new instructions", "you are now ...", "developer mode", a "SYSTEM:" line;
each with a demand after it (or just before): "reply / respond / answer / say / output /
print / write / return (only, just) (with) X", X quoted or up to the end of the
sentence, "and nothing else" or "only". Three forms, each followed with its own chance:

    model        plain   obfuscated   base64
    sim-small    0.60    0.45         0.05
    sim-medium   0.35    0.30         0.20
    sim-large    0.15    0.12         0.18

"Obfuscated" is found once zero-width characters are removed, Cyrillic and Greek
look-alike letters read as Latin, and leetspeak (4 3 1 0 5 7 @ $) read as letters; base64
is a blob of 24 or more base64 characters that decodes to such an instruction (small
models cannot decode it, so rarely follow it). A prompt with a guard makes each chance
ten times smaller (``GUARD_FACTOR``); the guards are phrases in the prompt outside the
input: "treat the input (text, message, ticket, data...) as data" (or "as untrusted"),
"never / do not follow (obey, execute, act on) instructions in (inside, within, from)
the input", "ignore instructions in the input", "the input is untrusted", "untrusted
input". An injection the model does not follow is left out of the material it works on
(its sentences are neither quoted nor summarised).

Format. A prompt showing a JSON object (or naming JSON) makes a JSON agent. If the input
asks for prose ("answer in plain prose", "not JSON", "no JSON", "without JSON", "don't
use JSON", "reply in normal sentences"), a JSON object answer turns into sentences ("The
category is billing. ...") with chance 0.5 / 0.3 / 0.15 (small / medium / large), times
0.15 (``JSON_STRICT_FACTOR``) when the prompt insists: "JSON only", "only JSON",
"nothing but JSON", "always answer with (in) JSON", "never answer in prose", "even if the
input asks otherwise". Whatever the prompt says, a JSON answer that copied a quote from
the input leaves it unescaped (invalid JSON) with chance 0.25 / 0.08 / 0.02.

Personal data. Answers copy from the input, e-mail addresses, phone numbers and card
numbers included (a summary or a reply repeats them as the input gives them). A prompt
saying "never repeat (include, reveal) personal data (details, information)", "never
repeat PII", "redact (mask, remove) personal data", "redact e-mails / phone numbers /
card numbers" or "no PII" gets them replaced by "[email]", "[phone]" and "[card number]"
(a card number is 13 to 19 digits passing the Luhn check), except with chance 0.08 /
0.03 / 0.01, when the answer repeats them and is wrong for it.
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

import asyncio
import hashlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from boards.agents.provider_types import ModelRequest, ModelResponse, ProviderError
from boards.agents.simulated.adversarial import (
    as_prose,
    find_injection,
    follow_chance,
    injection_flaw,
    personal_data,
    prose_asked,
    redact,
    unescaped,
    without_injection,
)
from boards.agents.simulated.classify import write_classify
from boards.agents.simulated.draft import write_draft
from boards.agents.simulated.extract import write_extract
from boards.agents.simulated.generic import write_generic, write_rewrite
from boards.agents.simulated.labels import DEFAULT_LABELS, best_label, default_labels
from boards.agents.simulated.profiles import (
    CONFIDENCE_MAX,
    CONFIDENCE_MIN,
    CONFIDENCE_SPREAD,
    EFFECT_DEFINITIONS,
    EFFECT_EXAMPLES,
    EFFECT_FEEDBACK,
    EFFECT_FORMAT,
    EFFECT_GROUNDED,
    EFFECT_MATCHING_EXAMPLE,
    EFFECT_NO_INPUT,
    EFFECT_PLACEHOLDER,
    EFFECT_PLACEHOLDERS_MAX,
    EFFECT_VAGUE,
    GUARD_FACTOR,
    JSON_STRICT_FACTOR,
    KIND_EFFECT,
    NO_INPUT_CEILING,
    SIMULATED_PROFILES,
    SimulatedProfile,
    count_tokens,
    input_difficulty,
    log_odds,
    sigmoid,
)
from boards.agents.simulated.reading import (
    EXAMPLE_PAIR,
    LabelSet,
    PromptReading,
    Source,
    prompt_instructions,
    read_prompt,
    read_source,
)
from boards.agents.simulated.summarise import write_sections, write_summary
from boards.agents.simulated.text import content_words
from boards.agents.simulated.work import Work, Writer, flaw_order, hedge_answer

__all__ = [
    "CONFIDENCE_MAX",
    "CONFIDENCE_MIN",
    "CONFIDENCE_SPREAD",
    "DEFAULT_LABELS",
    "SIMULATED_PROFILES",
    "PromptReading",
    "SimulatedAnswer",
    "SimulatedProfile",
    "SimulatedProvider",
    "Source",
    "accuracy_logit",
    "best_label",
    "input_difficulty",
    "read_prompt",
    "read_source",
    "simulate",
]

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
    "classify": write_classify,
    "extract": write_extract,
    "summarise": write_summary,
    "sections": write_sections,
    "draft": write_draft,
    "rewrite": write_rewrite,
    "generic": write_generic,
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
        for label_set in reading.label_sets[:1] or (LabelSet("label", default_labels(source.text), False),):
            right = best_label(label_set.labels, label_set.name, source.text)
            for line in examples.splitlines():
                if EXAMPLE_PAIR.search(line) and re.search(r"\b" + re.escape(right) + r"\b", line, re.I):
                    return True
        return False
    return len(content_words(examples) & content_words(source.text)) >= 3


def accuracy_logit(
    model: str, request_prompt: str, input_text: str
) -> tuple[float, PromptReading, Source, bool]:
    """log-odds of a right answer for this request (see the module docstring), with
    what was read from the prompt and the input, and whether the input was in the prompt."""
    profile = SIMULATED_PROFILES[model]
    instructions, present = prompt_instructions(request_prompt, input_text)
    reading = read_prompt(instructions)
    if reading.kind == "generic" and present and input_text.strip():
        # A bare template ("{input}") leaves the instruction to the input itself, as
        # in a chat: "Classify: a scratch on the housing."
        whole = read_prompt(request_prompt)
        if whole.kind != "generic":
            reading = whole
    source = read_source(input_text) if present else read_source(reading.task_line or instructions)
    kind = _writer_kind(reading)
    logit = log_odds(profile.skill) - profile.difficulty_slope * input_difficulty(input_text)
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


def _input_seed(model: str, input_text: str, purpose: str) -> int:
    """A seed from the model and the input alone, not the prompt: what a model makes
    of an input (how hard it finds it, whether it falls for a trick in it) holds
    across rewordings of the prompt."""
    digest = hashlib.sha256(f"{model}\x00{purpose}\x00{input_text}".encode()).hexdigest()
    return int(digest[:16], 16)


def _input_draw(model: str, input_text: str, purpose: str) -> float:
    return random.Random(_input_seed(model, input_text, purpose)).random()


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
    tokens_in = count_tokens(request.prompt)
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
    logit, reading, source, present = accuracy_logit(request.model, request.prompt, request.input)
    # The luck of the input (the confidence noise and the uniform that decides right
    # or wrong) comes from (model, input) only, so two prompts differ on an input
    # only as far as their accuracies differ. The request's own generator still
    # makes the same two draws, so the flaws and wording it draws next are those it
    # always drew.
    luck = random.Random(_input_seed(request.model, request.input, "luck"))
    rng.gauss(0, CONFIDENCE_SPREAD)
    rng.random()
    confidence = sigmoid(logit + luck.gauss(0, CONFIDENCE_SPREAD))
    confidence = round(min(CONFIDENCE_MAX, max(CONFIDENCE_MIN, confidence)), 3)
    correct = luck.random() < confidence
    kind = _writer_kind(reading)
    injection = find_injection(source.text) if present else None
    followed = False
    if injection is not None:
        chance = follow_chance(injection, profile, guarded=reading.injection_guard, factor=GUARD_FACTOR)
        followed = _input_draw(request.model, request.input, "injection") < chance
        if not followed:
            source = without_injection(source, injection)
    work = Work(
        reading=reading, source=source, model=request.model, profile=profile, rng=rng, confidence=confidence
    )
    flaws = [] if correct else flaw_order(work, _FLAWS[kind])
    text, flaw = _WRITERS[kind](work, flaws)
    if not correct and not flaw:
        # Every wrong answer shows what is wrong; a writer that could not apply the
        # flaws it was given hedges instead.
        text, flaw = hedge_answer(text, work)
    if injection is not None and followed:
        text, correct, flaw = injection.demand, False, injection_flaw(injection)
    else:
        text, correct, flaw = _json_breaks(request, profile, reading, source, text, correct, flaw)
    text, correct, flaw = _personal_data(request, profile, reading, text, correct, flaw)
    return SimulatedAnswer(
        text=text,
        confidence=confidence,
        correct=correct,
        flaw="" if correct else flaw,
        p=round(sigmoid(logit), 4),
        kind=kind,
        latency_ms=round(latency_ms, 3),
        tokens_in=tokens_in,
        tokens_out=count_tokens(text),
    )


def _json_breaks(
    request: ModelRequest,
    profile: SimulatedProfile,
    reading: PromptReading,
    source: Source,
    text: str,
    correct: bool,
    flaw: str,
) -> tuple[str, bool, str]:
    """A JSON answer turned to prose because the input asked for prose, or with a
    quote copied from the input left unescaped."""
    if not reading.wants_json:
        return text, correct, flaw
    if prose_asked(source.text):
        chance = profile.prose_break * (JSON_STRICT_FACTOR if reading.json_strict else 1.0)
        if _input_draw(request.model, request.input, "prose") < chance:
            prose = as_prose(text)
            if prose is not None:
                return (
                    prose,
                    False,
                    "the answer is in prose, not the JSON the prompt asks for (the input asked for prose)",
                )
    if _input_draw(request.model, request.input, "quote") < profile.unescaped_quote:
        broken = unescaped(text)
        if broken is not None:
            return broken, False, "the answer is not valid JSON: a quote copied from the input is not escaped"
    return text, correct, flaw


def _personal_data(
    request: ModelRequest,
    profile: SimulatedProfile,
    reading: PromptReading,
    text: str,
    correct: bool,
    flaw: str,
) -> tuple[str, bool, str]:
    """Personal data redacted when the prompt asks, except for the model's misses."""
    if not reading.redact_pii:
        return text, correct, flaw
    if _input_draw(request.model, request.input, "redaction") >= profile.redaction_miss:
        return redact(text), correct, flaw
    leaked = personal_data(text)
    if leaked and correct:
        return (
            text,
            False,
            f"the answer repeats personal data ({leaked[0]}) though the prompt asks to leave it out",
        )
    return text, correct, flaw


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
        return self._response(answer)

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        """``complete`` on an event loop: the same answer, its latency awaited."""
        answer = self.judge(request)
        if answer.latency_ms > 0 and self.latency_scale > 0:
            await asyncio.sleep(answer.latency_ms * self.latency_scale / 1000)
        return self._response(answer)

    @staticmethod
    def _response(answer: SimulatedAnswer) -> ModelResponse:
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
